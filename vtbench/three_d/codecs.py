"""Non-learned reference codecs for the shape track: what a learned 3D tokenizer has to beat at a given bit cost.

Every codec works on a normalised :class:`~vtbench.three_d.data.Shape` (inside [-0.5, 0.5]^3) and has
``encode(shape) -> Encoded`` (payload, exact ``bits``, ``tokens`` or None) and ``decode(encoded) -> trimesh``
(a ``Trimesh``; Draco of a point cloud gives a ``PointCloud``). Names: ``draco-q<bits>``, ``octree-d<depth>``,
``voxel-r<resolution>``; :func:`get_codec` builds one by name, :data:`DEFAULT_CODECS` lists the reference sweep.

- ``draco-q<b>``: Google Draco (DracoPy) with positions quantised to ``b`` bits per coordinate over the shape's
  bounding box and compression level 7 (``draco_encoder``'s default level); bits = 8 x encoded bytes (real bytes).
  Tokens: None (a codec, not a tokenizer).
- ``octree-d<d>``: octree occupancy coding of the surface voxels at resolution 2^d over [-0.5, 0.5]^3 (the
  non-learned 3D tokenization of Uni-3DAR's kind). Surface voxels: every voxel holding a vertex of the mesh
  subdivided to edges <= half a voxel (``trimesh.voxel.creation.voxelize_subdivide``), or a point of a cloud.
  Tokens: one 8-bit child-occupancy code per internal node (depths 0..d-1), breadth-first, children in Morton
  order (bit c of a code is child c, c = 4x + 2y + z of the child's offset); bits = 8 x tokens.
- ``voxel-r<r>``: the same surface-voxel occupancy as a dense r^3 bitmap; tokens = r^3 binary tokens,
  bits = r^3. At r = 2^d it decodes exactly like ``octree-d<d>`` (same voxels, different code length).

Voxel decoding (octree and grid alike): enclosed cavities are filled (``scipy.ndimage.binary_fill_holes``), then
``skimage.measure.marching_cubes`` at level 0.5 on the padded occupancy, faces wound outward. The surface lies
about half a voxel outside the occupied voxel centres; open (non-closed) surfaces come back as a thin closed
shell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Encoded", "ShapeCodec", "DracoCodec", "OctreeCodec", "VoxelGridCodec", "DEFAULT_CODECS", "get_codec",
           "surface_voxels", "octree_encode", "octree_decode", "voxels_to_mesh"]

DRACO_COMPRESSION_LEVEL = 7


@dataclass
class Encoded:
    """A codec's output for one shape: ``payload`` (bytes, or a uint8 array of codes), its exact size ``bits``,
    ``tokens`` (None for a codec without tokens) and what decoding needs besides (``meta``)."""

    codec: str
    shape_id: str
    payload: Any
    bits: int
    tokens: int | None
    bits_per_token: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class ShapeCodec:
    """Base class: ``name``, ``encode(shape) -> Encoded``, ``decode(encoded) -> trimesh geometry``."""

    name = ""
    kind = "codec"   # "codec" (bytes) or "tokenizer" (codes)

    def encode(self, shape) -> Encoded:
        raise NotImplementedError

    def decode(self, encoded: Encoded):
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ---------------------------------------------------------------------------------------------- Draco


class DracoCodec(ShapeCodec):
    def __init__(self, quantization_bits: int = 11, compression_level: int = DRACO_COMPRESSION_LEVEL):
        if not 1 <= int(quantization_bits) <= 30:
            raise ValueError(f"draco quantization_bits must be in 1..30, got {quantization_bits}")
        self.quantization_bits = int(quantization_bits)
        self.compression_level = int(compression_level)
        self.name = f"draco-q{self.quantization_bits}"

    def encode(self, shape) -> Encoded:
        import DracoPy

        if shape.mesh is not None:
            data = DracoPy.encode(np.asarray(shape.mesh.vertices, np.float32), np.asarray(shape.mesh.faces, np.uint32),
                                  quantization_bits=self.quantization_bits, compression_level=self.compression_level)
        else:
            data = DracoPy.encode(np.asarray(shape.points, np.float32), quantization_bits=self.quantization_bits,
                                  compression_level=self.compression_level)
        return Encoded(self.name, shape.id, bytes(data), bits=8 * len(data), tokens=None)

    def decode(self, encoded: Encoded):
        import DracoPy
        import trimesh

        obj = DracoPy.decode(encoded.payload)
        points = np.asarray(obj.points, np.float64).reshape(-1, 3)
        faces = getattr(obj, "faces", None)
        if faces is not None and len(faces):
            return trimesh.Trimesh(points, np.asarray(faces, np.int64).reshape(-1, 3), process=False)
        return trimesh.PointCloud(points)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "library": "DracoPy",
                "quantization_bits": self.quantization_bits, "compression_level": self.compression_level}


# ---------------------------------------------------------------------------------------------- voxels


def surface_voxels(shape, resolution: int) -> np.ndarray:
    """Integer (K, 3) indices (unique, lexicographically sorted) of the voxels of an ``r^3`` grid over
    [-0.5, 0.5]^3 that the surface (or cloud) passes through; voxel i covers [i/r - 0.5, (i+1)/r - 0.5) (a mesh
    vertex exactly on a voxel boundary goes where trimesh's rounding puts it; points on the cube's far faces go
    to the last voxel)."""
    r = int(resolution)
    if shape.mesh is not None:
        import trimesh

        # grid units with voxel centres on integers: trimesh's voxelisation rounds coordinates to the pitch
        mesh = shape.mesh.copy()
        mesh.apply_transform(trimesh.transformations.scale_and_translate(scale=r, translate=r / 2 - 0.5))
        vox = trimesh.voxel.creation.voxelize_subdivide(mesh, pitch=1.0)
        idx = np.round(np.asarray(vox.points)).astype(np.int64)   # voxel centres, integers already
    else:
        idx = np.floor((np.asarray(shape.points) + 0.5) * r).astype(np.int64)
    return np.unique(np.clip(idx, 0, r - 1), axis=0)


def _morton(idx: np.ndarray, depth: int) -> np.ndarray:
    """Interleave the bits of (x, y, z) < 2^depth: code = sum_b (4 x_b + 2 y_b + z_b) 8^b."""
    code = np.zeros(len(idx), dtype=np.int64)
    for b in range(depth):
        child = ((idx[:, 0] >> b) & 1) << 2 | ((idx[:, 1] >> b) & 1) << 1 | ((idx[:, 2] >> b) & 1)
        code |= child.astype(np.int64) << (3 * b)
    return code


def _unmorton(code: np.ndarray, depth: int) -> np.ndarray:
    idx = np.zeros((len(code), 3), dtype=np.int64)
    for b in range(depth):
        child = (code >> (3 * b)) & 7
        idx[:, 0] |= ((child >> 2) & 1) << b
        idx[:, 1] |= ((child >> 1) & 1) << b
        idx[:, 2] |= (child & 1) << b
    return idx


def octree_encode(voxels: np.ndarray, depth: int) -> np.ndarray:
    """Breadth-first occupancy codes (uint8, one per internal node) of the octree whose leaves at ``depth`` are
    ``voxels`` (K, 3). Nodes of one level are in Morton order, which is the breadth-first order."""
    if len(voxels) == 0:
        return np.zeros(0, dtype=np.uint8)
    leaves = np.unique(_morton(np.asarray(voxels, np.int64), depth))
    codes = []
    for level in range(depth):                   # parents at `level`, children at level + 1
        children = np.unique(leaves >> (3 * (depth - level - 1)))
        parents, start = np.unique(children >> 3, return_index=True)
        bits = (np.left_shift(1, children & 7)).astype(np.uint8)
        codes.append(np.bitwise_or.reduceat(bits, start).astype(np.uint8))
    return np.concatenate(codes)


def octree_decode(codes: np.ndarray, depth: int) -> np.ndarray:
    """Leaf voxel indices (K, 3) from :func:`octree_encode`'s codes; raises ValueError on a malformed stream."""
    codes = np.asarray(codes, dtype=np.uint8)
    if len(codes) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    nodes = np.zeros(1, dtype=np.int64)          # Morton codes of the current level's nodes
    pos = 0
    for _ in range(depth):
        level = codes[pos:pos + len(nodes)]
        if len(level) != len(nodes):
            raise ValueError(f"octree stream ends early: {len(codes)} codes for depth {depth}")
        pos += len(nodes)
        bits = np.unpackbits(level[:, None], axis=1, bitorder="little")        # (n, 8): bit c = child c
        parent, child = np.nonzero(bits)
        nodes = (nodes[parent] << 3) | child
    if pos != len(codes):
        raise ValueError(f"octree stream has {len(codes) - pos} codes past depth {depth}")
    return _unmorton(nodes, depth)


