"""Text preservation (``metrics/text.toml``).

Two protocols, both with an offline OCR engine (``vtbench.ocr``; EasyOCR by default):

``text`` — with ground truth (TokBench's protocol). Every ground-truth word box, grown by ``crop_margin`` (0.15)
of its shorter side so the recogniser sees the word's edges (tight boxes halve EasyOCR's accuracy even on the
originals: 47.5% vs 93.3% of the 1,404 embedded words), is cropped from the reconstruction at the ORIGINAL
resolution (the ``pad-restore`` policy brings it back) and recognised:
``text_acc`` = case-sensitive exact match, ``text_ned`` = 1 - edit distance / longer length. Words are bucketed by
relative size (``min(box w, box h) / max(image h, image w)`` unless the annotation carries TokBench's own
``ratio``) with TokBench's edges for the tokenizer's input resolution; the headline is the unweighted mean of the
bucket means. Words smaller than the first edge are counted (``n_too_small``), never silently dropped; with
``filter_original`` (TokBench kept only words its OCR reads right on the original) words the engine misreads on
the ORIGINAL are excluded and counted (``n_unreadable_original``), so the identity scores exactly 1.

``ocr`` — without ground truth (VTBench's protocol, with a real WER): the engine reads the whole original (the
reference, cached per dataset and engine) and the whole reconstruction; ``cer`` = summed character edit distance /
summed reference characters; ``wer`` = summed WORD edit distance / summed reference words (VTBench's "WER" divided
a character distance by a word count; this one is the standard definition and agrees with jiwer).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from vtbench.metrics.base import Batch, Metric, MetricContext, MetricUnavailable, MetricValue, Output

# TokBench (compute_all_metrics.py): relative-size edges per input resolution.
TOKBENCH_EDGES = {"256": [0.02, 0.03, 0.04, 1.0], "512": [0.01, 0.02, 0.03, 1.0], "1024": [0.005, 0.01, 0.02, 1.0]}

TEXT_DEFAULTS: dict[str, Any] = {"engine": "easyocr", "edges": TOKBENCH_EDGES, "filter_original": True,
                                 "match": "case-sensitive exact", "crop_margin": 0.15}
OCR_DEFAULTS: dict[str, Any] = {"engine": "easyocr", "normalise": "collapse whitespace"}


# -- pure functions ------------------------------------------------------------------------------------------
def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (unit insert/delete/substitute) between two strings or two token lists."""
    try:
        from rapidfuzz.distance import Levenshtein
        return int(Levenshtein.distance(a, b))
    except ImportError:  # pragma: no cover - rapidfuzz comes with the ocr/test extras
        return _edit_distance_py(a, b)


def _edit_distance_py(a: Sequence[Any], b: Sequence[Any]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalised_edit_similarity(pred: str, gt: str) -> float:
    """TokBench's T-NED for one word: 1 - edit distance / max(len(pred), len(gt)); two empty strings give 1."""
    longest = max(len(pred), len(gt))
    return 1.0 if longest == 0 else 1.0 - edit_distance(pred, gt) / longest


def relative_size(box: Sequence[float], height: int, width: int) -> float:
    """A word's size relative to its image: shorter box side over the image's longer side (what survives the
    pad-to-square-and-resize of the protocol; rotated/vertical words use their thickness too)."""
    x0, y0, x1, y1 = box
    return min(x1 - x0, y1 - y0) / float(max(height, width))


def bucket_of(ratio: float, edges: Sequence[float]) -> int | None:
    """Index ``i`` with ``edges[i] <= ratio < edges[i+1]`` (TokBench's ``find_group``); None outside."""
    for i in range(len(edges) - 1):
        if edges[i] <= ratio < edges[i + 1]:
            return i
    return None


def crop(image: torch.Tensor, box: Sequence[float], margin: float = 0.0) -> np.ndarray:
    """uint8 (3, H, W) -> HxWx3 crop of ``box`` (x0, y0, x1, y1) grown by ``margin`` x the box's shorter side on
    every side, rounded outwards and clipped to the image."""
    h, w = image.shape[-2:]
    pad = margin * min(box[2] - box[0], box[3] - box[1])
    x0, y0 = max(0, int(math.floor(box[0] - pad))), max(0, int(math.floor(box[1] - pad)))
    x1, y1 = min(w, int(math.ceil(box[2] + pad))), min(h, int(math.ceil(box[3] + pad)))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((1, 1, 3), np.uint8)
    return np.ascontiguousarray(image[:, y0:y1, x0:x1].permute(1, 2, 0).cpu().numpy())


def normalise_text(text: str) -> str:
    return " ".join(text.split())


def _engine(name: str, device: Any):
    from vtbench.ocr import OCRUnavailable, get_engine
    try:
        return get_engine(name, device=str(device))
    except OCRUnavailable as exc:
        raise MetricUnavailable(exc.reason) from None


class _ReferenceCache:
    """Engine outputs on the originals, kept per (dataset selection + preprocessing, engine) on disk."""

    def __init__(self, kind: str, reference_key: str, engine: Any):
        from vtbench.paths import cache_dir, join_under, safe_name
        prov = json.dumps(engine.provenance(), sort_keys=True, default=str)
        key = f"{kind}-{reference_key}-{hashlib.sha256(prov.encode()).hexdigest()[:16]}" if reference_key else None
        self.path = join_under(cache_dir(), "ocr", safe_name(f"{key}.json")) if key else None
        self.data: dict[str, Any] = {}
        self.dirty = False
        if self.path is not None and self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.data = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, ensure_ascii=False), encoding="utf-8")
        tmp.replace(self.path)
        self.dirty = False


