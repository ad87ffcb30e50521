"""Frequency-resolved detail preservation as pure functions on tensors (definitions: ``metrics/detail.toml``).

A blurry reconstruction can score well on PSNR while losing all fine structure. These functions measure, per
image, how much of the original's energy survives in each octave band of radial spatial frequency, how large
the error is in each band, and how much gradient energy survives. The streaming metric is
:class:`vtbench.metrics.detail.Detail`.

Definitions (every function computes in float64; inputs are ``(N, C, H, W)`` of any real dtype with values in
``[0, data_range]``; ``C`` is 3 (RGB) or 1 (already grey)):

- **luma** ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601 weights) on ``[0, 1]`` floats, no offset or
  studio-range scaling. Fine detail is judged on luminance: human acuity for chroma is far lower (hence 4:2:0
  chroma subsampling in JPEG and video), R, G and B share most of their structure, so per-channel spectra would
  count it three times, and invisible chroma loss would move the number.
- **window** ``w = hann(H) ⊗ hann(W)``, the *periodic* Hann window ``0.5 - 0.5 cos(2 pi n / N)``
  (``torch.hann_window(N, periodic=True)``). The DFT treats the image as periodic; without a window the
  left/right and top/bottom edge discontinuities put a ``1/f^2`` cross of spurious power into every band. The
  periodic Hann window's DFT has exactly three non-zero taps per axis (``-1/4, 1/2, -1/4``): windowing
  convolves the spectrum with those taps, so a bin-centred frequency spreads to its neighbouring bins only and an
  off-grid one's sidelobes fall as ``1/k^3``.
- **spectrum** ``X = fft2(w * (Y - mu_w))`` with ``mu_w = sum(w Y) / sum(w)`` the window-weighted mean, so the
  windowed image has exactly zero mean (no power at DC). Computed with ``rfft2`` (the half-plane of a real
  signal, each bin weighted by its multiplicity), which sums to the same band totals as ``fft2``. Frequencies
  ``fy = fftfreq(H)``, ``fx = fftfreq(W)`` in cycles/pixel; radial frequency ``r = sqrt(fx^2 + fy^2)``.
- **band** ``(lo, hi]``: the DFT bins with ``lo < r <= hi`` (compared as ``lo^2 < fx^2 + fy^2 <= hi^2`` in
  float64, exact for power-of-two edges). The default bands are the octaves ``(0.25, 0.5]``, ``(0.125, 0.25]``,
  ``(0.0625, 0.125]``, ``(0.03125, 0.0625]``. Bins with ``r > 0.5`` (the corners beyond Nyquist radius) and
  ``r <= 0.03125`` belong to no default band.
- **band power** ``P_b(Y) = sum_{k in b} |X_k|^2 / (H W sum(w^2))``: by Parseval, the band's share of the
  window-weighted variance of ``Y`` (with no window, the band powers over all bins sum to ``var(Y)``). The
  normalisation makes it independent of image size; ratios do not depend on it.
- **detail band ratio** ``P_b(Y_rec) / P_b(Y_orig)``: 1 when the band's energy is preserved, < 1 when it is lost
  (blur), > 1 when energy is added (noise, ringing, hallucinated texture). ``nan`` where both powers are 0,
  ``+inf`` where only the original's is.
- **band MSE** ``P_b(Y_orig - Y_rec)``: the band power of the luma difference (mean removed and windowed the
  same way), i.e. the mean squared error of the ideal band-pass-filtered difference per unit window energy.
  **band PSNR** ``10 log10(1 / band MSE)``, data range 1 (luma in ``[0, 1]``); ``+inf``
  when the difference has no energy in the band (always for identical images).
- **gradient energy** ``G(Y) = mean(gx^2) + mean(gy^2)`` with forward differences over the valid region
  (no padding, no wrap): ``gx = Y[:, 1:] - Y[:, :-1]`` (``H x (W-1)``), ``gy = Y[1:, :] - Y[:-1, :]``
  (``(H-1) x W``). The forward difference's gain ``|2 sin(pi f)|`` rises monotonically to Nyquist, so the
  finest detail weighs most; Sobel multiplies by a ``[1, 2, 1]`` smoother and ``[-1, 0, 1]`` central difference
  whose gains are 0 at Nyquist: Sobel is blind to a one-pixel checkerboard. **gradient energy ratio**
  ``G(Y_rec) / G(Y_orig)``.

Example::

    >>> import torch
    >>> from vtbench.metrics.frequency import DEFAULT_BANDS, detail_band_ratio, gradient_energy_ratio
    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.rand(2, 3, 64, 64, generator=g)
    >>> detail_band_ratio(a, a, DEFAULT_BANDS).shape, float(gradient_energy_ratio(a, a)[0])
    (torch.Size([2, 4]), 1.0)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

__all__ = [
    "BT601_LUMA",
    "DEFAULT_BANDS",
    "band_key",
    "band_masks",
    "band_mse",
    "band_power",
    "band_psnr",
    "detail_band_ratio",
    "detail_stats",
    "gradient_energy",
    "gradient_energy_ratio",
    "luma",
    "psnr_from_mse",
    "radial_frequency",
    "window2d",
]

BT601_LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)
#: octave bands of radial frequency, (lo, hi] in cycles/pixel, finest first
DEFAULT_BANDS: tuple[tuple[float, float], ...] = ((0.25, 0.5), (0.125, 0.25), (0.0625, 0.125), (0.03125, 0.0625))
WINDOWS = ("hann", "none")

Bands = Sequence[Sequence[float]]


def band_key(band: Sequence[float]) -> str:
    """The stable key suffix of a band: ``(0.25, 0.5)`` -> ``"0.25-0.5"`` (``%g`` of each edge)."""
    lo, hi = band
    return f"{float(lo):g}-{float(hi):g}"


def _check_bands(bands: Bands) -> list[tuple[float, float]]:
    out = []
    for band in bands:
        if len(band) != 2:
            raise ValueError(f"a band is a pair (lo, hi), got {band!r}")
        lo, hi = float(band[0]), float(band[1])
        if not 0.0 <= lo < hi:
            raise ValueError(f"band edges must satisfy 0 <= lo < hi (cycles/pixel), got ({lo}, {hi})")
        out.append((lo, hi))
    if not out:
        raise ValueError("at least one band is needed")
    return out


def luma(x: torch.Tensor, data_range: float = 1.0, weights: Sequence[float] = BT601_LUMA) -> torch.Tensor:
    """Luma ``(N, H, W)`` float64 in ``[0, 1]`` of images ``(N, 3, H, W)`` (BT.601 weights by default);
    ``(N, 1, H, W)`` is taken as already grey."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 3, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    if x.device.type == "mps":  # no float64 there
        x = x.cpu()
    x = x.to(torch.float64)
    if x.shape[1] == 1:
        return x[:, 0] / float(data_range)
    if len(weights) != 3:
        raise ValueError(f"luma weights are three numbers (R, G, B), got {weights!r}")
    coef = torch.tensor([float(v) for v in weights], dtype=torch.float64, device=x.device) / float(data_range)
    return torch.einsum("c,nchw->nhw", coef, x)


