"""The one-pass evaluation runner.

For each (tokenizer, dataset): every image is encoded and decoded once, quantised to 8 bits, and every
selected metric is updated from that same batch; nothing is written as PNG in between (unless asked to save
reconstructions). Memory is flat in the number of images: metrics keep streaming state only. Progress is
checkpointed atomically (metric states + done ids + per-sample rows), so an interrupted run resumes where it
stopped; a completed run is skipped unless forced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from vtbench import distributed
from vtbench.config import Protocol, load_protocol
from vtbench.core import fingerprint, quantise_uint8
from vtbench.data.annotations import find_word_manifest, match_annotations
from vtbench.data.datasets import ImageDataset, collate, open_dataset
from vtbench.data.policies import Native, NativeOrPad, get_policy
from vtbench.evaluation import Evaluation, Outcome, check_writable
from vtbench.hashing import sha256sum
from vtbench.metrics import METRICS, Batch, Metric, MetricUnavailable, MetricValue
from vtbench.metrics.base import MetricContext, metric_for_output
from vtbench.paths import join_under, png_relpath, safe_name
from vtbench.results import (
    RESULT_FILE,
    SAMPLES_FILE,
    environment,
    new_record,
    protocol_section,
    read_record,
    run_dir,
    write_json_atomic,
    write_texts_together,
)
from vtbench.tokenizers import Tokenizer, UnsupportedResolutionError, build_tokenizer
from vtbench.tokenizers.base import image_seeds
from vtbench.tokenizers.weights import MissingWeightsError, UntrustedCheckpointError, WeightsMismatchError

log = logging.getLogger("vtbench")

THUMBS_DIR = "thumbs"
_WARNED: set[str] = set()


class NonFiniteOutputError(RuntimeError):
    """A tokenizer produced NaN/Inf pixels."""


@dataclass
class RunConfig:
    """Everything that selects what a run computes (part of its fingerprint) plus how it runs."""

    data: str | None = None  # None: the protocol's default_data ("embedded")
    metrics: list[str] | None = None  # None: the protocol's default list
    protocol: str = "reconstruction"
    preprocess: str | None = None  # None: the protocol's policy
    resolution: int | None = None  # None: the protocol's resolution
    limit: int | None = None
    seed: int = 0  # the data subset (--limit) and, for sampling decoders, the decoder seed
    seeds: list[int] | None = None  # sampling decoders: one record per decoder seed + their mean and spread
    batch_size: int = 16
    device: str = "auto"
    out: Path = Path("results")
    force: bool = False
    save_reconstructions: Path | None = None
    weights: str | None = None
    trust_checkpoint: bool = False
    workers: int | None = None  # DataLoader worker processes; None: default_workers()
    precision: str = "fp32"  # the tokenizer's forward passes: fp32, bf16 or fp16 (metrics always fp32)
    checkpoint_every: int = 4  # batches between progress checkpoints
    thumbnails: int = 6  # originals + reconstructions kept in the run directory for the leaderboard
    progress: bool = True
    stop_after_batches: int | None = None  # for tests: simulate an interruption
    annotations: Path | None = None  # word manifest (JSONL) for text metrics; default: found next to the data


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_workers(world: int = 1) -> int:
    """DataLoader workers per process: the cores left after one per process, at most 8; 0 on machines with two
    cores or fewer, where a worker would compete with the model for the same cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // max(world, 1)
    return 0 if cores <= 2 else max(0, min(8, per_process - 1))