# -- with ground truth (TokBench) -----------------------------------------------------------------------------
class TextAccuracy(Metric):
    name = "text"
    protocol = "text"
    needs = frozenset({"pixels", "words"})
    outputs = (
        Output("text_acc", "Text accuracy (T-ACC)", "fraction", True),
        Output("text_ned", "Text NED (T-NED)", "fraction", True),
    )

    @classmethod
    def from_context(cls, ctx: MetricContext) -> "Metric":
        return cls(settings=ctx.settings, device=ctx.device, reference_key=ctx.reference_key or "",
                   resolution=ctx.resolution)

    def __init__(self, settings: Mapping[str, Any] | None = None, device: Any = "cpu", reference_key: str = "",
                 resolution: int | None = None):
        super().__init__()
        self.settings = {**TEXT_DEFAULTS, **dict(settings or {})}
        edges_by_res = {str(k): [float(e) for e in v] for k, v in self.settings["edges"].items()}
        res = str(resolution) if resolution else "256"
        if res not in edges_by_res:
            raise MetricUnavailable(f"no text-size bucket edges for input resolution {res} (the protocol has "
                                    f"{sorted(edges_by_res)}); run the text task at one of them")
        self.edges = edges_by_res[res]
        self.resolution = res
        self.margin = float(self.settings["crop_margin"])
        self.engine = _engine(self.settings["engine"], device)
        self.cache = _ReferenceCache(f"words-m{self.margin:g}", reference_key, self.engine)
        nb = len(self.edges) - 1
        for s in ("acc", "ned", "count"):
            self.add_state(s, torch.zeros(nb, dtype=torch.float64), "sum")
        for s in ("n_words", "n_too_small", "n_unreadable_original", "n_images_without_words"):
            self.add_state(s, torch.zeros((), dtype=torch.float64), "sum")

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        n = batch.size
        per_acc = torch.full((n,), float("nan"), dtype=torch.float64)
        per_ned = torch.full((n,), float("nan"), dtype=torch.float64)
        anns = batch.annotations or [None] * n
        h, w = batch.original.shape[-2:]
        for i, (sid, words) in enumerate(zip(batch.ids, anns)):
            if not words:
                self.n_images_without_words += 1
                continue
            self.n_words += len(words)
            keep, gts, crops_rec, crops_orig, orig_keys = [], [], [], [], []
            for k, word in enumerate(words):
                ratio = word.get("ratio", relative_size(word["box"], h, w))
                b = bucket_of(ratio, self.edges)
                if b is None:
                    self.n_too_small += 1  # below the first edge (or above the last)
                    continue
                keep.append(b)
                gts.append(word["text"])
                crops_rec.append(crop(batch.reconstruction[i], word["box"], self.margin))
                key = f"{sid}#{k}"
                orig_keys.append(key)
                if self.settings["filter_original"] and self.cache.get(key) is None:
                    crops_orig.append((key, crop(batch.original[i], word["box"], self.margin)))
            if crops_orig:
                for (key, _), text in zip(crops_orig, self.engine.recognize([c for _, c in crops_orig])):
                    self.cache.put(key, text)
            preds = self.engine.recognize(crops_rec) if crops_rec else []
            accs, neds = [], []
            for b, gt, pred, key in zip(keep, gts, preds, orig_keys):
                if self.settings["filter_original"] and self.cache.get(key) != gt:
                    self.n_unreadable_original += 1
                    continue
                a, e = float(pred == gt), normalised_edit_similarity(pred, gt)
                self.acc[b] += a
                self.ned[b] += e
                self.count[b] += 1
                accs.append(a)
                neds.append(e)
            if accs:
                per_acc[i], per_ned[i] = float(np.mean(accs)), float(np.mean(neds))
        return {"text_acc": per_acc, "text_ned": per_ned}

    def compute(self) -> dict[str, MetricValue]:
        self.cache.save()
        count = self.count
        n_counted = int(count.sum())
        buckets = [{"range": [self.edges[b], self.edges[b + 1]], "n": int(count[b]),
                    "text_acc": float(self.acc[b] / count[b]) if count[b] else None,
                    "text_ned": float(self.ned[b] / count[b]) if count[b] else None} for b in range(len(count))]
        extra = {"buckets": buckets, "headline": "unweighted mean of bucket means", "resolution": int(self.resolution),
                 "n_words": int(self.n_words), "n_counted": n_counted, "n_too_small": int(self.n_too_small),
                 "n_unreadable_original": int(self.n_unreadable_original),
                 "n_images_without_words": int(self.n_images_without_words),
                 "empty_buckets": [b for b in range(len(count)) if not count[b]],
                 "crop_margin": self.margin, "engine": self.engine.provenance()}
        if n_counted == 0:
            why = ("no ground-truth word was counted (no word manifest, every word below the first size bucket, or "
                   "none readable on the originals)")
            return {k: self.value(k, None, 0, why, **extra) for k in ("text_acc", "text_ned")}
        full = count > 0
        acc = float((self.acc[full] / count[full]).mean())
        ned = float((self.ned[full] / count[full]).mean())
        return {"text_acc": self.value("text_acc", acc, n_counted, **extra),
                "text_ned": self.value("text_ned", ned, n_counted, **extra)}