def window2d(h: int, w: int, kind: str = "hann", *, device: torch.device | str | None = None) -> torch.Tensor:
    """The separable 2-D analysis window ``(H, W)`` float64: periodic Hann per axis, or all ones (``"none"``)."""
    if kind == "hann":
        wy = torch.hann_window(h, periodic=True, dtype=torch.float64, device=device)
        wx = torch.hann_window(w, periodic=True, dtype=torch.float64, device=device)
        return wy[:, None] * wx[None, :]
    if kind == "none":
        return torch.ones(h, w, dtype=torch.float64, device=device)
    raise ValueError(f"window must be one of {WINDOWS}, got {kind!r}")


def radial_frequency(h: int, w: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """``r = sqrt(fx^2 + fy^2)`` ``(H, W)`` float64 in cycles/pixel, in ``torch.fft.fft2`` bin order."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=device)
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=device)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def band_masks(h: int, w: int, bands: Bands, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(B, H, W)``: bin ``k`` is in band ``(lo, hi]`` when ``lo^2 < fx^2 + fy^2 <= hi^2``."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=device)
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=device)
    r2 = fy[:, None] ** 2 + fx[None, :] ** 2
    return torch.stack([(r2 > lo * lo) & (r2 <= hi * hi) for lo, hi in _check_bands(bands)])


@functools.lru_cache(maxsize=32)
def _spectral_weights(h: int, w: int, bands: tuple[tuple[float, float], ...], window: str,
                      device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The analysis window ``(H, W)`` and the band-summing matrix ``(H * (W // 2 + 1), B)`` for ``rfft2``
    spectra: the band masks times each half-plane bin's multiplicity (1 for the ``fx = 0`` column and, for even
    ``W``, the Nyquist column; 2 for the others, which stand for themselves and their conjugate twins), divided
    by the normalisation ``H W sum(w^2)``. Summing a full ``fft2`` power spectrum over each band is the same."""
    win = window2d(h, w, window, device=device)
    wr = w // 2 + 1
    mult = torch.full((wr,), 2.0, dtype=torch.float64, device=device)
    mult[0] = 1.0
    if w % 2 == 0:
        mult[-1] = 1.0
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=device)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64, device=device)
    r2 = fy[:, None] ** 2 + fx[None, :] ** 2
    masks = torch.stack([(r2 > lo * lo) & (r2 <= hi * hi) for lo, hi in bands])  # (B, H, W//2+1)
    matrix = masks.to(torch.float64) * mult / (h * w * win.square().sum())
    # one row per real and per imaginary part of each bin: |X|^2 = re^2 + im^2 summed by the product
    return win, matrix.reshape(len(bands), -1).T.repeat_interleave(2, dim=0).contiguous()


