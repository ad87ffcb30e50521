"""``vtbench gfid``: sample and reference readers (image folders, ADM .npz layouts, token files), the Inception
multi-output path, a folder scored against itself, reference .npz variants, batch-size invariance of all five
numbers, and the CLI end to end. Inception runs on a handful of 64x64 images only."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vtbench.cli import app
from vtbench.gfid import (
    Reference,
    SampleFormatError,
    SizeMismatchError,
    check_sizes,
    extract_samples,
    gfid_run,
    iter_npz_rows,
    iter_samples,
    metric_key,
    open_reference,
    read_token_file,
    reference_image_size,
    result_path,
    score_samples,
    score_state,
    write_token_file,
)
from vtbench.metrics.inception import LOGITS_DIM, SPATIAL_DIM

runner = CliRunner()
N_IMAGES = 5  # the fewest for k=3 manifolds plus one


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("gfid-cache")


@pytest.fixture(autouse=True)
def _cache_env(cache, monkeypatch):
    monkeypatch.setenv("VTBENCH_CACHE", str(cache))


def _images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8, smooth colour fields (image-like for Inception)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((size, size), Image.BICUBIC)) for s in small])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    for i, img in enumerate(_images(N_IMAGES)):
        Image.fromarray(img).save(root / f"s{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder_reference(folder, extractor, cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VTBENCH_CACHE", str(cache))
        return open_reference(str(folder), resolution=64)  # 64x64 images: the ADM crop is the identity


@pytest.fixture(scope="module")
def headed(extractor):
    """The extractor with a random classifier head, so the Inception Score path runs with default_1.pt too."""
    w = torch.randn(LOGITS_DIM, 2048, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) / 20
    return dataclasses.replace(extractor, logits_weight=w)


@pytest.fixture(scope="module")
def headed_state(folder, headed):
    return extract_samples(iter_samples(str(folder), batch_size=N_IMAGES), headed)


# -- readers ------------------------------------------------------------------------------------------------
def test_adm_npz_nhwc_read_in_order(tmp_path):
    imgs = _images(7, size=16, seed=3)
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, arr_0=imgs, arr_1=np.arange(7))
        s = iter_samples(str(path), batch_size=3)
        assert s.kind == "adm-npz" and len(s) == 7 and s.provenance["sha256"]
        batches = list(s)
        assert [b.shape[0] for b in batches] == [3, 3, 1]
        got = torch.cat(batches)
        assert got.dtype == torch.uint8 and got.shape == (7, 3, 16, 16)
        assert torch.equal(got, torch.from_numpy(imgs).permute(0, 3, 1, 2))
        assert torch.equal(torch.cat(list(iter_samples(str(path), batch_size=2, limit=5))), got[:5])
    kept = np.concatenate(list(iter_npz_rows(tmp_path / "savez.npz", "arr_0", 2, keep={1, 4, 6})))
    assert np.array_equal(kept, imgs[[1, 4, 6]])


@pytest.mark.parametrize("bad, words", [
    (lambda x: x.transpose(0, 3, 1, 2), ["NCHW", "transpose(0, 2, 3, 1)"]),
    (lambda x: x.astype(np.float32) / 255, ["float32", "uint8"]),
    (lambda x: x[..., :1], ["RGB"]),
])
def test_adm_npz_bad_layouts_refused(tmp_path, bad, words):
    path = tmp_path / "bad.npz"
    np.savez(path, arr_0=bad(_images(2, size=16)))
    with pytest.raises(SampleFormatError) as err:
        iter_samples(str(path))
    assert str(path) in str(err.value) and "arr_0" in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_npz_without_samples_names_keys(tmp_path):
    path = tmp_path / "stats.npz"
    np.savez(path, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(SampleFormatError, match="keys found: mu, sigma"):
        iter_samples(str(path))
    with pytest.raises(FileNotFoundError):
        iter_samples(str(tmp_path / "missing.npz"))


def test_folder_samples_group_sizes(tmp_path):
    for i, size in enumerate((16, 16, 24, 16)):
        Image.fromarray(_images(1, size=size, seed=i)[0]).save(tmp_path / f"{i}.png")
    shapes = [tuple(b.shape) for b in iter_samples(str(tmp_path), batch_size=8)]
    assert shapes == [(2, 3, 16, 16), (1, 3, 24, 24), (1, 3, 16, 16)]  # order kept, equal sizes stacked


def test_token_file_round_trip_tiny_vq(tmp_path):
    from vtbench.tokenizers import build_tokenizer
    tok = build_tokenizer("tiny.vq")
    x = torch.from_numpy(_images(3, size=32)).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        tokens = tok.encode(x)
        expected = tok.decode(tokens).clamp(0, 1).mul(255).round().to(torch.uint8)
    path = write_token_file(tmp_path / "t.npz", tokens.codes, tok, 32, 32, labels=[1, 2, 3])
    tf = read_token_file(path)
    assert tf.tokenizer == "tiny.vq" and (tf.height, tf.width) == (32, 32) and tf.labels.tolist() == [1, 2, 3]
    assert np.array_equal(tf.codes, tokens.codes.numpy()) and tf.codes.dtype == np.int64
    s = iter_samples(str(path), batch_size=2)
    assert s.kind == "tokens" and s.tokenizer.name == "tiny.vq" and len(s) == 3
    assert s.size == (32, 32) and (s.provenance["height"], s.provenance["width"]) == (32, 32)
    assert torch.equal(torch.cat(list(s)), expected)
    # no name in the file: --tokenizer is needed; codes of the wrong shape are refused before decoding
    bare = write_token_file(tmp_path / "bare.npz", tokens.codes, None, 32, 32)
    with pytest.raises(SampleFormatError, match="--tokenizer"):
        iter_samples(str(bare))
    assert torch.equal(torch.cat(list(iter_samples(str(bare), tokenizer="tiny.vq"))), expected)
    wrong = write_token_file(tmp_path / "wrong.npz", tokens.codes, "tiny.vq", 64, 64)
    with pytest.raises(ValueError, match="codes of shape"):
        iter_samples(str(wrong))


# -- the Inception multi-output path ----------------------------------------------------------------------------
def test_multi_output_pool_is_bit_identical(extractor, headed):
    imgs = torch.from_numpy(_images(1, size=40, seed=5)).permute(0, 3, 1, 2).contiguous()
    x = extractor.resize(list(imgs.permute(0, 2, 3, 1).numpy()))
    out = headed.forward_resized_all(x)
    assert torch.equal(out.pool, extractor.forward_resized(x))  # rFID numbers cannot move
    assert out.spatial.shape == (1, SPATIAL_DIM) and (out.spatial >= 0).all()  # mixed_6/conv is after its ReLU
    assert torch.allclose(out.logits, out.pool @ headed.logits_weight.T, rtol=0, atol=1e-9)  # no bias, as ADM
    plain = extractor.features_all(imgs[:0])
    if extractor.has_logits:
        assert plain.logits.shape == (0, LOGITS_DIM)
    else:
        assert plain.logits is None and "VTBENCH_INCEPTION" in extractor.logits_unavailable_reason()


# -- scoring --------------------------------------------------------------------------------------------------
def test_folder_against_itself(folder, folder_reference, extractor):
    ref = folder_reference
    assert ref.n == N_IMAGES and ref.features.shape == (N_IMAGES, 2048) and ref.extractor == extractor.id
    v = score_samples(iter_samples(str(folder), batch_size=3), ref)
    assert abs(v["gfid"].value) < 1e-6 and abs(v["sfid"].value) < 1e-6
    assert v["precision"].value == 1.0 and v["recall"].value == 1.0
    assert v["gfid"].n == N_IMAGES and v["gfid"].extra["n_reference"] == N_IMAGES
    assert v["gfid"].extra["weights_sha256"] == extractor.sha256
    if not extractor.has_logits:
        assert v["inception_score"].value is None and "VTBENCH_INCEPTION" in v["inception_score"].reason
    # the second open reads the cache
    again = open_reference(str(folder), resolution=64)
    assert "cache" in again.description and np.array_equal(again.pool.sigma, ref.pool.sigma)


def test_batch_size_invariance_all_five(folder, folder_reference, headed, headed_state):
    one = extract_samples(iter_samples(str(folder), batch_size=1), headed)
    runs = [score_state(st, folder_reference, extractor=headed) for st in (one, headed_state)]
    for key in ("gfid", "sfid", "inception_score", "precision", "recall"):
        a, b = runs[0][key].value, runs[1][key].value
        assert a is not None and b is not None, key
        assert abs(a - b) <= 1e-9 * max(1.0, abs(a)), (key, a, b)


def test_adm_reference_npz_variants(folder_reference, extractor, headed_state, tmp_path):
    state = headed_state
    pool, spatial = folder_reference.pool, folder_reference.spatial
    # mu/sigma only: gFID, null sFID and precision/recall with reasons naming the missing keys
    only = tmp_path / "only_mu.npz"
    np.savez(only, mu=pool.mu, sigma=pool.sigma)
    ref = open_reference(str(only))
    v = score_state(state, ref, extractor=extractor)
    assert abs(v["gfid"].value) < 1e-6
    assert v["sfid"].value is None and "mu_s" in v["sfid"].reason
    assert v["precision"].value is None and "arr_0" in v["precision"].reason and v["recall"].value is None
    assert ref.id == "only_mu" and "ADM" in ref.description["statistics"]
    # ADM's full layout: mu/sigma, mu_s/sigma_s and arr_0 images (features computed from arr_0)
    full = tmp_path / "VIRTUAL_like.npz"
    np.savez(full, mu=pool.mu, sigma=pool.sigma, mu_s=spatial.mu, sigma_s=spatial.sigma, arr_0=_images(N_IMAGES))
    v = score_state(state, open_reference(str(full)), extractor=extractor)
    assert abs(v["gfid"].value) < 1e-6 and abs(v["sfid"].value) < 1e-6
    assert v["precision"].value == 1.0 and v["recall"].value == 1.0
    # wrong statistics shapes are refused with the expected dimension
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(2048), sigma=np.eye(2048), mu_s=np.zeros(2048), sigma_s=np.eye(2048))
    with pytest.raises(SampleFormatError, match="2023"):
        open_reference(str(bad))


# -- CLI ------------------------------------------------------------------------------------------------------
def test_cli_gfid_token_file_end_to_end(tmp_path, extractor, folder_reference, monkeypatch):
    import vtbench.tokenizers
    from vtbench.data.datasets import open_dataset
    from vtbench.data.policies import get_policy
    from vtbench.tokenizers import build_tokenizer
    ds = open_dataset("embedded/photos", get_policy("adm-center-crop", 64), limit=4, seed=0)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))]).float() / 255
    tok = build_tokenizer("tiny.vq")
    with torch.inference_mode():
        codes = tok.encode(x).codes
    tokens = write_token_file(tmp_path / "tiny_samples.npz", codes, "tiny.vq", 64, 64)
    ref_file = folder_reference.save(tmp_path / "folder_ref.npz")  # a vtbench reference file: no Inception here
    out = tmp_path / "results"
    trusts = []
    real = vtbench.tokenizers.build_tokenizer
    monkeypatch.setattr(vtbench.tokenizers, "build_tokenizer",
                        lambda *a, **kw: trusts.append(kw.get("trust")) or real(*a, **kw))
    r = runner.invoke(app, ["gfid", str(tokens), "--ref", str(ref_file), "--out", str(out), "--json",
                            "--trust-checkpoint"])
    assert r.exit_code == 0, r.output
    assert trusts == [True]  # --trust-checkpoint reaches build_tokenizer(trust=...), as in vtbench run
    summary = json.loads(r.stdout)
    rec = json.loads(Path(summary["result"]).read_text())
    path = result_path(out, rec["dataset"], "tiny.vq")
    assert summary["result"] == str(path) and path.is_file() and path.is_relative_to(out)
    assert ({k: rec["protocol"][k] for k in ("name", "version", "task")}
            == {"name": "generation", "version": "1.0", "task": "generation"} and rec["protocol"]["settings_sha256"])
    assert rec["tokenizer"]["name"] == "tiny.vq" and rec["tokenizer"]["family"] == "tiny"
    assert rec["dataset"]["id"] == folder_reference.id and rec["dataset"]["n_reference"] == N_IMAGES
    assert rec["dataset"]["file_sha256"] and rec["samples"]["sha256"]
    assert rec["samples"]["kind"] == "tokens" and rec["samples"]["n"] == 4 and rec["run"]["seed"] == 0
    assert (rec["samples"]["height"], rec["samples"]["width"]) == (64, 64) and rec["run"]["trust_checkpoint"]
    assert rec["run"]["resolution"] is None and rec["dataset"]["image_size"] == [64, 64]  # npz: size from the file
    # a vtbench reference file computed by this extractor: no mixed-pipeline warning
    assert "mixed pipelines" not in rec["metrics"]["gfid"]["extra"].get("warning", "")
    assert "rank-deficient" in summary["warnings"]["gfid"]
    assert set(rec["metrics"]) == {"gfid", "sfid", "inception_score", "precision", "recall"}
    for key, m in rec["metrics"].items():
        assert (m["value"] is None) == (m["reason"] is not None), key
    assert rec["metrics"]["gfid"]["value"] > 0 and rec["metrics"]["precision"]["value"] is not None


def test_cli_gfid_errors(tmp_path):
    r = runner.invoke(app, ["gfid", str(tmp_path / "nope"), "--ref", "embedded"])
    assert r.exit_code == 1 and "no such file" in r.output
    bad = tmp_path / "nchw.npz"
    np.savez(bad, arr_0=_images(2, size=16).transpose(0, 3, 1, 2))
    r = runner.invoke(app, ["gfid", str(bad), "--ref", "embedded"])
    assert r.exit_code == 1 and "NCHW" in r.output
    tokens = write_token_file(tmp_path / "t.npz", np.zeros((1, 4, 4), np.int64), None, 32, 32)
    r = runner.invoke(app, ["gfid", str(tokens), "--ref", "embedded", "-t", "tiny.vqq"])
    assert r.exit_code == 2 and "tiny.vq" in r.output


def test_cli_gfid_trust_checkpoint_default_off(tmp_path, monkeypatch):
    import vtbench.tokenizers
    from vtbench.tokenizers import build_tokenizer
    tok = build_tokenizer("tiny.vq")
    with torch.inference_mode():
        codes = tok.encode(torch.zeros(1, 3, 32, 32)).codes
    tokens = write_token_file(tmp_path / "t.npz", codes, "tiny.vq", 32, 32)
    trusts = []
    monkeypatch.setattr(vtbench.tokenizers, "build_tokenizer",
                        lambda *a, **kw: trusts.append(kw.get("trust")) or build_tokenizer(*a, **kw))
    for flag in ([], ["--trust-checkpoint"]):  # the missing reference fails after the samples are opened
        r = runner.invoke(app, ["gfid", str(tokens), "--ref", str(tmp_path / "missing.npz"), *flag])
        assert r.exit_code == 1 and "no such reference" in r.output
    assert trusts == [False, True]


# -- mixed pipelines ------------------------------------------------------------------------------------------
def test_adm_statistics_warn_mixed_pipeline(folder_reference, extractor, headed_state, tmp_path):
    pool, spatial = folder_reference.pool, folder_reference.spatial
    full = tmp_path / "VIRTUAL_like.npz"
    np.savez(full, mu=pool.mu, sigma=pool.sigma, mu_s=spatial.mu, sigma_s=spatial.sigma, arr_0=_images(N_IMAGES))
    ref = open_reference(str(full))
    v = score_state(headed_state, ref, extractor=extractor)
    for key in ("gfid", "sfid"):
        w = v[key].extra["warning"]
        # both warnings apply (5 < 2048 images, ADM statistics): joined, rank-deficient first
        assert w.index("rank-deficient") < w.index("; mixed pipelines") and "clean-fid vs legacy resize" in w
        assert ("mu_s/sigma_s" if key == "sfid" else "mu/sigma") in w and full.name in w
    for key in ("inception_score", "precision", "recall"):  # arr_0 features come from this extractor
        assert "mixed" not in v[key].extra.get("warning", "")
    # the warning survives a save / load of the reference
    again = Reference.load(ref.save(tmp_path / "saved.npz"))
    assert again.warnings == ref.warnings and set(again.warnings) == {"gfid", "sfid"}
    # statistics vtbench computed itself (arr_0 only; a dataset; a vtbench file of one): no mixed-pipeline warning
    images_only = tmp_path / "images_only.npz"
    np.savez(images_only, arr_0=_images(N_IMAGES))
    for r in (open_reference(str(images_only)), folder_reference,
              open_reference(str(folder_reference.save(tmp_path / "vt.npz")))):
        assert r.warnings == {}
        v = score_state(headed_state, r, extractor=extractor)
        assert (v["gfid"].extra["warning"].startswith("Frechet distance on")
                and "mixed" not in v["gfid"].extra["warning"])
    # a third warning (score_state's, e.g. a size mismatch) joins in front and reaches every value
    v = score_state(headed_state, ref, extractor=extractor, warning="SIZE")
    assert (v["gfid"].extra["warning"].startswith("SIZE; Frechet distance on")
            and "; mixed pipelines" in v["gfid"].extra["warning"])
    assert v["precision"].extra["warning"] == "SIZE"


def test_adm_resize_scores_adm_statistics_without_mixed_warning(folder, extractor, tmp_path):
    """--resize adm: samples and reference images go through ADM's TF1 bilinear resize; mu/sigma read from an ADM
    file are then the same pipeline (no mixed-pipeline warning); values get their own keys (gfid@adm) and result
    folder; the cache keys keep the two modes apart; a reference computed under the other mode is warned about."""
    adm_ext = extractor.with_resize("tf-bilinear")
    imgs = torch.from_numpy(_images(N_IMAGES)).permute(0, 3, 1, 2)
    state = extract_samples([imgs], adm_ext)
    full = tmp_path / "VIRTUAL_like.npz"
    (mu, sigma), (mu_s, sigma_s) = state.pool.mean_cov(), state.spatial.mean_cov()
    np.savez(full, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, arr_0=_images(N_IMAGES))
    ref = open_reference(str(full), resize="tf-bilinear")
    v = score_samples(iter_samples(str(folder), batch_size=2), ref, resize="tf-bilinear")
    assert set(v) == {"gfid@adm", "sfid@adm", "inception_score@adm", "precision@adm", "recall@adm"}
    assert v["gfid@adm"].display_name == "gFID (ADM resize)" and v["gfid@adm"].extra["resize"] == "tf-bilinear"
    assert v["gfid@adm"].value == pytest.approx(0.0, abs=1e-6) and v["sfid@adm"].value == pytest.approx(0.0, abs=1e-6)
    for key in ("gfid@adm", "sfid@adm", "precision@adm"):
        w = v[key].extra.get("warning", "")
        assert "mixed" not in w and "computed with" not in w, (key, w)
    assert "tf1-legacy-bilinear" in v["gfid@adm"].extra["extractor"]
    assert v["gfid@adm"].extra["reference_statistics"].startswith("file (ADM's evaluator")
    assert v["precision@adm"].value == 1.0 and v["recall@adm"].value == 1.0
    # the same reference scored with the default resize: warned (the decision is the samples' resize), values move
    clean = score_samples(iter_samples(str(folder), batch_size=2), ref)
    assert "mixed pipelines" in clean["gfid"].extra["warning"] and "--resize adm" in clean["gfid"].extra["warning"]
    assert clean["gfid"].value > 1e-3
    # dataset references: one cache entry per resize mode, each matching its own samples
    refs = {}
    for mode in ("clean", "tf-bilinear"):
        refs[mode] = r = open_reference(str(folder), resolution=64, resize=mode)
        assert r.extractor == extractor.with_resize(mode).id
        vals = score_samples(iter_samples(str(folder), batch_size=N_IMAGES), r, resize=mode)
        assert vals[metric_key("gfid", mode)].value == pytest.approx(0.0, abs=1e-6)
    # a reference opened under one mode and scored under the other: every reference-based value is warned
    crossed = score_samples(iter_samples(str(folder), batch_size=N_IMAGES), refs["clean"], resize="tf-bilinear")
    for key in ("gfid@adm", "sfid@adm", "precision@adm", "recall@adm"):
        assert "the reference was computed with" in crossed[key].extra["warning"], key
    assert "computed with" not in crossed["inception_score@adm"].extra.get("warning", "")
    # the CLI: --resize adm recorded in the run, its own result folder; an unknown mode refused before any work
    out = tmp_path / "results"
    r = runner.invoke(app, ["gfid", str(folder), "--ref", str(full), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    clean_path = json.loads(r.stdout)["result"]
    r = runner.invoke(app, ["gfid", str(folder), "--ref", str(full), "--out", str(out), "--resize", "adm", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["result"] != clean_path and "generation-adm" in summary["result"]
    assert set(summary["metrics"]) == set(v) and all("mixed" not in w for w in summary["warnings"].values())
    rec = json.loads(open(summary["result"]).read())
    assert rec["run"]["resize"] == "tf-bilinear" and rec["extractor"]["resize"] == "tf-bilinear"
    assert "gfid" in json.loads(open(clean_path).read())["metrics"]  # the clean record is still there
    from vtbench.compare import compare
    from vtbench.report import rich_table
    from vtbench.results import load
    assert {"gfid", "gfid@adm"} <= set(load(out)["metric"])
    table = rich_table([json.loads(open(p).read()) for p in (clean_path, summary["result"])])
    assert {"gFID ↓", "gFID adm ↓"} <= {str(c.header) for c in table.columns}
    report = compare(out, out)  # both records in one tree: two compare rows sets, not a clash
    assert report.exit_code == 0 and {r.metric for r in report.rows} >= {"gfid", "gfid@adm"}
    r = runner.invoke(app, ["gfid", str(folder), "--ref", str(full), "--out", str(out), "--resize", "bicubic"])
    assert r.exit_code == 2 and "'clean'" in r.output and "'adm'" in r.output


def test_cli_note_column_shows_both_warnings(folder, extractor, tmp_path):
    from vtbench.metrics.frechet import FeatureStats
    adm = tmp_path / "adm_ref.npz"
    rng = np.random.default_rng(0)  # statistics from "another pipeline": any valid Gaussian
    pool, sp = FeatureStats.zeros(2048, "cpu"), FeatureStats.zeros(SPATIAL_DIM, "cpu")
    pool.update(torch.from_numpy(rng.normal(size=(8, 2048))))
    sp.update(torch.from_numpy(rng.normal(size=(8, SPATIAL_DIM))))
    (mu, sigma), (mu_s, sigma_s) = pool.mean_cov(), sp.mean_cov()
    np.savez(adm, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, arr_0=_images(N_IMAGES))
    out = tmp_path / "results"
    r = runner.invoke(app, ["gfid", str(folder), "--ref", str(adm), "--out", str(out)])
    assert r.exit_code == 0, r.output
    lines = {line.split("│")[1].strip(): line for line in r.stdout.splitlines() if line.count("│") >= 3}
    assert "rank-deficient" in r.stdout and "mixed pipelines" in r.stdout and "legacy" in r.stdout
    assert "rank-deficient" in lines["gFID ↓"] and "rank-deficient" in lines["sFID ↓"]
    r = runner.invoke(app, ["gfid", str(folder), "--ref", str(adm), "--out", str(out), "--json"])
    w = json.loads(r.stdout)["warnings"]
    assert set(w) == {"gfid", "sfid"} and all("rank-deficient" in x and "mixed pipelines" in x for x in w.values())


# -- sizes, limits --------------------------------------------------------------------------------------------
def test_samples_record_their_size(folder, tmp_path):
    s = iter_samples(str(folder))
    assert s.size == (64, 64) and (s.provenance["height"], s.provenance["width"]) == (64, 64)
    path = tmp_path / "s.npz"
    np.savez(path, arr_0=_images(2, size=16)[:, :, :12])
    s = iter_samples(str(path))
    assert s.size == (16, 12) and (s.provenance["height"], s.provenance["width"]) == (16, 12)


def test_size_mismatch_refused_with_the_fix(tmp_path, folder):
    small = tmp_path / "small.npz"
    np.savez(small, arr_0=_images(2, size=16))
    # a dataset reference at another --resolution: both sizes and --resolution 16 in the error (no Inception run)
    with pytest.raises(SizeMismatchError) as err:
        gfid_run(str(small), "embedded/photos", resolution=64, out=tmp_path / "r")
    assert "16x16" in str(err.value) and "64x64" in str(err.value) and "--resolution 16" in str(err.value)
    assert "--allow-size-mismatch" in str(err.value)
    r = runner.invoke(app, ["gfid", str(small), "--ref", "embedded/photos", "--resolution", "64"])
    assert r.exit_code == 1 and "16x16" in r.output and "--resolution 16" in r.output
    # non-square samples, no --resolution: the reference defaults to 256, and square crops cannot match
    wide = tmp_path / "wide.npz"
    np.savez(wide, arr_0=_images(2, size=24)[:, :16])
    with pytest.raises(SizeMismatchError, match=r"16x24.*256x256.*not square"):
        gfid_run(str(wide), "embedded/photos", out=tmp_path / "r")
    # an npz reference: its arr_0 size; --resolution does not apply
    ref = tmp_path / "ref16.npz"
    np.savez(ref, arr_0=_images(N_IMAGES, size=16))
    assert reference_image_size(str(ref)) == ((16, 16), f"the arr_0 images of {ref.name}")
    with pytest.raises(SizeMismatchError) as err:
        gfid_run(str(folder), str(ref), out=tmp_path / "r")
    assert "64x64" in str(err.value) and "16x16" in str(err.value) and "arr_0" in str(err.value)
    # --allow-size-mismatch turns the refusal into a warning; statistics-only references cannot be checked
    samples = iter_samples(str(folder))
    assert "64x64" in check_sizes(samples, str(ref), allow_size_mismatch=True)
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    assert reference_image_size(str(stats))[0] is None and check_sizes(samples, str(stats)) is None


def test_resolution_defaults_to_square_samples(folder, folder_reference, extractor, tmp_path):
    rec = gfid_run(str(folder), str(folder), out=tmp_path / "r")  # the dataset is cropped to the samples' 64
    assert rec["run"]["resolution"] == 64 and rec["run"]["resolution_source"] == "samples"
    assert rec["dataset"]["image_size"] == [64, 64] and rec["run"]["size_warning"] is None
    assert abs(rec["metrics"]["gfid"]["value"]) < 1e-6
    assert reference_image_size(str(folder_reference.save(tmp_path / "vt.npz")))[0] == (64, 64)


def test_allow_size_mismatch_warns_on_every_value(folder, folder_reference, extractor, tmp_path):
    path = tmp_path / "s48.npz"
    np.savez(path, arr_0=_images(N_IMAGES, size=48))
    with pytest.raises(SizeMismatchError):
        gfid_run(str(path), str(folder), resolution=64, out=tmp_path / "r")
    rec = gfid_run(str(path), str(folder), resolution=64, out=tmp_path / "r", allow_size_mismatch=True)
    assert rec["run"]["allow_size_mismatch"] and "48x48" in rec["run"]["size_warning"]
    for key, m in rec["metrics"].items():
        assert "48x48" in m["extra"]["warning"] and "64x64" in m["extra"]["warning"], key
    assert "rank-deficient" in rec["metrics"]["gfid"]["extra"]["warning"]


def test_limit_is_samples_only_and_ref_limit_subsets_the_reference(folder, extractor, tmp_path):
    out = tmp_path / "r"
    r = runner.invoke(app, ["gfid", str(folder), "--ref", str(folder), "--out", str(out), "--json", "--limit", "3"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n"] == 3 and summary["n_reference"] == N_IMAGES  # --limit leaves the reference whole
    r = runner.invoke(app, ["gfid", str(folder), "--ref", str(folder), "--out", str(out), "--json", "--limit", "3",
                            "--ref-limit", "4"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n"] == 3 and summary["n_reference"] == 4
    rec = json.loads(open(summary["result"]).read())
    assert rec["run"]["limit"] == 3 and rec["run"]["ref_limit"] == 4 and rec["dataset"]["ref_limit"] == 4
    assert rec["samples"]["n_requested"] == 3 and rec["dataset"]["limit"] == 4
