"""PSNR and SSIM: per-image values against scikit-image, range conventions, batch-size independence, state."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from vtbench.metrics import METRICS, Batch
from vtbench.metrics.functional import gaussian_kernel1d, psnr, ssim
from vtbench.metrics.pixel import PSNR, SSIM

skm = pytest.importorskip("skimage.metrics", reason="scikit-image is the reference implementation")

SIZES = [(11, 11), (12, 17), (13, 29), (32, 32), (64, 48), (48, 64)]
TOL = 1e-6


def structured_pairs(h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, h, w) originals and reconstructions: random, gradients, checkerboards, stripes, constants,
    extremes, noisy, shifted and quantised versions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    gradient = np.stack([xx, yy, (xx + yy) / 2]) * 255
    checker = ((np.indices((h, w)).sum(0) // 2) % 2 * 255.0)[None].repeat(3, 0)
    stripes = (np.sin(xx * 20) * 0.5 + 0.5)[None].repeat(3, 0) * 255
    noise = rng.integers(0, 256, (3, h, w)).astype(np.float64)

    def u8(a: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)

    pairs = [
        (noise, rng.integers(0, 256, (3, h, w))),                       # unrelated random images
        (noise, noise + rng.normal(0, 8, (3, h, w))),                   # mild noise
        (gradient, gradient + rng.normal(0, 20, (3, h, w))),            # strong noise on a smooth image
        (gradient, np.roll(gradient, 1, axis=2)),                       # one-pixel shift
        (checker, 255 - checker),                                       # inverted pattern
        (stripes, (stripes // 32) * 32),                                # coarse quantisation
        (np.full((3, h, w), 128.0), np.full((3, h, w), 130.0)),         # flat, different levels
        (np.zeros((3, h, w)), np.full((3, h, w), 255.0)),               # extremes
        (checker, checker + rng.normal(0, 3, (3, h, w))),
    ]
    a = torch.from_numpy(np.stack([u8(p[0]) for p in pairs]))
    b = torch.from_numpy(np.stack([u8(p[1]) for p in pairs]))
    return a, b


def sk_psnr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():  # skimage warns on division by zero for identical images
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.array([skm.peak_signal_noise_ratio(x.numpy(), y.numpy(), data_range=255) for x, y in zip(a, b)])


def sk_ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return np.array([skm.structural_similarity(x.numpy(), y.numpy(), gaussian_weights=True, sigma=1.5,
                                               use_sample_covariance=False, data_range=255, channel_axis=0)
                     for x, y in zip(a, b)])


def run(metric_cls, a: torch.Tensor, b: torch.Tensor, batch_size: int):
    metric = metric_cls()
    per_image = []
    for i in range(0, a.shape[0], batch_size):
        ids = [str(j) for j in range(i, min(i + batch_size, a.shape[0]))]
        per_image.append(metric.update(Batch(ids, a[i:i + batch_size], b[i:i + batch_size]))[metric.name])
    return metric, torch.cat(per_image)


# -- against skimage ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_psnr_matches_skimage(size):
    a, b = structured_pairs(*size)
    ref = sk_psnr(a, b)
    ours = psnr(a, b, data_range=255).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    _, per_image = run(PSNR, a, b, batch_size=4)  # the metric class returns the same per-image values
    np.testing.assert_allclose(per_image.numpy(), ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ssim_matches_skimage(size):
    a, b = structured_pairs(*size, seed=1)
    ref = sk_ssim(a, b)
    ours = ssim(a, b, data_range=255).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    _, per_image = run(SSIM, a, b, batch_size=4)
    np.testing.assert_allclose(per_image.numpy(), ref, rtol=0, atol=TOL)


def test_ssim_of_identical_images_is_one():
    a, _ = structured_pairs(20, 24)
    np.testing.assert_allclose(ssim(a, a, data_range=255).numpy(), 1.0, atol=1e-12)


@pytest.mark.parametrize("size", [(7, 7), (10, 64), (64, 10)])
def test_ssim_rejects_images_smaller_than_the_window(size):
    a, b = structured_pairs(*size)
    with pytest.raises(ValueError, match="11x11"):
        ssim(a, b, data_range=255)
    with pytest.raises(ValueError):  # skimage refuses them too
        sk_ssim(a[:1], b[:1])


def test_gaussian_window_matches_scipy():
    from scipy.ndimage import gaussian_filter1d

    impulse = np.zeros(11)
    impulse[5] = 1.0
    ref = gaussian_filter1d(impulse, sigma=1.5, truncate=3.5, mode="constant")
    np.testing.assert_allclose(gaussian_kernel1d(1.5, 3.5).numpy(), ref, atol=1e-15)


# -- conventions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [psnr, ssim], ids=["psnr", "ssim"])
def test_uint8_and_unit_float_paths_agree(fn):
    a, b = structured_pairs(33, 40, seed=2)
    from_uint8 = fn(a, b, data_range=255)
    from_float = fn(a.double() / 255, b.double() / 255, data_range=1.0)
    finite = torch.isfinite(from_uint8)
    assert torch.equal(finite, torch.isfinite(from_float))
    torch.testing.assert_close(from_uint8[finite], from_float[finite], rtol=0, atol=1e-10)


def test_psnr_of_identical_images_is_inf():
    a, _ = structured_pairs(16, 16)
    assert torch.isposinf(psnr(a, a, data_range=255)).all()
    assert np.isinf(sk_psnr(a[:1], a[:1])).all()


def test_psnr_dataset_mean_excludes_identical_images_and_counts_them():
    a, b = structured_pairs(16, 16)
    b[2] = a[2]
    b[5] = a[5]
    metric, per_image = run(PSNR, a, b, batch_size=3)
    assert torch.isposinf(per_image[[2, 5]]).all()  # per-image values stay the truth
    value = metric.compute()["psnr"]
    finite = per_image[torch.isfinite(per_image)]
    assert value.value == pytest.approx(float(finite.mean()), rel=1e-12)
    assert value.n == a.shape[0] - 2
    assert value.extra == {"n_images": a.shape[0], "n_identical": 2}
    assert value.unit == "dB" and value.higher_is_better is True


def test_psnr_all_identical_is_null_with_reason():
    a, _ = structured_pairs(16, 16)
    value = run(PSNR, a, a.clone(), batch_size=4)[0].compute()["psnr"]
    assert value.value is None and "identical" in value.reason
    assert value.extra["n_identical"] == a.shape[0]


@pytest.mark.parametrize("cls", [PSNR, SSIM], ids=["psnr", "ssim"])
def test_no_images_is_null_not_zero(cls):
    value = cls().compute()[cls.name]
    assert value.value is None and value.reason


# -- streaming invariances ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PSNR, SSIM], ids=["psnr", "ssim"])
def test_dataset_mean_is_independent_of_batch_size(cls):
    a, b = structured_pairs(24, 20, seed=3)
    b[1] = a[1]  # an identical pair exercises the +inf path of PSNR
    results = {bs: run(cls, a, b, batch_size=bs) for bs in (1, 4, a.shape[0])}
    values = {bs: m.compute()[cls.name] for bs, (m, _) in results.items()}
    ref = values[a.shape[0]]
    for bs, v in values.items():
        assert v.value == pytest.approx(ref.value, rel=1e-12, abs=1e-12), bs
        assert (v.n, v.extra) == (ref.n, ref.extra)
        assert torch.equal(results[bs][1], results[a.shape[0]][1])  # per-image values do not depend on batching


@pytest.mark.parametrize("cls", [PSNR, SSIM], ids=["psnr", "ssim"])
def test_state_dict_round_trip_and_merge(cls):
    a, b = structured_pairs(24, 20, seed=4)
    b[0] = a[0]
    whole, _ = run(cls, a, b, batch_size=a.shape[0])
    expected = whole.compute()[cls.name]

    restored = cls()
    restored.load_state_tensors(whole.state_tensors())
    assert restored.compute()[cls.name] == expected

    first, _ = run(cls, a[:4], b[:4], batch_size=2)  # two shards merged as processes would be
    second, _ = run(cls, a[4:], b[4:], batch_size=3)
    first.merge_state(second.state_tensors())
    merged = first.compute()[cls.name]
    assert merged.value == pytest.approx(expected.value, rel=1e-12)
    assert (merged.n, merged.extra) == (expected.n, expected.extra)

    whole.reset()
    assert whole.compute()[cls.name].value is None


def test_states_are_float64_sums():
    for cls in (PSNR, SSIM):
        m = cls()
        sums = [k for k, v in m.state_tensors().items() if v.dtype == torch.float64]
        assert sums and all(r == "sum" for r in m._state_kinds().values())


@pytest.mark.parametrize("name,cls", [("psnr", PSNR), ("ssim", SSIM)])
def test_registered(name, cls):
    assert METRICS.get(name) is cls
    assert [o.key for o in cls.outputs] == [name]
    assert cls.outputs[0].higher_is_better is True


def test_known_value():
    # one pixel value off by one level in every pixel: MSE = 1 in uint8 units -> 20 log10(255)
    a = torch.full((1, 3, 12, 12), 100, dtype=torch.uint8)
    assert float(psnr(a, a + 1, data_range=255)[0]) == pytest.approx(20 * math.log10(255), abs=1e-12)
