"""Samples -> Inception features -> gFID, sFID, IS, precision/recall against a reference."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from vtbench.gfid.common import FULL_RANK_N, OUTPUTS, _join_warnings, metric_key
from vtbench.gfid.reference import Reference
from vtbench.metrics.base import Batch, Metric, MetricValue
from vtbench.metrics.frechet import FeatureStats, GaussianStats, frechet_distance
from vtbench.metrics.generation import IS_SPLIT_SIZE, NEAREST_K, PR_BLOCK_SIZE, GenerationState, precision_recall
from vtbench.metrics.inception import InceptionExtractor, load_inception

log = logging.getLogger("vtbench")

# ---------------------------------------------------------------------------------------------------- scoring


class SampleSource:
    """Generated samples as a source of the evaluation core: uint8 batches with ids by position (``s0000000``,
    ...). A ``Samples`` reads (or decodes) only the positions not yet done, so a resumed run or a torchrun rank
    touches nothing else; another iterable is read whole and the done batches are dropped.
    ``timings["samples_s"]``: the wall time of the pass (reading, decoding and feature extraction)."""

    def __init__(self, samples: Iterable[torch.Tensor], device: str | torch.device = "cpu"):
        self.samples, self.device = samples, device
        self.timings: dict[str, float] = {"samples_s": 0.0, "metrics_s": 0.0}

    @property
    def ids(self) -> list[str] | None:
        n = len(self.samples) if hasattr(self.samples, "__len__") else None
        return None if n is None else [f"s{i:07d}" for i in range(n)]

    def batches(self, done: set[str], skip: Any) -> Iterator[Batch]:
        import time
        t0 = time.perf_counter()
        if hasattr(self.samples, "rows"):  # a Samples: read, load or decode only the positions not done (a shard)
            try:
                want = [i for i, sid in enumerate(self.ids) if sid not in done]
                for at, images in self.samples.rows(want):
                    yield Batch(ids=[f"s{i:07d}" for i in at], original=None, reconstruction=images.to(self.device),
                                index=torch.tensor(at))
            finally:
                self.timings["samples_s"] += time.perf_counter() - t0
            return
        start = 0
        try:
            for images in self.samples:
                ids = [f"s{i:07d}" for i in range(start, start + images.shape[0])]
                start += images.shape[0]
                keep = [k for k, sid in enumerate(ids) if sid not in done]
                if keep:
                    yield Batch(ids=[ids[k] for k in keep], original=None,
                                reconstruction=images[keep].to(self.device),
                                index=torch.tensor([start - images.shape[0] + k for k in keep]))
        finally:
            self.timings["samples_s"] += time.perf_counter() - t0


def generation_metric(reference: Reference, extractor: InceptionExtractor, *, nearest_k: int = NEAREST_K,
                      split_size: int = IS_SPLIT_SIZE, warning: str | None = None) -> Metric:
    """The registered ``generation`` metric, built through its context like every metric."""
    from vtbench.metrics import METRICS
    from vtbench.metrics.base import MetricContext
    ctx = MetricContext(device=extractor.device, settings={"reference": reference, "extractor": extractor,
                                                           "nearest_k": nearest_k, "split_size": split_size,
                                                           "warning": warning})
    return METRICS.get("generation").from_context(ctx)


def extract_samples(samples: Iterable[torch.Tensor], extractor: InceptionExtractor, *, keep_features: bool = True,
                    seed: int = 0, progress: bool = False, split_size: int = IS_SPLIT_SIZE) -> GenerationState:
    """Stream ``samples`` (uint8 ``(B, 3, H, W)`` batches) through the evaluation core with the ``generation``
    metric and return its states as a ``GenerationState`` (in this process only, also under torchrun). Seeds
    torch and numpy first, so sampling decoders behind the iterator are reproducible."""
    from vtbench.evaluation import Evaluation
    ref = Reference(id="features-only", description={}, pool=None, spatial=None,
                    features=torch.zeros(0, 1) if keep_features else None)
    metric = generation_metric(ref, extractor, split_size=split_size)
    total = len(samples) if hasattr(samples, "__len__") else None
    Evaluation(source=SampleSource(samples, extractor.device), metrics={"generation": metric},
               fingerprint="in-memory", label="samples", total=total, seed=seed, progress=progress,
               local=True).run()
    return metric.state()


def _metric(key: str, value: float | None, n: int, reason: str | None = None, **extra: Any) -> MetricValue:
    display, hib = OUTPUTS[key]
    if value is not None and not np.isfinite(value):
        value, reason = None, reason or "the value is not finite"
    return MetricValue(value=None if value is None else float(value), n=n, higher_is_better=hib,
                       display_name=display, reason=reason if value is None else None, extra=extra)


def _frechet(key: str, stats: FeatureStats, ref: GaussianStats | None, missing: str | None, n: int,
             extra: dict[str, Any], foreign: str | None = None) -> MetricValue:
    """``foreign``: the mixed-pipeline warning when ``ref`` was not computed by this extractor."""
    if ref is None:
        return _metric(key, None, n, missing or "the reference has no statistics for it", **extra)
    if n < 2:
        return _metric(key, None, n, f"a covariance needs at least 2 samples, got {n}", **extra)
    extra = {**extra, "n_reference": ref.n}
    low = min(n, ref.n or n)
    rank = (f"Frechet distance on {low} < {FULL_RANK_N} images: the covariance is rank-deficient, so the value is "
            "biased high and only comparable at equal N") if low < FULL_RANK_N else None
    warning = _join_warnings(extra.get("warning"), rank, foreign)
    if warning:
        extra["warning"] = warning
    if foreign:
        extra["reference_statistics"] = "file (another pipeline)"
    mu, sigma = stats.mean_cov()
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        return _metric(key, None, n, "the samples' features are not finite (NaN/Inf from the extractor or the "
                                     "decoded images)", **extra)
    return _metric(key, frechet_distance(mu, sigma, ref.mu, ref.sigma), n, **extra)


def score_state(state: GenerationState, reference: Reference, *, extractor: InceptionExtractor | None = None,
                nearest_k: int = NEAREST_K, device: str | torch.device = "cpu",
                block_size: int = PR_BLOCK_SIZE, warning: str | None = None) -> dict[str, MetricValue]:
    """The five numbers from a filled ``GenerationState`` (None + reason for each one that cannot be computed).
    ``warning`` goes into every value's ``extra["warning"]`` (joined with the values' own warnings)."""
    n = state.n
    base: dict[str, Any] = {"n_reference": reference.n}
    if warning:
        base["warning"] = warning
    resize = extractor.resize_mode if extractor is not None else "clean"
    other = None  # the reference's features came from another extractor (weights or resize)
    if extractor is not None:
        base.update(extractor=extractor.id, weights_sha256=extractor.sha256)
        if reference.extractor and reference.extractor != extractor.id:
            base["reference_extractor"] = reference.extractor
            other = (f"the reference was computed with {reference.extractor}, the samples with {extractor.id}: "
                     "values are comparable only up to that difference (open the reference with the same resize)")
            log.warning("%s", other)
    # ADM-file statistics: a mixed pipeline unless the samples went through ADM's resize too
    foreign = {} if resize == "tf-bilinear" else reference.warnings
    if resize == "tf-bilinear" and reference.warnings:
        base["reference_statistics"] = "file (ADM's evaluator; the same TF1 bilinear resize)"
    out = {"gfid": _frechet("gfid", state.pool, reference.pool, reference.missing.get("gfid"), n, base,
                            _join_warnings(other, foreign.get("gfid"))),
           "sfid": _frechet("sfid", state.spatial, reference.spatial, reference.missing.get("sfid"), n, base,
                            _join_warnings(other, foreign.get("sfid")))}
    is_extra = {**base, "split_size": state.inception.split_size}
    if n == 0:
        out["inception_score"] = _metric("inception_score", None, n, "no samples", **is_extra)
    elif state.n_logits != n:
        why = (extractor.logits_unavailable_reason() if extractor is not None and not extractor.has_logits
               else None) or "no classifier logits were given for the samples"
        out["inception_score"] = _metric("inception_score", None, n, why, **is_extra)
    else:
        n_splits = len(state.inception.scores) + (1 if n % state.inception.split_size else 0)
        out["inception_score"] = _metric("inception_score", state.inception.compute(), n, n_splits=n_splits,
                                         **is_extra)
    feats = state.features()
    pr_extra = {**base, "k": nearest_k, "distance": "squared euclidean, float64",
                "n_reference_features": None if reference.features is None else int(reference.features.shape[0])}
    if other:
        pr_extra["warning"] = _join_warnings(pr_extra.get("warning"), other)
    reason = None
    if reference.features is None:
        reason = reference.missing.get("precision_recall") or "the reference has no pool_3 features"
    elif feats is None:
        reason = "sample features were not kept"
    elif not torch.isfinite(feats).all():
        reason = "the samples' features are not finite (NaN/Inf): nearest-neighbour distances are undefined"
    elif min(n, reference.features.shape[0]) < nearest_k + 1:
        reason = (f"k-NN manifolds with k={nearest_k} need at least {nearest_k + 1} images on each side, got "
                  f"{n} samples and {reference.features.shape[0]} reference images")
    if reason is not None:
        out["precision"] = _metric("precision", None, n, reason, **pr_extra)
        out["recall"] = _metric("recall", None, n, reason, **pr_extra)
    else:
        p, r = precision_recall(reference.features, feats, nearest_k, block_size=block_size, device=device)
        out["precision"] = _metric("precision", p, n, **pr_extra)
        out["recall"] = _metric("recall", r, n, **pr_extra)
    if resize == "clean":
        return out
    return {metric_key(k, resize): dataclasses.replace(v, display_name=f"{v.display_name} (ADM resize)",
                                                       extra={**v.extra, "resize": resize})
            for k, v in out.items()}


def score_samples(samples: Iterable[torch.Tensor], reference: Reference, *, device: str | torch.device = "cpu",
                  seed: int = 0, progress: bool = False, inception_path: str | None = None,
                  nearest_k: int = NEAREST_K, resize: str = "clean") -> dict[str, MetricValue]:
    """Score uint8 ``(B, 3, H, W)`` sample batches against ``reference``: ``gfid``, ``sfid``,
    ``inception_score``, ``precision``, ``recall`` (each ``MetricValue``; None + reason when not computable), in
    memory through the evaluation core, in this process only (under torchrun: the calling rank alone).

    Example::

        ref = open_reference("embedded/photos", resolution=256)
        values = score_samples(iter_samples("samples.npz", batch_size=32), ref)
        values["gfid"].value
    """
    from vtbench.evaluation import Evaluation
    extractor = load_inception(inception_path, device).with_resize(resize)
    metric = generation_metric(reference, extractor, nearest_k=nearest_k)
    total = len(samples) if hasattr(samples, "__len__") else None
    out = Evaluation(source=SampleSource(samples, extractor.device), metrics={"generation": metric},
                     fingerprint="in-memory", label="samples", total=total, seed=seed, progress=progress,
                     local=True).run()
    return out.values
