"""Generation metrics of the ADM evaluation suite on Inception features: Inception Score and k-NN
precision/recall, plus the streaming state that gathers them (with gFID and sFID statistics) over sample batches.

Definitions follow openai/guided-diffusion ``evaluations/evaluator.py`` (ADM); line numbers below are that file's.

- **sFID** is the Frechet distance of spatial features: the first 7 channels of ``mixed_6/conv`` (17 x 17),
  flattened in TF's NHWC order (2023 dims; ``vtbench.metrics.inception.SPATIAL_DIM``), fitted and compared exactly
  as pool_3 (L586-600, L174-177).
- **Inception Score** (L179-192, after improved-gan): ``p = softmax(pool_3 @ W)`` over the graph's 1008 classes
  (W without the bias, L603-614); samples are cut, in order, into consecutive splits of ``split_size = 5000`` (the
  last one may be shorter); per split ``exp(mean_i KL(p_i || mean_j p_j))``; the score is the mean over splits.
  Here the KL mean of a split is accumulated as ``(1/n) sum_i sum_c p_ic log p_ic - sum_c pbar_c log pbar_c``
  (algebraically equal; streams; ``0 log 0 = 0`` where ADM's float32 ``log`` of an underflowed 0 gives NaN).
  Softmax and sums are float64 (ADM: float32).
- **Precision / recall** (``ManifoldEstimator``, L205-359, after Kynkaanniemi et al. 2019): distances are squared
  Euclidean, ``max(|u|^2 - 2 u.v + |v|^2, 0)`` (L414-430). Each point's radius is the (k+1)-th smallest squared
  distance from it to the points of its own set, itself included (``np.partition`` and column ``k``, L254-276),
  so with k = 3 it is the 3rd nearest other point, and duplicates count as neighbours at distance 0. A sample is
  *in* the reference manifold when ``d(sample, ref_i) <= radius(ref_i)`` for some reference point (``<=``,
  L390-391); precision = fraction of samples in the reference manifold, recall = fraction of reference points in
  the sample manifold (L343-359; ``features_1`` is the reference batch, L197-202). ADM computes distances in
  float16 and falls back to float32 only when a block overflows (L376-384); vtbench computes them in float64 by
  default (``dtype``), in ``block_size`` x ``block_size`` tiles so memory stays bounded, and sets a point's
  distance to itself to exactly 0 (the expansion leaves rounding residue there). Both sets need at least k + 1
  points (ADM's partition fails otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vtbench.metrics.base import Metric, Output
from vtbench.metrics.frechet import FeatureStats

IS_SPLIT_SIZE = 5000
NEAREST_K = 3
PR_BLOCK_SIZE = 4096  # 4096 x 4096 float64 = 128 MiB per distance tile


# ------------------------------------------------------------------------------------------- Inception Score


def softmax64(logits: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Row-wise softmax in float64. logits: ``(N, C)``. Returns ``(N, C)`` float64 probabilities."""
    return torch.softmax(torch.as_tensor(logits).to(torch.float64), dim=1)


