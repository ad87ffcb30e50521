"""Shape datasets: meshes and point clouds from a folder, each with a recorded identity and normalisation.

``open_shapes(spec, normalisation="unit-cube", limit=None, seed=0)`` accepts:

- ``"embedded"`` (or ``"embedded/shapes"``): the repository's embedded shape set (``data/embedded/shapes``).
- a folder, searched recursively (hidden files and folders ignored) for meshes ``.obj .ply .stl .off .glb`` and
  point clouds ``.npz`` (arrays ``points`` (N, 3) and optionally ``normals`` (N, 3)); a ``.ply`` without faces
  is a point cloud (its ``nx ny nz`` properties, when present, are its normals).
- one such file.

Identity. The folder's layout decides the ids: ShapeNetCore.v2 (every file is
``<synset>/<model_id>/models/model_normalized.obj``) -> ``"<synset>/<model_id>"``; Objaverse (every file is
``glbs/<group>/<uid>.glb``) -> ``"<uid>"``; anything else -> the relative posix path (with its extension). Ids
are sorted; when a layout's ids would collide, the relative paths are used. ``info.revision`` is a short hash over
the ids and each file's content digest (``vtbench.hashing.content_digests``), so an added, removed, renamed or
rewritten file changes it. ``limit``: the seeded subset of the image datasets (``select_subset``: ids ranked by
``sha1(f"{seed}:{id}")``), independent of listing order.

Normalisation is a named policy recorded in ``info.policy`` and on every shape: ``unit-cube`` (default: centre
of the bounding box to the origin, longest side scaled to 1, so the shape lies in [-0.5, 0.5]^3) or
``unit-sphere`` (centre of the bounding box to the origin, farthest point at distance 0.5: the bounding sphere has
diameter 1, so both policies share the evaluation cube [-0.5, 0.5]^3 and an F-score threshold keeps its meaning
as a fraction of the shape's size).

Loading never crashes a run: a file that cannot be read, holds nothing, is degenerate (non-finite coordinates,
zero extent, no face of non-zero area) or exceeds the size limits comes back as a :class:`SkippedShape` with a
reason code and a message naming the file; the dataset counts them (``skip_summary()``). Meshes that are not
watertight are kept, flagged ``watertight=False`` (volume IoU is then null with the reason), unless
``require_watertight=True`` skips them too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vtbench.core import fingerprint
from vtbench.data.datasets import DatasetInfo, select_subset, walk_files
from vtbench.hashing import content_digests
from vtbench.registry import did_you_mean

__all__ = ["MESH_EXTENSIONS", "POINT_EXTENSIONS", "NORMALISATIONS", "Limits", "Normalisation", "Shape",
           "SkippedShape", "ShapeSkip", "ShapeDatasetError", "ShapeDataset", "get_normalisation", "load_shape",
           "open_shapes", "reference_ply", "embedded_shapes_root"]

MESH_EXTENSIONS = (".obj", ".ply", ".stl", ".off", ".glb")
POINT_EXTENSIONS = (".npz",)
ACCEPTED = ("'embedded' (the repository's shape set), a folder of meshes (.obj .ply .stl .off .glb) and point "
            "clouds (.npz with 'points' and optional 'normals', or a .ply without faces), searched recursively "
            "(ShapeNetCore.v2 and Objaverse layouts get their own ids), or one such file")

# Skip reason codes (SkippedShape.reason)
UNREADABLE, EMPTY, DEGENERATE, TOO_LARGE, NOT_WATERTIGHT = "unreadable", "empty", "degenerate", "too-large", \
    "not-watertight"


class ShapeDatasetError(ValueError):
    """A dataset spec that cannot be opened; the message names the path and what is accepted."""


class ShapeSkip(Exception):
    """One shape that cannot be evaluated (``reason`` is a code, ``message`` names the file and the fix)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class Normalisation:
    """A named normalisation policy: ``apply(points)`` returns ``(normalised, centre, scale)`` with
    ``normalised = (points - centre) * scale``. The centre is the bounding box's; the scale sends the longest side
    to 1 (``unit-cube``) or the farthest point to distance 0.5 (``unit-sphere``)."""

    name: str
    description: str

    def apply(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        points = np.asarray(points, dtype=np.float64)
        lo, hi = points.min(axis=0), points.max(axis=0)
        centre = (lo + hi) / 2.0
        if self.name == "unit-cube":
            size = float((hi - lo).max())
        else:
            size = 2.0 * float(np.sqrt(((points - centre) ** 2).sum(axis=1).max()))
        if not np.isfinite(size) or size <= 0.0:
            raise ShapeSkip(DEGENERATE, "zero extent: every point lies at one location")
        scale = 1.0 / size
        return (points - centre) * scale, centre, scale

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "cube": [-0.5, 0.5]}