def attach_words(dataset: ImageDataset, manifest: str | Path | None) -> None:
    """Give ``dataset`` its word annotations (``--annotations FILE``, or a ``words.jsonl`` / ``text_words.jsonl``
    next to it); recorded in the dataset info so results and caches depend on the manifest's content."""
    root = Path(dataset.info.root) if dataset.info.root else None
    path = Path(manifest) if manifest else find_word_manifest(root if root is None or root.is_dir() else root.parent)
    if path is None:
        log.warning("no word manifest for %s (pass --annotations FILE); text metrics need ground-truth words",
                    dataset.info.id)
        return
    dataset.annotations = match_annotations(dataset.ids, root if root is not None and root.is_dir() else None, path,
                                            size_of=dataset.size_of)  # boxes past an image's edge: file:line
    dataset.info.extra["annotations"] = {"file": path.name, "sha256": sha256sum(path),
                                         "images_with_words": len(dataset.annotations)}
    log.info("word manifest %s: words for %d of %d images", path, len(dataset.annotations), len(dataset))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def selected_metrics(cfg: RunConfig, protocol: Protocol) -> list[str]:
    names = cfg.metrics or protocol.get("metrics.default", [])
    out: list[str] = []
    for n in names:
        n = n.strip()
        base, _, variant = n.partition("@")
        if variant and base in METRICS and METRICS.get(base).accepts_variant:
            METRICS.get(base).check_variant(variant)  # bad settings fail before any data is read
            m = n  # a configured instance, e.g. pfid@a0.25_d100_b1 (settings in the name)
        else:
            m = metric_for_output(n)  # accepts output keys such as "bpp"; unknown -> did-you-mean
        if m not in out:
            out.append(m)
    # one instance per output: pfid and pfid@a0.5_d100_b1 are the same metric under the default settings
    seen: dict[str, str] = {}
    for m in out:
        seen.setdefault(METRICS.get(m.partition("@")[0]).instance_id(m, **metric_config(m, protocol)), m)
    return [m for m in out if m in seen.values()]


def metric_config(name: str, protocol: Protocol | None) -> dict[str, Any]:
    """The ``settings`` (the protocol's table named like the metric) and ``variant`` (the part of ``name`` after
    ``@``) of a selected metric."""
    base, _, variant = name.partition("@")
    settings = dict(protocol.get(base, {}) or {}) if protocol is not None else {}
    return {"settings": settings, "variant": variant or None}


def build_metrics(names: list[str], device: torch.device, reference_key: str,
                  protocol: Protocol | None = None, resolution: int | None = None,
                  tokenizer: Tokenizer | None = None) -> tuple[dict[str, Metric], dict[str, str]]:
    """Construct metrics through ``Metric.from_context`` (one ``MetricContext`` per metric: device, reference
    cache key, resolution, tokenizer, its protocol settings and variant); those that cannot run here are
    returned as ``{name: reason}``."""
    built, unavailable = {}, {}
    for name in names:
        cls = METRICS.get(name.partition("@")[0])
        ctx = MetricContext(device=device, reference_key=reference_key, resolution=resolution, tokenizer=tokenizer,
                            **metric_config(name, protocol))
        try:
            try:
                built[name] = cls.from_context(ctx)
            except MetricUnavailable:
                raise
            except Exception as exc:
                if not _is_file_error(exc):
                    raise
                # e.g. an empty or damaged LPIPS backbone file: torch.load raises EOFError / UnpicklingError
                raise MetricUnavailable(f"{name}: its weights could not be read ({type(exc).__name__}: "
                                        f"{_first_line(exc)}); a damaged or incomplete file? Re-download it (the "
                                        f"metric's documentation names the file and where it is looked for)"
                                        ) from None
        except MetricUnavailable as exc:
            unavailable[name] = exc.reason
            if exc.reason not in _WARNED:  # once per process, not once per tokenizer
                _WARNED.add(exc.reason)
                log.warning("metric %s unavailable (null in results): %s", name, exc.reason)
    return built, unavailable


def null_values(unavailable: dict[str, str], protocol: Protocol | None
                ) -> dict[str, Callable[[int], dict[str, MetricValue]]]:
    """For each metric that could not be built (``{name: reason}``), a function of the number of items used that
    gives its null values with the reason (what ``Evaluation.unavailable`` takes)."""
    def nulls(name: str, reason: str) -> Callable[[int], dict[str, MetricValue]]:
        cls, config = METRICS.get(name.partition("@")[0]), metric_config(name, protocol)
        return lambda n: cls.unavailable(reason, n, **config)

    return {name: nulls(name, reason) for name, reason in unavailable.items()}


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the file ends early: empty or truncated"
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "no message")[:200]


def _is_file_error(exc: BaseException) -> bool:
    """Whether an error from building a metric comes from reading a (weights) file, not from a bug."""
    if isinstance(exc, (EOFError, pickle.UnpicklingError, OSError)) or type(exc).__name__ == "SafetensorError":
        return True
    return isinstance(exc, RuntimeError) and any(k in str(exc) for k in ("PytorchStreamReader", "zip archive",
                                                                          "corrupt", "magic number"))