def _band_power_of_luma(y: torch.Tensor, bands: Bands, window: str) -> torch.Tensor:
    """Band powers ``(N, B)`` of luma images ``(N, H, W)`` float64 (see the module docstring)."""
    n, h, w = y.shape
    win, matrix = _spectral_weights(h, w, tuple(_check_bands(bands)), window, str(y.device))
    # Subtract one pixel first: a flat image becomes exactly 0, so its band powers are exactly 0 (the weighted
    # mean of a constant is not always that constant in floating point, which left ~1e-60 powers and turned the
    # undefined x/0 ratio into a huge finite one). Mathematically a no-op: the window-weighted mean is removed next.
    y = y - y[:, :1, :1]
    mu = (y.reshape(n, -1) @ win.reshape(-1)) / win.sum()          # window-weighted mean per image
    z = (y - mu[:, None, None]).mul_(win)
    spec = torch.view_as_real(torch.fft.rfft2(z))                   # (N, H, W//2+1, 2): a real signal's half-plane
    return spec.square().reshape(n, -1) @ matrix                    # sum over each band of |X|^2, normalised


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 4 and (a.shape[-1] < 2 or a.shape[-2] < 2):
        raise ValueError(f"images must be at least 2x2, got {tuple(a.shape[-2:])}")


def band_power(x: torch.Tensor, bands: Bands = DEFAULT_BANDS, *, data_range: float = 1.0, window: str = "hann",
               weights: Sequence[float] = BT601_LUMA) -> torch.Tensor:
    """Band power ``P_b`` ``(N, B)`` float64 of the luma of images ``x`` ``(N, C, H, W)``."""
    return _band_power_of_luma(luma(x, data_range, weights), bands, window)


