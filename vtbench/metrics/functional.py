"""Pixel-fidelity maths as pure functions on tensors: PSNR and SSIM, per image, in float64.

The streaming metric classes in :mod:`vtbench.metrics.pixel` fold these per-image values into state; the maths
lives here once. Both functions take a batch ``(N, C, H, W)`` of any real dtype (uint8 or float) and a
``data_range`` that must match it: ``255`` for uint8 pixels, ``1.0`` for floats in ``[0, 1]``. The result is
the same either way (the value-range convention is tested).

Example::

    >>> import torch
    >>> from vtbench.metrics.functional import psnr, ssim
    >>> a = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> b = (a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    >>> psnr(a, b, data_range=1.0).shape, ssim(a, b, data_range=1.0).shape
    (torch.Size([2]), torch.Size([2]))
    >>> bool(torch.isinf(psnr(a, a, data_range=1.0)).all())
    True
"""

from __future__ import annotations

import torch

__all__ = ["gaussian_kernel1d", "gaussian_window_size", "psnr", "ssim"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, data_range: float) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(a.shape)}")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image pair, in dB.

    ``a``, ``b``: ``(N, C, H, W)``, any real dtype, values in ``[0, data_range]`` (``255`` for uint8, ``1.0``
    for floats in ``[0, 1]``). The mean squared error is taken over all channels and pixels of an image in
    float64, then ``10 * log10(data_range**2 / mse)``; this is
    ``skimage.metrics.peak_signal_noise_ratio(a_i, b_i, data_range=data_range)`` for each image.

    Returns float64 ``(N,)`` on the inputs' device. Identical images (``mse == 0``) give ``+inf``: the value
    is returned as is, and callers that average decide what to do with it (see :class:`vtbench.metrics.pixel.PSNR`).
    """
    _check_pair(a, b, data_range)
    diff = a.to(torch.float64) - b.to(torch.float64)
    mse = diff.square().flatten(1).mean(dim=1)
    # data_range**2 / 0 -> +inf, log10(+inf) -> +inf: no warning, no special case needed
    return 10.0 * torch.log10(float(data_range) ** 2 / mse)


def gaussian_window_size(sigma: float = 1.5, truncate: float = 3.5) -> int:
    """Side of the Gaussian window as scipy.ndimage sizes it: ``2 * int(truncate * sigma + 0.5) + 1`` (11)."""
    return 2 * int(truncate * sigma + 0.5) + 1


def gaussian_kernel1d(sigma: float = 1.5, truncate: float = 3.5, *, dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``exp(-x**2 / (2 sigma**2))`` for ``x`` in ``[-r, r]``, summing to 1."""
    radius = gaussian_window_size(sigma, truncate) // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def _blur_valid(maps: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of every channel of ``maps`` (N, K, H, W), keeping only fully covered pixels.

    Only outputs whose whole window lies inside the image are kept, which is exactly the region SSIM averages
    over (skimage crops ``(win - 1) // 2`` pixels from each border); so the border mode never matters.
    """
    # Shift-and-add per axis: float64 depthwise convolution has no fast CPU kernel, this is ~10x faster and
    # exact to rounding.
    r = taps.numel()
    w = taps.tolist()
    rows = maps.shape[-2] - r + 1
    out = maps[..., 0:rows, :] * w[0]
    for i in range(1, r):  # rows first, as scipy.ndimage filters axis 0 then axis 1
        out.add_(maps[..., i:i + rows, :], alpha=w[i])
    cols = maps.shape[-1] - r + 1
    res = out[..., 0:cols] * w[0]
    for i in range(1, r):
        res.add_(out[..., i:i + cols], alpha=w[i])
    return res


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float, *, sigma: float = 1.5, truncate: float = 3.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Mean structural similarity of each image pair (Wang et al. 2004), Gaussian-weighted.

    ``a``, ``b``: ``(N, C, H, W)``, any real dtype, values in ``[0, data_range]``; ``H`` and ``W`` must be at
    least the window size (11 for the default ``sigma=1.5``, ``truncate=3.5``).

    Equals, per image, ``skimage.metrics.structural_similarity(a_i, b_i, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=0)``: Gaussian-weighted local means,
    population variances and covariance; the SSIM map averaged over the pixels at least ``(win - 1) // 2``
    from every border, per channel, then over channels. Computed in float64 with a separable blur.

    Returns float64 ``(N,)`` on the inputs' device, in ``[-1, 1]`` (1 for identical images).
    """
    _check_pair(a, b, data_range)
    win = gaussian_window_size(sigma, truncate)
    n, c, h, w = a.shape
    if h < win or w < win:
        raise ValueError(f"SSIM with a Gaussian window (sigma={sigma}, truncate={truncate}) needs images of at "
                         f"least {win}x{win} pixels; got {h}x{w}")
    x = a.to(torch.float64)
    y = b.to(torch.float64)
    taps = gaussian_kernel1d(sigma, truncate, device=x.device)
    # one blur for all five local moments
    moments = _blur_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), taps)
    mu_x, mu_y, e_xx, e_yy, e_xy = moments.split(c, dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    ssim_map = numerator / denominator  # (N, C, H - win + 1, W - win + 1)
    # mean per channel, then over channels, as skimage does with channel_axis
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)
