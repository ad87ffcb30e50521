"""Detail preservation: frequency-resolved band ratios, band PSNR and gradient-energy ratio as a streaming metric.

The definitions are written down in ``metrics/detail.toml`` (the ``[detail]`` table) and implemented once in
:mod:`vtbench.metrics.frequency`; this module folds per-image values into mergeable states.

Outputs (``<band>`` is ``"<lo>-<hi>"`` in cycles/pixel, e.g. ``0.25-0.5``, one per configured band):

- ``detail_band_ratio@<band>``: band power of the reconstruction's luma over the original's. Ideal 1 (neither
  higher nor lower is better: ``higher_is_better=None``, ``extra["ideal"] = 1``); < 1 means detail lost (blur),
  > 1 detail added (noise, ringing, invented texture).
- ``band_psnr@<band>``: PSNR (data range 1) of the luma difference restricted to the band. Higher is better.
- ``gradient_energy_ratio``: forward-difference gradient energy of the reconstruction's luma over the original's.
  Ideal 1.

Dataset values
--------------
Ratios (``ratio_reduction = "ratio-of-sums"``, the default): the sum over images of the reconstructions' band
powers (gradient energies) over the sum of the originals'. Each image's power is normalised per pixel (a share of
its luma variance), so image size does not weight it; images with more detail in the band weigh more, and an
image with (almost) none cannot blow the value up. The alternative, the mean of per-image ratios, is unstable:
an original with next to no power in the fine band (an upscaled or heavily compressed photo, a flat page) gives a
per-image ratio of 10 or 100 for any reconstruction artefact, and one such image moves a dataset mean more than
the whole rest. The mean of the finite per-image ratios is still reported, in ``extra["mean_of_image_ratios"]``,
and ``ratio_reduction = "mean-of-ratios"`` makes it the value. Per-image ratios (returned by ``update`` for the
per-sample table) are ``nan`` when both powers are 0 and ``+inf`` when only the original's is; the images
whose original has no power in the band are counted in ``extra["n_undefined"]``.

Band PSNR mirrors :class:`vtbench.metrics.pixel.PSNR`: per-image ``+inf`` when the difference has no energy in the
band (always for an exact reconstruction); the dataset value is the mean over the finite per-image values,
``extra["n_identical"]`` counts the infinite ones, ``n`` is the number averaged, and when every image is
infinite the value is ``None`` with that reason.

States are float64 / int64 sums, so the dataset values do not depend on batch size, shard count or merge order
(up to float64 summation order), and runs resume from ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from vtbench.metrics.base import Batch, Metric, MetricContext, MetricValue, Output
from vtbench.metrics.frequency import BT601_LUMA, DEFAULT_BANDS, WINDOWS, band_key, detail_stats, psnr_from_mse

__all__ = ["DEFAULT_SETTINGS", "Detail", "detail_outputs"]

#: the ``[detail]`` table of ``metrics/detail.toml`` (tests check the two agree)
DEFAULT_SETTINGS: dict[str, Any] = {
    "bands": [list(b) for b in DEFAULT_BANDS],
    "color": "luma",
    "luma_weights": list(BT601_LUMA),
    "data_range": 1.0,
    "window": "hann",
    "mean": "window-weighted",
    "ratio_reduction": "ratio-of-sums",
    "gradient": "forward-difference",
}

# settings with one implemented value: written in the protocol so the definition is explicit, checked here
_FIXED = {"color": ("luma",), "data_range": (1.0,), "mean": ("window-weighted",),
          "gradient": ("forward-difference",)}
_CHOICES = {"window": WINDOWS, "ratio_reduction": ("ratio-of-sums", "mean-of-ratios"), **_FIXED}

# images per detail_stats call: ~2^18 pixels (four 256x256 images) keep the float64 work arrays in cache (CPU:
# 1.5-2x faster per image than one call on a batch of 16) and bound memory for large images
_CHUNK_PIXELS = 1 << 18

RATIO_PREFIX = "detail_band_ratio@"
PSNR_PREFIX = "band_psnr@"
GRADIENT_KEY = "gradient_energy_ratio"


def detail_outputs(bands) -> tuple[Output, ...]:
    """The outputs for ``bands``: a ratio and a band PSNR per band, then the gradient-energy ratio."""
    ratios, psnrs = [], []
    for lo, hi in bands:
        k = band_key((lo, hi))
        ratios.append(Output(RATIO_PREFIX + k, f"Detail ratio ({lo:g}, {hi:g}] c/px", "", None))
        psnrs.append(Output(PSNR_PREFIX + k, f"Band PSNR ({lo:g}, {hi:g}] c/px", "dB", True))
    return (*ratios, *psnrs, Output(GRADIENT_KEY, "Gradient energy ratio", "", None))


def _settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(DEFAULT_SETTINGS)
    for key, value in (settings or {}).items():
        if key not in DEFAULT_SETTINGS:
            raise ValueError(f"[detail] has no setting {key!r}; known: {sorted(DEFAULT_SETTINGS)}")
        out[key] = value
    for key, allowed in _CHOICES.items():
        if out[key] not in allowed:
            raise ValueError(f"[detail] {key} = {out[key]!r} is not implemented; use one of {list(allowed)}")
    bands = [(float(lo), float(hi)) for lo, hi in out["bands"]]
    if not bands or any(not 0.0 <= lo < hi for lo, hi in bands):
        raise ValueError(f"[detail] bands must be non-empty pairs [lo, hi] with 0 <= lo < hi, got {out['bands']!r}")
    if len({band_key(b) for b in bands}) != len(bands):
        raise ValueError(f"[detail] bands repeat: {out['bands']!r}")
    out["bands"] = bands
    weights = [float(w) for w in out["luma_weights"]]
    if len(weights) != 3:
        raise ValueError(f"[detail] luma_weights are three numbers (R, G, B), got {out['luma_weights']!r}")
    out["luma_weights"] = weights
    return out


def _f64(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float64)


def _i64(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.int64)


class Detail(Metric):
    """Frequency-resolved detail preservation (see the module docstring and ``metrics/detail.toml``).

    ``update(batch)`` reads uint8 ``(N, 3, H, W)`` (``H, W >= 2``) and returns per-image float64 ``(N,)`` values
    for every output key. ``compute()`` returns one :class:`MetricValue` per output key.

    Example::

        >>> import torch
        >>> from vtbench.metrics.base import Batch
        >>> x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        >>> m = Detail(); per_image = m.update(Batch(["a", "b"], x, x.clone()))
        >>> v = m.compute()
        >>> v["detail_band_ratio@0.25-0.5"].value, v["detail_band_ratio@0.25-0.5"].extra["ideal"]
        (1.0, 1)
        >>> v["band_psnr@0.25-0.5"].value, v["band_psnr@0.25-0.5"].extra["n_identical"]
        (None, 2)
    """

    name = "detail"
    protocol = "detail"
    needs = frozenset({"pixels"})
    outputs: ClassVar[tuple[Output, ...]] = detail_outputs(DEFAULT_BANDS)

    @classmethod
    def from_context(cls, ctx: MetricContext) -> "Detail":
        return cls(settings=ctx.settings)

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = _settings(settings)
        self.settings = cfg
        self.bands: list[tuple[float, float]] = cfg["bands"]
        self.band_keys = [band_key(b) for b in self.bands]
        if [(lo, hi) for lo, hi in self.bands] != [tuple(b) for b in DEFAULT_BANDS]:
            self.outputs = detail_outputs(self.bands)  # per instance: keys follow the configured bands
        nb = len(self.bands)
        self.add_state("n_images", _i64(), "sum")
        # ratios: sums of per-image normalised powers (ratio of sums) and of finite per-image ratios (mean)
        self.add_state("power_orig", _f64(nb), "sum")
        self.add_state("power_rec", _f64(nb), "sum")
        self.add_state("ratio_sum", _f64(nb), "sum")
        self.add_state("ratio_n", _i64(nb), "sum")
        # band PSNR, as PSNR: sum of finite values, finite and infinite counts
        self.add_state("band_psnr_sum", _f64(nb), "sum")
        self.add_state("band_psnr_n", _i64(nb), "sum")
        self.add_state("band_psnr_identical", _i64(nb), "sum")
        # gradient energy
        self.add_state("grad_orig", _f64(), "sum")
        self.add_state("grad_rec", _f64(), "sum")
        self.add_state("grad_ratio_sum", _f64(), "sum")
        self.add_state("grad_ratio_n", _i64(), "sum")

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.settings
        h, w = batch.original.shape[-2:]
        chunk = max(1, _CHUNK_PIXELS // (h * w))
        parts = [detail_stats(a, b, self.bands, data_range=255.0, window=cfg["window"], weights=cfg["luma_weights"])
                 for a, b in zip(batch.original.split(chunk), batch.reconstruction.split(chunk))]
        s = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        ratio = s["power_rec"] / s["power_orig"]  # (N, B); nan for 0/0, +inf for x/0
        bpsnr = psnr_from_mse(s["band_mse"])      # (N, B); +inf for an exact band
        gratio = s["grad_rec"] / s["grad_orig"]   # (N,)
        if bool(torch.isnan(bpsnr).any() | torch.isneginf(bpsnr).any()):  # cannot happen for finite inputs
            raise ValueError("band PSNR produced NaN or -inf; inputs must be finite images")
        rfinite, pfinite, gfinite = torch.isfinite(ratio), torch.isfinite(bpsnr), torch.isfinite(gratio)
        zero = torch.zeros((), dtype=torch.float64, device=ratio.device)
        self.n_images = self.n_images + batch.size
        self.power_orig = self.power_orig + s["power_orig"].sum(0).cpu()
        self.power_rec = self.power_rec + s["power_rec"].sum(0).cpu()
        self.ratio_sum = self.ratio_sum + torch.where(rfinite, ratio, zero).sum(0).cpu()
        self.ratio_n = self.ratio_n + rfinite.sum(0).cpu()
        self.band_psnr_sum = self.band_psnr_sum + torch.where(pfinite, bpsnr, zero).sum(0).cpu()
        self.band_psnr_n = self.band_psnr_n + pfinite.sum(0).cpu()
        self.band_psnr_identical = self.band_psnr_identical + torch.isposinf(bpsnr).sum(0).cpu()
        self.grad_orig = self.grad_orig + s["grad_orig"].sum().cpu()
        self.grad_rec = self.grad_rec + s["grad_rec"].sum().cpu()
        self.grad_ratio_sum = self.grad_ratio_sum + torch.where(gfinite, gratio, zero).sum().cpu()
        self.grad_ratio_n = self.grad_ratio_n + int(gfinite.sum())
        out = {RATIO_PREFIX + k: ratio[:, i] for i, k in enumerate(self.band_keys)}
        out.update({PSNR_PREFIX + k: bpsnr[:, i] for i, k in enumerate(self.band_keys)})
        out[GRADIENT_KEY] = gratio
        return out

    # -- compute ----------------------------------------------------------------------------------
    def _ratio(self, key: str, orig: float, rec: float, ratio_sum: float, ratio_n: int, n_images: int,
               what: str, **extra: Any) -> MetricValue:
        of_sums = rec / orig if orig > 0 else None
        mean = ratio_sum / ratio_n if ratio_n else None
        reduction = self.settings["ratio_reduction"]
        extra = {"ideal": 1, **extra, "reduction": reduction, "n_images": n_images,
                 "n_undefined": n_images - ratio_n, "ratio_of_sums": of_sums, "mean_of_image_ratios": mean}
        if n_images == 0:
            return self.value(key, None, 0, reason="no images were seen", **extra)
        if reduction == "ratio-of-sums":
            if of_sums is None:
                return self.value(key, None, n_images, reason=f"no original has any {what}: the ratio is "
                                  "undefined", **extra)
            return self.value(key, of_sums, n_images, **extra)
        if mean is None:
            return self.value(key, None, 0, reason=f"no original has any {what}: every per-image ratio is "
                              "undefined", **extra)
        return self.value(key, mean, ratio_n, **extra)

    def compute(self) -> dict[str, MetricValue]:
        n_images = int(self.n_images)
        out: dict[str, MetricValue] = {}
        for i, ((lo, hi), k) in enumerate(zip(self.bands, self.band_keys)):
            out[RATIO_PREFIX + k] = self._ratio(
                RATIO_PREFIX + k, float(self.power_orig[i]), float(self.power_rec[i]), float(self.ratio_sum[i]),
                int(self.ratio_n[i]), n_images, f"power in the band ({lo:g}, {hi:g}] cycles/pixel",
                band=[lo, hi])
        for i, ((lo, hi), k) in enumerate(zip(self.bands, self.band_keys)):
            n_fin, n_id = int(self.band_psnr_n[i]), int(self.band_psnr_identical[i])
            extra = {"band": [lo, hi], "n_images": n_images, "n_identical": n_id}
            key = PSNR_PREFIX + k
            if n_images == 0:
                out[key] = self.value(key, None, 0, reason="no images were seen", **extra)
            elif n_fin == 0:
                out[key] = self.value(key, None, 0, reason=f"all {n_images} reconstructions are identical to "
                                      f"their originals in the band ({lo:g}, {hi:g}] cycles/pixel: band PSNR is "
                                      "+inf for every image", **extra)
            else:
                out[key] = self.value(key, float(self.band_psnr_sum[i]) / n_fin, n_fin, **extra)
        out[GRADIENT_KEY] = self._ratio(GRADIENT_KEY, float(self.grad_orig), float(self.grad_rec),
                                        float(self.grad_ratio_sum), int(self.grad_ratio_n), n_images,
                                        "gradient energy (all are flat)")
        return out

