"""Protocol ``shape@1.0``: per-shape geometry metrics between a normalised reference and its reconstruction.

Definitions (all distances Euclidean, in the normalised frame where the shape spans 1; follows the Occupancy
Networks evaluation, ``im2mesh/eval.py`` of autonomousvision/occupancy_networks):

- Sampling: ``points`` (default 100,000) points drawn on each surface, area-weighted (``trimesh.sample.
  sample_surface``), each with its face normal; a point cloud contributes a seeded subset of ``points`` of its
  points (all when it has fewer). Seeds: :func:`stream_seed` (``sha256("<seed>:<shape id>:<stream>")``), stream
  ``reference`` or ``reconstruction``, so a shape's samples do not depend on the order, batch or process.
- Nearest neighbours with ``scipy.spatial.cKDTree``. ``accuracy_i`` = distance from reconstruction point i to the
  nearest reference point, ``completeness_j`` = from reference point j to the nearest reconstruction point.
- ``chamfer_l1`` = (mean(accuracy) + mean(completeness)) / 2 -- mean Euclidean distance, both directions averaged.
- ``chamfer_l2`` = (mean(accuracy^2) + mean(completeness^2)) / 2 -- mean squared distance, both directions averaged.
- ``fscore@tau`` = 2PR / (P + R) with precision P = fraction of accuracy <= tau, recall R = fraction of
  completeness <= tau (0 when P + R = 0); tau 0.01 and 0.02 (1% and 2% of the shape's size).
- ``normal_consistency`` = (mean |n_rec . n_ref(nearest)| + mean |n_ref . n_rec(nearest)|) / 2 over unit normals
  (absolute value: orientation is not judged); null when either side has no normals.
- ``iou`` = |inside(ref) & inside(rec)| / |inside(ref) | inside(rec)| over ``iou_points`` (default 100,000)
  query points drawn uniformly, once per protocol seed, in the centred cube of side ``iou_box`` (default 1.1: the
  normalisation cube [-0.5, 0.5]^3 padded by 0.05 per side, as the Occupancy Networks' 0.1 padding). Inside: the
  absolute generalised winding number > 0.5 (libigl ``fast_winding_number``). Null with the reason unless both
  meshes are watertight.
- An empty reconstruction (no faces / no points) scores the worst values: accuracy = completeness = sqrt(3) (the
  diagonal of the normalisation cube; Occupancy Networks' convention), so ``chamfer_l1`` = sqrt(3),
  ``chamfer_l2`` = 3, F-scores 0, ``normal_consistency`` 0, ``iou`` 0 (when the reference is watertight); the shape
  carries ``empty_reconstruction: true``. Non-finite reconstruction coordinates are an error.

Use: :func:`reference_sample` once per shape (tokenizer-independent, cacheable), then :func:`score_shape` per
reconstruction (a dict of per-shape values), folded by :class:`ShapeMetricAccumulator` (sums; mergeable).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["ShapeSettings", "MetricInfo", "SHAPE_METRICS", "ReferenceSample", "ShapeMetricAccumulator",
           "stream_seed", "sample_surface", "sample_geometry", "nearest", "point_metrics", "iou_query_points",
           "occupancy", "volume_iou", "reference_sample", "score_shape", "metric_keys"]

EMPTY_DISTANCE = math.sqrt(3.0)   # diagonal of [-0.5, 0.5]^3


@dataclass(frozen=True)
class ShapeSettings:
    """The settings of ``metrics/shape.toml`` that move numbers (see the module docstring)."""

    points: int = 100_000
    taus: tuple[float, ...] = (0.01, 0.02)
    iou_points: int = 100_000
    iou_box: float = 1.1
    seed: int = 0

    @classmethod
    def from_protocol(cls, settings: Mapping[str, Any], seed: int = 0) -> "ShapeSettings":
        """From a loaded protocol's settings (``Protocol.settings``: tables ``sampling``, ``fscore``, ``iou``)."""
        s = settings.get("sampling", {})
        return cls(points=int(s.get("points", cls.points)),
                   taus=tuple(float(t) for t in settings.get("fscore", {}).get("taus", cls.taus)),
                   iou_points=int(settings.get("iou", {}).get("points", cls.iou_points)),
                   iou_box=float(settings.get("iou", {}).get("box", cls.iou_box)), seed=seed)


@dataclass(frozen=True)
class MetricInfo:
    key: str
    display: str
    unit: str
    higher_is_better: bool


