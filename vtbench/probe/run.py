"""``vtbench probe``: tokenise, train the fixed prior, measure validation cross-entropy, sample, decode, score.

One run directory per (dataset, tokenizer, size): ``<out>/<dataset>/<tokenizer>/probe-<size>/`` holding
``result.json`` (the RunResult; the leaderboard finds it like any other), ``checkpoint.pt`` (resumable),
``tokens-<key>.pt`` (the tokenised dataset), ``samples.npz`` (ADM batch) and ``tokens.npz`` (token file).
Settings come from ``metrics/probe.toml``; every one that can move a number is in the fingerprint.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from vtbench.config import Protocol, load_protocol
from vtbench.core import Progress
from vtbench.data.datasets import open_dataset
from vtbench.data.policies import get_policy
from vtbench.metrics.base import MetricValue
from vtbench.probe.model import build_model
from vtbench.probe.sample import SamplingSettings, sample_batches, sample_plan, search_cfg, shard
from vtbench.probe.settings import ProbeConfig, model_config, sampling_settings, size_table, train_settings
from vtbench.probe.tokens import TokenSet, check_has_codes, split_by_id, tokenise
from vtbench.probe.train import CHECKPOINT_FILE, barrier, dist_context, fingerprint, train_prior, validation_ce
from vtbench.results import (
    RESULT_FILE,
    environment,
    new_record,
    protocol_section,
    read_record,
    run_dir,
    write_json_atomic,
    write_npz_atomic,
)

log = logging.getLogger("vtbench")

SAMPLES_NPZ = "samples.npz"
TOKENS_NPZ = "tokens.npz"


def setup_distributed(device: str) -> tuple[torch.device, bool]:
    """(device, whether this call initialised torch.distributed): ``torchrun`` sets WORLD_SIZE > 1."""
    from vtbench.runner import resolve_device
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return resolve_device(device), False
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    # rank 0 alone computes reference statistics and scores while the others wait at the next collective
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=6))
    return dev, True


def _Bar(enabled: bool, total: int, label: str) -> Progress:
    """The shared progress display, on rank 0 only, with an info column (loss, cfg scale)."""
    return Progress(enabled and dist_context()[0] == 0, total, label, show_info=True)


class _Batches:
    """uint8 ``(B, 3, H, W)`` batches of NHWC images (``len``: images, for progress)."""

    def __init__(self, images: np.ndarray, batch_size: int = 32):
        self.images, self.batch_size = images, batch_size

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self):
        for i in range(0, len(self.images), self.batch_size):
            yield torch.from_numpy(np.ascontiguousarray(self.images[i:i + self.batch_size])).permute(0, 3, 1, 2)


def _gather(run_dir: Path, codes: torch.Tensor, images: np.ndarray) -> tuple[torch.Tensor, np.ndarray] | None:
    """All ranks' samples in rank order on rank 0 (through files in the run directory); None elsewhere."""
    rank, world = dist_context()
    if world == 1:
        return codes, images
    part = run_dir / f".samples.rank{rank}.npz"
    np.savez(part, codes=codes.numpy(), images=images)
    barrier()
    out = None
    if rank == 0:
        parts = [np.load(run_dir / f".samples.rank{r}.npz") for r in range(world)]
        out = (torch.from_numpy(np.concatenate([p["codes"] for p in parts])),
               np.concatenate([p["images"] for p in parts]))
    barrier()
    part.unlink(missing_ok=True)
    return out


def _val_metrics(ce: float | None, n_images: int, extra: dict) -> dict[str, MetricValue]:
    """``val_ce`` (nats/token) and ``val_perplexity`` = exp(val_ce); None with a reason when not computable."""
    if ce is None or not math.isfinite(ce):
        why = "no validation tokens" if ce is None else f"the cross-entropy is not finite ({ce})"
        return {"val_ce": MetricValue(None, n_images, False, "nats/token", "Val. CE", why, extra),
                "val_perplexity": MetricValue(None, n_images, False, "", "Val. perplexity", why, extra)}
    return {"val_ce": MetricValue(ce, n_images, False, "nats/token", "Val. CE", None, extra),
            "val_perplexity": MetricValue(math.exp(ce), n_images, False, "", "Val. perplexity", None, extra)}


