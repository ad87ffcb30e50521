"""Word manifests for the text task: validation, matching to dataset ids, TokBench conversion, runner wiring."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vtbench.cli import app
from vtbench.data.annotations import (
    AnnotationError,
    convert_tokbench,
    find_word_manifest,
    load_word_manifest,
    match_annotations,
)
from vtbench.data.datasets import open_dataset
from vtbench.data.policies import get_policy
from vtbench.paths import DATA_DIR


def test_embedded_manifest_matches_every_text_card():
    ds = open_dataset("embedded/text", get_policy("pad-restore", 256))
    path = find_word_manifest(ds.root)
    assert path == DATA_DIR / "embedded" / "text_words.jsonl"
    words = match_annotations(ds.ids, ds.root, path)
    assert set(words) == set(ds.ids) and all(words[i] for i in ds.ids)
    # the whole embedded set matches the same manifest through its text/ prefix
    full = open_dataset("embedded", get_policy("pad-restore", 256))
    assert len(match_annotations(full.ids, full.root, find_word_manifest(full.root))) == len(ds.ids)


@pytest.mark.parametrize("line,match", [
    ("not json", "not JSON"),
    ('{"image": "a.png"}', "needs 'image'"),
    ('{"image": "a.png", "words": [{"text": "x"}]}', "needs 'text' and 'box'"),
    ('{"image": "a.png", "words": [{"text": "x", "box": [5, 5, 2, 9]}]}', "empty box"),
    ('{"image": "a.png", "words": [{"text": "x", "box": [0, 0, "1", 2]}]}', "numbers"),
])
def test_bad_manifest_lines_name_file_and_line(tmp_path, line, match):
    p = tmp_path / "words.jsonl"
    p.write_text('{"image": "ok.png", "words": []}\n' + line + "\n")
    with pytest.raises(AnnotationError, match=match) as exc:
        load_word_manifest(p)
    assert f"{p}:2" in str(exc.value)


def test_duplicate_image_is_refused(tmp_path):
    p = tmp_path / "words.jsonl"
    p.write_text('{"image": "a.png", "words": []}\n{"image": "a.png", "words": []}\n')
    with pytest.raises(AnnotationError, match="twice"):
        load_word_manifest(p)


def test_convert_tokbench_keeps_ratios_and_boxes_polygons(tmp_path):
    src = tmp_path / "tokbench.json"
    src.write_text(json.dumps([
        {"file_name": "img_1.jpg", "annotations": [
            {"rec": "Hello", "bbox": [10, 20, 60, 40], "ratio": 0.031},
            {"rec": "World", "bbox": [[5, 5], [50, 8], [48, 30], [4, 27]], "ratio": 0.05}]},
        {"file_name": "sub/img_2.jpg", "annotations": []}]))
    out = tmp_path / "words.jsonl"
    r = CliRunner().invoke(app, ["data", "convert-tokbench", str(src), "--out", str(out)])
    assert r.exit_code == 0 and "2 images, 2 words (1 from polygons)" in r.stdout
    words = load_word_manifest(out)
    assert words["img_1.jpg"][0] == {"text": "Hello", "box": [10.0, 20.0, 60.0, 40.0], "ratio": 0.031}
    assert words["img_1.jpg"][1]["box"] == [4.0, 5.0, 50.0, 30.0] and words["sub/img_2.jpg"] == []
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"file_name": "x"}))
    with pytest.raises(AnnotationError, match="JSON list"):
        convert_tokbench(bad, out)
