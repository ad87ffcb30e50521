import json

import pytest

from vtbench import results
from vtbench.report import summary_html


def _record(name="tok.a", value=1.5):
    return results.new_record(
        tokenizer={"name": name, "family": "tok", "kind": "vq"},
        dataset={"id": "ds", "n_used": 3}, protocol={"name": "reconstruction", "version": "1.0"},
        metrics={"psnr": {"value": value, "n": 3, "higher_is_better": True, "unit": "dB", "reason": None},
                 "lpips": {"value": None, "n": 3, "higher_is_better": False, "unit": "", "reason": "weights absent"}})


def test_round_trip(tmp_path):
    rec = _record()
    results.write_json_atomic(tmp_path / "ds" / "tok.a" / "result.json", rec)
    (tmp_path / "ds" / "tok.a" / "samples.csv").write_text("id,psnr\na,1\nb,2\n")
    assert results.read_record(tmp_path / "ds" / "tok.a" / "result.json") == rec
    df = results.load(tmp_path)
    row = df[df.metric == "lpips"].iloc[0]
    assert row.value is None or row.value != row.value
    assert row.reason == "weights absent" and df[df.metric == "psnr"].value.item() == 1.5
    s = results.load_samples(tmp_path)
    assert list(s.columns[:2]) == ["tokenizer", "dataset"] and len(s) == 2
    assert rec["vtbench"]["version"] and "commit" in rec["vtbench"]


def test_old_schema_keeps_loading(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"tokenizer": {"name": "x"}, "dataset": {"id": "d"},
                                                       "protocol": {}, "metrics": {"psnr": 30.0}}))
    df = results.load(tmp_path / "result.json")
    assert df.value.item() == 30.0


def test_newer_schema_is_refused(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ValueError, match="upgrade vtbench"):
        results.read_record(tmp_path / "result.json")


def test_corrupt_result_names_the_file(tmp_path):
    (tmp_path / "result.json").write_text("{not json")
    with pytest.raises(ValueError, match="result.json"):
        results.read_record(tmp_path / "result.json")


def test_hostile_strings_are_escaped_in_html(tmp_path):
    evil = "<script>alert(1)</script>"
    rec = _record(name=evil)
    rec["metrics"]["lpips"]["reason"] = "'><img src=x onerror=alert(2)>"
    results.write_json_atomic(tmp_path / "ds" / "evil" / "result.json", rec)
    page = summary_html(tmp_path).read_text()
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img" not in page


def test_slug_is_filesystem_safe():
    assert results.slug("../../etc/passwd") == "etc-passwd"
    assert "/" not in results.slug("folder:/a/b c")