def thumbnail_ids(ids: list[str], k: int) -> set[str]:
    """``k`` ids spread evenly over the dataset order (the embedded set: detail, photos and text alike)."""
    if k <= 0 or not ids:
        return set()
    if k >= len(ids):
        return set(ids)
    return {ids[round(i * (len(ids) - 1) / (k - 1))] if k > 1 else ids[0] for i in range(k)}


def thumbnail_entries(folder: Path, sub: str, ids: set[str]) -> list[dict[str, str]]:
    """The record's ``thumbnails``: for each id whose ``<sub>/<id>.orig.png`` and ``.recon.png`` exist in
    ``folder``, their paths relative to it (image thumbnails, shape previews)."""
    out = []
    for sid in sorted(ids):
        rel = {k: f"{sub}/{safe_name(sid)}.{k}.png" for k in ("orig", "recon")}
        if all((folder / p).is_file() for p in rel.values()):
            out.append({"id": sid, "original": rel["orig"], "reconstruction": rel["recon"]})
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TokenizerRun:
    """One (tokenizer, dataset) pass."""

    def __init__(self, tokenizer: Tokenizer, dataset: ImageDataset, cfg: RunConfig, protocol: Protocol,
                 metric_names: list[str], device: torch.device, decode_seed: int | None = None):
        self.tok, self.ds, self.cfg, self.protocol = tokenizer, dataset, cfg, protocol
        self.metric_names, self.device = metric_names, device
        self.policy = dataset.policy.bind(self._accepts)
        # sampling decoders: the seed of the decoder's noise (per image: sha256(seed:id)); with --seeds each seed's
        # record lives in seed-<s>/ under the task folder and the folder itself holds their mean and spread
        self.decode_seed = cfg.seed if decode_seed is None else decode_seed
        sub = (f"seed-{self.decode_seed}",) if decode_seed is not None else ()
        self.dir = run_dir(cfg.out, dataset.info, tokenizer.name, protocol.name, *sub)
        words = [dataset.info.extra["annotations"]] if dataset.info.extra.get("annotations") else []
        self.fingerprint = fingerprint(
            tokenizer.name, tokenizer.weights_sha256, dataset.info.id, dataset.info.revision,
            dataset.info.selection, self.policy.describe(), protocol_section(protocol),
            sorted(metric_names), cfg.seed, *words,
            *([{"decode_seed": self.decode_seed}] if tokenizer.stochastic else []),
            *([{"precision": cfg.precision}] if cfg.precision != "fp32" else []))
        ref = fingerprint(dataset.info.id, dataset.info.revision, dataset.info.selection, self.policy.describe(),
                          *words)
        self.metrics, self.unavailable = build_metrics(metric_names, device, reference_key=ref, protocol=protocol,
                                                       resolution=self.policy.resolution, tokenizer=tokenizer)
        self.timings = {"encode_s": 0.0, "decode_s": 0.0, "metrics_s": 0.0}
        self.thumb_ids = thumbnail_ids(dataset.ids, cfg.thumbnails)
        if self.policy.resolution and not isinstance(self.policy, (Native, NativeOrPad)):
            tokenizer.check_size(self.policy.resolution, self.policy.resolution)  # every image gets this size

    def _accepts(self, height: int, width: int) -> bool:
        try:
            self.tok.check_size(height, width)
        except UnsupportedResolutionError:
            return False
        return True

    # -- the source: batches of originals and their quantised reconstructions --------------------------
    def _process(self, ids: list[str], originals: list[torch.Tensor]) -> Batch:
        model_in, ctxs = [], []
        for x in originals:
            y, ctx = self.policy.to_model(x)
            model_in.append(y)
            ctxs.append(ctx)
        inp = torch.stack(model_in).to(self.device)
        self.tok.check_size(*inp.shape[-2:])
        _sync(self.device)
        t0 = time.perf_counter()
        dtype = PRECISIONS[self.cfg.precision]
        autocast = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            tokens = self.tok.encode(inp)
            if self.tok.stochastic:  # per-image noise for sampling decoders: batch-size and order independent
                tokens.seeds = image_seeds(ids, self.decode_seed)
            _sync(self.device)
            t1 = time.perf_counter()
            rec = self.tok.decode(tokens)
            _sync(self.device)
        t2 = time.perf_counter()
        if rec.shape != inp.shape:
            raise RuntimeError(f"{self.tok.name}: decode returned {tuple(rec.shape)} for input {tuple(inp.shape)}")
        bad = ~torch.isfinite(rec).flatten(1).all(dim=1)
        if bad.any():
            which = [i for i, b in zip(ids, bad.tolist()) if b]
            raise NonFiniteOutputError(f"{self.tok.name} produced NaN/Inf pixels for {len(which)} of {len(ids)} images "
                                       f"of a batch (e.g. {which[:3]})")
        recon = torch.stack([quantise_uint8(self.policy.from_model(r.float(), c)) for r, c in zip(rec, ctxs)])
        orig = torch.stack(originals)
        words = self.ds.annotations
        t3 = time.perf_counter()
        perturbed = self._perturbed(tokens, ids, ctxs)
        self.timings["encode_s"] += t1 - t0
        self.timings["decode_s"] += t2 - t1
        self.timings["metrics_s"] += time.perf_counter() - t3
        if self.cfg.save_reconstructions:
            self._save_pngs(ids, recon)
        for i, sid in enumerate(ids):
            if sid in self.thumb_ids:
                for kind, img in (("orig", orig[i]), ("recon", recon[i])):
                    path = join_under(self.dir, THUMBS_DIR, f"{safe_name(sid)}.{kind}.png")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(img.permute(1, 2, 0).cpu().numpy(), "RGB").save(path)
        return Batch(ids=ids, original=orig.to(self.device), reconstruction=recon.to(self.device), tokens=tokens,
                     encode_seconds=t1 - t0, decode_seconds=t2 - t1,
                     annotations=None if words is None else [words.get(i) for i in ids], perturbed=perturbed)

    def _perturbed(self, tokens: Any, ids: list[str], ctxs: list[Any]) -> dict[str, torch.Tensor] | None:
        """Reconstructions from perturbed tokens for the metrics that ask (pFID), through the same inverse
        preprocessing and uint8 quantisation as the reconstruction. Timed as metric work, not decode."""
        out = {}
        for m in self.metrics.values():
            if not m.needs_extra_decode:
                continue
            with torch.inference_mode():
                rec = self.tok.decode(m.extra_decode(tokens, self.tok, ids))
            bad = ~torch.isfinite(rec).flatten(1).all(dim=1)
            if bad.any():
                which = [i for i, b in zip(ids, bad.tolist()) if b]
                raise NonFiniteOutputError(f"{self.tok.name} produced NaN/Inf pixels from perturbed tokens ({m.key}) "
                                           f"for {len(which)} of {len(ids)} images of a batch (e.g. {which[:3]})")
            out[m.key] = torch.stack([quantise_uint8(self.policy.from_model(r.float(), c))
                                      for r, c in zip(rec, ctxs)]).to(self.device)
        return out or None

    def _thumbnails(self) -> list[dict[str, str]]:
        return thumbnail_entries(self.dir, THUMBS_DIR, self.thumb_ids)

    def _save_pngs(self, ids: list[str], recon: torch.Tensor) -> None:
        root = join_under(self.cfg.save_reconstructions, safe_name(self.tok.name))
        for sid, img in zip(ids, recon):
            path = join_under(root, png_relpath(sid))  # sanitised, kept inside root, x.png/x.jpg never collide
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).cpu().numpy(), "RGB").save(path)

    @property
    def ids(self) -> list[str]:
        return list(self.ds.ids)

    def batches(self, done: set[str], skip: Callable[[str, str], None]) -> Any:
        """Metric batches of same-size originals not yet done, in dataset order (size buckets flush when full)."""
        todo = [i for i, sid in enumerate(self.ds.ids) if sid not in done]
        if not todo:
            return
        subset = torch.utils.data.Subset(self.ds, todo)
        workers = default_workers(distributed.world()) if self.cfg.workers is None else self.cfg.workers
        loader = torch.utils.data.DataLoader(subset, batch_size=self.cfg.batch_size, shuffle=False,
                                             num_workers=workers, collate_fn=collate,
                                             pin_memory=self.device.type == "cuda",
                                             prefetch_factor=4 if workers else None,
                                             persistent_workers=False)
        buckets: dict[tuple[int, ...], tuple[list[str], list[torch.Tensor]]] = {}
        for chunk in loader:
            for sid, err in chunk["errors"]:
                skip(sid, err)
            for sid, img in zip(chunk["ids"], chunk["images"]):
                ids, imgs = buckets.setdefault(tuple(img.shape), ([], []))
                ids.append(sid)
                imgs.append(img)
                if len(ids) == self.cfg.batch_size:
                    yield from self._checked(*buckets.pop(tuple(img.shape)), skip)
        for ids, imgs in list(buckets.values()):
            yield from self._checked(ids, imgs, skip)

    def _checked(self, ids: list[str], imgs: list[torch.Tensor], skip: Callable[[str, str], None]) -> Any:
        """The batch of ``ids``, or, when the tokenizer cannot take their size (a 1x1 image under the native
        policy), each of them skipped with the reason: one odd image does not stop the run."""
        try:
            batch = self._process(ids, imgs)
        except UnsupportedResolutionError as exc:
            for sid in ids:
                skip(sid, str(exc))
            return
        yield batch

    # -- the record -------------------------------------------------------------------------------
    def _record(self, out: Outcome) -> dict[str, Any]:
        run_section = {"fingerprint": self.fingerprint, "batch_size": self.cfg.batch_size, "seed": self.cfg.seed,
                       "metrics_selected": self.metric_names, "precision": self.cfg.precision,
                       "processes": distributed.world()}
        if self.tok.stochastic:
            run_section["sampling"] = {"seed": self.decode_seed, "per_image_seed": "sha256(seed:id)",
                                       "network_evaluations_per_image": self.tok.network_evaluations()}
        return self._carry_over(new_record(
            created=out.started, finished=out.finished,
            environment=environment(str(self.device)),
            tokenizer={**self.tok.card.to_dict(), **self.tok.provenance()},
            dataset={**self.ds.info.to_dict(), "n_requested": self.cfg.limit, "n_used": out.n_used,
                     "skipped": out.skipped},
            protocol=protocol_section(self.protocol),
            metrics={k: v.to_dict() for k, v in out.values.items()},
            timings=out.timings,
            thumbnails=self._thumbnails(),
            run=run_section,
        ))

    def _carry_over(self, record: dict[str, Any]) -> dict[str, Any]:
        """Keep what an earlier run measured: when ``result.json`` holds a record of the same measurement (same
        tokenizer, weights, data, preprocessing, protocol settings and seed; another metric selection), the
        metrics this run did not select are carried into the new record (``extra.carried_from`` names the run;
        ``run.carried_metrics`` lists them), so ``--metrics psnr,ssim,bpp`` after a full run loses no rFID.
        The per-sample table holds this run's columns only."""
        from vtbench.leaderboard.store import measurement_key
        path = self.dir / RESULT_FILE
        if not path.is_file():
            return record
        try:
            old = read_record(path)
        except ValueError:
            return record
        if measurement_key(old) != measurement_key(record):
            return record
        carried = []
        for key, value in (old.get("metrics") or {}).items():
            if key not in record["metrics"] and isinstance(value, dict):
                record["metrics"][key] = {**value, "extra": {**(value.get("extra") or {}), "carried_from": {
                    "fingerprint": old.get("run", {}).get("fingerprint"), "finished": old.get("finished")}}}
                carried.append(key)
        if carried:
            record["run"]["carried_metrics"] = carried
        return record

    def evaluation(self) -> Evaluation:
        unavailable = null_values(self.unavailable, self.protocol)
        return Evaluation(source=self, metrics=self.metrics, fingerprint=self.fingerprint, dir=self.dir,
                          label=f"{self.tok.name} on {self.ds.info.id}", total=len(self.ds),
                          unavailable=unavailable, record=self._record, seed=self.cfg.seed, force=self.cfg.force,
                          progress=self.cfg.progress, checkpoint_every=self.cfg.checkpoint_every,
                          stop_after_batches=self.cfg.stop_after_batches)

    def run(self) -> dict[str, Any]:
        return self.evaluation().run()

    def failed_record(self, reason: str, n_done: int, skipped: list[dict[str, str]] | None = None
                      ) -> dict[str, Any]:
        """The record of a run that could not finish (the tokenizer produced NaN/Inf pixels): every selected metric
        null with ``reason``, ``run.failed`` set (so the next run tries again rather than reusing it), written with
        an empty per-sample table. ``n_used`` counts the images evaluated before the failure."""
        values: dict[str, MetricValue] = {}
        for name in self.metric_names:
            values.update(METRICS.get(name.partition("@")[0]).unavailable(reason, n_done,
                                                                            **metric_config(name, self.protocol)))
        now = datetime.now(timezone.utc).isoformat()
        record = self._record(Outcome(values=values, n_used=n_done, skipped=list(skipped or []),
                                      timings=dict(self.timings),
                                      started=now, finished=now))
        record["run"].update(fingerprint=self.fingerprint, failed={"reason": reason})
        if distributed.is_main():
            write_texts_together({self.dir / SAMPLES_FILE: "id\n",
                                  self.dir / RESULT_FILE: json.dumps(record, indent=2, allow_nan=False) + "\n"})
        return record