@dataclass
class InceptionScoreState:
    """Streaming Inception Score over samples in arrival order, split every ``split_size`` samples.

    Keeps, for the open split, its count, ``sum_i p_i`` (C,) and ``sum_i sum_c p_ic log p_ic``; closed splits
    keep only their score. Memory is O(C), independent of N; the result does not depend on how samples are
    batched.

    Example::

        state = InceptionScoreState()
        for logits in batches:            # (B, 1008)
            state.update_logits(logits)
        state.compute()
    """

    split_size: int = IS_SPLIT_SIZE
    n: int = 0
    scores: list[float] = field(default_factory=list)
    _count: int = 0
    _sum_p: torch.Tensor | None = None
    _sum_plogp: float = 0.0

    def __post_init__(self) -> None:
        if self.split_size < 1:
            raise ValueError(f"split_size must be >= 1, got {self.split_size}")

    def update_logits(self, logits: torch.Tensor | np.ndarray) -> None:
        """Fold ``(B, C)`` logits in (softmax taken here, float64)."""
        self.update_probs(softmax64(logits))

    def update_probs(self, probs: torch.Tensor | np.ndarray) -> None:
        """Fold ``(B, C)`` class probabilities (rows summing to 1) in."""
        p = torch.as_tensor(probs).to(torch.float64)
        if p.ndim != 2:
            raise ValueError(f"expected (B, C) probabilities, got {tuple(p.shape)}")
        start = 0
        while start < p.shape[0]:
            take = min(self.split_size - self._count, p.shape[0] - start)
            part = p[start:start + take]
            if self._sum_p is None:
                self._sum_p = torch.zeros(p.shape[1], dtype=torch.float64, device=p.device)
            self._sum_p += part.sum(dim=0)
            self._sum_plogp += float(torch.special.xlogy(part, part).sum())
            self._count += take
            self.n += take
            start += take
            if self._count == self.split_size:
                self._close_split()

    def _split_score(self) -> float:
        mean = self._sum_p / self._count
        kl = self._sum_plogp / self._count - float(torch.special.xlogy(mean, mean).sum())
        return float(np.exp(kl))

    def _close_split(self) -> None:
        self.scores.append(self._split_score())
        self._count, self._sum_p, self._sum_plogp = 0, None, 0.0

    def compute(self) -> float:
        """Mean over splits (the open, shorter split included) of ``exp(mean KL)``. Raises on no samples."""
        if self.n == 0:
            raise ValueError("the Inception Score needs at least one sample")
        scores = self.scores + ([self._split_score()] if self._count else [])
        return float(np.mean(scores))


def inception_score(probs: torch.Tensor | np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """ADM's Inception Score of ``(N, C)`` class probabilities (consecutive splits of ``split_size``)."""
    state = InceptionScoreState(split_size=split_size)
    state.update_probs(probs)
    return state.compute()


# ------------------------------------------------------------------------------------- precision and recall


def squared_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(A, D)`` x ``(B, D)`` -> ``(A, B)`` squared Euclidean distances, ADM's ``max(|u|^2 - 2uv + |v|^2, 0)``."""
    d = (u * u).sum(dim=1, keepdim=True) - 2.0 * (u @ v.T) + (v * v).sum(dim=1)[None, :]
    return d.clamp_min_(0.0)


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _as_features(x: torch.Tensor | np.ndarray, device: torch.device | None) -> torch.Tensor:
    """``(N, D)`` on ``device``, dtype unchanged: conversion happens per tile, so float32 storage stays float32."""
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"expected (N, D) features, got {tuple(t.shape)}")
    return t.to(device or t.device)


def manifold_radii(features: torch.Tensor | np.ndarray, k: int = NEAREST_K, *, block_size: int = PR_BLOCK_SIZE,
                   dtype: torch.dtype = torch.float64, device: str | torch.device | None = None) -> torch.Tensor:
    """Squared k-NN radius of every point within its own set (self at distance 0 included, so the (k+1)-th
    smallest distance). features: ``(N, D)``, N >= k + 1. Returns ``(N,)`` in ``dtype``."""
    dev = None if device is None else torch.device(device)
    f = _as_features(features, dev)
    n = f.shape[0]
    if n < k + 1:
        raise ValueError(f"k-NN radii with k={k} need at least {k + 1} points, got {n}")
    radii = torch.empty(n, dtype=dtype, device=f.device)
    for r0, r1 in _blocks(n, block_size):
        rows = f[r0:r1].to(dtype)
        best = None  # (r, k+1) smallest distances so far, per row
        for c0, c1 in _blocks(n, block_size):
            d = squared_distances(rows, f[c0:c1].to(dtype))
            lo, hi = max(r0, c0), min(r1, c1)
            if lo < hi:  # the diagonal crosses this tile: a point's distance to itself is exactly 0
                idx = torch.arange(lo, hi, device=d.device)
                d[idx - r0, idx - c0] = 0.0
            cand = d if best is None else torch.cat([best, d], dim=1)
            best = torch.topk(cand, min(k + 1, cand.shape[1]), dim=1, largest=False).values
        radii[r0:r1] = best.max(dim=1).values  # the (k+1)-th smallest (topk keeps duplicates)
    return radii