def run_probe(cfg: ProbeConfig) -> dict[str, Any] | None:
    """Run the AR probe for one tokenizer; returns the RunResult record (None on ranks other than 0)."""
    protocol = load_protocol(cfg.protocol)
    if not protocol.get("sizes"):
        raise ValueError(f"--protocol {cfg.protocol}: {protocol.path} is not an AR-probe protocol (no [sizes])")
    device, started = setup_distributed(cfg.device)
    try:
        return _ProbeRun(cfg, protocol, device).run()
    finally:
        if started:
            dist.destroy_process_group()


class _ProbeRun:
    def __init__(self, cfg: ProbeConfig, protocol: Protocol, device: torch.device):
        from vtbench.config import get_card
        from vtbench.tokenizers import build_tokenizer
        self.cfg, self.protocol, self.device = cfg, protocol, device
        self.size = cfg.size or protocol.get("default_size", "tiny")
        self.table = size_table(protocol, self.size)
        self.rank, self.world = dist_context()
        check_has_codes(get_card(cfg.tokenizer))  # before any weights are resolved
        self.tok = build_tokenizer(cfg.tokenizer, weights=cfg.weights, trust=cfg.trust_checkpoint, device=device)
        self.res = int(cfg.resolution or self.tok.card.native_size or self.table.get("resolution")
                       or protocol.get("preprocessing.resolution", 256))
        self.tok.check_size(self.res, self.res)
        self.policy = get_policy(protocol.get("preprocessing.policy", "adm-center-crop"), self.res)
        self.ds = open_dataset(cfg.data or protocol.get("default_data", "embedded/photos"), self.policy,
                               limit=cfg.limit, seed=cfg.seed)
        self.dir = run_dir(cfg.out, self.ds.info, self.tok.name, f"probe-{self.size}")
        self.out_dir = result_dir(self.dir, cfg.resize)  # samples, tokens and result of this scoring
        self.timings: dict[str, float] = {}

    def _timed(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self.timings[f"{name}_s"] = self.timings.get(f"{name}_s", 0.0) + time.perf_counter() - t0
        return out

    def _tokens(self, ds, label: str, hflip: bool) -> TokenSet:
        bar = _Bar(self.cfg.progress, len(ds), f"tokenising {label}")
        try:
            # image decoding in worker processes on GPU machines (ImageNet-size data); in-process on CPU
            workers = min(8, os.cpu_count() or 1) if self.device.type == "cuda" else 0
            return tokenise(self.tok, ds, self.dir, self.device, batch_size=32, hflip=hflip,
                            on_batch=bar.advance, workers=workers)
        finally:
            bar.close()

    def run(self) -> dict[str, Any] | None:
        cfg, started = self.cfg, datetime.now(timezone.utc).isoformat()
        if cfg.force and self.rank == 0:
            (self.dir / CHECKPOINT_FILE).unlink(missing_ok=True)
            for name in (RESULT_FILE, SAMPLES_NPZ, TOKENS_NPZ):
                (self.out_dir / name).unlink(missing_ok=True)
        barrier()
        self._prepare()
        existing = self._completed()
        if existing is not None:
            log.info("%s probe-%s on %s: complete, skipped (use --force to recompute)", self.tok.name, self.size,
                     self.ds.info.id)
            return existing if self.rank == 0 else None
        torch.manual_seed(cfg.seed)
        model = build_model(self.mcfg).to(self.device)
        log.info("probe %s: %s parameters, %d codes/image, vocabulary %d, %d classes, %d train / %d val images, "
                 "%d steps of %d", self.size, f"{model.n_params():,}", self.mcfg.block_size, self.mcfg.vocab_size,
                 self.classes, len(self.train.ids), len(self.val.ids), self.ts.steps, self.ts.batch_size)
        bar = _Bar(cfg.progress, self.ts.steps, f"training probe-{self.size}")
        try:
            state = self._timed("train", lambda: train_prior(
                model, self.train.codes, self.train.labels, self.ts, self.dir, self.settings, self.device,
                flipped=self.train.flipped, stop_after=cfg.stop_after_steps,
                on_step=lambda s, loss: bar.advance(1, f"loss {loss:.3f}")))
        finally:
            bar.close()
        if state["step"] < self.ts.steps:
            raise KeyboardInterrupt(f"probe training stopped at step {state['step']} of {self.ts.steps} "
                                    f"(stop_after_steps); run again to resume from {self.dir / CHECKPOINT_FILE}")
        ce = self._timed("validation", lambda: validation_ce(
            model, self.val.codes, self.val.labels, self.device, int(self.protocol.get("validation.batch_size", 64))))
        best, tried, values, codes, images = self._generate(model)
        if self.rank != 0:
            return None
        labels = np.asarray(sample_plan(self.classes, self.sextra["samples_per_class"]), dtype=np.int64)
        write_npz_atomic(self.out_dir / SAMPLES_NPZ, arr_0=images, arr_1=labels)
        from vtbench.gfid import write_token_file
        write_token_file(self.out_dir / TOKENS_NPZ, codes.view(codes.shape[0], *self.tokens.shape), self.tok, self.res,
                         self.res, labels)
        record = self._record(started, model, state, ce, best, tried, values)
        write_json_atomic(self.out_dir / RESULT_FILE, _json_ready(record))
        return record

    def _prepare(self) -> None:
        """Tokens, split, and every setting (model, training, sampling) with the fingerprints."""
        cfg, info = self.cfg, self.ds.info
        if not cfg.val_data and self.table.get("require_val_data"):
            raise ValueError(f"--size {self.size}: this size trains on all of --data (GigaTok's protocol); give the "
                             "validation set with --val-data (e.g. /imagenet/val)")
        hflip = bool({**self.protocol.get("train", {}), **self.table.get("train", {})}.get("hflip", False))
        self.tokens = self._timed("tokenise", lambda: self._tokens(self.ds, info.id, hflip))
        self.val_info = None
        if cfg.val_data:
            vds = open_dataset(cfg.val_data, self.policy, seed=cfg.seed)
            if (self.ds.classes or None) != (vds.classes or None):
                raise ValueError(f"--val-data {cfg.val_data}: its classes ({_classes(vds)}) differ from --data's "
                                 f"({_classes(self.ds)}); labels are class-folder indices, so both need the same "
                                 "class folders (e.g. ImageNet train/ and val/ in the ImageFolder layout)")
            self.train, self.val = self.tokens, self._timed("tokenise", lambda: self._tokens(vds, vds.info.id, False))
            self.val_info = {**vds.info.to_dict(), "tokens_key": self.val.key}
        else:
            tr, va = split_by_id(self.tokens.ids, float(self.protocol.get("split.val_fraction", 0.1)), cfg.seed)
            self.train, self.val = self.tokens.subset(tr), self.tokens.subset(va)
        self.classes = max(self.train.num_classes, self.val.num_classes)
        self.mcfg = model_config(self.protocol, self.table, self.tokens.codebook_size, self.tokens.codes.shape[1],
                                 self.classes)
        self.ts, self.budget = train_settings(self.protocol, self.table, cfg, len(self.train.ids))
        self.ss, self.sextra = sampling_settings(self.protocol, self.table, cfg)
        vi = self.val_info
        self.settings = {
            "protocol": f"{self.protocol.name}@{self.protocol.version}",
            "protocol_settings_sha256": protocol_section(self.protocol)["settings_sha256"], "size": self.size,
            "model": self.mcfg.to_dict(), "train": self.ts.fingerprint_dict(),
            "tokenizer": {"name": self.tok.name, "weights_sha256": self.tok.weights_sha256},
            "data": {"id": info.id, "revision": info.revision, "selection": info.selection,
                     "policy": self.policy.describe(), "tokens_key": self.tokens.key},
            "val": vi and {"id": vi["id"], "revision": vi["revision"], "selection": vi["selection"]},
            "split": None if cfg.val_data else {"val_fraction": self.protocol.get("split.val_fraction", 0.1),
                                                "seed": cfg.seed}}
        self.run_fp = fingerprint({**self.settings, "sampling": self.ss.to_dict(), "sampling_extra": self.sextra,
                                   "reference": cfg.reference,
                                   # absent for the default, so fingerprints of earlier runs stay valid
                                   **({"resize": cfg.resize} if cfg.resize != "clean" else {})})

    def _completed(self) -> dict[str, Any] | None:
        path = self.out_dir / RESULT_FILE
        if self.cfg.force or not path.is_file():
            return None
        try:
            rec = read_record(path)
        except ValueError:
            return None
        return rec if rec.get("run", {}).get("fingerprint") == self.run_fp else None

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        tokens = self.tok.tokens_from_codes(codes.view(codes.shape[0], *self.tokens.shape), self.res, self.res)
        return self.tok.decode(tokens)

    def _sample(self, model, plan: list[int], ss: SamplingSettings):
        """This scale's samples of every rank, gathered on rank 0 (None elsewhere)."""
        mine = shard(len(plan), self.rank, self.world)
        bar = _Bar(self.cfg.progress, len(mine), f"sampling (cfg {ss.cfg_scale:g})")
        codes, imgs = [], []
        try:
            for c, im in sample_batches(model, plan, mine, ss, self.sextra["batch_size"], self.device, self._decode,
                                        on_batch=bar.advance):
                codes.append(c)
                imgs.append(im)
        finally:
            bar.close()
        c = torch.cat(codes) if codes else torch.zeros(0, model.cfg.block_size, dtype=torch.long)
        im = np.concatenate(imgs) if imgs else np.zeros((0, self.res, self.res, 3), np.uint8)
        return _gather(self.dir, c, im)

    def _generate(self, model) -> tuple:
        """Sample and score at the fixed scale or along the CFG search; on rank 0 returns (best scale,
        {scale: gfid}, metric values, codes, images) of the best scale (Nones elsewhere)."""
        from vtbench.gfid import metric_key, open_reference, score_samples
        cfg, plan = self.cfg, sample_plan(self.classes, self.sextra["samples_per_class"])
        self.ref = None
        if self.rank == 0:
            self.ref = self._timed("reference", lambda: open_reference(
                cfg.reference or cfg.data or self.protocol.get("default_data", "embedded/photos"),
                resolution=self.res, limit=None if cfg.reference else cfg.limit, seed=cfg.seed, device=self.device,
                progress=cfg.progress, resize=cfg.resize, local=True))  # rank 0 alone
        scored: dict[float, dict[str, MetricValue]] = {}
        kept: dict[str, Any] = {}  # the best scale's samples only (memory)

        def evaluate(scale: float) -> float:
            got = self._timed("sample", lambda: self._sample(model, plan, replace(self.ss, cfg_scale=scale)))
            fid = [math.inf]
            if self.rank == 0:
                values = self._timed("score", lambda: score_samples(_Batches(got[1]), self.ref, device=self.device,
                                                                    seed=cfg.seed, progress=cfg.progress,
                                                                    resize=cfg.resize))
                if not kept or _better(values, scored, metric_key("gfid", cfg.resize)):
                    kept.update(scale=scale, samples=got)
                scored[scale] = values
                g = values[metric_key("gfid", cfg.resize)].value
                fid = [g if g is not None else math.inf]
            if self.world > 1:
                dist.broadcast_object_list(fid, src=0)
            return float(fid[0])

        if self.sextra["cfg_search"]:
            _, tried = search_cfg(evaluate, self.ss.cfg_scale, self.sextra["search_step"], self.sextra["search_min"])
        else:
            tried = {self.ss.cfg_scale: evaluate(self.ss.cfg_scale)}
        if self.rank != 0:
            return None, tried, None, None, None
        best = kept["scale"]
        return (best, tried, scored[best], *kept["samples"])

    def _record(self, started: str, model, state: dict, ce: tuple[float | None, int], best: float,
                tried: dict[float, float], values: dict[str, MetricValue]) -> dict[str, Any]:
        tokens, val, ts = self.tokens, self.val, self.ts
        probe = {"size": self.size, "steps": ts.steps, "cfg_scale": best, "n_samples": self.classes
                 * self.sextra["samples_per_class"], "samples_per_class": self.sextra["samples_per_class"],
                 "num_classes": self.classes}
        metrics = {k: MetricValue(**{**v.to_dict(), "extra": {**v.extra, **probe}}) for k, v in values.items()}
        metrics.update(_val_metrics(ce[0], len(val.ids), {**probe, "n_tokens": ce[1],
                                                          "uniform_ce": math.log(tokens.codebook_size)}))
        return new_record(
            created=started, finished=datetime.now(timezone.utc).isoformat(),
            environment={**environment(str(self.device)), "world_size": self.world},
            tokenizer={**self.tok.card.to_dict(), **self.tok.provenance()},
            dataset={**self.ds.info.to_dict(), "n_requested": self.cfg.limit, "n_used": len(tokens.ids),
                     "skipped": tokens.skipped, "n_train": len(self.train.ids), "n_val": len(val.ids),
                     "val_data": self.val_info},
            protocol=protocol_section(self.protocol),
            metrics={k: v.to_dict() for k, v in metrics.items()},
            timings=self.timings,
            run={"fingerprint": self.run_fp, "train_fingerprint": fingerprint(self.settings), "seed": self.cfg.seed,
                 "size": self.size, "world_size": self.world, "resize": self.cfg.resize},
            probe={"size": self.size, "model": model.cfg.to_dict(), "n_params": model.n_params(),
                   "train": {**ts.fingerprint_dict(), "budget": self.budget, "final_train_loss": state["train_loss"],
                             "log": state["log"]},
                   "sampling": {**self.ss.to_dict(), "cfg_scale": best, **self.sextra,
                                "cfg_tried": {f"{k:g}": v for k, v in sorted(tried.items())}},
                   "sequence": {"code_shape": list(tokens.shape), "layout": list(tokens.layout),
                                "tokens_per_image": int(tokens.codes.shape[1]), "codebook_size": tokens.codebook_size,
                                "kind": tokens.kind, "num_classes": self.classes},
                   "reference": self.ref.description if self.ref is not None else None,
                   "files": {"samples": SAMPLES_NPZ, "tokens": TOKENS_NPZ, "checkpoint": CHECKPOINT_FILE}})


def _better(values: dict[str, MetricValue], scored: dict[float, dict[str, MetricValue]], key: str = "gfid") -> bool:
    """Whether ``values`` has a lower gFID (``key``) than every earlier scale's (None counts as worst)."""
    mine = values[key].value
    return mine is not None and all(v[key].value is None or mine < v[key].value for v in scored.values())


def result_dir(run_dir: Path, resize: str = "clean") -> Path:
    """Where a probe's samples, tokens and ``result.json`` go: the run folder (beside the checkpoint and token
    cache) for the clean resize, its ``resize-adm/`` subfolder for ADM's (other numbers, the same trained prior)."""
    return run_dir if resize == "clean" else run_dir / "resize-adm"


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return _json_ready(float(obj))
    return obj


def _classes(ds: Any) -> str:
    c = ds.classes
    return "none: unlabelled" if not c else f"{len(c)}: {', '.join(c[:3])}{', ...' if len(c) > 3 else ''}"