def fscore_key(tau: float) -> str:
    return f"fscore@{tau:g}"


def metric_keys(settings: ShapeSettings = ShapeSettings()) -> list[str]:
    return ["chamfer_l1", "chamfer_l2", *(fscore_key(t) for t in settings.taus), "normal_consistency", "iou"]


def _infos(settings: ShapeSettings = ShapeSettings()) -> dict[str, MetricInfo]:
    out = {"chamfer_l1": MetricInfo("chamfer_l1", "Chamfer-L1", "normalised length", False),
           "chamfer_l2": MetricInfo("chamfer_l2", "Chamfer-L2", "normalised length^2", False)}
    for t in settings.taus:
        out[fscore_key(t)] = MetricInfo(fscore_key(t), f"F-score@{t:g}", "fraction", True)
    out["normal_consistency"] = MetricInfo("normal_consistency", "Normal consistency", "fraction", True)
    out["iou"] = MetricInfo("iou", "Volume IoU", "fraction", True)
    return out


SHAPE_METRICS: dict[str, MetricInfo] = _infos()


# ---------------------------------------------------------------------------------------------- sampling


def stream_seed(seed: int, shape_id: str, stream: str) -> int:
    """A 63-bit seed from ``sha256("<seed>:<shape id>:<stream>")`` (first 8 bytes, little endian)."""
    digest = hashlib.sha256(f"{seed}:{shape_id}:{stream}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_surface(mesh, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-weighted points on ``mesh`` (trimesh) and their unit face normals, float64 (n, 3) each."""
    import trimesh

    points, face_index = trimesh.sample.sample_surface(mesh, int(n), seed=seed)
    return np.asarray(points, dtype=np.float64), np.asarray(mesh.face_normals[face_index], dtype=np.float64)


def _subset(points: np.ndarray, normals: np.ndarray | None, n: int, seed: int):
    if len(points) <= n:
        return points, normals
    keep = np.sort(np.random.default_rng(seed).choice(len(points), size=int(n), replace=False))
    return points[keep], (normals[keep] if normals is not None else None)


def sample_geometry(geometry, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Points (and normals or None) from a :class:`~vtbench.three_d.data.Shape`, a ``trimesh.Trimesh``, a
    ``trimesh.PointCloud`` or an (N, 3) array. Empty geometry gives (0, 3) points."""
    import trimesh

    from vtbench.three_d.data import Shape

    if isinstance(geometry, Shape):
        if geometry.mesh is not None:
            return sample_surface(geometry.mesh, n, seed)
        return _subset(np.asarray(geometry.points, np.float64), geometry.normals, n, seed)
    if isinstance(geometry, trimesh.Trimesh):
        if len(geometry.faces) == 0 or not geometry.area > 0:
            return np.zeros((0, 3)), None
        return sample_surface(geometry, n, seed)
    if isinstance(geometry, trimesh.PointCloud):
        return _subset(np.asarray(geometry.vertices, np.float64).reshape(-1, 3), None, n, seed)
    return _subset(np.asarray(geometry, np.float64).reshape(-1, 3), None, n, seed)


# ---------------------------------------------------------------------------------------------- distances


def nearest(src: np.ndarray, dst: np.ndarray, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each ``src`` point to its nearest ``dst`` point, and that point's index."""
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(dst).query(src, k=1, workers=workers)
    return np.asarray(dist, np.float64), np.asarray(idx, np.int64)


def _unit(n: np.ndarray) -> np.ndarray:
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(length > 0, length, 1.0)


def point_metrics(ref_points: np.ndarray, rec_points: np.ndarray, ref_normals: np.ndarray | None = None,
                  rec_normals: np.ndarray | None = None, taus: tuple[float, ...] = (0.01, 0.02),
                  workers: int = 1) -> dict[str, Any]:
    """Chamfer L1/L2, F-scores and normal consistency between two point sets (see the module docstring).

    Returns ``{"chamfer_l1", "chamfer_l2", "fscore@<tau>"..., "normal_consistency" (None without normals),
    "accuracy", "completeness"}`` as Python floats.
    """
    acc, acc_idx = nearest(rec_points, ref_points, workers)      # reconstruction -> reference
    comp, comp_idx = nearest(ref_points, rec_points, workers)    # reference -> reconstruction
    out: dict[str, Any] = {
        "accuracy": float(acc.mean()), "completeness": float(comp.mean()),
        "chamfer_l1": float(0.5 * (acc.mean() + comp.mean())),
        "chamfer_l2": float(0.5 * ((acc ** 2).mean() + (comp ** 2).mean())),
    }
    for tau in taus:
        p, r = float((acc <= tau).mean()), float((comp <= tau).mean())
        out[fscore_key(tau)] = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    if ref_normals is not None and rec_normals is not None:
        nr, nc = _unit(ref_normals), _unit(rec_normals)
        a = np.abs((nc * nr[acc_idx]).sum(axis=1)).mean()
        c = np.abs((nr * nc[comp_idx]).sum(axis=1)).mean()
        out["normal_consistency"] = float(0.5 * (a + c))
    else:
        out["normal_consistency"] = None
    return out


# ---------------------------------------------------------------------------------------------- volume


def iou_query_points(settings: ShapeSettings = ShapeSettings()) -> np.ndarray:
    """The protocol's fixed query points: ``iou_points`` uniform in the centred cube of side ``iou_box``."""
    rng = np.random.default_rng(stream_seed(settings.seed, "", "iou"))
    return (rng.random((settings.iou_points, 3)) - 0.5) * settings.iou_box


def occupancy(mesh, query: np.ndarray) -> np.ndarray:
    """Whether each query point is inside ``mesh``: |generalised winding number| > 0.5 (libigl's fast winding
    number, Barill et al. 2018), robust to inverted orientation."""
    import igl

    w = igl.fast_winding_number(np.ascontiguousarray(mesh.vertices, dtype=np.float64),
                                np.ascontiguousarray(mesh.faces, dtype=np.int64),
                                np.ascontiguousarray(query, dtype=np.float64))
    return np.abs(np.asarray(w)) > 0.5


def is_watertight(mesh) -> bool:
    """trimesh: every edge shared by exactly two faces, consistently wound (after merging coincident vertices)."""
    return bool(len(mesh.faces) > 0 and mesh.is_watertight and mesh.is_winding_consistent)


def volume_iou(inside_a: np.ndarray, inside_b: np.ndarray) -> float:
    union = np.logical_or(inside_a, inside_b).sum()
    return float(np.logical_and(inside_a, inside_b).sum() / union) if union else 0.0


# ---------------------------------------------------------------------------------------------- per shape


@dataclass
class ReferenceSample:
    """What a shape contributes to every comparison, independent of the tokenizer (cache it per dataset revision,
    normalisation and protocol): its surface sample and, when watertight, its occupancy of the query points."""

    id: str
    points: np.ndarray
    normals: np.ndarray | None
    inside: np.ndarray | None = None
    iou_reason: str | None = None


def reference_sample(shape, settings: ShapeSettings = ShapeSettings(), query: np.ndarray | None = None
                     ) -> ReferenceSample:
    """Sample ``shape`` (a :class:`~vtbench.three_d.data.Shape`) with the ``reference`` stream; occupancy of the
    query points (``iou_query_points(settings)`` unless given) when it is a watertight mesh."""
    points, normals = sample_geometry(shape, settings.points, stream_seed(settings.seed, shape.id, "reference"))
    inside, reason = None, None
    if shape.mesh is None:
        reason = "reference is a point cloud"
    elif not shape.watertight:
        reason = "reference mesh is not watertight"
    else:
        inside = occupancy(shape.mesh, iou_query_points(settings) if query is None else query)
    return ReferenceSample(shape.id, points, normals, inside, reason)


def _clean(reconstruction):
    """A processed copy of a reconstruction mesh (coincident vertices merged, zero-area faces dropped)."""
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(reconstruction.vertices), np.asarray(reconstruction.faces), process=True)
    if len(mesh.faces):
        mesh.update_faces(mesh.nondegenerate_faces())
    return mesh


def score_shape(reference: ReferenceSample, reconstruction, settings: ShapeSettings = ShapeSettings(),
                query: np.ndarray | None = None, workers: int = 1) -> dict[str, Any]:
    """Per-shape values of every ``shape@1.0`` metric.

    ``reconstruction``: a ``trimesh.Trimesh`` (or ``PointCloud`` / (N, 3) array) in the normalised frame.
    Returns ``{key: float or None for key in metric_keys(settings)} | {"id", "reasons": {key: why null},
    "empty_reconstruction": bool}``.
    """
    import trimesh

    is_mesh = isinstance(reconstruction, trimesh.Trimesh)
    raw = np.asarray(reconstruction.vertices if hasattr(reconstruction, "vertices") else reconstruction)
    if raw.size and not np.isfinite(raw).all():
        raise ValueError(f"shape {reference.id!r}: the reconstruction has non-finite vertex coordinates; a decoder "
                         f"must return finite geometry (the shape protocol stops on NaN/Inf, as images do)")
    mesh = _clean(reconstruction) if is_mesh else None
    points, normals = sample_geometry(mesh if is_mesh else reconstruction, settings.points,
                                      stream_seed(settings.seed, reference.id, "reconstruction"))
    reasons: dict[str, str] = {}
    out: dict[str, Any] = {"id": reference.id}
    empty = len(points) == 0
    if empty:
        out.update({"chamfer_l1": EMPTY_DISTANCE, "chamfer_l2": EMPTY_DISTANCE ** 2,
                    **{fscore_key(t): 0.0 for t in settings.taus}, "normal_consistency": 0.0})
    else:
        pm = point_metrics(reference.points, points, reference.normals, normals, settings.taus, workers)
        out.update({k: pm[k] for k in ("chamfer_l1", "chamfer_l2", *(fscore_key(t) for t in settings.taus),
                                       "normal_consistency")})
        if out["normal_consistency"] is None:
            reasons["normal_consistency"] = "no normals on " + (
                "the reference" if reference.normals is None else "the reconstruction (a point cloud)")
    if reference.inside is None:
        out["iou"], reasons["iou"] = None, reference.iou_reason or "no reference occupancy"
    elif empty:
        out["iou"] = 0.0
    elif mesh is None:
        out["iou"], reasons["iou"] = None, "reconstruction is a point cloud"
    elif not is_watertight(mesh):
        out["iou"], reasons["iou"] = None, "reconstruction mesh is not watertight"
    else:
        q = iou_query_points(settings) if query is None else query
        out["iou"] = volume_iou(reference.inside, occupancy(mesh, q))
    out["reasons"] = reasons
    out["empty_reconstruction"] = empty
    return out


# ---------------------------------------------------------------------------------------------- streaming


@dataclass
class ShapeMetricAccumulator:
    """Streaming means of per-shape values: ``update(score_shape(...))`` per shape, ``compute()`` at the end.

    State: the per-shape values of each key (a few floats per shape; ``merge`` concatenates another
    accumulator's) and null reasons; means are ``math.fsum`` (correctly rounded), so the result is identical
    whatever the order, batching or number of processes."""

    keys: tuple[str, ...] = tuple(metric_keys())
    values: dict[str, list[float]] = field(default_factory=dict)
    nulls: dict[str, dict[str, int]] = field(default_factory=dict)
    n_shapes: int = 0
    n_empty: int = 0

    def update(self, scores: Mapping[str, Any]) -> None:
        self.n_shapes += 1
        self.n_empty += int(bool(scores.get("empty_reconstruction")))
        for k in self.keys:
            v = scores.get(k)
            if v is None:
                why = scores.get("reasons", {}).get(k, "not computed")
                self.nulls.setdefault(k, {})[why] = self.nulls.get(k, {}).get(why, 0) + 1
            else:
                self.values.setdefault(k, []).append(float(v))

    def merge(self, other: "ShapeMetricAccumulator") -> None:
        self.n_shapes += other.n_shapes
        self.n_empty += other.n_empty
        for k, vs in other.values.items():
            self.values.setdefault(k, []).extend(vs)
        for k, d in other.nulls.items():
            for why, c in d.items():
                self.nulls.setdefault(k, {})[why] = self.nulls.get(k, {}).get(why, 0) + c

    def compute(self) -> dict[str, dict[str, Any]]:
        """``{key: {"value": mean or None, "n": shapes with a value, "null": {reason: count}, "higher_is_better"}}``;
        a key with no value on any shape is None with its reasons, never 0."""
        out = {}
        for k in self.keys:
            vs = self.values.get(k, [])
            info = SHAPE_METRICS.get(k) or (MetricInfo(k, k, "fraction", True) if k.startswith("fscore@") else None)
            out[k] = {"value": math.fsum(vs) / len(vs) if vs else None, "n": len(vs),
                      "null": dict(sorted(self.nulls.get(k, {}).items())),
                      "higher_is_better": None if info is None else info.higher_is_better}
        return out
