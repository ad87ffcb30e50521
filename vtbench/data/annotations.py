"""Word annotations for the text-preservation task (TokBench-style ground truth).

A manifest is JSON Lines, one line per image::

    {"image": "relative/path.png", "words": [{"text": "Hello", "box": [x0, y0, x1, y1]}, ...]}

``image`` is relative to the manifest's folder (or a dataset sample id, e.g. for parquet datasets); ``box`` is in
pixels of the ORIGINAL image (x1, y1 exclusive); a word may carry its own ``ratio`` (relative size, as TokBench's
annotations do), otherwise the text metric computes it. Malformed lines raise ``AnnotationError`` naming the file,
the line and the fix: not JSON (a truncated last line included), NaN or Infinity anywhere, a box of non-numbers,
an empty or negative-size box, a box starting left of or above the image, text that is not a string or holds
control characters. Given the images' sizes, ``match_annotations`` also refuses a box reaching past the image's
right or bottom edge. Both edge checks allow ``EDGE_TOLERANCE`` pixels, for boxes rounded from polygons.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

#: manifest names looked for next to a dataset (its folder, then its parent)
MANIFEST_NAMES = ("words.jsonl", "text_words.jsonl")
#: how far (pixels) a box may reach past the image's edges (boxes rounded from polygons)
EDGE_TOLERANCE = 1.0
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class AnnotationError(ValueError):
    """A word manifest that cannot be used; the message names the file, the line and the fix."""


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_word(word: Any, where: str) -> dict[str, Any]:
    if not isinstance(word, dict) or "text" not in word or "box" not in word:
        raise AnnotationError(f"{where}: each word needs 'text' and 'box' ([x0, y0, x1, y1] in pixels), "
                              f"got {word!r:.200}")
    box = word["box"]
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_finite(v) for v in box)):
        raise AnnotationError(f"{where}: 'box' must be [x0, y0, x1, y1], four finite numbers (pixels), "
                              f"got {box!r:.200}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise AnnotationError(f"{where}: empty box {box!r}, zero or negative size (need x1 > x0 and y1 > y0; boxes are "
                              f"[x0, y0, x1, y1], not [x, y, width, height])")
    if x0 < -EDGE_TOLERANCE or y0 < -EDGE_TOLERANCE:
        raise AnnotationError(f"{where}: box {box!r} starts outside the image (negative coordinates); boxes are "
                              f"pixels of the original image, origin at its top-left corner")
    text = word["text"]
    if not isinstance(text, str) or _CONTROL.search(text):
        raise AnnotationError(f"{where}: 'text' must be a string without control characters, got {text!r:.200}")
    out = {"text": text, "box": [x0, y0, x1, y1]}
    if "ratio" in word:
        if not _finite(word["ratio"]) or word["ratio"] <= 0:
            raise AnnotationError(f"{where}: 'ratio' must be a finite number > 0, got {word['ratio']!r:.80}")
        out["ratio"] = float(word["ratio"])
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number in JSON")


def load_word_manifest(path: str | os.PathLike, lines_out: dict[str, int] | None = None
                       ) -> dict[str, list[dict[str, Any]]]:
    """``{image key: [words]}``; the key is the manifest's ``image`` string as written. ``lines_out``, when given,
    receives each key's line number (for ``file:line`` messages)."""
    path = Path(path)
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"cannot read word manifest {str(path)!r}: {exc.strerror or exc}; check the path "
                              f"(--annotations) and its permissions") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise AnnotationError(f"{path}:{line}: not UTF-8 text; write the manifest as UTF-8 JSON Lines") from None
    example = '{"image": "a.png", "words": [{"text": "...", "box": [x0, y0, x1, y1]}]}'
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            cut = " (the line ends early: a truncated file?)" if not line.rstrip().endswith("}") else ""
            raise AnnotationError(f"{where}: not JSON ({exc.msg}){cut}; one object per line: {example}") from None
        except ValueError as exc:  # NaN / Infinity
            raise AnnotationError(f"{where}: {exc}; boxes are finite pixel coordinates") from None
        except RecursionError:
            raise AnnotationError(f"{where}: nested too deeply; one object per line: {example}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str) or not isinstance(rec.get("words"), list):
            raise AnnotationError(f"{where}: needs 'image' (string) and 'words' (list); one object per line: {example}")
        if not rec["image"].strip() or _CONTROL.search(rec["image"]):
            raise AnnotationError(f"{where}: 'image' {rec['image']!r:.200} must be a file name or sample id without "
                                  f"control characters")
        if rec["image"] in out:
            raise AnnotationError(f"{where}: image {rec['image']!r} appears twice")
        out[rec["image"]] = [_check_word(w, f"{where} ({rec['image']})") for w in rec["words"]]
        if lines_out is not None:
            lines_out[rec["image"]] = n
    return out


def find_word_manifest(root: str | os.PathLike | None) -> Path | None:
    """A manifest next to a dataset folder: ``words.jsonl`` / ``text_words.jsonl`` in it or its parent."""
    if root is None:
        return None
    root = Path(root)
    for folder in (root, root.parent):
        for name in MANIFEST_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def match_annotations(ids: list[str], root: str | os.PathLike | None, manifest: str | os.PathLike,
                      size_of: Callable[[str], tuple[int, int] | None] | None = None
                      ) -> dict[str, list[dict[str, Any]]]:
    """Map dataset sample ids to the manifest's words: by path (``image`` relative to the manifest folder equals
    ``root/id``) or, failing that, by id. Returns ``{id: words}`` for the ids found.

    ``size_of(id) -> (width, height)`` (header only), when given, checks every matched box against its image:
    one reaching past the right or bottom edge (beyond ``EDGE_TOLERANCE``) raises ``AnnotationError`` with the
    manifest's ``file:line``."""
    manifest = Path(manifest)
    lines: dict[str, int] = {}
    words = load_word_manifest(manifest, lines)
    base = manifest.parent.resolve()
    by_path = {os.path.normpath(str(base / k)): (k, v) for k, v in words.items()}
    out: dict[str, list[dict[str, Any]]] = {}
    keys: dict[str, str] = {}
    for sid in ids:
        if root is not None:
            key = os.path.normpath(str(Path(root).resolve() / sid))
            if key in by_path:
                keys[sid], out[sid] = by_path[key]
                continue
        if sid in words:
            keys[sid], out[sid] = sid, words[sid]
    if size_of is not None:
        for sid, ws in out.items():
            size = size_of(sid) if ws else None
            if size is None:
                continue
            w, h = size
            for word in ws:
                x0, y0, x1, y1 = word["box"]
                if x1 > w + EDGE_TOLERANCE or y1 > h + EDGE_TOLERANCE:
                    raise AnnotationError(
                        f"{manifest}:{lines.get(keys[sid], '?')}: word {word['text']!r:.60} has box "
                        f"{[x0, y0, x1, y1]} outside its image {sid!r} ({w}x{h} pixels). Fix: boxes are pixels "
                        f"of the original image, [x0, y0, x1, y1]; check that the manifest belongs to these images "
                        f"at this resolution")
    return out


def convert_tokbench(src: str | os.PathLike, out: str | os.PathLike) -> dict[str, int]:
    """TokBench's text annotations -> a vtbench word manifest.

    TokBench (``doctr/datasets/ocr_json.py``) reads a JSON list of ``{"file_name": ..., "annotations": [{"rec":
    text, "bbox": [xmin, ymin, xmax, ymax] (absolute pixels) or a 4-point polygon, "ratio": relative size}]}``.
    Polygons become their axis-aligned bounding box; TokBench's own ``ratio`` is kept so its size buckets are
    reproduced exactly. Returns counts (images, words, polygons)."""
    src, out = Path(src), Path(out)
    try:
        doc = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"cannot read TokBench annotations {str(src)!r}: {exc}") from None
    if not isinstance(doc, list):
        raise AnnotationError(f"{src}: expected a JSON list of {{'file_name', 'annotations'}} records")
    stats = {"images": 0, "words": 0, "polygons": 0}
    lines = []
    for k, rec in enumerate(doc):
        where = f"{src} record {k}"
        if not isinstance(rec, dict) or "file_name" not in rec or not isinstance(rec.get("annotations"), list):
            raise AnnotationError(f"{where}: needs 'file_name' and 'annotations'")
        words = []
        for word in rec["annotations"]:
            geom = word.get("bbox")
            if isinstance(geom, list) and len(geom) == 4 and all(isinstance(p, (list, tuple)) for p in geom):
                xs, ys = [float(p[0]) for p in geom], [float(p[1]) for p in geom]
                box = [min(xs), min(ys), max(xs), max(ys)]
                stats["polygons"] += 1
            elif isinstance(geom, list) and len(geom) == 4:
                box = [float(v) for v in geom]
            else:
                raise AnnotationError(f"{where}: word without a 4-number bbox or a 4-point polygon: {word!r}")
            w = {"text": str(word.get("rec", "")), "box": box}
            if "ratio" in word:
                w["ratio"] = float(word["ratio"])
            words.append(_check_word(w, where))
        stats["images"] += 1
        stats["words"] += len(words)
        lines.append(json.dumps({"image": str(rec["file_name"]), "words": words}, ensure_ascii=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return stats