NORMALISATIONS: dict[str, Normalisation] = {
    "unit-cube": Normalisation("unit-cube", "bounding-box centre to the origin, longest side scaled to 1 "
                                            "(the shape lies in [-0.5, 0.5]^3)"),
    "unit-sphere": Normalisation("unit-sphere", "bounding-box centre to the origin, farthest point scaled to "
                                                "distance 0.5 (bounding sphere of diameter 1, inside [-0.5, 0.5]^3)"),
}


def get_normalisation(name: str | Normalisation) -> Normalisation:
    if isinstance(name, Normalisation):
        return name
    if name not in NORMALISATIONS:
        raise ShapeDatasetError(did_you_mean(str(name), NORMALISATIONS, "normalisation policy"))
    return NORMALISATIONS[name]


@dataclass(frozen=True)
class Limits:
    """Shapes beyond these sizes are skipped (reason ``too-large``) before or right after reading."""

    max_file_bytes: int = 1 << 30        # 1 GiB on disk
    max_faces: int = 5_000_000
    max_points: int = 10_000_000

    def to_dict(self) -> dict[str, int]:
        return {"max_file_bytes": self.max_file_bytes, "max_faces": self.max_faces, "max_points": self.max_points}


# ---------------------------------------------------------------------------------------------- records


@dataclass
class Shape:
    """One normalised shape.

    ``mesh`` (a ``trimesh.Trimesh``, float64 vertices in the normalised frame) for meshes, ``points`` (N, 3)
    float64 (and ``normals`` (N, 3) unit vectors or None) for point clouds. ``watertight``: every edge is shared
    by exactly two faces with consistent winding (trimesh ``is_watertight and is_winding_consistent``); always
    False for point clouds. ``stored_bytes``: the file's size as stored; ``reference_bytes``: the size of the
    reference encoding (:func:`reference_ply`: binary PLY, float32 vertices, int32 faces), the raw size that
    compression ratios are taken against. ``normalisation``: policy name, ``centre`` and ``scale`` such that
    normalised = (stored - centre) * scale.
    """

    id: str
    kind: str                                   # "mesh" | "points"
    mesh: Any = None                            # trimesh.Trimesh | None
    points: np.ndarray | None = None
    normals: np.ndarray | None = None
    watertight: bool = False
    stored_bytes: int = 0
    reference_bytes: int = 0
    source: str = ""
    normalisation: dict[str, Any] = field(default_factory=dict)

    @property
    def vertices(self) -> np.ndarray:
        return np.asarray(self.mesh.vertices) if self.mesh is not None else np.asarray(self.points)

    @property
    def n_faces(self) -> int:
        return 0 if self.mesh is None else int(len(self.mesh.faces))


@dataclass(frozen=True)
class SkippedShape:
    """A shape left out of the evaluation: ``reason`` is one of ``unreadable empty degenerate too-large
    not-watertight``; ``message`` says what is wrong with which file."""

    id: str
    reason: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason, "message": self.message}


def reference_ply(vertices: np.ndarray, faces: np.ndarray | None = None) -> bytes:
    """The reference encoding: binary little-endian PLY, float32 x y z per vertex, and per face a uchar count (3)
    and three int32 indices; a point cloud (``faces`` None) has vertices only. Its length is ``reference_bytes``."""
    v = np.ascontiguousarray(vertices, dtype="<f4").reshape(-1, 3)
    head = ["ply", "format binary_little_endian 1.0", f"element vertex {len(v)}",
            "property float x", "property float y", "property float z"]
    body = v.tobytes()
    if faces is not None:
        f = np.asarray(faces).reshape(-1, 3)
        rec = np.empty(len(f), dtype=[("n", "u1"), ("v", "<i4", (3,))])
        rec["n"] = 3
        rec["v"] = f
        head += [f"element face {len(f)}", "property list uchar int vertex_indices"]
        body += rec.tobytes()
    head.append("end_header")
    return ("\n".join(head) + "\n").encode("ascii") + body


