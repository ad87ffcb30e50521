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
  ``result.json`` together (both new or both old, ``write_texts_together``), then removes the progress file.

Bad situations, each refused with the folder and the fix, before anything is lost:

- the results folder cannot be written (read-only, not a folder, disk full): found by a write probe before the
  first batch (``check_writable``), not after an hour of work;
- a second run writing into the same run folder at once: refused while the first holds the folder's lock
  (``run.lock``, an advisory ``flock`` the system drops when its process dies, even by ``kill -9``);
- no item could be used at all (every image unreadable): ``NoUsableDataError``, and no result with ``n = 0``;
- writing the results fails at the end (disk full): ``OutputWriteError``; the old files stay as they were, no
  temporary file is left, and the progress file is kept so the same command resumes.

With ``dir=None`` nothing is read or written (an in-memory evaluation, e.g. the AR probe scoring its samples).

A source is any object with ``batches(done, skip) -> Iterator[Batch]``: it yields the batches of items whose ids
are not in ``done`` and calls ``skip(id, reason)`` for items it cannot use (unreadable images, empty meshes), which
are counted and recorded, never silently dropped. It may keep ``timings`` (a dict of seconds, checkpointed). Its
``ids`` (every item id in order) let the core shard it under ``torchrun`` (``vtbench.distributed``): each rank
evaluates its shard with its own resume file, torchmetrics reduces the metric states, the rows are gathered and
rank 0 writes.
"""

from __future__ import annotations

import json
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
from vtbench.results import RESULT_FILE, SAMPLES_FILE, read_record, write_texts_together

log = logging.getLogger("vtbench")

PROGRESS_FILE = "progress.pt"
LOCK_FILE = "run.lock"
# below this much free space a run warns (results, thumbnails and a resume file of a large run need some room)
LOW_SPACE_BYTES = 256 << 20
_LOW_SPACE_WARNED: set[str] = set()


class OutputNotWritableError(RuntimeError):
    """The results folder cannot be written; raised before the first batch."""


class OutputWriteError(RuntimeError):
    """Writing the final results failed (e.g. disk full); nothing was replaced and the progress file was kept."""


class RunLockedError(RuntimeError):
    """Another process is writing into the same run folder."""


class NoUsableDataError(RuntimeError):
    """Not one item of the data could be used (every image unreadable): there is nothing to report."""


def check_writable(folder: Path, what: str = "results folder") -> None:
    """Create ``folder`` and write, flush and delete a small probe file in it; raise ``OutputNotWritableError``
    naming the folder, the system's reason and the fix. Warns when less than ``LOW_SPACE_BYTES`` are free."""
    import shutil

    folder = Path(folder)
    fix = "choose another --out, free some space, or fix the folder's permissions"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritableError(f"{what} {str(folder)!r} cannot be created ({exc.strerror or exc}); "
                                     f"nothing was run. Fix: {fix}") from None
    probe = folder / f".vtbench-write-probe.{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OutputNotWritableError(f"{what} {str(folder)!r} is not writable ({exc.strerror or exc}); nothing was "
                                     f"run. Fix: {fix}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < LOW_SPACE_BYTES and str(folder.parent) not in _LOW_SPACE_WARNED:  # once per place, not per run
        _LOW_SPACE_WARNED.add(str(folder.parent))
        log.warning("%s %s: only %.0f MB free; a run that fills the disk stops with its progress kept",
                    what, folder, free / 1e6)


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files (``.<name>.<pid>.tmp``) left in ``folder`` by a process that no longer runs (``kill -9``, a
    power cut); those of live processes (other torchrun ranks) are left alone."""
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name[:-len(".tmp")].rpartition(".")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
            log.info("removed %s (left by an interrupted run)", tmp)
        except OSError:  # alive (another user's process) or unknown: keep it
            pass


class _Lock:
    """An exclusive advisory lock on ``folder/run.lock`` (one per torchrun rank), held while a run writes there.

    ``fcntl.flock`` locks belong to the open file and vanish when the process ends however it ends, so a killed
    run never leaves a stale lock. Where ``fcntl`` does not exist (Windows) nothing is locked."""

    def __init__(self, folder: Path, label: str):
        self.path = folder / dist.progress_name(LOCK_FILE)
        self.label = label
        self.fd: int | None = None

    def __enter__(self) -> "_Lock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # the file may be unlinked by its last holder between our open and our lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise RunLockedError(f"another vtbench process ({holder}) is writing {self.label} into "
                                     f"{str(self.path.parent)!r}; two runs into one folder would overwrite each "
                                     f"other's progress. Fix: wait for it to finish (then this command resumes or "
                                     f"reuses its result), or give this run another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                import socket
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                             f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}".encode())
                self.fd = fd
                return self
            os.close(fd)
        raise RunLockedError(f"{self.path}: could not take the run lock (the file keeps changing); retry")

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # still holding the lock: nobody else can be using this file
            os.close(self.fd)
            self.fd = None


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
    # Score every item in this process even under torchrun: no sharding, no gathering, no cross-process metric
    # sync (for work one rank does alone, e.g. the AR probe's rank 0 scoring its samples).
    local: bool = False
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
            run = rec.get("run") or {}
            if run.get("fingerprint") == self.fingerprint and not run.get("failed"):  # a failed run is tried again
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

    def _checkpoint(self) -> None:
        try:
            self.save_progress()
        except OSError as exc:
            where = self.progress_path
            kept = (f"the previous checkpoint in {where} is intact" if where is not None and where.is_file()
                    else "no checkpoint was written yet")
            raise OutputWriteError(f"{self.label}: cannot save progress into {str(self.dir)!r} "
                                   f"({exc.strerror or exc}); {kept} and no temporary file was left. Fix: free "
                                   f"some space (or fix the folder) and run the same command again to resume"
                                   ) from None

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
        if self.dir is None:
            return self._run()
        check_writable(self.dir, "run folder")
        with _Lock(self.dir, self.label):
            return self._run()

    def _run(self) -> dict[str, Any] | Outcome:
        if self.dir is not None:
            _remove_stale_temporaries(self.dir)
        if self.force and self.progress_path is not None:
            self.progress_path.unlink(missing_ok=True)
        self.load_progress()
        started = datetime.now(timezone.utc).isoformat()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        # under torchrun each rank takes its shard of the items (positions rank, rank + world, ...)
        foreign: set[str] = set()
        total = self.total
        if self.local:
            for m in self.metrics.values():  # torchmetrics would otherwise all-gather states with idle ranks
                m.sync_on_compute = m._to_sync = False
        if self.sharded:
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
                    self._checkpoint()
                if self.stop_after_batches and k >= self.stop_after_batches:
                    self._checkpoint()
                    raise KeyboardInterrupt(f"stopped after {k} batches (stop_after_batches)")
        except BaseException as exc:
            if self.done and not isinstance(exc, OutputWriteError):
                try:
                    self.save_progress()
                except OSError as err:  # e.g. the disk is full: report the first error, not this one
                    log.warning("%s: could not save progress (%s); the last checkpoint is kept", self.label, err)
            raise
        finally:
            bar.close()
        return self.finish(started)

    def finish(self, started: str) -> dict[str, Any] | Outcome:
        import time
        if self.sharded:  # every rank's rows, skipped items and ids (metric states: torchmetrics, in compute)
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
        if n_used <= 0:
            shown = "; ".join(f"{s['id']}: {s['reason']}" for s in self.skipped[:3])
            raise NoUsableDataError(
                f"{self.label}: not one of the {len(self.done)} items could be used"
                + (f" (e.g. {shown})" if shown else "") + "; no result was written. Fix: check the data (the "
                "messages above name each file and what is wrong with it), or point --data at another dataset")
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
            if self.local or dist.is_main():  # rank 0 writes; every rank returns the same record
                self.write(record, self.rows)
            self.progress_path.unlink(missing_ok=True)
            if self.sharded:
                dist.barrier()
        return record

    @property
    def sharded(self) -> bool:
        """Whether the items are split across torchrun processes (more than one, and not ``local``)."""
        return dist.world() > 1 and not self.local

    def write(self, record: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """``samples.csv`` and ``result.json``, replaced together or not at all; on failure (disk full) the
        progress file is refreshed if it can be, and ``OutputWriteError`` says what was kept."""
        samples = pd.DataFrame(rows).sort_values("id").to_csv(index=False) if rows else "id\n"
        try:
            write_texts_together({self.dir / SAMPLES_FILE: samples,
                                  self.dir / RESULT_FILE: json.dumps(record, indent=2, allow_nan=False) + "\n"})
        except OSError as exc:
            kept = ""
            try:
                if self.done:
                    self.save_progress()
                    kept = f"; its progress is kept in {self.progress_path}, so the same command resumes"
            except OSError:
                if self.progress_path.is_file():
                    kept = f"; progress up to the last checkpoint is kept in {self.progress_path}"
            raise OutputWriteError(f"{self.label}: cannot write the results into {str(self.dir)!r} "
                                   f"({exc.strerror or exc}); the folder's earlier files are unchanged and no "
                                   f"temporary file was left{kept}. Fix: free some space (or fix the folder) and "
                                   f"run the same command again") from None


__all__ = ["Evaluation", "LOCK_FILE", "NoUsableDataError", "Outcome", "OutputNotWritableError", "OutputWriteError",
           "PROGRESS_FILE", "RunLockedError", "Source", "check_writable"]
