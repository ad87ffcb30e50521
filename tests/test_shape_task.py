"""The shape task through the one evaluation core: `vtbench run --task shape` on the embedded shapes with the
reference codecs, records and resume like the image tasks, numbers equal to a direct computation with
vtbench.three_d, image runs unaffected by shape cards."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

pytest.importorskip("trimesh")
pytest.importorskip("DracoPy")
pytest.importorskip("igl")

from vtbench.cli import app  # noqa: E402
from vtbench.tokenizers import list_tokenizers  # noqa: E402


def _run(tmp_path, *args):
    r = CliRunner().invoke(app, ["run", "--task", "shape", "--limit", "3", "--out", str(tmp_path), "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_shape_run_matches_a_direct_computation(tmp_path, monkeypatch):
    from vtbench.three_d.codecs import get_codec
    from vtbench.three_d.data import open_shapes
    from vtbench.three_d.metrics import ShapeSettings, iou_query_points, reference_sample, score_shape
    out = _run(tmp_path, "-t", "draco.q8")
    rec = json.loads(open(out["result"]).read())
    assert rec["protocol"]["name"] == "shape" and rec["dataset"]["n_used"] == 3
    ds = open_shapes("embedded/shapes", limit=3, seed=0)
    settings = ShapeSettings(seed=0)
    query = iou_query_points(settings)
    codec = get_codec("draco-q8")
    l1, bits = [], []
    for shape in ds:
        enc = codec.encode(shape)
        bits.append(enc.bits)
        l1.append(score_shape(reference_sample(shape, settings, query), codec.decode(enc), settings, query)
                  ["chamfer_l1"])
    m = rec["metrics"]
    assert m["chamfer_l1"]["value"] == pytest.approx(math.fsum(l1) / 3, rel=1e-12)
    assert m["bits_per_shape"]["value"] == pytest.approx(sum(bits) / 3)
    assert m["tokens_per_shape"]["value"] is None and m["tokens_per_shape"]["reason"]
    assert len(rec["thumbnails"]) == 3  # rendered previews, original next to reconstruction


def test_octree_tokens_and_resume(tmp_path):
    out = _run(tmp_path, "-t", "octree.d5")
    m = json.loads(open(out["result"]).read())["metrics"]
    assert m["tokens_per_shape"]["value"] > 0
    assert m["bits_per_shape"]["value"] == pytest.approx(8 * m["tokens_per_shape"]["value"])
    again = _run(tmp_path, "-t", "octree.d5")  # complete: reused, not recomputed
    assert again["metrics"] == out["metrics"]


def test_shape_cards_stay_out_of_image_runs(tmp_path):
    shape_cards = set(list_tokenizers(modality="shape"))
    assert {"draco.q8", "octree.d5", "voxel.r32"} <= shape_cards
    assert not shape_cards & set(list_tokenizers(default_run=True, modality="image"))
    r = CliRunner().invoke(app, ["run", "-t", "draco.q8", "--limit", "1", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "--task shape" in r.output


def test_shape_results_get_their_own_leaderboard_section(tmp_path):
    from vtbench.leaderboard.build import build_site
    _run(tmp_path / "res", "-t", "draco.q8", "-t", "octree.d5")
    html = build_site([tmp_path / "res"], tmp_path / "site").read_text()
    assert 'id="shape-embedded-shapes-shape-1.0"' in html  # the 3D section, apart from the image sections
    assert html.count("<svg") >= 2  # quality versus bytes and versus tokens
    assert "previews" not in html or (tmp_path / "site" / "assets").is_dir()