def seed_summary(records: list[dict[str, Any]], folder: Path, write: bool = True) -> dict[str, Any]:
    """One record for a sampling decoder run at several seeds: each metric's mean over the seeds as its value,
    with the spread (sample standard deviation, min, max) and every seed's value in ``extra``; a metric null at
    any seed is null with that reason. Written to ``folder/result.json``; the per-seed records stay in
    ``folder/seed-<s>/``."""
    import statistics
    first = records[0]
    seeds = [r["run"]["sampling"]["seed"] for r in records]
    metrics: dict[str, Any] = {}
    for key, v0 in first["metrics"].items():
        vals = [r["metrics"].get(key, {}).get("value") for r in records]
        entry = dict(v0)
        if any(v is None for v in vals):
            reasons = [r["metrics"].get(key, {}).get("reason") for r in records if r["metrics"].get(key, {})
                       .get("value") is None]
            entry.update(value=None, reason=reasons[0] if reasons else "missing at some seed")
        else:
            entry["value"] = statistics.fmean(vals)
            entry["extra"] = {**(v0.get("extra") or {}), "seeds": seeds, "per_seed": vals,
                              "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "min": min(vals),
                              "max": max(vals)}
        metrics[key] = entry
    record = {**first, "metrics": metrics,
              "run": {**first["run"], "fingerprint": fingerprint(*(r["run"]["fingerprint"] for r in records)),
                      "seeds": seeds, "per_seed_records": [f"seed-{s}/{RESULT_FILE}" for s in seeds],
                      "sampling": {**first["run"]["sampling"], "seed": None, "seeds": seeds}}}
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / RESULT_FILE, record)
    return record