# -- without ground truth (VTBench) ---------------------------------------------------------------------------
class OCRErrorRate(Metric):
    name = "ocr"
    protocol = "text"
    outputs = (
        Output("cer", "Character error rate", "fraction", False),
        Output("wer", "Word error rate", "fraction", False),
    )

    @classmethod
    def from_context(cls, ctx: MetricContext) -> "Metric":
        return cls(settings=ctx.settings, device=ctx.device, reference_key=ctx.reference_key or "")

    def __init__(self, settings: Mapping[str, Any] | None = None, device: Any = "cpu", reference_key: str = ""):
        super().__init__()
        self.settings = {**OCR_DEFAULTS, **dict(settings or {})}
        self.engine = _engine(self.settings["engine"], device)
        self.cache = _ReferenceCache("read", reference_key, self.engine)
        for s in ("char_dist", "ref_chars", "word_dist", "ref_words", "n_empty_reference", "n"):
            self.add_state(s, torch.zeros((), dtype=torch.float64), "sum")

    def read_text(self, image: torch.Tensor) -> str:
        arr = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
        return normalise_text(" ".join(w.text for w in self.engine.read(arr)))

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        n = batch.size
        per_cer = torch.full((n,), float("nan"), dtype=torch.float64)
        per_wer = torch.full((n,), float("nan"), dtype=torch.float64)
        for i, sid in enumerate(batch.ids):
            self.n += 1
            ref = self.cache.get(sid)
            if ref is None:
                ref = self.read_text(batch.original[i])
                self.cache.put(sid, ref)
            if not ref:
                self.n_empty_reference += 1
                continue
            hyp = self.read_text(batch.reconstruction[i])
            cd = edit_distance(ref, hyp)
            wd = edit_distance(ref.split(), hyp.split())
            self.char_dist += cd
            self.ref_chars += len(ref)
            self.word_dist += wd
            self.ref_words += len(ref.split())
            per_cer[i], per_wer[i] = cd / len(ref), wd / len(ref.split())
        return {"cer": per_cer, "wer": per_wer}

    def compute(self) -> dict[str, MetricValue]:
        self.cache.save()
        n = int(self.n - self.n_empty_reference)
        extra = {"n_empty_reference": int(self.n_empty_reference), "ref_chars": int(self.ref_chars),
                 "ref_words": int(self.ref_words), "reference": "OCR of the original",
                 "engine": self.engine.provenance(),
                 "reduction": "summed edit distance / summed reference length"}
        if n == 0 or self.ref_chars == 0:
            why = "the OCR engine read no text on any original"
            return {k: self.value(k, None, 0, why, **extra) for k in ("cer", "wer")}
        return {"cer": self.value("cer", float(self.char_dist / self.ref_chars), n, **extra),
                "wer": self.value("wer", float(self.word_dist / self.ref_words), n, **extra)}
