"""Detail preservation (metrics/detail.toml): band ratios, band PSNR, gradient-energy ratio.

Known answers: identity, Gaussian blur, additive noise, pure sinusoids (band assignment and exact band power),
band edges, a checkerboard; streaming invariances and state round trips as for PSNR.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vtbench._compat import tomllib
from vtbench.metrics import METRICS, Batch
from vtbench.metrics.base import metric_for_output
from vtbench.metrics.detail import DEFAULT_SETTINGS, Detail
from vtbench.metrics.frequency import (
    DEFAULT_BANDS,
    band_key,
    band_masks,
    band_mse,
    band_power,
    band_psnr,
    detail_band_ratio,
    detail_stats,
    gradient_energy,
    gradient_energy_ratio,
    luma,
)
from vtbench.metrics.functional import gaussian_kernel1d
from vtbench.paths import PROTOCOLS_DIR

PROTOCOL = PROTOCOLS_DIR / "detail.toml"
KEYS = [band_key(b) for b in DEFAULT_BANDS]  # finest first
RATIO = [f"detail_band_ratio@{k}" for k in KEYS]
BPSNR = [f"band_psnr@{k}" for k in KEYS]
S = 128  # image side for most tests: small enough to be fast, large enough for the 1/32 band


# -- images -----------------------------------------------------------------------------------------------------
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def texture(n: int = 4, size: int = S, seed: int = 0) -> torch.Tensor:
    """Random (white) texture, float64 (N, 3, size, size) in [0, 1]."""
    return torch.rand((n, 3, size, size), generator=gen(seed), dtype=torch.float64)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, reflect padding."""
    k = gaussian_kernel1d(sigma, 4.0)
    r, c = k.numel() // 2, x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def u8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def grid(size: int = S) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="ij")


def cosine(fx: float, fy: float, amplitude: float = 0.4, size: int = S) -> torch.Tensor:
    """Grey (1, 3, size, size) image 0.5 + A cos(2 pi (fx x + fy y)), fx, fy in cycles/pixel."""
    yy, xx = grid(size)
    img = 0.5 + amplitude * torch.cos(2 * math.pi * (fx * xx + fy * yy))
    return img[None, None].repeat(1, 3, 1, 1)


def run(a: torch.Tensor, b: torch.Tensor, batch_size: int, settings=None) -> tuple[Detail, dict[str, torch.Tensor]]:
    metric = Detail(settings)
    per_image: dict[str, list[torch.Tensor]] = {}
    for i in range(0, a.shape[0], batch_size):
        ids = [str(j) for j in range(i, min(i + batch_size, a.shape[0]))]
        for k, v in metric.update(Batch(ids, a[i:i + batch_size], b[i:i + batch_size])).items():
            per_image.setdefault(k, []).append(v)
    return metric, {k: torch.cat(v) for k, v in per_image.items()}


# -- identity ---------------------------------------------------------------------------------------------------
def test_identity_ratios_are_one_and_band_psnr_is_null():
    a = u8(texture(5, seed=1))
    metric, per_image = run(a, a.clone(), batch_size=2)
    for k in RATIO + ["gradient_energy_ratio"]:
        np.testing.assert_allclose(per_image[k].numpy(), 1.0, rtol=0, atol=1e-12)
    for k in BPSNR:
        assert torch.isposinf(per_image[k]).all()
    values = metric.compute()
    for k in RATIO + ["gradient_energy_ratio"]:
        v = values[k]
        assert v.value == pytest.approx(1.0, abs=1e-12) and v.n == 5
        assert v.higher_is_better is None and v.extra["ideal"] == 1
        assert v.extra["mean_of_image_ratios"] == pytest.approx(1.0, abs=1e-12)
    for k in BPSNR:
        v = values[k]
        assert v.value is None and "identical" in v.reason
        assert v.extra["n_identical"] == 5 and v.extra["n_images"] == 5
        assert v.higher_is_better is True and v.unit == "dB"


def test_functional_identity():
    a = texture(3, size=40, seed=2)
    np.testing.assert_allclose(detail_band_ratio(a, a).numpy(), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gradient_energy_ratio(a, a).numpy(), 1.0, rtol=0, atol=1e-12)
    assert torch.equal(band_mse(a, a), torch.zeros(3, 4, dtype=torch.float64))
    assert torch.isposinf(band_psnr(a, a)).all()


def test_band_psnr_mean_excludes_identical_images_and_counts_them():
    a = u8(texture(6, seed=3))
    b = u8(texture(6, seed=3) + 0.02 * torch.randn(a.shape, generator=gen(4), dtype=torch.float64))
    b[1], b[4] = a[1], a[4]
    metric, per_image = run(a, b, batch_size=4)
    values = metric.compute()
    for k in BPSNR:
        assert torch.isposinf(per_image[k][[1, 4]]).all()  # per-image values stay the truth
        finite = per_image[k][torch.isfinite(per_image[k])]
        assert finite.numel() == 4
        assert values[k].value == pytest.approx(float(finite.mean()), rel=1e-12)
        assert values[k].n == 4 and values[k].extra["n_identical"] == 2 and values[k].extra["n_images"] == 6


