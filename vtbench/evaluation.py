"""The one evaluation core: the sample loop every task runs.

A task (reconstruction, text, detail, generation, shapes) supplies a **source** of metric batches and the record
sections that describe it; the core does the rest, the same way for every task:

- skips a run whose ``result.json`` holds the same fingerprint (unless forced);
- resumes from ``progress.pt`` (metric states as tensors, done ids, per-sample rows, skipped items, timings) when
  its fingerprint matches, and checkpoints it atomically every ``checkpoint_every`` batches and on interruption;
- seeds torch and numpy, shows one progress bar, feeds every batch to every metric (``Metric.update``), keeps the
  per-sample rows;
- at the end computes every metric (torchmetrics reduces the states across processes first under ``torchrun``),
  adds null values with the reason for metrics that could not run, and writes ``samples.csv`` and
  ``result.json`` (each atomically), then removes the progress file.

With ``dir=None`` nothing is read or written (an in-memory evaluation, e.g. the AR probe scoring its samples).

A source is any object with ``batches(done, skip) -> Iterator[Batch]``: it yields the batches of items whose ids
are not in ``done`` and calls ``skip(id, reason)`` for items it cannot use (unreadable images, empty meshes), which
are counted and recorded, never silently dropped. It may keep ``timings`` (a dict of seconds, checkpointed). Its
``ids`` (every item id in order) let the core shard it under ``torchrun`` (``vtbench.distributed``): each rank
evaluates its shard with its own resume file, torchmetrics reduces the metric states, the rows are gathered and
rank 0 writes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import pandas as pd
import torch

from vtbench import distributed as dist
from vtbench.core import Progress
from vtbench.metrics.base import Batch, Metric, MetricValue
from vtbench.results import RESULT_FILE, SAMPLES_FILE, read_record, write_json_atomic, write_text_atomic

log = logging.getLogger("vtbench")

PROGRESS_FILE = "progress.pt"


class Source(Protocol):
    timings: dict[str, float]

    def batches(self, done: set[str], skip: Callable[[str, str], None]) -> Iterator[Batch]: ...


@dataclass
class Outcome:
    """What a finished evaluation hands the task's record builder."""

    values: dict[str, MetricValue]
    n_used: int
    skipped: list[dict[str, str]]
    timings: dict[str, float]
    started: str
    finished: str
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Evaluation:
    """One evaluation of one source with a set of metrics.

    ``unavailable``: ``{metric name: n -> null values}`` for metrics that could not be built (their reason
    travels in each value; ``n`` is the number of items used); ``record``: builds the result record from an
    ``Outcome`` (the task's sections: tokenizer, dataset, protocol, run, ...); ``fingerprint`` keys resume and the
    completed-run check."""

    source: Any
    metrics: dict[str, Metric]
    fingerprint: str
    dir: Path | None = None
    label: str = "evaluating"
    total: int | None = None
    unavailable: dict[str, Callable[[int], dict[str, MetricValue]]] = field(default_factory=dict)
    record: Callable[[Outcome], dict[str, Any]] | None = None
    seed: int = 0
    force: bool = False
    progress: bool = True
    checkpoint_every: int = 4
    stop_after_batches: int | None = None  # tests: simulate an interruption after k batches
    done: set[str] = field(default_factory=set)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    # -- resume -------------------------------------------------------------------------------------
    def completed(self) -> dict[str, Any] | None:
        """The existing result record when it was computed with this fingerprint."""
        if self.dir is None:
            return None
        path = self.dir / RESULT_FILE
        if path.is_file():
            try:
                rec = read_record(path)
            except ValueError:
                return None
            if rec.get("run", {}).get("fingerprint") == self.fingerprint:
                return rec
        return None

    @property
    def progress_path(self) -> Path | None:
        """This process's resume file (one per rank under torchrun)."""
        return None if self.dir is None else self.dir / dist.progress_name(PROGRESS_FILE)

    def save_progress(self) -> None:
        if self.dir is None:
            return
        state = {"fingerprint": self.fingerprint, "done": sorted(self.done), "rows": self.rows,
                 "skipped": self.skipped, "timings": dict(getattr(self.source, "timings", {}) or {}),
                 "metrics": {n: m.state_tensors() for n, m in self.metrics.items()}}
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{PROGRESS_FILE}.{os.getpid()}.tmp"
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.progress_path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_progress(self) -> None:
        path = self.progress_path
        if path is None or not path.is_file():
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: start over rather than trust it
            log.warning("%s: unreadable progress file (%s); starting this run again", path, exc)
            return
        if state.get("fingerprint") != self.fingerprint or set(state.get("metrics", {})) != set(self.metrics):
            log.warning("%s: progress belongs to different settings; starting this run again", path)
            return
        try:
            for name, m in self.metrics.items():
                m.load_state_tensors(state["metrics"][name])
        except (KeyError, RuntimeError, ValueError) as exc:  # states of an older metric version
            log.warning("%s: metric states do not fit this version (%s); starting this run again", path, exc)
            for m in self.metrics.values():
                m.reset()
            return
        self.done, self.rows, self.skipped = set(state["done"]), state["rows"], state["skipped"]
        if hasattr(self.source, "timings"):
            self.source.timings.update(state.get("timings", {}))
        log.info("resuming %s: %d items already done", self.label, len(self.done))

    # -- the loop -----------------------------------------------------------------------------------
    def _skip(self, sid: str, reason: str) -> None:
        log.warning("skipping %s: %s", sid, reason)
        self.skipped.append({"id": sid, "reason": reason})
        self.done.add(sid)

    def _update(self, batch: Batch) -> None:
        per_sample: dict[str, torch.Tensor] = {}
        for m in self.metrics.values():
            per_sample.update(m.update(batch) or {})
        for i, sid in enumerate(batch.ids):
            row = {"id": sid}
            row.update({k: float(v[i]) for k, v in per_sample.items()})
            self.rows.append(row)
        self.done.update(batch.ids)

    def run(self) -> dict[str, Any] | Outcome:
        """Evaluate; returns the result record (``record`` given) or the ``Outcome``. An existing complete record
        with the same fingerprint is returned without recomputing unless ``force``."""
        existing = self.completed()
        if existing is not None and not self.force:
            log.info("%s: complete, skipped (use --force to recompute)", self.label)
            return existing
        if self.force and self.progress_path is not None:
            self.progress_path.unlink(missing_ok=True)
        self.load_progress()
        started = datetime.now(timezone.utc).isoformat()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        # under torchrun each rank takes its shard of the items (positions rank, rank + world, ...)
        foreign: set[str] = set()
        total = self.total
        if dist.world() > 1:
            ids = list(getattr(self.source, "ids", None) or [])
            if not ids:
                raise RuntimeError(f"{self.label}: this source cannot be sharded across processes (it does not list "
                                   "its item ids); run it with one process")
            mine = dist.shard(ids)
            foreign = set(ids) - mine
            total = len(mine)
        bar = Progress(self.progress and dist.is_main(), total, self.label)
        bar.advance(len(self.done))
        try:
            for k, batch in enumerate(self.source.batches(self.done | foreign, self._skip), 1):
                self._update(batch)
                bar.advance(batch.size)
                if self.dir is not None and k % self.checkpoint_every == 0:
                    self.save_progress()
                if self.stop_after_batches and k >= self.stop_after_batches:
                    self.save_progress()
                    raise KeyboardInterrupt(f"stopped after {k} batches (stop_after_batches)")
        except BaseException:
            if self.done:
                self.save_progress()
            raise
        finally:
            bar.close()
        return self.finish(started)

    def finish(self, started: str) -> dict[str, Any] | Outcome:
        import time
        if dist.world() > 1:  # every rank's rows, skipped items and ids (metric states: torchmetrics, in compute)
            parts = dist.gather_objects((self.rows, self.skipped, sorted(self.done)))
            self.rows = [r for rows, _, _ in parts for r in rows]
            self.skipped = [s for _, skipped, _ in parts for s in skipped]
            self.done = {i for _, _, done in parts for i in done}
        timings = getattr(self.source, "timings", None)
        t0 = time.perf_counter()
        values: dict[str, MetricValue] = {}
        for m in self.metrics.values():
            values.update(m.compute())
        n_used = len(self.done) - len(self.skipped)
        for nulls in self.unavailable.values():
            values.update(nulls(n_used))
        if timings is not None and "metrics_s" in timings:
            timings["metrics_s"] += time.perf_counter() - t0
        outcome = Outcome(values=values, n_used=n_used, skipped=self.skipped,
                          timings=dict(timings or {}), started=started,
                          finished=datetime.now(timezone.utc).isoformat(), rows=self.rows)
        if self.record is None:
            return outcome
        record = self.record(outcome)
        record.setdefault("run", {})["fingerprint"] = self.fingerprint
        if self.dir is not None:
            if dist.is_main():  # rank 0 writes; every rank returns the same record
                self.dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.dir / SAMPLES_FILE, pd.DataFrame(self.rows).sort_values("id")
                                  .to_csv(index=False) if self.rows else "id\n")
                write_json_atomic(self.dir / RESULT_FILE, record)
            self.progress_path.unlink(missing_ok=True)
            dist.barrier()
        return record


__all__ = ["Evaluation", "Outcome", "PROGRESS_FILE", "Source"]
