"""Word annotations for the text-preservation task (TokBench-style ground truth).

A manifest is JSON Lines, one line per image::

    {"image": "relative/path.png", "words": [{"text": "Hello", "box": [x0, y0, x1, y1]}, ...]}

``image`` is relative to the manifest's folder (or a dataset sample id, e.g. for parquet datasets); ``box`` is in
pixels of the ORIGINAL image (x1, y1 exclusive); a word may carry its own ``ratio`` (relative size, as TokBench's
annotations do), otherwise the text metric computes it. Malformed lines raise ``AnnotationError`` naming the file,
the line and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: manifest names looked for next to a dataset (its folder, then its parent)
MANIFEST_NAMES = ("words.jsonl", "text_words.jsonl")


class AnnotationError(ValueError):
    """A word manifest that cannot be used; the message names the file, the line and the fix."""


def _check_word(word: Any, where: str) -> dict[str, Any]:
    if not isinstance(word, dict) or "text" not in word or "box" not in word:
        raise AnnotationError(f"{where}: each word needs 'text' and 'box' ([x0, y0, x1, y1] in pixels), got {word!r}")
    box = word["box"]
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise AnnotationError(f"{where}: 'box' must be [x0, y0, x1, y1] numbers, got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise AnnotationError(f"{where}: empty box {box!r} (need x1 > x0 and y1 > y0)")
    out = {"text": str(word["text"]), "box": [x0, y0, x1, y1]}
    if "ratio" in word:
        out["ratio"] = float(word["ratio"])
    return out


def load_word_manifest(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """``{image key: [words]}``; the key is the manifest's ``image`` string as written."""
    path = Path(path)
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AnnotationError(f"cannot read word manifest {str(path)!r}: {exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"{where}: not JSON ({exc.msg}); one object per line: "
                                  f'{{"image": "a.png", "words": '
                                  f'[{{"text": "...", "box": [x0, y0, x1, y1]}}]}}') from None
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str) or not isinstance(rec.get("words"), list):
            raise AnnotationError(f"{where}: needs 'image' (string) and 'words' (list)")
        if rec["image"] in out:
            raise AnnotationError(f"{where}: image {rec['image']!r} appears twice")
        out[rec["image"]] = [_check_word(w, f"{where} ({rec['image']})") for w in rec["words"]]
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


def match_annotations(ids: list[str], root: str | os.PathLike | None, manifest: str | os.PathLike
                      ) -> dict[str, list[dict[str, Any]]]:
    """Map dataset sample ids to the manifest's words: by path (``image`` relative to the manifest folder equals
    ``root/id``) or, failing that, by id. Returns ``{id: words}`` for the ids found."""
    manifest = Path(manifest)
    words = load_word_manifest(manifest)
    base = manifest.parent.resolve()
    by_path = {os.path.normpath(str(base / k)): v for k, v in words.items()}
    out: dict[str, list[dict[str, Any]]] = {}
    for sid in ids:
        if root is not None:
            key = os.path.normpath(str(Path(root).resolve() / sid))
            if key in by_path:
                out[sid] = by_path[key]
                continue
        if sid in words:
            out[sid] = words[sid]
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
