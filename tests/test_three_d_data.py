"""Shape datasets (vtbench/three_d/data.py) and the embedded shape set (data/embedded/shapes)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")

from vtbench.three_d.data import (  # noqa: E402
    Limits,
    Shape,
    ShapeDatasetError,
    ShapeSkip,
    SkippedShape,
    get_normalisation,
    load_shape,
    open_shapes,
    reference_ply,
    shape_ids,
)

EMBEDDED = Path(__file__).resolve().parents[1] / "data" / "embedded" / "shapes"


def _box(extents=(2.0, 1.0, 0.5), at=(3.0, -1.0, 7.0)):
    m = trimesh.creation.box(extents)
    m.apply_translation(at)
    return m


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("ext", ["obj", "ply", "stl", "off", "glb"])
def test_every_mesh_format_loads_and_normalises(tmp_path, ext):
    path = tmp_path / f"box.{ext}"
    _box().export(path)
    s = load_shape(path, shape_id="box")
    assert isinstance(s, Shape) and s.kind == "mesh" and s.id == "box"
    assert s.watertight and len(s.mesh.faces) == 12 and len(s.mesh.vertices) == 8   # STL's split vertices merged
    np.testing.assert_allclose(s.mesh.bounds, [[-0.5, -0.25, -0.125], [0.5, 0.25, 0.125]], atol=1e-6)
    assert s.stored_bytes == path.stat().st_size
    assert s.normalisation["policy"] == "unit-cube" and s.normalisation["scale"] == pytest.approx(0.5)
    np.testing.assert_allclose(s.normalisation["centre"], [3.0, -1.0, 7.0], atol=1e-6)


def test_point_clouds_npz_and_ply(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3)) * [1.0, 2.0, 3.0]
    nrm = rng.normal(size=(500, 3))
    np.savez(tmp_path / "a.npz", points=pts, normals=nrm)
    np.savez(tmp_path / "b.npz", points=pts)
    a, b = load_shape(tmp_path / "a.npz"), load_shape(tmp_path / "b.npz")
    assert a.kind == b.kind == "points" and not a.watertight and a.mesh is None
    np.testing.assert_allclose(np.linalg.norm(a.normals, axis=1), 1.0)
    assert b.normals is None
    assert np.ptp(a.points, axis=0).max() == pytest.approx(1.0)
    header = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
              "property float nx\nproperty float ny\nproperty float nz\nend_header\n"
              "0 0 0 0 0 2\n1 0 0 0 0 1\n0 2 0 1 0 0\n")
    (tmp_path / "c.ply").write_text(header)
    c = load_shape(tmp_path / "c.ply")
    assert c.kind == "points" and c.points.shape == (3, 3)
    np.testing.assert_allclose(c.normals, [[0, 0, 1], [0, 0, 1], [1, 0, 0]])
    assert c.reference_bytes == len(reference_ply(c.points))


def test_quads_are_triangulated(tmp_path):
    (tmp_path / "quad.ply").write_text("ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
                                       "property float z\nelement face 1\nproperty list uchar int vertex_indices\n"
                                       "end_header\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    (tmp_path / "quad.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3 4\n")
    for name in ("quad.ply", "quad.obj"):
        s = load_shape(tmp_path / name)
        assert s.n_faces == 2 and s.mesh.area == pytest.approx(1.0) and not s.watertight


def test_reference_ply_is_exact_binary_ply():
    m = _box()
    data = reference_ply(m.vertices, m.faces)
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    assert len(data) - header_end == 8 * 12 + 12 * (1 + 12)        # float32 xyz; uchar count + 3 int32
    assert b"property float x" in data[:header_end] and b"property list uchar int vertex_indices" in data
    back = trimesh.load(trimesh.util.wrap_as_stream(data), file_type="ply", process=False)
    np.testing.assert_allclose(back.vertices, m.vertices.astype(np.float32))
    np.testing.assert_array_equal(back.faces, m.faces)


def test_normalisation_policies():
    pts = np.array([[0, 0, 0], [4, 0, 0], [0, 2, 0], [0, 0, 1.0]])
    cube, _, _ = get_normalisation("unit-cube").apply(pts)
    assert np.ptp(cube, axis=0).max() == pytest.approx(1.0) and np.allclose((cube.min(0) + cube.max(0)) / 2, 0)
    sph, centre, scale = get_normalisation("unit-sphere").apply(pts)
    assert np.linalg.norm(sph, axis=1).max() == pytest.approx(0.5)
    np.testing.assert_allclose(centre, [2, 1, 0.5])
    with pytest.raises(ShapeDatasetError, match="unit-cube"):
        get_normalisation("unit_cube")


# ---------------------------------------------------------------------------------------------- bad input


def _skip(path, **kw) -> ShapeSkip:
    with pytest.raises(ShapeSkip) as ei:
        load_shape(path, **kw)
    assert str(path) in ei.value.message
    return ei.value


def test_bad_shapes_are_skipped_with_a_reason(tmp_path):
    (tmp_path / "garbage.obj").write_bytes(b"\x00\x01not an obj at all\xff" * 10)
    (tmp_path / "empty.ply").write_bytes(b"")
    (tmp_path / "verts_only.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    (tmp_path / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")              # zero-area face
    (tmp_path / "point.obj").write_text("v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n")             # zero extent
    (tmp_path / "nan.obj").write_text("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n")
    np.savez(tmp_path / "nopoints.npz", xyz=np.zeros((3, 3)))
    reasons = {p.name: _skip(p).reason for p in sorted(tmp_path.iterdir())}
    assert reasons["flat.obj"] == "degenerate" and reasons["point.obj"] == "degenerate"
    assert reasons["nan.obj"] in ("degenerate", "unreadable")
    assert reasons["verts_only.obj"] in ("empty", "unreadable")
    assert reasons["garbage.obj"] in ("empty", "unreadable") and reasons["empty.ply"] in ("empty", "unreadable")
    assert reasons["nopoints.npz"] == "unreadable"
    _box().export(tmp_path / "big.ply")
    assert _skip(tmp_path / "big.ply", limits=Limits(max_faces=11)).reason == "too-large"
    assert _skip(tmp_path / "big.ply", limits=Limits(max_file_bytes=10)).reason == "too-large"


def test_open_meshes_are_kept_flagged_or_skipped_on_request(tmp_path):
    m = _box()
    trimesh.Trimesh(m.vertices, m.faces[:-2]).export(tmp_path / "open.ply")   # one side missing two triangles
    s = load_shape(tmp_path / "open.ply")
    assert s.kind == "mesh" and not s.watertight
    assert _skip(tmp_path / "open.ply", require_watertight=True).reason == "not-watertight"


def test_dataset_counts_skips_and_never_raises(tmp_path):
    _box().export(tmp_path / "good.ply")
    (tmp_path / "bad.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    ds = open_shapes(tmp_path)
    items = list(ds)
    assert [type(x) for x in items] == [SkippedShape, Shape]          # ids sorted: bad.obj, good.ply
    summary = ds.skip_summary()
    assert summary["n"] == 1 and summary["by_reason"] == {"degenerate": 1}
    assert summary["shapes"][0]["id"] == "bad.obj" and "bad.obj" in summary["shapes"][0]["message"]


# ---------------------------------------------------------------------------------------------- identity


def test_layout_ids():
    shapenet = ["02691156/1a04e3eab45ca15dd86060f189eb133/models/model_normalized.obj",
                "03001627/1b7ba5484399d36bc5e50b867ca2d0b9/models/model_normalized.obj"]
    assert shape_ids(shapenet) == (["02691156/1a04e3eab45ca15dd86060f189eb133",
                                    "03001627/1b7ba5484399d36bc5e50b867ca2d0b9"], "shapenet")
    assert shape_ids(["ShapeNetCore.v2/" + p for p in shapenet])[1] == "shapenet"
    objaverse = ["glbs/000-000/8476c4170df24cf5bbe6967222d1a42d.glb", "glbs/000-023/a1b2.glb"]
    assert shape_ids(objaverse) == (["8476c4170df24cf5bbe6967222d1a42d", "a1b2"], "objaverse")
    mixed = shapenet + ["extra/chair.ply"]
    assert shape_ids(mixed) == (mixed, "files")
    clash = ["glbs/000-000/a.glb", "glbs/000-001/a.glb"]                      # same uid twice: paths instead
    assert shape_ids(clash) == (clash, "files")


def test_shapenet_and_objaverse_folders(tmp_path):
    sn = tmp_path / "sn"
    for synset, model in (("02691156", "m1"), ("03001627", "m2")):
        d = sn / synset / model / "models"
        d.mkdir(parents=True)
        _box().export(d / "model_normalized.obj")
        (d / "model_normalized.json").write_text("{}")                         # ignored: not a shape file
    ds = open_shapes(sn)
    assert ds.ids == ["02691156/m1", "03001627/m2"] and ds.info.extra["layout"] == "shapenet"
    assert isinstance(ds[0], Shape) and ds[0].source == "02691156/m1/models/model_normalized.obj"
    ob = tmp_path / "ob" / "glbs" / "000-000"
    ob.mkdir(parents=True)
    _box().export(ob / "uid1.glb")
    ds = open_shapes(tmp_path / "ob")
    assert ds.ids == ["uid1"] and ds.info.extra["layout"] == "objaverse" and ds[0].watertight


def test_revision_follows_content_and_limit_is_seeded(tmp_path):
    for k in range(6):
        _box(at=(k, 0, 0)).export(tmp_path / f"s{k}.ply")
    ds = open_shapes(tmp_path)
    rev = ds.info.revision
    assert open_shapes(tmp_path).info.revision == rev
    a = open_shapes(tmp_path, limit=3, seed=0)
    assert a.ids == open_shapes(tmp_path, limit=3, seed=0).ids and len(a.ids) == 3 and a.ids == sorted(a.ids)
    assert any(open_shapes(tmp_path, limit=3, seed=s).ids != a.ids for s in range(1, 6))
    assert a.info.n_total == 6 and a.info.n_selected == 3 and a.info.policy["name"] == "unit-cube"
    data = (tmp_path / "s0.ply").read_bytes()
    (tmp_path / "s0.ply").write_bytes(data[:-4] + bytes(4))                   # same size, other content
    assert open_shapes(tmp_path).info.revision != rev
    with pytest.raises(ShapeDatasetError, match="not found"):
        open_shapes(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShapeDatasetError, match="no meshes"):
        open_shapes(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- embedded set


def _manifest() -> list[dict[str, str]]:
    with open(EMBEDDED / "MANIFEST.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_embedded_set_is_small_listed_and_licensed():
    rows = _manifest()
    present = sorted(p.name for p in EMBEDDED.glob("*.ply"))
    assert sorted(r["file"] for r in rows) == present and 12 <= len(present) <= 20
    assert sorted(p.name for p in EMBEDDED.iterdir()) == sorted(present + ["LICENSES.md", "MANIFEST.csv"])
    assert sum(p.stat().st_size for p in EMBEDDED.iterdir()) < 1_500_000
    licences = (EMBEDDED / "LICENSES.md").read_text()
    for r in rows:
        assert hashlib.sha256((EMBEDDED / r["file"]).read_bytes()).hexdigest() == r["sha256"]
        assert r["licence"] and r["attribution"] and r["source"] and f"`{r['file']}`" in licences
    assert {r["category"] for r in rows} == {"procedural", "pyvista"}
    assert {r["watertight"] for r in rows} == {"True", "False"}              # both kinds are exercised


def test_embedded_set_loads_without_skips():
    ds = open_shapes("embedded")
    assert ds.info.id == "embedded/shapes" and ds.info.kind == "embedded" and len(ds) == len(_manifest())
    shapes = list(ds)
    assert all(isinstance(s, Shape) for s in shapes), ds.skip_summary()
    by_id = {s.id: s for s in shapes}
    for r in _manifest():
        s = by_id[r["file"]]
        assert s.watertight == (r["watertight"] == "True") and s.stored_bytes == s.reference_bytes
        assert np.ptp(s.mesh.vertices, axis=0).max() == pytest.approx(1.0)


def test_image_datasets_ignore_the_shape_folder():
    from vtbench.data.datasets import open_dataset
    from vtbench.data.policies import get_policy

    ds = open_dataset("embedded", get_policy("native"))
    assert ds.classes == ["detail", "photos", "text"] and not any(i.startswith("shapes/") for i in ds.ids)


def test_procedural_shapes_regenerate_byte_for_byte():
    """data/make_embedded_shapes.py made the committed files: with the library versions it records, its
    procedural shapes come out identical (pyvista's files are pinned by sha256 inside the script)."""
    pytest.importorskip("manifold3d")
    import importlib.util
    import re
    from importlib.metadata import version

    made_with = dict(re.findall(r"([\w-]+) ([\w.]+)[,.]", (EMBEDDED / "LICENSES.md").read_text().split(
        "Made with: ")[1].split("\n")[0]))
    for lib in ("manifold3d", "numpy"):
        if version(lib) != made_with[lib]:
            pytest.skip(f"{lib} {version(lib)} installed; the shapes were made with {made_with[lib]}")
    spec = importlib.util.spec_from_file_location("make_embedded_shapes", EMBEDDED.parents[1] /
                                                  "make_embedded_shapes.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    want = {r["file"]: r["sha256"] for r in _manifest() if r["category"] == "procedural"}
    got = {}
    for name, geom, _ in script.procedural():
        v, f = geom if isinstance(geom, tuple) else script._arrays(geom)
        got[f"{name}.ply"] = hashlib.sha256(reference_ply(v, f)).hexdigest()
    assert got == want
