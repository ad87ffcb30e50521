"""Integrity checks for the committed embedded sample dataset (data/embedded/, made by data/make_embedded.py)."""

from __future__ import annotations

import csv
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EMBEDDED = Path(__file__).resolve().parents[1] / "data" / "embedded"
MIN_COUNTS = {"photos": 20, "text": 16, "detail": 16}
MIN_TOTAL = 52
SIZE = 256
MANIFEST_FIELDS = ["file", "category", "source", "licence", "attribution", "method", "sha256"]


def _manifest() -> list[dict[str, str]]:
    with open(EMBEDDED / "MANIFEST.csv", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == MANIFEST_FIELDS
        return list(reader)


def _words() -> list[dict]:
    with open(EMBEDDED / "text_words.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


MANIFEST = _manifest()
WORD_RECORDS = _words()


def test_manifest_lists_exactly_the_files_present():
    listed = [row["file"] for row in MANIFEST]
    assert len(listed) == len(set(listed)), "duplicate rows in MANIFEST.csv"
    present = sorted(p.relative_to(EMBEDDED).as_posix() for p in EMBEDDED.rglob("*.png"))
    assert sorted(listed) == present
    others = sorted(p.relative_to(EMBEDDED).as_posix() for p in EMBEDDED.rglob("*")
                    if p.is_file() and p.suffix != ".png" and p.relative_to(EMBEDDED).parts[0] != "shapes")
    assert others == ["LICENSE.md", "MANIFEST.csv", "text_words.jsonl"]


def test_manifest_rows_are_complete():
    for row in MANIFEST:
        assert all(row[k].strip() for k in MANIFEST_FIELDS), row
        assert row["file"] == row["file"].lower()
        assert row["file"].split("/")[0] == row["category"]
        assert row["category"] in MIN_COUNTS


def test_category_counts():
    counts = {c: sum(row["category"] == c for row in MANIFEST) for c in MIN_COUNTS}
    for cat, minimum in MIN_COUNTS.items():
        assert counts[cat] >= minimum, (cat, counts[cat])
    assert len(MANIFEST) >= MIN_TOTAL


def test_total_size_is_small():
    total = sum(p.stat().st_size for p in EMBEDDED.rglob("*") if p.is_file())
    assert total < 5_000_000, total


@pytest.mark.parametrize("row", MANIFEST, ids=lambda r: r["file"])
def test_image_hash_and_format(row):
    path = EMBEDDED / row["file"]
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == row["sha256"]
    # PNG signature, then IHDR: width, height, bit depth 8, colour type 2 (truecolour RGB, no alpha).
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    assert (width, height, bit_depth, colour_type) == (SIZE, SIZE, 8, 2)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.mode == "RGB"
        assert im.size == (SIZE, SIZE)
        arr = np.asarray(im)
    assert arr.shape == (SIZE, SIZE, 3) and arr.dtype == np.uint8
    assert arr.std() > 0, "blank image"


def test_every_text_card_has_words_and_vice_versa():
    cards = sorted(row["file"] for row in MANIFEST if row["category"] == "text")
    recorded = [rec["image"] for rec in WORD_RECORDS]
    assert len(recorded) == len(set(recorded))
    assert sorted(recorded) == cards


def _luma(arr: np.ndarray) -> np.ndarray:
    return arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114


@pytest.mark.parametrize("rec", WORD_RECORDS, ids=lambda r: r["image"])
def test_word_boxes(rec):
    words = rec["words"]
    assert len(words) >= 3
    with Image.open(EMBEDDED / rec["image"]) as im:
        arr = np.asarray(im.convert("RGB")).astype(np.float64)
    boxes = []
    for wd in words:
        assert isinstance(wd["text"], str) and wd["text"].strip() == wd["text"] and wd["text"]
        box = wd["box"]
        assert len(box) == 4 and all(isinstance(v, int) for v in box), wd
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE, wd
        region = arr[y0:y1, x0:x1]
        # Text was drawn there: more than one colour, and a real light/dark swing, which a smooth background
        # alone (the gradient card changes by a few levels across a word) cannot produce.
        assert len(np.unique(region.reshape(-1, 3), axis=0)) > 1, wd
        luma = _luma(region)
        assert luma.max() - luma.min() >= 20, (wd, luma.max() - luma.min())
        boxes.append(box)
    # Words do not overlap.
    for i, (ax0, ay0, ax1, ay1) in enumerate(boxes):
        for bx0, by0, bx1, by1 in boxes[:i]:
            assert not (ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1), (words[i], boxes[:i])


def test_word_text_mix():
    texts = [wd["text"] for rec in WORD_RECORDS for wd in rec["words"]]
    assert any(t.islower() for t in texts)
    assert any(t.isupper() and t.isalpha() for t in texts)
    assert any(t[:1].isupper() and t[1:].islower() for t in texts)
    assert any(any(ch.isdigit() for ch in t) for t in texts)


def test_licence_file_mentions_sources():
    text = (EMBEDDED / "LICENSE.md").read_text(encoding="utf-8")
    assert "CC0" in text and "DejaVu" in text and "Bitstream" in text
    for row in MANIFEST:
        if row["source"].startswith("scikit-image"):
            assert row["file"] in text
