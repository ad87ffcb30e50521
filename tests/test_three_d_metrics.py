"""shape@1.0 metrics (vtbench/three_d/metrics.py) against independent computations: brute-force distances
(scipy cdist), analytic answers (concentric spheres, offset boxes) and exact boolean volumes (manifold3d)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("igl")

from vtbench.three_d import metrics as M  # noqa: E402
from vtbench.three_d.data import Shape  # noqa: E402

FAST = M.ShapeSettings(points=5000, iou_points=20000)


def _shape(mesh, sid="s") -> Shape:
    return Shape(id=sid, kind="mesh", mesh=mesh, watertight=bool(mesh.is_watertight and mesh.is_winding_consistent))


def _sphere(r, subdivisions=4):
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=r)


def _on_sphere(n, r, seed):
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return r * p / np.linalg.norm(p, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------- point sets


def test_point_metrics_match_brute_force():
    rng = np.random.default_rng(1)
    ref, rec = rng.random((300, 3)) - 0.5, rng.random((200, 3)) * 0.9 - 0.45
    nref, nrec = rng.normal(size=(300, 3)), rng.normal(size=(200, 3))
    got = M.point_metrics(ref, rec, nref, nrec, taus=(0.01, 0.05, 0.1))
    d = cdist(rec, ref)                                   # (rec, ref) Euclidean
    acc, comp = d.min(axis=1), d.min(axis=0)
    assert got["chamfer_l1"] == pytest.approx((acc.mean() + comp.mean()) / 2, rel=1e-12)
    assert got["chamfer_l2"] == pytest.approx(((acc ** 2).mean() + (comp ** 2).mean()) / 2, rel=1e-12)
    for tau in (0.01, 0.05, 0.1):
        p, r = (acc <= tau).mean(), (comp <= tau).mean()
        assert got[f"fscore@{tau:g}"] == pytest.approx(0.0 if p + r == 0 else 2 * p * r / (p + r))
    u = lambda n: n / np.linalg.norm(n, axis=1, keepdims=True)  # noqa: E731
    nc_a = np.abs((u(nrec) * u(nref)[d.argmin(axis=1)]).sum(1)).mean()
    nc_c = np.abs((u(nref) * u(nrec)[d.argmin(axis=0)]).sum(1)).mean()
    assert got["normal_consistency"] == pytest.approx((nc_a + nc_c) / 2, rel=1e-12)
    assert M.point_metrics(ref, rec)["normal_consistency"] is None


def test_concentric_spheres_chamfer_is_radius_gap():
    # points exactly on two concentric spheres: every nearest distance is at least |r1 - r2| and, for dense
    # samples, hardly more (the tangential offset to the nearest sample is second order)
    a, b = _on_sphere(5000, 0.30, 0), _on_sphere(5000, 0.35, 1)
    got = M.point_metrics(a, b, taus=(0.01, 0.06))
    assert 0.05 <= got["chamfer_l1"] < 0.05 * 1.02
    assert 0.05 ** 2 <= got["chamfer_l2"] < 0.05 ** 2 * 1.05
    assert got["fscore@0.01"] == 0.0 and got["fscore@0.06"] > 0.99


def test_sphere_meshes_through_score_shape():
    ref = M.reference_sample(_shape(_sphere(0.3)), FAST)
    out = M.score_shape(ref, _sphere(0.34), FAST)
    assert out["chamfer_l1"] == pytest.approx(0.04, rel=0.05)
    assert out["normal_consistency"] > 0.99                      # radial normals agree
    assert out["iou"] == pytest.approx((0.3 / 0.34) ** 3, abs=0.03)
    assert out["reasons"] == {} and not out["empty_reconstruction"]


def test_identical_mesh_scores():
    box = trimesh.creation.box((0.8, 0.5, 0.3))
    out = M.score_shape(M.reference_sample(_shape(box), FAST), box.copy(), FAST)
    assert out["iou"] == 1.0                                      # same occupancy of the same query points
    # below 1 only where a point's nearest sample lies across a box edge, on the perpendicular face
    assert 0.95 < out["normal_consistency"] < 1.0
    assert out["chamfer_l1"] < 0.01 and out["fscore@0.02"] > 0.97       # sampling noise only (5k points)


def test_offset_boxes_iou_is_analytic():
    a = trimesh.creation.box((0.5, 0.5, 0.5))
    b = trimesh.creation.box((0.5, 0.5, 0.5))
    b.apply_translation((0.1, 0.0, 0.0))
    settings = M.ShapeSettings(points=2000, iou_points=100_000)
    out = M.score_shape(M.reference_sample(_shape(a), settings), b, settings)
    exact = (0.4 * 0.25) / (2 * 0.125 - 0.4 * 0.25)              # = 2/3
    assert out["iou"] == pytest.approx(exact, abs=0.02)


def test_iou_matches_exact_boolean_volumes():
    m3d = pytest.importorskip("manifold3d")

    def manifold(m):
        return m3d.Manifold(m3d.Mesh(np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.uint32)))

    a = trimesh.creation.torus(0.3, 0.1, major_sections=48, minor_sections=24)
    b = a.copy()
    b.apply_transform(trimesh.transformations.rotation_matrix(0.5, (1, 0, 0)))
    b.apply_translation((0.05, 0.02, 0.0))
    ma, mb = manifold(a), manifold(b)
    exact = (ma ^ mb).volume() / (ma + mb).volume()
    settings = M.ShapeSettings(points=2000, iou_points=200_000)
    out = M.score_shape(M.reference_sample(_shape(a), settings), b, settings)
    assert out["iou"] == pytest.approx(exact, abs=0.02)


# ---------------------------------------------------------------------------------------------- nulls and edges


def test_iou_is_null_with_reason_when_not_watertight():
    box = trimesh.creation.box((0.5, 0.5, 0.5))
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-2])
    ref = M.reference_sample(_shape(box), FAST)
    out = M.score_shape(ref, open_box, FAST)
    assert out["iou"] is None and "not watertight" in out["reasons"]["iou"]
    assert out["chamfer_l1"] is not None
    ref_open = M.reference_sample(_shape(open_box), FAST)
    assert ref_open.inside is None and "not watertight" in ref_open.iou_reason
    out = M.score_shape(ref_open, box, FAST)
    assert out["iou"] is None and out["reasons"]["iou"] == "reference mesh is not watertight"


def test_point_cloud_reconstruction():
    ref = M.reference_sample(_shape(_sphere(0.3)), FAST)
    out = M.score_shape(ref, _on_sphere(3000, 0.3, 5), FAST)
    assert out["iou"] is None and out["normal_consistency"] is None
    assert set(out["reasons"]) == {"iou", "normal_consistency"}
    assert out["chamfer_l1"] < 0.01


def test_empty_reconstruction_scores_worst_values():
    ref = M.reference_sample(_shape(_sphere(0.3)), FAST)
    out = M.score_shape(ref, trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int)), FAST)
    assert out["empty_reconstruction"] and out["chamfer_l1"] == pytest.approx(math.sqrt(3))
    assert out["chamfer_l2"] == pytest.approx(3.0) and out["fscore@0.01"] == 0.0 and out["iou"] == 0.0


def test_non_finite_reconstruction_is_an_error():
    ref = M.reference_sample(_shape(_sphere(0.3)), FAST)
    bad = _sphere(0.3)
    bad.vertices[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        M.score_shape(ref, bad, FAST)


def test_seeds_are_per_shape_and_stream():
    assert M.stream_seed(0, "a", "reference") == M.stream_seed(0, "a", "reference")
    assert len({M.stream_seed(0, "a", "reference"), M.stream_seed(0, "b", "reference"),
                M.stream_seed(0, "a", "reconstruction"), M.stream_seed(1, "a", "reference")}) == 4
    s = _shape(_sphere(0.3), "x")
    a, b = M.reference_sample(s, FAST), M.reference_sample(s, FAST)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(M.iou_query_points(FAST), M.iou_query_points(FAST))
    q = M.iou_query_points(M.ShapeSettings(iou_points=1000, iou_box=1.1))
    assert q.shape == (1000, 3) and np.abs(q).max() <= 0.55


# ---------------------------------------------------------------------------------------------- streaming


def test_accumulator_means_nulls_and_merge():
    rows = [{"chamfer_l1": 0.1, "iou": 0.5}, {"chamfer_l1": 0.3, "iou": None, "reasons": {"iou": "why"}},
            {"chamfer_l1": 0.2, "iou": 0.7, "empty_reconstruction": True}]
    whole = M.ShapeMetricAccumulator(keys=("chamfer_l1", "iou", "normal_consistency"))
    for r in rows:
        whole.update(r)
    out = whole.compute()
    assert out["chamfer_l1"]["value"] == pytest.approx(0.2) and out["chamfer_l1"]["n"] == 3
    assert out["iou"]["value"] == pytest.approx(0.6) and out["iou"]["null"] == {"why": 1}
    assert out["normal_consistency"]["value"] is None and out["normal_consistency"]["null"] == {"not computed": 3}
    assert out["chamfer_l1"]["higher_is_better"] is False and out["iou"]["higher_is_better"] is True
    a, b = M.ShapeMetricAccumulator(keys=whole.keys), M.ShapeMetricAccumulator(keys=whole.keys)
    b.update(rows[2])
    b.update(rows[1])
    a.update(rows[0])
    b.merge(a)                                   # another split and order: the same numbers, bit for bit
    assert b.compute() == out and b.n_shapes == 3 and b.n_empty == 1


def test_protocol_file_matches_the_code():
    from vtbench.config import load_protocol

    p = load_protocol("shape")
    assert (p.name, p.version, p.task) == ("shape", "1.0", "shape")
    settings = M.ShapeSettings.from_protocol(p.settings)
    assert settings == M.ShapeSettings()
    assert p.get("metrics.default") == ["shape", "shape_compression", "speed"]
    from vtbench.three_d.task import ShapeQuality  # the registered shape metric reports every protocol key
    assert [o.key for o in ShapeQuality.outputs] == M.metric_keys(settings)
    assert p.get("normalisation.policy") == "unit-cube"
