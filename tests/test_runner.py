"""The one-pass runner: results, batch-size independence, resume, skip, odd inputs."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vtbench import results
from vtbench.runner import NonFiniteOutputError, RunConfig, run
from vtbench.tokenizers.base import Tokenizer

FAST = ["psnr", "ssim", "compression", "speed"]


def _cfg(data, out, **kw):
    kw.setdefault("metrics", FAST)
    kw.setdefault("progress", False)
    kw.setdefault("preprocess", "native")
    return RunConfig(data=str(data), out=out, **kw)


def _values(rec):
    return {k: v["value"] for k, v in rec["metrics"].items()}


def test_result_record_and_samples(image_folder, tmp_path):
    (rec,) = run(["jpeg.q50"], _cfg(image_folder, tmp_path, batch_size=3))
    assert rec["schema_version"] == results.SCHEMA_VERSION
    assert rec["dataset"]["n_used"] == 8 and rec["protocol"]["version"]
    assert rec["environment"]["torch"] and rec["tokenizer"]["name"] == "jpeg.q50"
    v = _values(rec)
    assert 20 < v["psnr"] < 60 and 0 < v["ssim"] < 1 and v["bpp"] > 0
    assert v["tokens_per_image"] is None and rec["metrics"]["tokens_per_image"]["reason"]
    run_dir = next(tmp_path.rglob("result.json")).parent
    samples = pd.read_csv(run_dir / "samples.csv")
    assert len(samples) == 8 and math.isclose(samples["psnr"].mean(), v["psnr"], rel_tol=1e-9)
    assert not (run_dir / "progress.pt").exists()
    thumbs = rec["thumbnails"]
    assert len(thumbs) == 6 and len({t["id"] for t in thumbs}) == 6
    for t in thumbs:
        o, r = Image.open(run_dir / t["original"]), Image.open(run_dir / t["reconstruction"])
        assert o.size == r.size == (64, 64)
    df = results.load(tmp_path)
    assert set(df["metric"]) >= {"psnr", "ssim", "bpp"} and (df["tokenizer"] == "jpeg.q50").all()


def test_batch_size_independence(image_folder, tmp_path):
    metrics = ["psnr", "ssim", "compression"]
    # A codec works image by image: batch sizes 1 and 8 agree to float64 summation order.
    a = _values(run(["jpeg.q50"], _cfg(image_folder, tmp_path / "a", batch_size=1, metrics=metrics))[0])
    b = _values(run(["jpeg.q50"], _cfg(image_folder, tmp_path / "b", batch_size=8, metrics=metrics))[0])
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k] if b[k] is None else a[k] == pytest.approx(b[k], rel=1e-12, abs=0), k
    # A learned tokenizer: float32 convolution kernels differ by batch size at rounding level, which can flip a
    # rare 8-bit pixel after quantisation; the metrics themselves add no batch dependence.
    a = _values(run(["tiny.vq"], _cfg(image_folder, tmp_path / "c", batch_size=1, metrics=metrics))[0])
    b = _values(run(["tiny.vq"], _cfg(image_folder, tmp_path / "d", batch_size=8, metrics=metrics))[0])
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-9), k


def test_resume_after_interruption_matches_uninterrupted(image_folder, tmp_path):
    full = _values(run(["jpeg.q25"], _cfg(image_folder, tmp_path / "full", batch_size=2))[0])
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(["jpeg.q25"], _cfg(image_folder, out, batch_size=2, stop_after_batches=2))
    progress = list(out.rglob("progress.pt"))
    assert progress and not list(out.rglob("result.json"))
    state = torch.load(progress[0], weights_only=True)
    assert len(state["done"]) == 4
    resumed = _values(run(["jpeg.q25"], _cfg(image_folder, out, batch_size=2))[0])
    for k in ("psnr", "ssim", "bpp", "bits_per_image"):
        assert resumed[k] == pytest.approx(full[k], rel=1e-12), k
    samples = pd.read_csv(next(out.rglob("samples.csv")))
    assert len(samples) == 8 and samples["id"].is_unique


def test_progress_with_states_of_another_metric_version_starts_over(image_folder, tmp_path):
    """A progress file whose metric states lack a state the metric now declares (an older vtbench) is not
    loaded half-way (it raised KeyError): the run starts over and gives the uninterrupted values."""
    full = _values(run(["jpeg.q25"], _cfg(image_folder, tmp_path / "full", batch_size=2))[0])
    out = tmp_path / "old"
    with pytest.raises(KeyboardInterrupt):
        run(["jpeg.q25"], _cfg(image_folder, out, batch_size=2, stop_after_batches=2))
    path = next(out.rglob("progress.pt"))
    state = torch.load(path, weights_only=True)
    del state["metrics"]["compression"]["view_tokens"]
    torch.save(state, path)
    resumed = _values(run(["jpeg.q25"], _cfg(image_folder, out, batch_size=2))[0])
    for k in ("psnr", "ssim", "bpp", "bits_per_image"):
        assert resumed[k] == pytest.approx(full[k], rel=1e-12), k
    assert len(pd.read_csv(next(out.rglob("samples.csv")))) == 8


def test_completed_run_is_skipped_unless_forced(image_folder, tmp_path):
    cfg = _cfg(image_folder, tmp_path, metrics=["psnr"])
    first = run(["identity.none"], cfg)[0]
    again = run(["identity.none"], cfg)[0]
    assert again["created"] == first["created"]
    cfg.force = True
    forced = run(["identity.none"], cfg)[0]
    assert forced["created"] != first["created"]


def test_identity_psnr_is_not_reported_as_a_number_of_zero(image_folder, tmp_path):
    rec = run(["identity.none"], _cfg(image_folder, tmp_path, metrics=["psnr", "ssim"]))[0]
    assert rec["metrics"]["ssim"]["value"] == pytest.approx(1.0)
    psnr = rec["metrics"]["psnr"]
    assert psnr["value"] is None or psnr["value"] > 60  # identical images: infinite PSNR, never 0
    json.dumps(rec, allow_nan=False)


def test_save_reconstructions_reproduce_reported_psnr(image_folder, tmp_path):
    from skimage.metrics import peak_signal_noise_ratio
    rec_dir = tmp_path / "recon"
    rec = run(["webp.q10"], _cfg(image_folder, tmp_path / "out", metrics=["psnr"], save_reconstructions=rec_dir))[0]
    pngs = sorted(rec_dir.rglob("*.png"))
    assert len(pngs) == 8
    vals = []
    for p in pngs:
        rel = p.relative_to(rec_dir / "webp.q10")
        orig = np.asarray(Image.open(image_folder / rel).convert("RGB"))
        vals.append(peak_signal_noise_ratio(orig, np.asarray(Image.open(p)), data_range=255))
    assert np.mean(vals) == pytest.approx(rec["metrics"]["psnr"]["value"], rel=1e-6)


def test_corrupt_image_is_skipped_and_recorded(image_folder, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    (data / "cls_a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rec = run(["jpeg.q50"], _cfg(data, tmp_path / "out", metrics=["psnr"]))[0]
    assert rec["dataset"]["n_used"] == 8
    (skip,) = rec["dataset"]["skipped"]
    assert "broken.png" in skip["id"] and skip["reason"]


class _NaNTokenizer(Tokenizer):
    def encode(self, images):
        from vtbench.tokenizers.base import Tokens
        return Tokens(kind="reference", bits=torch.ones(len(images), dtype=torch.float64), tokens_per_image=None,
                      latents=images)

    def decode(self, tokens):
        y = tokens.latents.clone()
        if self.calls >= 1:
            y[0, 0, 0, 0] = float("nan")
        self.calls += 1
        return y

    def tokens_per_image(self, h, w):
        return None


def test_nan_output_stops_with_clear_error_and_keeps_progress(image_folder, tmp_path, monkeypatch):
    import vtbench.runner as runner
    real = runner.build_tokenizer

    def fake(name, **kw):
        tok = real("identity.none", **kw)
        bad = _NaNTokenizer(tok.card)
        bad.calls = 0
        return bad

    monkeypatch.setattr(runner, "build_tokenizer", fake)
    with pytest.raises(NonFiniteOutputError, match="NaN"):
        run(["identity.none"], _cfg(image_folder, tmp_path, batch_size=2, metrics=["psnr"]))
    state = torch.load(next(tmp_path.rglob("progress.pt")), weights_only=True)
    assert len(state["done"]) == 2


def test_unsupported_resolution_is_reported(image_folder, tmp_path):
    with pytest.raises(ValueError, match="divisible by 8"):
        run(["tiny.vq"], _cfg(image_folder, tmp_path, preprocess="adm-center-crop", resolution=60, metrics=["psnr"]))


def test_unknown_metric_suggests(image_folder, tmp_path):
    from vtbench.registry import UnknownNameError
    with pytest.raises(UnknownNameError, match="psnr"):
        run(["identity.none"], _cfg(image_folder, tmp_path, metrics=["psnrr"]))


def test_fewer_metrics_after_a_full_run_keep_the_earlier_metrics(tmp_path):
    """`--metrics psnr` after a run with psnr and ssim: the record keeps ssim, marked as carried from that run."""
    from vtbench.runner import RunConfig, run
    base = dict(data="embedded/photos", limit=2, out=tmp_path, progress=False, device="cpu")
    first = run(["jpeg.q50"], RunConfig(metrics=["psnr", "ssim"], **base))[0]
    second = run(["jpeg.q50"], RunConfig(metrics=["psnr"], **base))[0]
    assert second["metrics"]["ssim"]["value"] == first["metrics"]["ssim"]["value"]
    assert second["metrics"]["ssim"]["extra"]["carried_from"]["fingerprint"] == first["run"]["fingerprint"]
    assert second["run"]["carried_metrics"] == ["ssim"]
    other = run(["jpeg.q50"], RunConfig(metrics=["psnr"], seed=1, **{**base, "limit": 3}))[0]  # another measurement
    assert "ssim" not in other["metrics"]