def test_no_images_is_null_not_zero():
    values = Detail().compute()
    assert set(values) == {o.key for o in Detail.outputs}
    assert all(v.value is None and v.reason for v in values.values())


# -- blur, noise ------------------------------------------------------------------------------------------------
def test_blur_removes_fine_detail_and_keeps_coarse():
    a = texture(4, seed=5)
    values = run(u8(a), u8(blur(a, 1.0)), batch_size=4)[0].compute()
    assert values[RATIO[0]].value < 0.05          # (0.25, 0.5]: gain^2 <= exp(-4 pi^2 0.25^2) = 0.085
    assert values[RATIO[1]].value < 0.5
    assert 0.85 < values[RATIO[3]].value < 1.0     # (1/32, 1/16]: gain^2 >= exp(-4 pi^2 / 256) = 0.86
    ratios = [values[k].value for k in RATIO]
    assert ratios == sorted(ratios)               # monotone: the finer the band, the more is lost
    assert values["gradient_energy_ratio"].value < 0.1
    psnrs = [values[k].value for k in BPSNR]       # the fine bands carry the error
    assert psnrs[0] < psnrs[3]


def test_blur_of_a_checkerboard():
    i = torch.arange(S)
    board = ((i[:, None] // 2 + i[None, :] // 2) % 2).double()[None, None].repeat(1, 3, 1, 1)  # 2-px squares
    p = band_power(board)[0]
    assert float(p[0]) == pytest.approx(0.25, abs=1e-12)  # all its variance at (0.25, 0.25): r = 0.354
    assert float(p[1:].sum()) < 1e-20
    ratio = detail_band_ratio(board, blur(board, 1.0))[0, 0]
    assert float(ratio) < 0.01
    assert float(gradient_energy_ratio(board, blur(board, 1.0))[0]) < 0.1


def test_one_pixel_checkerboard_is_beyond_every_band_but_not_the_gradient():
    i = torch.arange(S)
    board = ((i[:, None] + i[None, :]) % 2).double()[None, None].repeat(1, 3, 1, 1)  # r = sqrt(2) / 2 > 0.5
    assert float(band_power(board).abs().max()) < 1e-20  # documented: corners past r = 0.5 are in no band
    assert float(gradient_energy(board)[0]) == pytest.approx(2.0, abs=1e-12)  # mean gx^2 = mean gy^2 = 1


def test_noise_adds_fine_detail():
    smooth = blur(texture(4, seed=6), 2.0)  # values well inside [0, 1]: no clipping
    noisy = smooth + 0.03 * torch.randn(smooth.shape, generator=gen(7), dtype=torch.float64)
    values = run(u8(smooth), u8(noisy), batch_size=2)[0].compute()
    assert values[RATIO[0]].value > 10
    assert all(values[k].value > 1 for k in RATIO)
    assert values["gradient_energy_ratio"].value > 2


# -- known answers: sinusoids -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [32, 16, 8, 4])  # diagonal cosines at r = k sqrt(2) / 128: each band's centre
def test_a_sinusoid_puts_its_energy_in_its_band(k):
    img = cosine(k / S, k / S)
    p = band_power(img)[0]
    band = next(i for i, (lo, hi) in enumerate(DEFAULT_BANDS) if lo < k * math.sqrt(2) / S <= hi)
    assert int(p.argmax()) == band
    # a bin-centred cosine under the periodic Hann window: exactly A^2 / 2 = 0.08, all in its band
    assert float(p[band]) == pytest.approx(0.08, abs=1e-12)
    assert float(p.sum() - p[band]) < 1e-20
    # halving the amplitude quarters the band ratio; the other bands are empty (0 / 0 -> nan)
    ratio = detail_band_ratio(img, cosine(k / S, k / S, amplitude=0.2))[0]
    assert float(ratio[band]) == pytest.approx(0.25, abs=1e-12)


@pytest.mark.parametrize("fx,fy,band", [(0.3, 0.02, 0), (0.15, 0.05, 1), (0.07, 0.055, 2)])
def test_an_off_grid_sinusoid_stays_in_its_band(fx, fy, band):
    p = band_power(cosine(fx, fy))[0]
    assert float(p[band] / p.sum()) > 0.999  # Hann leakage is a couple of bins wide
    assert float(p[band]) == pytest.approx(0.08, rel=1e-4)  # off-grid: the window-weighted variance ~ A^2 / 2


def test_band_edges_are_lower_open_upper_closed():
    # f = 0.25 exactly, no window: a single pair of DFT bins at r = 0.25, which belongs to (0.125, 0.25]
    img = cosine(0.25, 0.0)
    p = band_power(img, window="none")[0]
    assert float(p[1]) == pytest.approx(0.08, abs=1e-12) and float(p[0]) < 1e-20
    masks = band_masks(S, S, DEFAULT_BANDS)
    assert not bool((masks.sum(0) > 1).any())  # bands do not overlap
    assert bool(masks[1, 0, 32]) and not bool(masks[0, 0, 32])  # bin (fy, fx) = (0, 32/128)


def test_band_psnr_known_value():
    a = texture(2, seed=8)
    amp = 0.01
    b = a + cosine(12 / S, 0.0, amplitude=amp) - 0.5  # adds A cos at r = 0.094 (bin-centred): band 2
    psnr = band_psnr(a, b)
    assert torch.allclose(psnr[:, 2], torch.full((2,), 10 * math.log10(2 / amp ** 2), dtype=torch.float64),
                          rtol=0, atol=1e-9)
    assert bool((psnr[:, [0, 1, 3]] > 250).all())  # no error there (only float64 rounding)


def test_gradient_energy_known_values():
    yy, xx = grid(32)
    ramp = (xx / 31)[None, None].repeat(1, 3, 1, 1)  # gx = 1/31 everywhere, gy = 0
    assert float(gradient_energy(ramp)[0]) == pytest.approx(1 / 31 ** 2, rel=1e-12)
    assert float(gradient_energy(torch.full((1, 3, 8, 8), 0.3, dtype=torch.float64))[0]) == 0.0


def test_luma_weights_and_ranges():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    x[:, 0], x[:, 1], x[:, 2] = 255, 0, 255
    assert float(luma(x, data_range=255)[0, 0, 0]) == pytest.approx(0.299 + 0.114, abs=1e-15)
    a, b = u8(texture(2, 48, seed=9)), u8(blur(texture(2, 48, seed=9), 1.0))
    s8 = detail_stats(a, b, data_range=255)
    sf = detail_stats(a.double() / 255, b.double() / 255, data_range=1.0)
    for k in s8:
        torch.testing.assert_close(s8[k], sf[k], rtol=1e-12, atol=0)


# -- undefined ratios, reductions -------------------------------------------------------------------------------
def test_flat_originals_make_per_image_ratios_undefined_not_the_dataset_value():
    a = u8(texture(3, seed=10))
    b = u8(blur(texture(3, seed=10), 1.0))
    a[1] = 128  # a flat original: no power in any band, no gradient
    metric, per_image = run(a, b, batch_size=3)
    assert torch.isposinf(per_image[RATIO[0]][1]) and torch.isposinf(per_image["gradient_energy_ratio"][1])
    values = metric.compute()
    for k in RATIO + ["gradient_energy_ratio"]:
        v = values[k]
        assert v.value is not None and math.isfinite(v.value)
        assert v.extra["n_undefined"] == 1 and v.n == 3

    flat = torch.full((2, 3, 16, 16), 90, dtype=torch.uint8)
    values = run(flat, flat.clone(), batch_size=2)[0].compute()
    for k in RATIO + ["gradient_energy_ratio"]:
        assert values[k].value is None and "undefined" in values[k].reason
        assert values[k].extra["n_undefined"] == 2


def test_ratio_of_sums_resists_a_near_flat_original():
    a = texture(4, seed=11)
    a[0] = blur(a[0:1], 4.0)[0]  # next to no power in the finest band
    b = a + 0.01 * torch.randn(a.shape, generator=gen(12), dtype=torch.float64)  # the same mild noise everywhere
    sums = run(u8(a), u8(b), batch_size=4)[0].compute()[RATIO[0]]
    mean = run(u8(a), u8(b), batch_size=4, settings={"ratio_reduction": "mean-of-ratios"})[0].compute()[RATIO[0]]
    assert mean.value == pytest.approx(sums.extra["mean_of_image_ratios"], rel=1e-12)
    assert sums.value < 1.1 < 3 < mean.value  # one near-flat image dominates the mean of ratios


# -- streaming invariances --------------------------------------------------------------------------------------
def _assert_same_values(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    for k in x:
        vx, vy = x[k], y[k]
        if vx.value is None:
            assert vy.value is None, k
        else:
            assert vy.value == pytest.approx(vx.value, rel=1e-12, abs=1e-12), k
        assert vx.n == vy.n, k
        assert vx.extra.keys() == vy.extra.keys(), k
        for e in vx.extra:
            if isinstance(vx.extra[e], float):
                assert vy.extra[e] == pytest.approx(vx.extra[e], rel=1e-12, abs=1e-12), (k, e)
            else:
                assert vy.extra[e] == vx.extra[e], (k, e)


def _pairs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = texture(4, 64, seed=seed)
    b = blur(a, 0.8) + 0.01 * torch.randn(a.shape, generator=gen(seed + 1), dtype=torch.float64)
    a, b = u8(a), u8(b)
    b[2] = a[2]  # an identical pair exercises the +inf band PSNR path
    return a, b


def test_dataset_values_are_independent_of_batch_size():
    a, b = _pairs(13)
    whole, per_whole = run(a, b, batch_size=4)
    single, per_single = run(a, b, batch_size=1)
    _assert_same_values(whole.compute(), single.compute())
    for k in per_whole:
        torch.testing.assert_close(per_whole[k], per_single[k], rtol=1e-12, atol=0, equal_nan=True)


def test_state_dict_round_trip_and_merge():
    a, b = _pairs(15)
    whole, _ = run(a, b, batch_size=4)
    expected = whole.compute()

    restored = Detail()
    restored.load_state_tensors(whole.state_tensors())
    assert restored.compute() == expected

    first, _ = run(a[:1], b[:1], batch_size=1)  # two shards merged as processes would be
    second, _ = run(a[1:], b[1:], batch_size=2)
    first.merge_state(second.state_tensors())
    _assert_same_values(expected, first.compute())

    whole.reset()
    assert all(v.value is None for v in whole.compute().values())


def test_states_are_sums_with_float64_accumulators():
    m = Detail()
    assert all(r == "sum" for r in m._state_kinds().values())
    assert {d.dtype for d in m.state_tensors().values()} == {torch.float64, torch.int64}


def test_mixed_image_sizes_accumulate():
    a1, b1 = _pairs(17)
    a2 = u8(texture(2, 48, seed=18))
    b2 = u8(blur(texture(2, 48, seed=18), 1.0))
    m = Detail()
    m.update(Batch(list("abcd"), a1, b1))
    m.update(Batch(list("ef"), a2, b2))
    v = m.compute()
    assert v[RATIO[0]].n == 6 and v[RATIO[0]].value < 1


# -- settings, registry, protocol -------------------------------------------------------------------------------
def test_protocol_file_matches_the_defaults():
    doc = tomllib.loads(PROTOCOL.read_text())
    assert doc["name"] == "detail" and doc["version"] == "1.0" and doc["task"] == "detail"
    assert doc["preprocessing"] == {"policy": "native-or-pad", "resolution": 256}
    # fixed behaviour, documented under [notes] (not settings)
    assert doc["notes"]["preprocessing"] == {"seed": 0} and doc["notes"]["reconstruction"]["quantisation"] == "uint8"
    assert doc["metrics"]["default"] == ["psnr", "ssim", "lpips", "detail", "compression"]
    assert doc["detail"] == DEFAULT_SETTINGS
    assert [o.key for o in Detail(doc["detail"]).outputs] == [o.key for o in Detail.outputs]


def test_registered_and_outputs():
    assert METRICS.get("detail") is Detail
    assert metric_for_output("band_psnr@0.25-0.5") == "detail"
    assert [o.key for o in Detail.outputs] == RATIO + BPSNR + ["gradient_energy_ratio"]
    assert RATIO == ["detail_band_ratio@0.25-0.5", "detail_band_ratio@0.125-0.25",
                     "detail_band_ratio@0.0625-0.125", "detail_band_ratio@0.03125-0.0625"]
    assert Detail.needs == frozenset({"pixels"})


def test_configured_bands_set_the_keys():
    m = Detail({"bands": [[0.1, 0.5], [0.0, 0.1]]})
    keys = [o.key for o in m.outputs]
    assert keys == ["detail_band_ratio@0.1-0.5", "detail_band_ratio@0-0.1", "band_psnr@0.1-0.5",
                    "band_psnr@0-0.1", "gradient_energy_ratio"]
    a = u8(texture(2, 32, seed=19))
    assert set(m.update(Batch(["a", "b"], a, a.clone()))) == set(keys)
    assert set(m.compute()) == set(keys)
    assert [o.key for o in Detail.outputs] == RATIO + BPSNR + ["gradient_energy_ratio"]  # class unchanged


@pytest.mark.parametrize("settings,match", [
    ({"bandz": []}, "no setting"),
    ({"window": "kaiser"}, "not implemented"),
    ({"gradient": "sobel"}, "not implemented"),
    ({"bands": [[0.5, 0.25]]}, "lo < hi"),
    ({"bands": []}, "non-empty"),
    ({"luma_weights": [1, 0]}, "three"),
])
def test_bad_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        Detail(settings)


def test_rejects_tiny_images():
    x = torch.zeros(1, 3, 1, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="2x2"):
        Detail().update(Batch(["a"], x, x.clone()))
