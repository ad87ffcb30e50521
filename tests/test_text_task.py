"""The text task end to end with the real default OCR engine on the embedded text cards: the identity reads every
word back, and stronger JPEG compression lowers word accuracy and raises the OCR error rates."""

from __future__ import annotations

import os

import pytest

from vtbench.ocr import OCRUnavailable, get_engine
from vtbench.runner import RunConfig, run


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    try:
        get_engine("easyocr")
    except OCRUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the real OCR engine: {exc.reason}")
        pytest.skip(exc.reason)
    out = tmp_path_factory.mktemp("text")
    cfg = RunConfig(protocol="text", limit=3, metrics=["text", "ocr"], out=out, progress=False, thumbnails=0)
    recs = run(["identity.none", "jpeg.q10", "jpeg.q50", "jpeg.q90"], cfg)
    return {r["tokenizer"]["name"]: {k: v for k, v in r["metrics"].items()} for r in recs}, recs


def test_identity_reads_every_counted_word(records):
    by_name, recs = records
    ident = by_name["identity.none"]
    assert ident["text_acc"]["value"] == 1.0 and ident["text_ned"]["value"] == 1.0
    assert ident["cer"]["value"] == 0.0 and ident["wer"]["value"] == 0.0
    ex = ident["text_acc"]["extra"]
    assert ex["n_counted"] >= 0.8 * ex["n_words"]  # the engine reads most original words (93% over all cards)
    assert recs[0]["dataset"]["id"] == "embedded/text" and recs[0]["protocol"]["name"] == "text"
    assert ex["engine"]["engine"] == "easyocr" and ex["crop_margin"] == 0.15


def test_stronger_compression_reads_worse(records):
    by_name, _ = records
    acc = [by_name[f"jpeg.q{q}"]["text_acc"]["value"] for q in (10, 50, 90)]
    ned = [by_name[f"jpeg.q{q}"]["text_ned"]["value"] for q in (10, 50, 90)]
    cer = [by_name[f"jpeg.q{q}"]["cer"]["value"] for q in (10, 50, 90)]
    assert acc[0] <= acc[1] <= acc[2] <= 1.0 and acc[0] < acc[2]
    assert ned[0] <= ned[1] <= ned[2] and cer[0] >= cer[1] >= cer[2] and cer[0] > cer[2]


def test_vtbench_style_parquet_without_ground_truth(records, tmp_path):
    """VTBench's text configs are parquet files of images (no word boxes): the ``ocr`` metric runs on them."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from vtbench.paths import DATA_DIR
    cells = []
    for name in ("sans_small_01.png", "dense_paragraph_01.png"):
        buf = io.BytesIO()
        Image.open(DATA_DIR / "embedded" / "text" / name).convert("RGB").save(buf, "PNG")
        cells.append({"bytes": buf.getvalue(), "path": name})
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    path = tmp_path / "task3-movie-posters" / "test-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"image": pa.array(cells, type=struct)}), path)
    cfg = RunConfig(data=str(path.parent), protocol="text", metrics=["ocr"], out=tmp_path / "out", progress=False,
                    thumbnails=0)
    rec = run(["identity.none", "jpeg.q10"], cfg)
    ident, jpeg = (r["metrics"] for r in rec)
    assert rec[0]["dataset"]["n_used"] == 2 and ident["cer"]["value"] == 0.0 and ident["cer"]["extra"]["ref_chars"] > 20
    assert jpeg["cer"]["value"] > 0.0
