"""The shape task (``vtbench run --task shape``): shapes -> shape tokenizer -> geometry metrics, through the one
evaluation core (``vtbench.evaluation``) like every image task.

The task adds its data (``open_shapes``), its tokenizers (``ShapeTokenizer`` cards with ``modality = "shape"``:
the reference codecs here, VAT), its metrics (``shape``: Chamfer L1/L2, F-scores, normal consistency, volume IoU;
``shape_compression``: tokens and bits per shape against the stored and the reference encoding; ``speed``) and its
protocol (``metrics/shape.toml``); the sample loop, resume, progress, torchrun sharding and result writing are the
core's. The reference side of every shape (its surface sample and occupancy, independent of the tokenizer) is
computed once per process and reused by every tokenizer of the run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch

from vtbench.metrics.base import Metric, MetricContext, MetricValue, Output
from vtbench.tokenizers.base import Tokenizer

log = logging.getLogger("vtbench")

PREVIEWS_DIR = "previews"


# ---------------------------------------------------------------------------------------------- tokenizers


class ShapeTokenizer(Tokenizer):
    """A tokenizer of shapes: ``encode_shape(shape) -> Encoded`` (codes or bytes, exact bits, token count) and
    ``decode_shape(encoded) -> trimesh.Trimesh`` in the normalised frame. Image ``encode``/``decode`` do not apply."""

    modality: ClassVar[str] = "shape"

    def encode_shape(self, shape: Any) -> Any:
        raise NotImplementedError

    def decode_shape(self, encoded: Any) -> Any:
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> Any:
        raise TypeError(f"{self.name} is a shape tokenizer: run it with --task shape")

    decode = encode

    def tokens_per_image(self, height: int, width: int) -> int | None:
        return None


class CodecTokenizer(ShapeTokenizer):
    """A reference row that needs no training: a ``vtbench.three_d.codecs`` codec named by ``params.codec``
    (``draco-q11``, ``octree-d6``, ``voxel-r64``)."""

    def __init__(self, card: Any, device: str | torch.device = "cpu"):
        super().__init__(card, device)
        from vtbench.three_d.codecs import get_codec
        self.codec = get_codec(str(card.params["codec"]))

    def encode_shape(self, shape: Any) -> Any:
        return self.codec.encode(shape)

    def decode_shape(self, encoded: Any) -> Any:
        return self.codec.decode(encoded)

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "codec": self.codec.describe()}


class WrappedCodec(ShapeTokenizer):
    """A card whose entry is a ``vtbench.three_d`` codec class with ``from_card`` (VAT) rather than a
    ``ShapeTokenizer``: the codec's ``encode``/``decode`` and its weights' provenance."""

    def __init__(self, card: Any, codec: Any):
        super().__init__(card, "cpu")
        self.codec = codec
        self.weights_path = getattr(codec, "weights_path", None)
        self.weights_sha256 = getattr(codec, "weights_sha256", None)

    def encode_shape(self, shape: Any) -> Any:
        return self.codec.encode(shape)

    def decode_shape(self, encoded: Any) -> Any:
        return self.codec.decode(encoded)

    def provenance(self) -> dict[str, Any]:
        describe = getattr(self.codec, "describe", None)
        return {**super().provenance(), "codec": describe() if callable(describe) else repr(self.codec)}


def build_shape_tokenizer(name: str, *, weights: Any = None, trust: bool = False) -> ShapeTokenizer:
    """The shape tokenizer a card names: a ``ShapeTokenizer`` entry, or a codec class with ``from_card``."""
    from vtbench.cards import load_entry
    from vtbench.config import get_card
    card = get_card(name)
    cls = load_entry(card)
    built = cls.from_card(card, weights=weights, trust=trust, device="cpu")
    return built if isinstance(built, ShapeTokenizer) else WrappedCodec(card, built)


# ---------------------------------------------------------------------------------------------- batches


@dataclass
class ShapeBatch:
    """What shape metrics see: per shape its id, the shape, its reference sample, the codec output and the
    reconstruction; encode/decode seconds for the batch."""

    ids: list[str]
    shapes: list[Any]
    references: list[Any]
    encoded: list[Any]
    reconstructions: list[Any]
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def size(self) -> int:
        return len(self.ids)


# ---------------------------------------------------------------------------------------------- metrics


_QUALITY_KEYS = ("chamfer_l1", "chamfer_l2", "fscore@0.01", "fscore@0.02", "normal_consistency", "iou")
#: the null reasons score_shape gives, as state codes (a torchmetrics state is a tensor); 0 = a value
_REASONS = ("", "reference is a point cloud", "reference mesh is not watertight", "no reference occupancy",
            "reconstruction is a point cloud", "reconstruction mesh is not watertight",
            "no normals on the reference", "no normals on the reconstruction (a point cloud)", "other")


class ShapeQuality(Metric):
    """``shape@1.0``'s geometry metrics (``vtbench.three_d.metrics.score_shape``), mean over shapes with a value.

    States (``cat``): per shape the six values (NaN where null) and the null reasons as codes; means are
    ``math.fsum`` over the sorted values, so results are identical at any batch size, order or process count.
    """

    name = "shape"
    protocol = "shape"
    needs = frozenset({"shapes"})
    outputs = (Output("chamfer_l1", "Chamfer-L1", "", False), Output("chamfer_l2", "Chamfer-L2", "", False),
               Output("fscore@0.01", "F@0.01", "", True), Output("fscore@0.02", "F@0.02", "", True),
               Output("normal_consistency", "Normal consistency", "", True), Output("iou", "Volume IoU", "", True))

    @classmethod
    def from_context(cls, ctx: MetricContext) -> "ShapeQuality":
        settings = ctx.settings.get("shape_settings")
        if settings is None:
            from vtbench.metrics.base import MetricUnavailable
            raise MetricUnavailable("shape metrics score shapes: run them with --task shape")
        return cls(settings, ctx.settings.get("query"))

    def __init__(self, settings: Any, query: np.ndarray | None = None) -> None:
        super().__init__()
        self.settings, self.query = settings, query
        self.add_state("values", None, "cat")
        self.add_state("reasons", None, "cat")

    def update(self, batch: ShapeBatch) -> dict[str, torch.Tensor]:
        from vtbench.three_d.metrics import score_shape
        vals, codes = [], []
        for ref, rec in zip(batch.references, batch.reconstructions):
            s = score_shape(ref, rec, self.settings, self.query)
            vals.append([math.nan if s.get(k) is None else float(s[k]) for k in _QUALITY_KEYS])
            why = s.get("reasons", {})
            codes.append([_REASONS.index(why[k]) if why.get(k) in _REASONS else (len(_REASONS) - 1 if k in why
                                                                                   else 0) for k in _QUALITY_KEYS])
        v = torch.tensor(vals, dtype=torch.float64)
        self.values.append(v)
        self.reasons.append(torch.tensor(codes, dtype=torch.int64))
        return {k: v[:, j] for j, k in enumerate(_QUALITY_KEYS)}

    def compute(self) -> dict[str, MetricValue]:
        from vtbench.metrics.generation import _cat
        values, reasons = _cat(self.values), _cat(self.reasons)
        out = {}
        for j, k in enumerate(_QUALITY_KEYS):
            if values is None:
                out[k] = self.value(k, None, 0, reason="no shapes")
                continue
            col = values[:, j]
            ok = col[~torch.isnan(col)]
            nulls: dict[str, int] = {}
            for code in reasons[:, j].tolist():
                if code:
                    nulls[_REASONS[code]] = nulls.get(_REASONS[code], 0) + 1
            if not ok.numel():
                why = "; ".join(f"{r} ({c} shapes)" for r, c in sorted(nulls.items())) or "no value"
                out[k] = self.value(k, None, 0, reason=why, null=nulls)
            else:
                mean = math.fsum(sorted(ok.tolist())) / ok.numel()
                out[k] = self.value(k, mean, int(ok.numel()), null=nulls, n_shapes=int(col.numel()))
        return out


class ShapeCompression(Metric):
    """Tokens and bits per shape (a codec's real bytes, codes x log2 K for tokenizers) and compression ratios
    against the input as stored and against the reference encoding (binary PLY, float32 vertices + int32 faces):
    ratios of totals (sum of input bits / sum of codec bits)."""

    name = "shape_compression"
    protocol = "shape"
    needs = frozenset({"shapes"})
    outputs = (Output("tokens_per_shape", "Tokens / shape", "", None),
               Output("bits_per_shape", "Bits / shape", "bits", None),
               Output("bytes_per_shape", "Bytes / shape", "B", None),
               Output("compression_ratio_stored", "Ratio vs stored", "x", True),
               Output("compression_ratio_reference", "Ratio vs PLY", "x", True))

    @classmethod
    def from_context(cls, ctx: MetricContext) -> "ShapeCompression":
        if ctx.settings.get("shape_settings") is None:
            from vtbench.metrics.base import MetricUnavailable
            raise MetricUnavailable("shape compression scores shapes: run it with --task shape")
        return cls()

    def __init__(self) -> None:
        super().__init__()
        for s in ("n", "bits", "stored_bits", "reference_bits", "tokens", "n_tokens"):
            self.add_state(s, torch.zeros((), dtype=torch.float64), "sum")

    def update(self, batch: ShapeBatch) -> dict[str, torch.Tensor]:
        bits = [float(e.bits) for e in batch.encoded]
        for shape, enc, b in zip(batch.shapes, batch.encoded, bits):
            self.n += 1
            self.bits += b
            self.stored_bits += 8.0 * shape.stored_bytes
            self.reference_bits += 8.0 * shape.reference_bytes
            if enc.tokens is not None:
                self.tokens += float(enc.tokens)
                self.n_tokens += 1
        return {"bits_per_shape": torch.tensor(bits, dtype=torch.float64)}

    def compute(self) -> dict[str, MetricValue]:
        n, bits = int(self.n), float(self.bits)
        if n == 0:
            return {o.key: self.value(o.key, None, 0, reason="no shapes") for o in self.outputs}
        no_bits = None if bits > 0 else "the codec output has no bits"
        return {
            "tokens_per_shape": self.value("tokens_per_shape", float(self.tokens) / float(self.n_tokens)
                                           if int(self.n_tokens) == n else None, n,
                                           None if int(self.n_tokens) == n else
                                           "a codec has no token positions (its cost is in bits_per_shape)"),
            "bits_per_shape": self.value("bits_per_shape", bits / n, n),
            "bytes_per_shape": self.value("bytes_per_shape", bits / 8 / n, n),
            "compression_ratio_stored": self.value("compression_ratio_stored", float(self.stored_bits) / bits
                                                   if bits > 0 else None, n, no_bits),
            "compression_ratio_reference": self.value("compression_ratio_reference", float(self.reference_bits) / bits
                                                      if bits > 0 else None, n, no_bits),
        }


# ---------------------------------------------------------------------------------------------- previews


def render_png(geometry: Any, path: Any, size: int = 160) -> None:
    """A headless preview (matplotlib, no display): the mesh's faces shaded by their normals' light, or points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    fig = Figure(figsize=(size / 80, size / 80), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    ax.set_axis_off()
    ax.view_init(elev=25, azim=-60)
    faces = np.asarray(getattr(geometry, "faces", np.zeros((0, 3))))
    verts = np.asarray(getattr(geometry, "vertices", geometry))
    if len(faces):
        if len(faces) > 20_000:  # a preview: a seeded subset of faces keeps rendering under a second
            faces = faces[np.random.default_rng(0).choice(len(faces), 20_000, replace=False)]
        tri = verts[faces]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        light = np.clip(n @ np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8]), 0, 1) * 0.7 + 0.25
        ax.add_collection3d(Poly3DCollection(tri, facecolors=np.c_[light, light, light * 1.05 / 1.05],
                                             linewidths=0))
    elif len(verts):
        ax.scatter(*verts[:: max(1, len(verts) // 5000)].T, s=0.5, c="0.3")
    for axis in "xyz":
        getattr(ax, f"set_{axis}lim")(-0.5, 0.5)
    fig.savefig(path, transparent=False, facecolor="white")


# ---------------------------------------------------------------------------------------------- the source


_REFERENCE_CACHE: dict[tuple[str, str], Any] = {}


@dataclass
class ShapeRun:
    """One (shape tokenizer, shape dataset) evaluation: the source of ``ShapeBatch``es and its record."""

    tok: ShapeTokenizer
    ds: Any
    cfg: Any
    protocol: Any
    metric_names: list[str]
    settings: Any
    query: np.ndarray
    previews: set[str] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=lambda: {"encode_s": 0.0, "decode_s": 0.0,
                                                                "reference_s": 0.0, "metrics_s": 0.0})

    def __post_init__(self) -> None:
        from vtbench.core import fingerprint
        from vtbench.results import protocol_section, run_dir
        self.dir = run_dir(self.cfg.out, self.ds.info, self.tok.name, self.protocol.name)
        self.ref_key = fingerprint(self.ds.info.id, self.ds.info.revision, self.ds.info.selection,
                                   self.ds.info.policy, self.settings)
        self.fingerprint = fingerprint(self.tok.name, self.tok.weights_sha256, self.ref_key,
                                       protocol_section(self.protocol), sorted(self.metric_names), self.cfg.seed)

    @property
    def ids(self) -> list[str]:
        return list(self.ds.ids)

    def _reference(self, shape: Any) -> Any:
        from vtbench.three_d.metrics import reference_sample
        key = (self.ref_key, shape.id)
        if key not in _REFERENCE_CACHE:
            t0 = time.perf_counter()
            _REFERENCE_CACHE[key] = reference_sample(shape, self.settings, self.query)
            self.timings["reference_s"] += time.perf_counter() - t0
        return _REFERENCE_CACHE[key]

    def batches(self, done: set[str], skip: Callable[[str, str], None]) -> Iterator[ShapeBatch]:
        from vtbench.paths import join_under, safe_name
        from vtbench.three_d.data import SkippedShape
        for i, sid in enumerate(self.ds.ids):
            if sid in done:
                continue
            shape = self.ds[i]
            if isinstance(shape, SkippedShape):
                skip(sid, f"{shape.reason}: {shape.message}")
                continue
            ref = self._reference(shape)
            t0 = time.perf_counter()
            enc = self.tok.encode_shape(shape)
            t1 = time.perf_counter()
            rec = self.tok.decode_shape(enc)
            t2 = time.perf_counter()
            self.timings["encode_s"] += t1 - t0
            self.timings["decode_s"] += t2 - t1
            if sid in self.previews:
                for kind, geom in (("orig", shape.mesh if shape.mesh is not None else shape.points), ("recon", rec)):
                    path = join_under(self.dir, PREVIEWS_DIR, f"{safe_name(sid)}.{kind}.png")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        render_png(geom, path)
                    except Exception as exc:  # a preview never stops a run
                        log.warning("preview of %s (%s) failed: %s", sid, kind, exc)
            yield ShapeBatch([sid], [shape], [ref], [enc], [rec], t1 - t0, t2 - t1)

    def _thumbnails(self) -> list[dict[str, str]]:
        from vtbench.runner import thumbnail_entries
        return thumbnail_entries(self.dir, PREVIEWS_DIR, self.previews)

    def record(self, out: Any) -> dict[str, Any]:
        from vtbench import distributed
        from vtbench.results import environment, new_record, protocol_section
        env = environment("cpu")
        env["geometry"] = {p: _version(p) for p in ("trimesh", "DracoPy", "libigl", "scikit-image", "scipy")}
        return new_record(
            created=out.started, finished=out.finished, environment=env,
            tokenizer={**self.tok.card.to_dict(), **self.tok.provenance()},
            dataset={**self.ds.info.to_dict(), "n_requested": self.cfg.limit, "n_used": out.n_used,
                     "skipped": out.skipped},
            protocol=protocol_section(self.protocol),
            metrics={k: v.to_dict() for k, v in out.values.items()},
            timings=out.timings, thumbnails=self._thumbnails(),
            run={"fingerprint": self.fingerprint, "seed": self.cfg.seed, "metrics_selected": self.metric_names,
                 "settings": vars(self.settings) if hasattr(self.settings, "__dict__") else str(self.settings),
                 "processes": distributed.world()})


def _version(pkg: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def require_3d() -> None:
    """Fail first, with the install line, when a package of the ``3d`` extra is missing (not mid-run)."""
    from vtbench.extras import require

    for module in ("trimesh", "igl", "skimage", "DracoPy"):
        require(module, "3d")


def run_shapes(tokenizers: list[str], cfg: Any, protocol: Any,
               on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """``vtbench run --task shape``: every shape tokenizer over the shape dataset, through the evaluation core."""
    from vtbench.config import get_card
    from vtbench.evaluation import Evaluation
    from vtbench.metrics import METRICS, MetricUnavailable
    from vtbench.runner import metric_config, null_values, selected_metrics, thumbnail_ids
    from vtbench.three_d.data import open_shapes
    from vtbench.three_d.metrics import ShapeSettings, iou_query_points

    require_3d()
    for name in tokenizers:
        card = get_card(name)
        if card.modality != "shape":
            raise ValueError(f"{name} is an image tokenizer ({card.card_path}); --task shape runs shape tokenizers "
                             "(draco.*, octree.*, voxel.*, vat.*: `vtbench ls tokenizers`)")
    ds = open_shapes(cfg.data or protocol.get("default_data", "embedded/shapes"),
                     normalisation=protocol.get("normalisation.policy", "unit-cube"), limit=cfg.limit, seed=cfg.seed)
    if len(ds) == 0:
        raise ValueError(f"{ds.info.root}: no shape files found (meshes: .obj .ply .stl .off .glb; point clouds: "
                         f".ply .npz)")
    settings = ShapeSettings.from_protocol(protocol.settings, seed=cfg.seed)
    query = iou_query_points(settings)
    names = selected_metrics(cfg, protocol)
    previews = thumbnail_ids(list(ds.ids), cfg.thumbnails)
    records = []
    for name in tokenizers:
        tok = build_shape_tokenizer(name, weights=cfg.weights, trust=cfg.trust_checkpoint)
        job = ShapeRun(tok, ds, cfg, protocol, names, settings, query, previews)
        metrics, unavailable = {}, {}
        for n in names:  # each metric through its context; the shape metrics get the protocol's settings
            cls = METRICS.get(n.partition("@")[0])
            ctx = MetricContext(device=torch.device("cpu"), reference_key=job.ref_key, tokenizer=tok,
                                settings={**metric_config(n, protocol)["settings"], "shape_settings": settings,
                                          "query": query})
            try:
                metrics[n] = cls.from_context(ctx)
            except MetricUnavailable as exc:
                unavailable[n] = exc.reason

        rec = Evaluation(source=job, metrics=metrics, fingerprint=job.fingerprint, dir=job.dir,
                         label=f"{tok.name} on {ds.info.id}", total=len(ds),
                         unavailable=null_values(unavailable, protocol), record=job.record,
                         seed=cfg.seed, force=cfg.force, progress=cfg.progress,
                         checkpoint_every=cfg.checkpoint_every, stop_after_batches=cfg.stop_after_batches).run()
        records.append(rec)
        if on_result:
            on_result(rec)
    return records


__all__ = ["CodecTokenizer", "ShapeBatch", "ShapeCompression", "ShapeQuality", "ShapeRun", "ShapeTokenizer",
           "WrappedCodec", "build_shape_tokenizer",
           "render_png", "run_shapes"]