def manifold_membership(points: torch.Tensor | np.ndarray, manifold: torch.Tensor | np.ndarray,
                        radii: torch.Tensor, *, block_size: int = PR_BLOCK_SIZE,
                        dtype: torch.dtype = torch.float64,
                        device: str | torch.device | None = None) -> torch.Tensor:
    """For each of ``points`` ``(M, D)``: is it inside some ball ``d(point, manifold_i) <= radii_i``?
    ``manifold``: ``(N, D)``, ``radii``: ``(N,)`` squared radii. Returns ``(M,)`` bool."""
    dev = None if device is None else torch.device(device)
    p, m = _as_features(points, dev), _as_features(manifold, dev)
    r = torch.as_tensor(radii).to(p.device, dtype)
    if p.shape[1] != m.shape[1] or r.shape != (m.shape[0],):
        raise ValueError(f"shapes do not fit: points {tuple(p.shape)}, manifold {tuple(m.shape)}, "
                         f"radii {tuple(r.shape)}")
    inside = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
    for r0, r1 in _blocks(p.shape[0], block_size):
        rows = p[r0:r1].to(dtype)
        for c0, c1 in _blocks(m.shape[0], block_size):
            d = squared_distances(rows, m[c0:c1].to(dtype))
            inside[r0:r1] |= (d <= r[c0:c1][None, :]).any(dim=1)
    return inside


def precision_recall(reference: torch.Tensor | np.ndarray, samples: torch.Tensor | np.ndarray,
                     k: int = NEAREST_K, *, block_size: int = PR_BLOCK_SIZE, dtype: torch.dtype = torch.float64,
                     device: str | torch.device | None = None) -> tuple[float, float]:
    """ADM's improved precision and recall of ``samples`` ``(M, D)`` against ``reference`` ``(N, D)``.

    precision: fraction of samples inside the reference manifold; recall: fraction of reference points inside
    the sample manifold (balls of each point's squared k-NN radius within its own set, ``<=``). Both sets need
    at least ``k + 1`` points. Independent of ``block_size`` (memory: two ``block_size``-square tiles).

    Example::

        precision, recall = precision_recall(ref_feats, sample_feats, k=3)
    """
    opts = {"block_size": block_size, "dtype": dtype, "device": device}
    r_ref = manifold_radii(reference, k, **opts)
    r_smp = manifold_radii(samples, k, **opts)
    precision = manifold_membership(samples, reference, r_ref, **opts).double().mean()
    recall = manifold_membership(reference, samples, r_smp, **opts).double().mean()
    return float(precision), float(recall)


# ------------------------------------------------------------------------------------------ streaming state