class PartialRunError(RuntimeError):
    """Some tokenizers of a run could not be evaluated; the others' records are in ``records`` (and on disk)."""

    def __init__(self, message: str, records: list[dict[str, Any]], failures: dict[str, str]):
        super().__init__(message)
        self.records, self.failures = records, failures


# errors that belong to one tokenizer (its weights, its outputs): the run records them and goes on to the next
_PER_TOKENIZER = (MissingWeightsError, WeightsMismatchError, UntrustedCheckpointError, UnsupportedResolutionError,
                  NonFiniteOutputError)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _evaluate(name: str, cfg: RunConfig, dataset: ImageDataset, protocol: Protocol, names: list[str],
              device: torch.device) -> dict[str, Any]:
    tok = build_tokenizer(name, weights=cfg.weights, trust=cfg.trust_checkpoint, device=device)
    if cfg.seeds and tok.stochastic:
        per_seed = [_guarded(TokenizerRun(tok, dataset, cfg, protocol, names, device, decode_seed=s))
                    for s in cfg.seeds]
        return seed_summary(per_seed, run_dir(cfg.out, dataset.info, tok.name, protocol.name),
                            write=distributed.is_main())
    if cfg.seeds:
        log.info("%s decodes deterministically: --seeds ignored (one run)", tok.name)
    return _guarded(TokenizerRun(tok, dataset, cfg, protocol, names, device))