def voxels_to_mesh(voxels: np.ndarray, resolution: int):
    """Marching cubes (skimage, level 0.5) of the occupancy with enclosed cavities filled, in the normalised
    frame, faces wound outward; an empty trimesh when no voxel is set."""
    import trimesh
    from scipy import ndimage
    from skimage.measure import marching_cubes

    r = int(resolution)
    if len(voxels) == 0:
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), process=False)
    grid = np.zeros((r, r, r), dtype=bool)
    grid[tuple(np.asarray(voxels).T)] = True
    solid = ndimage.binary_fill_holes(grid)
    verts, faces, _, _ = marching_cubes(np.pad(solid, 1).astype(np.float32), level=0.5)
    verts = (verts.astype(np.float64) - 0.5) / r - 0.5      # padded index -> voxel centre (i + 0.5) / r - 0.5
    # skimage winds faces so that normals point towards increasing values (into the solid): reverse them
    return trimesh.Trimesh(verts, faces[:, ::-1].astype(np.int64), process=True)


class OctreeCodec(ShapeCodec):
    kind = "tokenizer"

    def __init__(self, depth: int = 6):
        if not 1 <= int(depth) <= 10:
            raise ValueError(f"octree depth must be in 1..10, got {depth}")
        self.depth = int(depth)
        self.resolution = 1 << self.depth
        self.name = f"octree-d{self.depth}"

    def encode(self, shape) -> Encoded:
        codes = octree_encode(surface_voxels(shape, self.resolution), self.depth)
        return Encoded(self.name, shape.id, codes, bits=8 * len(codes), tokens=len(codes), bits_per_token=8.0,
                       meta={"depth": self.depth})

    def decode(self, encoded: Encoded):
        return voxels_to_mesh(octree_decode(encoded.payload, self.depth), self.resolution)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "depth": self.depth, "resolution": self.resolution,
                "bits_per_token": 8}