class GenerationState:
    """Everything the five generation numbers need from a stream of sample batches.

    ``update(pool, spatial, logits)`` folds one batch in: float64 sums for the pool_3 (gFID) and spatial (sFID)
    Gaussians, the Inception Score state when logits come, and (``keep_features``) the pool_3 features as
    float32 for precision/recall, which compare every sample with every other and so cannot be streamed.
    Inception's outputs are float32, so keeping them in float32 loses nothing.
    """

    def __init__(self, pool_dim: int, spatial_dim: int, *, keep_features: bool = True,
                 split_size: int = IS_SPLIT_SIZE, device: str | torch.device = "cpu"):
        self.pool = FeatureStats.zeros(pool_dim, device)
        self.spatial = FeatureStats.zeros(spatial_dim, device)
        self.inception = InceptionScoreState(split_size=split_size)
        self.keep_features = keep_features
        self._features: list[torch.Tensor] = []
        self.n_logits = 0

    @property
    def n(self) -> int:
        return int(self.pool.n)

    def update(self, pool: torch.Tensor, spatial: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """pool ``(B, 2048)``, spatial ``(B, 2023)``, logits ``(B, 1008)`` or None (any float dtype)."""
        if pool.shape[0] != spatial.shape[0] or (logits is not None and logits.shape[0] != pool.shape[0]):
            raise ValueError("pool, spatial and logits must have the same number of rows")
        self.pool.update(pool)
        self.spatial.update(spatial)
        if logits is not None:
            self.inception.update_logits(logits)
            self.n_logits += int(logits.shape[0])
        if self.keep_features:
            self._features.append(pool.detach().to("cpu", torch.float32))

    def features(self) -> torch.Tensor | None:
        """All kept pool_3 features ``(N, D)`` float32 on the CPU, in arrival order (None if not kept)."""
        if not self.keep_features:
            return None
        if not self._features:
            return torch.zeros(0, self.pool.dim, dtype=torch.float32)
        if len(self._features) > 1:
            self._features = [torch.cat(self._features)]
        return self._features[0]


__all__ = ["IS_SPLIT_SIZE", "NEAREST_K", "PR_BLOCK_SIZE", "GenerationMetrics", "GenerationState",
           "InceptionScoreState",
           "inception_score", "manifold_membership", "manifold_radii", "precision_recall", "softmax64",
           "squared_distances"]


# ------------------------------------------------------------------------------------------ registered metric


def _cat(state: Any) -> torch.Tensor | None:
    """A ``cat`` state as one tensor: a list of batches, or the one tensor torchmetrics leaves after a
    cross-process sync; None when empty."""
    if isinstance(state, torch.Tensor):
        return state if state.numel() else None
    return torch.cat(list(state)) if len(state) else None


class InceptionGaussians(Metric):
    """Base of the metrics that keep float64 Gaussian sums of Inception features (``n``, ``sum``, ``outer`` per
    side: ``pool`` = pool_3, ``spatial`` = ADM's spatial features) as torchmetrics ``sum`` states, so torchrun
    ranks reduce them by addition: the generation metric, the gfid reference statistics and ``vtbench fid``'s
    folder statistics. Not registered itself."""

    def _add_gaussians(self, device: Any, sides: tuple[str, ...] = ("pool", "spatial")) -> None:
        from vtbench.metrics.inception import FEATURE_DIM, SPATIAL_DIM  # read now: tests patch stand-in sizes
        for side in sides:
            zero = FeatureStats.zeros(FEATURE_DIM if side == "pool" else SPATIAL_DIM, device)
            self.add_state(f"{side}_n", zero.n, "sum")
            self.add_state(f"{side}_sum", zero.sum, "sum")
            self.add_state(f"{side}_outer", zero.outer, "sum")

    def _stats(self, side: str) -> FeatureStats:
        """The side's sums as a ``FeatureStats`` sharing the state tensors (``update`` adds in place)."""
        return FeatureStats(getattr(self, f"{side}_n"), getattr(self, f"{side}_sum"), getattr(self, f"{side}_outer"))

    def _stats_copy(self, side: str) -> FeatureStats:
        """A copy of the side's sums (inside ``compute``: every rank's, reduced; torchmetrics restores the local
        states afterwards)."""
        return FeatureStats(*(t.clone() for t in (getattr(self, f"{side}_n"), getattr(self, f"{side}_sum"),
                                                   getattr(self, f"{side}_outer"))))


class GenerationMetrics(InceptionGaussians):
    """gFID, sFID, Inception Score, precision and recall of generated samples against a reference, as a registered
    metric (``generation``): the generation task runs it through the same evaluation core as every other task.

    States (torchmetrics ``add_state``; all reduce across processes): float64 sums of the pool_3 and spatial
    Gaussians (``sum``), the classifier logits in sample order (``cat``; the Inception Score splits samples in
    order) and the pool_3 features (``cat``, float32) for precision/recall when the reference has features. The
    reference (``vtbench.gfid.Reference``) comes in the context's ``settings["reference"]``, the extractor (with its
    resize mode) in ``settings["extractor"]``. ``compute`` gives every value, or None with the reason (non-finite
    values included), through ``vtbench.gfid.scoring.score_state``.
    """

    name = "generation"
    protocol = "generation"
    needs = frozenset({"samples", "features"})
    outputs = (Output("gfid", "gFID", "", False), Output("sfid", "sFID", "", False),
               Output("inception_score", "IS", "", True), Output("precision", "Precision", "", True),
               Output("recall", "Recall", "", True))

    @classmethod
    def from_context(cls, ctx: Any) -> "GenerationMetrics":
        s = dict(ctx.settings)
        if s.get("reference") is None or s.get("extractor") is None:
            from vtbench.metrics.base import MetricUnavailable
            raise MetricUnavailable("the generation metrics score samples against a reference: run them with "
                                    "`vtbench gfid SAMPLES --ref REF` (or `vtbench probe`), not `vtbench run`")
        return cls(s["reference"], s["extractor"], nearest_k=int(s.get("nearest_k", NEAREST_K)),
                   split_size=int(s.get("split_size", IS_SPLIT_SIZE)), warning=s.get("warning"))

    def __init__(self, reference: Any, extractor: Any, *, nearest_k: int = NEAREST_K,
                 split_size: int = IS_SPLIT_SIZE, warning: str | None = None) -> None:
        super().__init__()
        self.reference, self.extractor, self.nearest_k = reference, extractor, nearest_k
        self.split_size, self.warning = split_size, warning
        self.keep_features = reference.features is not None
        device = extractor.device
        self._add_gaussians(device)
        self.add_state("logits", None, "cat")
        self.add_state("positions", None, "cat")  # the logits' sample positions (IS splits in sample order)
        self.add_state("n_logits", torch.zeros((), dtype=torch.int64), "sum")
        self.add_state("features", None, "cat")
        self.to(device)

    def update(self, batch: Any) -> dict[str, torch.Tensor]:
        """Fold one batch of samples (``batch.reconstruction``, uint8) in; no per-sample values."""
        out = self.extractor.features_all(batch.reconstruction, logits=True)
        self._stats("pool").update(out.pool)
        self._stats("spatial").update(out.spatial)
        if out.logits is not None:
            self.logits.append(out.logits.detach().to(torch.float64))
            self.n_logits += int(out.logits.shape[0])
            index = batch.index if batch.index is not None else torch.arange(int(self.n_logits) - batch.size,
                                                                             int(self.n_logits))
            self.positions.append(index.to(torch.float64).to(self.logits[-1].device))
        if self.keep_features:
            self.features.append(out.pool.detach().to(torch.float32))
        return {}

    def state(self) -> GenerationState:
        """The states as a ``GenerationState`` (what ``score_state`` reads)."""
        state = GenerationState(self.pool_sum.shape[0], self.spatial_sum.shape[0], keep_features=self.keep_features,
                                split_size=self.split_size, device=self.pool_sum.device)
        state.pool, state.spatial = self._stats("pool"), self._stats("spatial")
        logits, positions = _cat(self.logits), _cat(self.positions)
        if logits is not None:
            state.inception.update_logits(logits[torch.argsort(positions, stable=True)])
        state.n_logits = int(self.n_logits)
        features = _cat(self.features)
        if self.keep_features and features is not None:
            state._features = [features.cpu()]
        return state

    def compute(self) -> dict[str, Any]:
        from vtbench.gfid.scoring import score_state
        return score_state(self.state(), self.reference, extractor=self.extractor, nearest_k=self.nearest_k,
                           device=self.pool_sum.device, warning=self.warning)
