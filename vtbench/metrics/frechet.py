"""Frechet distance between Gaussians fitted to features, and the streaming statistics behind it.

Pure functions and a plain accumulator; no model, no files beyond ``.npz`` statistics.

The distance is ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The trace term is computed as
``sum(sqrt(eigvalsh(A S2 A)))`` with ``A = S1^(1/2)`` from a symmetric eigendecomposition: ``S1 S2`` is similar
to the symmetric PSD matrix ``A S2 A``, so both have the same eigenvalues. This needs no ``scipy.linalg.sqrtm``
(broken in SciPy 1.11.2-1.12.x), no eps retry for singular products (small N, covariance of rank N-1), and
never produces imaginary parts. Eigenvalues below the rank tolerance (D * eps * largest; this includes
those that round below zero) count as zero. It agrees with the sqrtm formulation (clean-fid, ADM,
pytorch-fid) to ~1e-7 relative or better.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class FeatureStats:
    """Streaming float64 sums for a mean and covariance: ``n``, ``sum`` (D,) and ``outer`` (D, D) = sum x x^T.

    The tensors may be a metric's state tensors: ``update`` and ``merge`` work in place, so the sums reduce
    across processes by addition.
    """

    n: torch.Tensor  # int64 scalar
    sum: torch.Tensor  # float64 (D,)
    outer: torch.Tensor  # float64 (D, D)

    @classmethod
    def zeros(cls, dim: int, device: str | torch.device = "cpu") -> "FeatureStats":
        return cls(torch.zeros((), dtype=torch.int64, device=device),
                   torch.zeros(dim, dtype=torch.float64, device=device),
                   torch.zeros(dim, dim, dtype=torch.float64, device=device))

    @property
    def dim(self) -> int:
        return int(self.sum.shape[0])

    def update(self, feats: torch.Tensor | np.ndarray) -> None:
        """Fold ``(N, D)`` features (any float dtype) into the sums, in float64."""
        f = torch.as_tensor(feats).to(self.sum.device, torch.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"expected (N, {self.dim}) features, got {tuple(f.shape)}")
        self.n.add_(f.shape[0])
        self.sum.add_(f.sum(dim=0))
        self.outer.addmm_(f.T, f)

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Add ``other``'s sums into these (in place); returns self."""
        self.n.add_(other.n.to(self.n.device))
        self.sum.add_(other.sum.to(self.sum.device))
        self.outer.add_(other.outer.to(self.outer.device))
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean (D,) and unbiased covariance (D, D) (divisor N-1, as ``numpy.cov``), float64 numpy."""
        n = int(self.n)
        if n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {n}")
        s = self.sum.cpu().numpy()
        mu = s / n
        sigma = (self.outer.cpu().numpy() - np.outer(s, mu)) / (n - 1)
        return mu, (sigma + sigma.T) / 2  # exact symmetry; the sums are symmetric up to rounding

    def save(self, path: str | os.PathLike) -> None:
        mu, sigma = self.mean_cov()
        save_stats(path, mu, sigma, int(self.n))


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set; ``n`` is None when the file does not record it."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, n: int | None = None, **extra: str) -> None:
    """Write ``mu``, ``sigma`` (and ``n``, plus string metadata) to ``.npz`` atomically (tmp + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    arrays = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    if n is not None:
        arrays["n"] = np.asarray(n, np.int64)
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_stats(path: str | os.PathLike) -> GaussianStats:
    """Read ``mu``/``sigma`` from an ``.npz`` (clean-fid and ADM layouts; ADM's ``arr_0`` activations give
    ``n`` when no ``n`` key is stored)."""
    with np.load(path, allow_pickle=False) as z:
        if "mu" not in z or "sigma" not in z:
            raise ValueError(f"{path}: no 'mu'/'sigma' arrays (keys: {sorted(z.keys())})")
        mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
        n = int(z["n"]) if "n" in z else (int(z["arr_0"].shape[0]) if "arr_0" in z else None)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    return GaussianStats(mu, sigma, n)


def _psd_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with rounding noise zeroed: anything below the usual rank
    tolerance (D * eps * largest) is a zero eigenvalue; its square root would otherwise add about
    sqrt(eps * largest) per null direction, which adds up for rank-deficient covariances (N < D)."""
    tol = w.shape[0] * np.finfo(np.float64).eps * max(float(w.max(initial=0.0)), 0.0)
    return np.where(w > tol, w, 0.0)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(_psd_eigenvalues(w))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    mu: (D,); sigma: (D, D) symmetric PSD (any rank). See the module docstring for the formulation.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"shapes do not match: mu {mu1.shape} {mu2.shape}, sigma {s1.shape} {s2.shape}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    root1 = _sqrt_psd(s1)
    m = root1 @ s2 @ root1
    tr_covmean = float(np.sqrt(_psd_eigenvalues(np.linalg.eigvalsh((m + m.T) / 2))).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