class VoxelGridCodec(ShapeCodec):
    kind = "tokenizer"

    def __init__(self, resolution: int = 64):
        if not 2 <= int(resolution) <= 1024:
            raise ValueError(f"voxel resolution must be in 2..1024, got {resolution}")
        self.resolution = int(resolution)
        self.name = f"voxel-r{self.resolution}"

    def encode(self, shape) -> Encoded:
        r = self.resolution
        grid = np.zeros((r, r, r), dtype=bool)
        vox = surface_voxels(shape, r)
        grid[tuple(vox.T)] = True
        return Encoded(self.name, shape.id, np.packbits(grid.ravel()), bits=r ** 3, tokens=r ** 3,
                       bits_per_token=1.0, meta={"resolution": r, "occupied": int(len(vox))})

    def decode(self, encoded: Encoded):
        r = self.resolution
        grid = np.unpackbits(np.asarray(encoded.payload, np.uint8), count=r ** 3).astype(bool).reshape(r, r, r)
        return voxels_to_mesh(np.argwhere(grid), r)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "resolution": self.resolution, "bits_per_token": 1}


# ---------------------------------------------------------------------------------------------- registry

DEFAULT_CODECS = ("draco-q6", "draco-q8", "draco-q11", "draco-q14", "octree-d5", "octree-d6", "octree-d7",
                  "voxel-r32", "voxel-r64", "voxel-r128")
_NAME = re.compile(r"^(draco-q|octree-d|voxel-r)(\d+)$")


def get_codec(name: str) -> ShapeCodec:
    """``draco-q<bits>``, ``octree-d<depth>`` or ``voxel-r<resolution>``."""
    m = _NAME.match(name)
    if not m:
        from vtbench.registry import UnknownNameError, did_you_mean

        raise UnknownNameError(did_you_mean(name, DEFAULT_CODECS, "shape codec") +
                               " (names: draco-q<bits>, octree-d<depth>, voxel-r<resolution>)")
    kind, value = m.group(1), int(m.group(2))
    return {"draco-q": DracoCodec, "octree-d": OctreeCodec, "voxel-r": VoxelGridCodec}[kind](value)