def detail_stats(a: torch.Tensor, b: torch.Tensor, bands: Bands = DEFAULT_BANDS, *, data_range: float = 1.0,
                 window: str = "hann", weights: Sequence[float] = BT601_LUMA) -> dict[str, torch.Tensor]:
    """Everything the detail metric needs from one batch of originals ``a`` and reconstructions ``b``.

    Returns float64 tensors on the inputs' device (CPU for MPS): ``power_orig``, ``power_rec`` and
    ``band_mse`` ``(N, B)``; ``grad_orig`` and ``grad_rec`` ``(N,)``. The three spectra (original,
    reconstruction, difference) come from one batched FFT. The difference is formed in the pixel domain, so an
    exact reconstruction gives a band MSE of exactly 0.
    """
    _check_pair(a, b)
    n = a.shape[0]
    y = luma(torch.cat([a, b]), data_range, weights)               # originals then reconstructions, (2N, H, W)
    powers = _band_power_of_luma(torch.cat([y, y[:n] - y[n:]]), bands, window)
    g = _gradient_energy_of_luma(y)
    return {"power_orig": powers[:n], "power_rec": powers[n:2 * n], "band_mse": powers[2 * n:],
            "grad_orig": g[:n], "grad_rec": g[n:]}


def detail_band_ratio(a: torch.Tensor, b: torch.Tensor, bands: Bands = DEFAULT_BANDS, *, data_range: float = 1.0,
                      window: str = "hann", weights: Sequence[float] = BT601_LUMA) -> torch.Tensor:
    """Per-image ``P_b(reconstruction) / P_b(original)`` ``(N, B)`` float64 (``a`` originals, ``b``
    reconstructions). 1 for identical images; ``nan`` where both powers are 0, ``+inf`` where only the
    original's is."""
    _check_pair(a, b)
    ya, yb = luma(a, data_range, weights), luma(b, data_range, weights)
    p = _band_power_of_luma(torch.cat([ya, yb]), bands, window)
    return p[ya.shape[0]:] / p[:ya.shape[0]]


def band_mse(a: torch.Tensor, b: torch.Tensor, bands: Bands = DEFAULT_BANDS, *, data_range: float = 1.0,
             window: str = "hann", weights: Sequence[float] = BT601_LUMA) -> torch.Tensor:
    """Per-image band power of the luma difference ``(N, B)`` float64 (0 for identical images)."""
    _check_pair(a, b)
    return _band_power_of_luma(luma(a, data_range, weights) - luma(b, data_range, weights), bands, window)


def band_psnr(a: torch.Tensor, b: torch.Tensor, bands: Bands = DEFAULT_BANDS, *, data_range: float = 1.0,
              window: str = "hann", weights: Sequence[float] = BT601_LUMA) -> torch.Tensor:
    """Per-image ``10 log10(1 / band_mse)`` in dB ``(N, B)`` float64; ``+inf`` where the band MSE is 0."""
    return psnr_from_mse(band_mse(a, b, bands, data_range=data_range, window=window, weights=weights))


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """``10 log10(1 / mse)`` (signal range 1); ``mse == 0`` -> ``+inf`` without a warning."""
    return 10.0 * torch.log10(1.0 / mse)


def gradient_energy(x: torch.Tensor, *, data_range: float = 1.0, weights: Sequence[float] = BT601_LUMA
                    ) -> torch.Tensor:
    """``mean(gx^2) + mean(gy^2)`` of the luma, forward differences over the valid region, ``(N,)`` float64."""
    return _gradient_energy_of_luma(luma(x, data_range, weights))


def _gradient_energy_of_luma(y: torch.Tensor) -> torch.Tensor:
    if y.shape[-1] < 2 or y.shape[-2] < 2:
        raise ValueError(f"images must be at least 2x2, got {tuple(y.shape[-2:])}")
    gx = (y[:, :, 1:] - y[:, :, :-1]).square_()
    gy = (y[:, 1:, :] - y[:, :-1, :]).square_()
    return gx.mean(dim=(1, 2)) + gy.mean(dim=(1, 2))


def gradient_energy_ratio(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0,
                          weights: Sequence[float] = BT601_LUMA) -> torch.Tensor:
    """Per-image ``G(reconstruction) / G(original)`` ``(N,)`` float64; 1 for identical images."""
    _check_pair(a, b)
    return (gradient_energy(b, data_range=data_range, weights=weights)
            / gradient_energy(a, data_range=data_range, weights=weights))
