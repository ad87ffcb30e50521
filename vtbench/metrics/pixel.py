"""PSNR and SSIM as streaming metrics: per-image values (the maths is in :mod:`vtbench.metrics.functional`),
averaged over the dataset, which is the convention tokenizer papers report (mean of per-image PSNR, not PSNR of
the pooled MSE).

Inputs are the uint8 ``(N, 3, H, W)`` tensors of a :class:`~vtbench.metrics.base.Batch`. They are converted
to float64 in ``[0, 1]`` (``x.double() / 255``, not via float32, so nothing is lost to rounding) and compared
with ``data_range=1.0``; this equals computing on the uint8 values with ``data_range=255``.

States are float64 sums of per-image values plus integer counts, all reduced by ``sum``: the dataset value is
the same for any batch size, shard count or merge order (up to float64 summation order).

PSNR and identical images
-------------------------
An image reconstructed exactly has PSNR ``+inf``. The per-image value returned by ``update`` is that ``+inf``
(the truth, for the per-sample table). The dataset value is the mean over the images whose PSNR is finite; the
number of identical images is counted, never dropped silently: it is reported in ``extra["n_identical"]``
alongside ``extra["n_images"]``, and ``n`` is the number of images the mean is over. No cap is applied: any
cap (e.g. 100 dB) would be arbitrary, and for 8-bit images it can lie below the largest finite PSNR (one
pixel off by one level in a 256x256 RGB image is 101.1 dB), ranking a near-exact reconstruction above an exact
one. If every image is identical (a reference / identity tokenizer), the value is ``None`` with that reason.
"""

from __future__ import annotations

import torch

from vtbench.metrics.base import Batch, Metric, MetricValue, Output
from vtbench.metrics.functional import psnr as psnr_fn
from vtbench.metrics.functional import ssim as ssim_fn

__all__ = ["PSNR", "SSIM"]

# SSIM holds ~10 float64 maps of the batch at once; chunk so that stays near 1 GiB whatever the batch size.
_SSIM_CHUNK_ELEMENTS = 1 << 24


def _as_unit_float64(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> float64 in ``[0, 1]`` (on the CPU where the device has no float64, e.g. MPS)."""
    if x.device.type == "mps":
        x = x.cpu()
    return x.to(torch.float64) / 255.0


def _zero_f64() -> torch.Tensor:
    return torch.zeros((), dtype=torch.float64)


def _zero_i64() -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64)


class PSNR(Metric):
    """Peak signal-to-noise ratio in dB, per image, averaged over the dataset.

    ``update(batch)`` reads ``batch.original`` and ``batch.reconstruction`` (uint8 ``(N, 3, H, W)``) and returns
    ``{"psnr": (N,) float64}``, ``+inf`` for an exact reconstruction. ``compute()`` returns the mean over the
    images with a finite PSNR; ``extra`` carries ``n_images`` (all images seen) and ``n_identical`` (exact
    reconstructions, excluded from the mean because their PSNR is infinite). See the module docstring.

    Example::

        >>> import torch
        >>> from vtbench.metrics.base import Batch
        >>> x = torch.full((2, 3, 8, 8), 100, dtype=torch.uint8)
        >>> y = x.clone(); y[0] += 1
        >>> m = PSNR(); _ = m.update(Batch(["a", "b"], x, y))
        >>> v = m.compute()["psnr"]
        >>> round(v.value, 2), v.n, v.extra["n_identical"]
        (48.13, 1, 1)
    """

    name = "psnr"
    outputs = (Output("psnr", "PSNR", "dB", True),)

    def __init__(self) -> None:
        super().__init__()
        self.add_state("psnr_sum", _zero_f64(), "sum")  # sum of finite per-image PSNR
        self.add_state("n_finite", _zero_i64(), "sum")
        self.add_state("n_identical", _zero_i64(), "sum")

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        values = psnr_fn(_as_unit_float64(batch.original), _as_unit_float64(batch.reconstruction), data_range=1.0)
        finite = torch.isfinite(values)
        identical = torch.isposinf(values)
        if bool((~finite & ~identical).any()):  # cannot happen for uint8 inputs; guard the state anyway
            raise ValueError("PSNR produced NaN or -inf; inputs must be finite images in [0, 1]")
        self.psnr_sum = self.psnr_sum + values[finite].sum().cpu()
        self.n_finite = self.n_finite + int(finite.sum())
        self.n_identical = self.n_identical + int(identical.sum())
        return {"psnr": values}

    def compute(self) -> dict[str, MetricValue]:
        n_finite, n_identical = int(self.n_finite), int(self.n_identical)
        n_images = n_finite + n_identical
        extra = {"n_images": n_images, "n_identical": n_identical}
        if n_images == 0:
            return {"psnr": self.value("psnr", None, 0, reason="no images were seen", **extra)}
        if n_finite == 0:
            return {"psnr": self.value("psnr", None, 0, reason=f"all {n_images} reconstructions are identical to "
                                       "their originals: PSNR is +inf for every image", **extra)}
        return {"psnr": self.value("psnr", float(self.psnr_sum) / n_finite, n_finite, **extra)}


class SSIM(Metric):
    """Structural similarity (Gaussian window, sigma 1.5, 11x11; K1 0.01, K2 0.03), per image, averaged.

    Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255, channel_axis=...)`` on the uint8 images: the mean over the
    RGB channels of each channel's SSIM map averaged over the pixels at least 5 from every border.

    ``update(batch)`` reads uint8 ``(N, 3, H, W)`` with ``H, W >= 11`` (smaller images raise ``ValueError``)
    and returns ``{"ssim": (N,) float64}`` in ``[-1, 1]``. ``compute()`` returns the mean over images.
    """

    name = "ssim"
    outputs = (Output("ssim", "SSIM", "", True),)

    def __init__(self) -> None:
        super().__init__()
        self.add_state("ssim_sum", _zero_f64(), "sum")
        self.add_state("n_images", _zero_i64(), "sum")

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        _, c, h, w = batch.original.shape
        chunk = max(1, _SSIM_CHUNK_ELEMENTS // (c * h * w))
        values = torch.cat([
            ssim_fn(_as_unit_float64(a), _as_unit_float64(b), data_range=1.0)
            for a, b in zip(batch.original.split(chunk), batch.reconstruction.split(chunk))
        ])
        self.ssim_sum = self.ssim_sum + values.sum().cpu()
        self.n_images = self.n_images + values.numel()
        return {"ssim": values}

    def compute(self) -> dict[str, MetricValue]:
        n = int(self.n_images)
        if n == 0:
            return {"ssim": self.value("ssim", None, 0, reason="no images were seen")}
        return {"ssim": self.value("ssim", float(self.ssim_sum) / n, n)}