# ---------------------------------------------------------------------------------------------- one file


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as z:
        if "points" not in z.files:
            raise ShapeSkip(UNREADABLE, f"{path}: no 'points' array (found: {', '.join(z.files) or 'none'}); "
                                        f"save the cloud with np.savez(path, points=P, normals=N)")
        points = np.asarray(z["points"])
        normals = np.asarray(z["normals"]) if "normals" in z.files else None
    return points, normals


def _read_file(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(vertices, faces or None, point normals or None) as stored."""
    import trimesh

    ext = path.suffix.lower()
    if ext == ".npz":
        points, normals = _read_npz(path)
        return points, None, normals
    if ext == ".ply":
        with open(path, "rb") as f:
            kw = trimesh.exchange.ply.load_ply(f)
        faces = kw.get("faces")
        if faces is not None and len(faces):  # trimesh triangulates quads
            mesh = trimesh.Trimesh(vertices=kw["vertices"], faces=faces, process=False)
            return np.asarray(mesh.vertices), np.asarray(mesh.faces), None
        return np.asarray(kw["vertices"]), None, kw.get("vertex_normals")
    extra = {"skip_materials": True} if ext == ".obj" else {}
    geom = trimesh.load(str(path), force="mesh", process=False, **extra)
    vertices = np.asarray(getattr(geom, "vertices", np.zeros((0, 3))))
    faces = getattr(geom, "faces", None)
    return vertices, (np.asarray(faces) if faces is not None else None), None


def _clean_mesh(vertices: np.ndarray, faces: np.ndarray, policy: Normalisation):
    """Normalise, merge coincident vertices, drop zero-area and duplicate faces; (mesh, centre, scale)."""
    import trimesh

    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ShapeSkip(DEGENERATE, f"faces have shape {faces.shape}, expected (F, 3) triangles")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ShapeSkip(DEGENERATE, f"face indices outside [0, {len(vertices)})")
    used = np.unique(faces)
    v, centre, scale = policy.apply(vertices[used])
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    mesh = trimesh.Trimesh(v, remap[faces], process=True)  # merges coincident vertices (seams)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0 or not mesh.area > 0:
        raise ShapeSkip(DEGENERATE, f"no face of non-zero area ({len(faces)} faces, all degenerate)")
    return mesh, centre, scale


def load_shape(path: str | os.PathLike, *, shape_id: str | None = None,
               normalisation: str | Normalisation = "unit-cube", limits: Limits = Limits(),
               require_watertight: bool = False, source: str | None = None) -> Shape:
    """Read one mesh or point cloud and normalise it; raises :class:`ShapeSkip` (never anything else) when the
    shape cannot be evaluated."""
    path = Path(path)
    policy = get_normalisation(normalisation)
    sid = shape_id or path.as_posix()
    try:
        stored = path.stat().st_size
    except OSError as exc:
        raise ShapeSkip(UNREADABLE, f"{path}: cannot stat ({exc})") from None
    if stored > limits.max_file_bytes:
        raise ShapeSkip(TOO_LARGE, f"{path}: {stored} bytes on disk, above max_file_bytes={limits.max_file_bytes}; "
                                   f"decimate it or raise the limit")
    try:
        vertices, faces, normals = _read_file(path)
    except ShapeSkip as exc:
        raise ShapeSkip(exc.reason, exc.message) from None
    except Exception as exc:  # noqa: BLE001 - any parser error spoils this shape, not the run
        raise ShapeSkip(UNREADABLE, f"{path}: cannot read ({type(exc).__name__}: {exc}); check that the file is a "
                                    f"valid {path.suffix or 'mesh'} file") from None
    try:
        vertices = np.asarray(vertices, dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise ShapeSkip(DEGENERATE, f"vertices have shape {vertices.shape}, expected (N, 3)")
        if faces is not None and len(faces) == 0:
            raise ShapeSkip(EMPTY, "no faces (an empty scene, or a mesh file holding vertices only)")
        if len(vertices) == 0:
            raise ShapeSkip(EMPTY, "no vertices")
        if not np.isfinite(vertices).all():
            raise ShapeSkip(DEGENERATE, "non-finite (NaN/Inf) vertex coordinates")
        common = dict(id=sid, stored_bytes=stored, source=source or path.name)
        if faces is not None:
            faces = np.asarray(faces, dtype=np.int64)
            if len(faces) > limits.max_faces:
                raise ShapeSkip(TOO_LARGE, f"{len(faces)} faces, above max_faces={limits.max_faces}; decimate the "
                                           f"mesh or raise the limit")
            mesh, centre, scale = _clean_mesh(vertices, faces, policy)
            watertight = bool(mesh.is_watertight and mesh.is_winding_consistent)
            if require_watertight and not watertight:
                raise ShapeSkip(NOT_WATERTIGHT, "not watertight (an edge is not shared by exactly two faces with "
                                                "consistent winding) and require_watertight is set")
            ref = len(reference_ply(mesh.vertices, mesh.faces))
            return Shape(kind="mesh", mesh=mesh, watertight=watertight, reference_bytes=ref,
                         normalisation={"policy": policy.name, "centre": centre.tolist(), "scale": scale}, **common)
        if len(vertices) > limits.max_points:
            raise ShapeSkip(TOO_LARGE, f"{len(vertices)} points, above max_points={limits.max_points}; subsample "
                                       f"the cloud or raise the limit")
        if require_watertight:
            raise ShapeSkip(NOT_WATERTIGHT, "a point cloud has no surface to be watertight and require_watertight "
                                            "is set")
        points, centre, scale = policy.apply(vertices)
        if normals is not None:
            normals = np.asarray(normals, dtype=np.float64)
            length = np.linalg.norm(normals, axis=1, keepdims=True) if normals.shape == points.shape else None
            # unusable normals (wrong shape, zero or non-finite) are dropped, not guessed
            normals = normals / length if length is not None and np.all(length > 0) and \
                np.isfinite(normals).all() else None
        return Shape(kind="points", points=points, normals=normals, watertight=False,
                     reference_bytes=len(reference_ply(points)),
                     normalisation={"policy": policy.name, "centre": centre.tolist(), "scale": scale}, **common)
    except ShapeSkip as exc:
        raise ShapeSkip(exc.reason, f"{path}: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - trimesh on pathological input
        raise ShapeSkip(DEGENERATE, f"{path}: cannot process ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------------- folders

_SHAPENET = re.compile(r"(?:^|/)([^/]+)/([^/]+)/models/model_normalized\.obj$")
_OBJAVERSE = re.compile(r"(?:^|/)glbs/[^/]+/([^/]+)\.glb$")


def list_shape_files(root: Path) -> list[str]:
    """Relative posix paths of every mesh / point-cloud file under ``root``, sorted."""
    return [rel for rel, _ in walk_files(root, MESH_EXTENSIONS + POINT_EXTENSIONS)]


def shape_ids(rels: list[str]) -> tuple[list[str], str]:
    """(ids, layout) for relative paths: ``shapenet``, ``objaverse`` or ``files`` (see the module docstring)."""
    for layout, pattern, make in (("shapenet", _SHAPENET, lambda m: f"{m.group(1)}/{m.group(2)}"),
                                  ("objaverse", _OBJAVERSE, lambda m: m.group(1))):
        matches = [pattern.search(r) for r in rels]
        if rels and all(matches):
            ids = [make(m) for m in matches]
            if len(set(ids)) == len(ids):
                return ids, layout
    return list(rels), "files"


def embedded_shapes_root() -> Path:
    from vtbench.paths import DATA_DIR

    return DATA_DIR / "embedded" / "shapes"


class ShapeDataset:
    """Shapes of one folder (or file), in id order; ``ds[i]`` loads shape ``i`` -> :class:`Shape` or
    :class:`SkippedShape` (also recorded in ``ds.skipped`` of the process that loaded it: behind DataLoader
    workers, count the returned ``SkippedShape`` records instead). ``info`` is a :class:`DatasetInfo` whose
    ``policy`` is the normalisation policy and whose ``extra`` holds the layout, limits and watertight requirement.
    Shapes and skip records pickle, so the dataset works with ``torch.utils.data.DataLoader`` (``collate_fn=list``).
    """

    def __init__(self, root: Path, *, dataset_id: str, kind: str, rels: list[str],
                 normalisation: str | Normalisation = "unit-cube", limit: int | None = None, seed: int = 0,
                 limits: Limits = Limits(), require_watertight: bool = False):
        if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
            raise ShapeDatasetError(f"limit must be a positive integer or None, got {limit!r}")
        self.root = root
        self.policy = get_normalisation(normalisation)
        self.limits = limits
        self.require_watertight = require_watertight
        base = root if root.is_dir() else root.parent
        all_ids, layout = shape_ids(rels)
        order = sorted(range(len(all_ids)), key=lambda k: all_ids[k])
        self._all_ids = [all_ids[k] for k in order]
        self._rels = [rels[k] for k in order]
        self._base = base
        digests = content_digests(base, self._rels)
        revision = fingerprint([f"{i}\t{r}\t{d}" for i, r, d in zip(self._all_ids, self._rels, digests)], length=12)
        self._index = select_subset(self._all_ids, limit, seed)
        self.ids = [self._all_ids[j] for j in self._index]
        self.skipped: dict[str, SkippedShape] = {}
        self.info = DatasetInfo(id=dataset_id, kind=kind, root=str(root), revision=revision,
                                n_total=len(self._all_ids), n_selected=len(self.ids), split=None,
                                policy=self.policy.describe(), seed=seed, limit=None if limit is None else int(limit),
                                selection=fingerprint(self.ids, length=12),
                                extra={"task": "shape", "layout": layout, "limits": limits.to_dict(),
                                       "require_watertight": require_watertight})

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, i: int) -> Path:
        return self._base / self._rels[self._index[i]]

    def __getitem__(self, i: int) -> Shape | SkippedShape:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} shapes")
        i %= len(self)
        sid, rel = self.ids[i], self._rels[self._index[i]]
        try:
            return load_shape(self._base / rel, shape_id=sid, normalisation=self.policy, limits=self.limits,
                              require_watertight=self.require_watertight, source=rel)
        except ShapeSkip as exc:
            skip = SkippedShape(sid, exc.reason, exc.message)
            self.skipped[sid] = skip
            return skip

    def __iter__(self) -> Iterator[Shape | SkippedShape]:
        for i in range(len(self)):
            yield self[i]

    def skip_summary(self) -> dict[str, Any]:
        """Shapes skipped so far: ``{"n": .., "by_reason": {reason: count}, "shapes": [{id, reason, message}]}``."""
        items = [self.skipped[k] for k in sorted(self.skipped)]
        by_reason: dict[str, int] = {}
        for s in items:
            by_reason[s.reason] = by_reason.get(s.reason, 0) + 1
        return {"n": len(items), "by_reason": by_reason, "shapes": [s.to_dict() for s in items]}

    def __repr__(self) -> str:
        i = self.info
        return (f"ShapeDataset(id={i.id!r}, layout={i.extra['layout']!r}, n={i.n_selected}/{i.n_total}, "
                f"revision={i.revision!r}, normalisation={self.policy.name!r})")


def open_shapes(spec: str | os.PathLike, normalisation: str | Normalisation = "unit-cube",
                limit: int | None = None, seed: int = 0, *, limits: Limits = Limits(),
                require_watertight: bool = False) -> ShapeDataset:
    """Open ``spec`` (see the module docstring)."""
    raw = os.fspath(spec)
    if not raw.strip():
        raise ShapeDatasetError(f"empty dataset spec. Accepted: {ACCEPTED}")
    common = dict(normalisation=normalisation, limit=limit, seed=seed, limits=limits,
                  require_watertight=require_watertight)
    norm = raw.replace("\\", "/").rstrip("/")
    if norm in ("embedded", "embedded/shapes"):
        root = embedded_shapes_root()
        if not root.is_dir():
            raise ShapeDatasetError(f"the embedded shape set is missing: {str(root)!r} does not exist. It ships inside "
                                    f"the vtbench package (data/embedded/shapes in a checkout); reinstall vtbench or "
                                    f"regenerate it with `python data/make_embedded_shapes.py`")
        return ShapeDataset(root, dataset_id="embedded/shapes", kind="embedded", rels=list_shape_files(root),
                            **common)
    path = Path(raw).expanduser()
    if not path.exists():
        raise ShapeDatasetError(f"dataset {raw!r} not found: no such file or folder ({str(path.absolute())!r}). "
                                f"Accepted: {ACCEPTED}")
    path = path.resolve()
    if path.is_file():
        if not path.name.lower().endswith(MESH_EXTENSIONS + POINT_EXTENSIONS):
            raise ShapeDatasetError(f"{str(path)!r} is not a mesh or point-cloud file. Accepted: {ACCEPTED}")
        return ShapeDataset(path, dataset_id=path.stem, kind="file", rels=[path.name], **common)
    rels = list_shape_files(path)
    if not rels:
        raise ShapeDatasetError(f"no meshes or point clouds found under {str(path)!r} (looked recursively for "
                                f"{', '.join(MESH_EXTENSIONS + POINT_EXTENSIONS)}, any case; hidden files ignored). "
                                f"Accepted: {ACCEPTED}")
    return ShapeDataset(path, dataset_id=path.name, kind="folder", rels=rels, **common)
