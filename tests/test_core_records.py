"""One result layout: tasks never overwrite each other, protocol settings are part of every record, caches are
keyed by content."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vtbench.config
from vtbench.compare import compare, incomparable_reasons
from vtbench.config import load_protocol
from vtbench.data.datasets import open_dataset
from vtbench.data.policies import get_policy
from vtbench.paths import PROTOCOLS_DIR
from vtbench.results import protocol_section, run_dir
from vtbench.runner import RunConfig, run


def _cfg(data, out, **kw):
    kw.setdefault("progress", False)
    return RunConfig(data=str(data), out=out, **kw)


def test_tasks_on_the_same_data_keep_their_own_records(tmp_path):
    """`run -t identity.none --data embedded/detail` and the same with `--task detail` wrote one result.json."""
    out = tmp_path / "out"
    (rec,) = run(["identity.none"], _cfg("embedded/detail", out, metrics=["psnr"], limit=2, preprocess="native"))
    (det,) = run(["identity.none"], _cfg("embedded/detail", out, protocol="detail", limit=2))
    a = run_dir(out, rec["dataset"], "identity.none", rec["protocol"]["name"]) / "result.json"
    b = run_dir(out, det["dataset"], "identity.none", det["protocol"]["name"]) / "result.json"
    assert a != b and a.is_file() and b.is_file()
    assert json.loads(a.read_text())["protocol"]["name"] == "reconstruction"
    assert json.loads(b.read_text())["protocol"]["name"] == "detail"


def test_edited_protocol_without_a_version_bump_is_told_apart(tmp_path, monkeypatch):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    cfg = dict(metrics=["psnr"], limit=2, preprocess="native")
    (rec_a,) = run(["jpeg.q50"], _cfg("embedded/photos", out_a, **cfg))
    edited = tmp_path / "protocols"
    shutil.copytree(PROTOCOLS_DIR, edited)
    text = (edited / "reconstruction.toml").read_text()
    assert 'version = "1.0"' in text and "\nalpha = 0.5\n" in text
    # a setting that is read (pFID's default alpha) edited in place, the version left at 1.0
    (edited / "reconstruction.toml").write_text(text.replace("\nalpha = 0.5\n", "\nalpha = 0.25\n"))
    monkeypatch.setattr(vtbench.config, "PROTOCOLS_DIR", edited)
    assert load_protocol("reconstruction").version == "1.0"
    (rec_b,) = run(["jpeg.q50"], _cfg("embedded/photos", out_b, **cfg))
    pa, pb = rec_a["protocol"], rec_b["protocol"]
    assert (pa["name"], pa["version"]) == (pb["name"], pb["version"])
    assert pa["settings_sha256"] != pb["settings_sha256"]
    assert rec_a["run"]["fingerprint"] != rec_b["run"]["fingerprint"]
    (reason,) = incomparable_reasons(rec_a, rec_b)
    assert "protocol settings differ" in reason
    report = compare(out_b, out_a)
    assert report.exit_code == 2
    # the same settings compare fine
    assert incomparable_reasons(rec_a, rec_a) == []


def test_protocol_hash_ignores_notes_only():
    p = load_protocol("reconstruction")
    h = protocol_section(p)["settings_sha256"]
    p.settings = {**p.settings, "notes": {"anything": "changed"}}
    assert protocol_section(p)["settings_sha256"] == h
    p.settings = {**p.settings, "metrics": {**p.settings.get("metrics", {}), "extra": 1}}
    assert protocol_section(p)["settings_sha256"] != h


def _write(path: Path, seed: int) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="BMP")


def test_overwriting_an_image_with_one_of_the_same_size_changes_the_revision(tmp_path):
    """The revision hashed ids and sizes only: a same-size BMP overwrite kept `reference_cache: hit`."""
    root = tmp_path / "bmp"
    root.mkdir()
    for k in range(3):
        _write(root / f"{k}.bmp", k)
    policy = get_policy("native")
    rev = open_dataset(root, policy).info.revision
    assert open_dataset(root, policy).info.revision == rev  # memoised digests: stable
    size = (root / "1.bmp").stat().st_size
    st = (root / "1.bmp").stat()
    _write(root / "1.bmp", 99)
    os.utime(root / "1.bmp", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert (root / "1.bmp").stat().st_size == size
    assert open_dataset(root, policy).info.revision != rev


def test_rfid_reference_cache_misses_after_a_same_size_overwrite(tmp_path):
    root = tmp_path / "bmp"
    root.mkdir()
    for k in range(4):
        _write(root / f"{k}.bmp", k)
    cfg = dict(metrics=["rfid"], preprocess="native")
    (first,) = run(["identity.none"], _cfg(root, tmp_path / "o1", **cfg))
    (again,) = run(["identity.none"], _cfg(root, tmp_path / "o2", **cfg))
    assert again["metrics"]["rfid"]["extra"]["reference_cache"] == "hit"
    st = (root / "2.bmp").stat()
    _write(root / "2.bmp", 123)
    os.utime(root / "2.bmp", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    (after,) = run(["identity.none"], _cfg(root, tmp_path / "o3", **cfg))
    assert after["metrics"]["rfid"]["extra"]["reference_cache"] != "hit"
    assert after["dataset"]["revision"] != first["dataset"]["revision"]


@pytest.mark.parametrize("task", ["reconstruction", "text", "detail"])
def test_run_dir_names_the_task(tmp_path, task):
    d = run_dir(tmp_path, {"id": "embedded/photos", "kind": "embedded"}, "tiny.vq", task)
    assert d == tmp_path / "embedded-photos" / "tiny.vq" / task


def test_metrics_are_built_from_one_explicit_context():
    """Every registered metric builds through Metric.from_context; only metrics that override it read the
    context, and the pFID extra decode is declared by the contract, not found by attribute lookup."""
    import torch

    from vtbench.metrics import METRICS, MetricUnavailable
    from vtbench.metrics.base import Metric, MetricContext
    ctx = MetricContext(device=torch.device("cpu"), reference_key="k", resolution=64, settings={})
    for name in METRICS.names():
        cls = METRICS.get(name)
        try:
            m = cls.from_context(ctx)
        except MetricUnavailable as exc:  # e.g. LPIPS without its backbone: a reason, never a crash
            assert exc.reason
            continue
        assert isinstance(m, Metric)
        assert m.needs_extra_decode == (cls.extra_decode is not Metric.extra_decode), name
