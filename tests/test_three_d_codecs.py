"""Reference shape codecs (vtbench/three_d/codecs.py): Draco, octree occupancy tokens, dense voxel grid."""

from __future__ import annotations

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("DracoPy")
pytest.importorskip("skimage")

from vtbench.registry import UnknownNameError  # noqa: E402
from vtbench.three_d import codecs as C  # noqa: E402
from vtbench.three_d.data import Shape  # noqa: E402
from vtbench.three_d.metrics import ShapeSettings, reference_sample, score_shape  # noqa: E402

FAST = ShapeSettings(points=5000, iou_points=20000)


def _shape(mesh, sid="s") -> Shape:
    return Shape(id=sid, kind="mesh", mesh=mesh, watertight=bool(mesh.is_watertight))


def _sphere():
    return _shape(trimesh.creation.icosphere(subdivisions=3, radius=0.45), "sphere")


# ---------------------------------------------------------------------------------------------- octree


def _naive_octree(voxels: set[tuple[int, int, int]], depth: int) -> list[int]:
    """Independent breadth-first octree: a queue of (level, x, y, z) nodes, children visited in the order
    c = 4 dx + 2 dy + dz; each internal node emits its 8-bit child-occupancy code."""
    def occupied(level, x, y, z):
        shift = depth - level
        return any((vx >> shift, vy >> shift, vz >> shift) == (x, y, z) for vx, vy, vz in voxels)

    codes, queue = [], [(0, 0, 0, 0)]
    while queue:
        level, x, y, z = queue.pop(0)
        if level == depth:
            continue
        code = 0
        for c in range(8):
            child = (level + 1, 2 * x + (c >> 2 & 1), 2 * y + (c >> 1 & 1), 2 * z + (c & 1))
            if occupied(*child):
                code |= 1 << c
                queue.append(child)
        codes.append(code)
    return codes


@pytest.mark.parametrize("depth, n", [(1, 3), (2, 5), (3, 20), (4, 40)])
def test_octree_codes_match_a_naive_breadth_first_builder(depth, n):
    rng = np.random.default_rng(depth)
    vox = np.unique(rng.integers(0, 1 << depth, size=(n, 3)), axis=0)
    codes = C.octree_encode(vox, depth)
    assert codes.dtype == np.uint8
    assert codes.tolist() == _naive_octree({tuple(v) for v in vox.tolist()}, depth)
    back = C.octree_decode(codes, depth)
    assert sorted(map(tuple, back.tolist())) == sorted(map(tuple, vox.tolist()))
    internal = sum(len(np.unique(vox >> (depth - level), axis=0)) for level in range(depth))
    assert len(codes) == internal                                 # tokens = internal nodes


def test_octree_round_trip_and_malformed_streams():
    rng = np.random.default_rng(0)
    vox = np.unique(rng.integers(0, 64, size=(3000, 3)), axis=0)
    codes = C.octree_encode(vox, 6)
    np.testing.assert_array_equal(np.unique(C.octree_decode(codes, 6), axis=0), vox)
    with pytest.raises(ValueError, match="ends early"):
        C.octree_decode(codes[:-1], 6)
    with pytest.raises(ValueError, match="past depth"):
        C.octree_decode(np.concatenate([codes, [1]]).astype(np.uint8), 6)
    assert len(C.octree_encode(np.zeros((0, 3), int), 4)) == 0 and len(C.octree_decode(np.zeros(0), 4)) == 0


def test_surface_voxels_cover_the_surface_only():
    box = trimesh.creation.box((0.52, 0.52, 0.52))
    vox = C.surface_voxels(_shape(box), 16)                      # faces at +-0.26: inside voxels 3 and 12
    assert vox.min() == 3 and vox.max() == 12
    inner = (vox > 3).all(axis=1) & (vox < 12).all(axis=1)
    assert not inner.any()                                       # a shell: no voxel strictly inside
    assert len(vox) == 10 ** 3 - 8 ** 3                          # the whole shell of the 10^3 block
    pts = Shape(id="p", kind="points", points=np.array([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5], [0.01, 0, 0]]))
    assert C.surface_voxels(pts, 4).tolist() == [[0, 0, 0], [2, 2, 2], [3, 3, 3]]


def test_octree_codec_decodes_a_closed_outward_mesh():
    shape = _sphere()
    codec = C.get_codec("octree-d5")
    enc = codec.encode(shape)
    assert enc.tokens == len(enc.payload) and enc.bits == 8 * enc.tokens and enc.bits_per_token == 8.0
    mesh = codec.decode(enc)
    assert mesh.is_watertight and mesh.volume > 0                 # faces wound outward
    assert np.abs(mesh.bounds).max() <= 0.5 + 1e-9
    out = score_shape(reference_sample(shape, FAST), mesh, FAST)
    assert out["chamfer_l1"] < 0.03 and out["iou"] > 0.85


def test_voxel_grid_decodes_like_the_octree_at_equal_resolution():
    shape = _sphere()
    octree, grid = C.get_codec("octree-d4"), C.get_codec("voxel-r16")
    a, b = octree.decode(octree.encode(shape)), grid.decode(grid.encode(shape))
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    enc = grid.encode(shape)
    assert enc.bits == enc.tokens == 16 ** 3 and enc.meta["occupied"] == len(C.surface_voxels(shape, 16))


def test_point_cloud_through_the_voxel_codecs():
    p = np.random.default_rng(0).normal(size=(4000, 3))
    p = 0.4 * p / np.linalg.norm(p, axis=1, keepdims=True)
    shape = Shape(id="cloud", kind="points", points=p)
    mesh = C.get_codec("octree-d4").decode(C.get_codec("octree-d4").encode(shape))
    assert len(mesh.faces) > 0 and mesh.is_watertight


# ---------------------------------------------------------------------------------------------- draco


@pytest.mark.parametrize("q", [8, 14])
def test_draco_real_bytes_and_quantisation_error(q):
    shape = _sphere()
    codec = C.get_codec(f"draco-q{q}")
    enc = codec.encode(shape)
    assert isinstance(enc.payload, bytes) and enc.bits == 8 * len(enc.payload) and enc.tokens is None
    mesh = codec.decode(enc)
    assert len(mesh.faces) == len(shape.mesh.faces)
    # every decoded vertex lies within half a quantisation step (per axis) of an original vertex
    step = np.ptp(shape.mesh.vertices, axis=0).max() / (2 ** q - 1)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(shape.mesh.vertices).query(mesh.vertices)
    assert d.max() <= np.sqrt(3) * step / 2 * 1.01


def test_draco_bits_fall_with_quantisation_and_point_clouds_work():
    shape = _sphere()
    bits = [C.get_codec(f"draco-q{q}").encode(shape).bits for q in (6, 8, 11, 14)]
    assert bits == sorted(bits) and bits[0] < bits[-1]
    cloud = Shape(id="c", kind="points", points=np.asarray(shape.mesh.vertices))
    codec = C.get_codec("draco-q11")
    back = codec.decode(codec.encode(cloud))
    assert isinstance(back, trimesh.PointCloud) and len(back.vertices) == len(cloud.points)


def test_codec_names():
    assert [C.get_codec(n).name for n in C.DEFAULT_CODECS] == list(C.DEFAULT_CODECS)
    with pytest.raises(UnknownNameError, match="draco-q"):
        C.get_codec("draco-11")
    with pytest.raises(ValueError):
        C.get_codec("octree-d0")