def _guarded(tr: TokenizerRun) -> dict[str, Any]:
    """``tr.run()``; a tokenizer that produces NaN/Inf pixels gets a record of null metrics with the reason."""
    ev = tr.evaluation()
    try:
        return ev.run()
    except NonFiniteOutputError as exc:
        kept = ev.progress_path if ev.progress_path is not None and ev.progress_path.is_file() else None
        reason = f"{exc}; no metric is reported for this tokenizer" + (
            f" ({len(ev.done)} images done before it are kept in {kept})" if kept else "")
        record = tr.failed_record(reason, len(ev.done) - len(ev.skipped), ev.skipped)
        exc.record = record  # type: ignore[attr-defined]
        exc.args = (f"{reason}; recorded in {tr.dir / RESULT_FILE}",)
        raise


def run(tokenizers: list[str], cfg: RunConfig,
        on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate each tokenizer on ``cfg.data``; returns the RunResult records (existing complete ones reused).

    A tokenizer that cannot be evaluated (its weights missing or damaged, NaN/Inf pixels from its decoder) does
    not stop the others: the run goes on and ends with ``PartialRunError`` listing each failure (its ``records``
    hold the finished ones). A tokenizer with NaN/Inf output also gets a record of null metrics with the reason.
    With a single tokenizer its error is raised as it is. Problems of the whole run (unreadable data, an
    unwritable --out, a run folder in use) stop it at once."""
    from vtbench.config import get_card
    for name in tokenizers:  # unknown names fail before any data is read
        card = get_card(name)
        if card.modality != "image" and load_protocol(cfg.protocol).task != card.modality:
            raise ValueError(f"{name} is a {card.modality} tokenizer ({card.card_path}): run it with --task "
                             f"{card.modality}")
    device = distributed.init_from_env(cfg.device) or resolve_device(cfg.device)  # torchrun: this rank's device
    protocol = load_protocol(cfg.protocol)
    if protocol.task == "compare":
        raise ValueError(f"--protocol {cfg.protocol}: {protocol.path} holds the compare gate's tolerances, not an "
                         f"evaluation protocol (see `vtbench ls protocols`)")
    if protocol.task == "shape":
        from vtbench.three_d.task import run_shapes
        return run_shapes(tokenizers, cfg, protocol, on_result)
    if protocol.task == "generation":
        raise ValueError(f"--protocol {cfg.protocol}: {protocol.path} is a generation protocol; score samples with "
                         f"`vtbench gfid SAMPLES --ref REF` or train the AR probe with `vtbench probe TOKENIZER`")
    policy = get_policy(cfg.preprocess or protocol.get("preprocessing.policy", "native"),
                        cfg.resolution or protocol.get("preprocessing.resolution"))
    dataset = open_dataset(cfg.data or protocol.get("default_data", "embedded"), policy, limit=cfg.limit,
                           seed=cfg.seed)
    names = selected_metrics(cfg, protocol)
    if any("words" in METRICS.get(n.partition("@")[0]).needs for n in names):
        attach_words(dataset, cfg.annotations)
    # before any weights are loaded or any image is decoded: a folder that cannot take the results fails now
    if distributed.is_main():
        check_writable(Path(cfg.out), "--out")
        if cfg.save_reconstructions:
            check_writable(Path(cfg.save_reconstructions), "--save-reconstructions")
    log.info("dataset %s: %d images (%s); metrics: %s; device: %s", dataset.info.id, len(dataset),
             policy.describe(), ", ".join(names), device)
    records: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    from vtbench.metrics.speed import memory_baseline
    t0, total = time.monotonic(), len(tokenizers)
    for k, name in enumerate(tokenizers):
        if total > 1:  # overall progress across tokenizers, on stderr with the logs
            elapsed = time.monotonic() - t0
            eta = f", about {_clock(elapsed / k * (total - k))} left" if k else ""
            log.info("[%d/%d] %s (elapsed %s%s)", k + 1, total, name, _clock(elapsed), eta)
        memory_baseline(device)  # peak memory is measured per tokenizer, its weights included
        try:
            record = _evaluate(name, cfg, dataset, protocol, names, device)
        except Exception as exc:
            if total == 1 or not isinstance(exc, _PER_TOKENIZER):
                raise
            failures[name] = str(exc).removeprefix(f"{name}: ")
            log.error("%s failed, going on with the others: %s", name, exc)
            record = getattr(exc, "record", None)
            if record is None:
                continue
        records.append(record)
        if on_result:
            on_result(record)
    if total > 1:
        log.info("%d tokenizers in %s (%d failed)", total, _clock(time.monotonic() - t0), len(failures))
    if failures:
        raise PartialRunError(f"{len(failures)} of {total} tokenizers failed (the others' results are written):\n"
                              + "\n".join(f"  {n}: {why}" for n, why in failures.items()), records, failures)
    return records
