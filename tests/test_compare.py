"""The regression gate (vtbench.compare and `vtbench compare`) on hand-made records."""

import json
import math
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from vtbench.cli import app
from vtbench.compare import (
    DEFAULT_TOLERANCES,
    CompareInputError,
    Tolerance,
    compare,
    compare_records,
    load_tolerances,
    parse_overrides,
)
from vtbench.junit import junit_xml, write_junit
from vtbench.results import write_json_atomic

runner = CliRunner()
HIB = {"psnr": True, "ssim": True, "lpips": False, "rfid": False, "bpp": None, "token_entropy": None,
       "decode_images_per_s": True, "codebook_usage": True}


def metric(value, hib=True, reason=None):
    return {"value": value, "n": 24, "higher_is_better": hib, "unit": "", "reason": reason}


def record(tok="tiny.vq", ds="embedded", version="1.0", revision="r1", selection="s1", n_used=24, **values):
    return {
        "schema_version": 1,
        "tokenizer": {"name": tok, "weights_sha256": "ab" * 32},
        "dataset": {"id": ds, "revision": revision, "selection": selection, "n_used": n_used, "split": None,
                    "policy": {"name": "adm-center-crop", "version": "1", "resolution": 256}},
        "protocol": {"name": "reconstruction", "version": version, "task": "reconstruction"},
        "metrics": {k: v if isinstance(v, dict) else metric(v, HIB.get(k, True)) for k, v in values.items()},
    }


def gate(new, base, tolerances=None, allow_missing=False):
    new, base = (x if isinstance(x, list) else [x] for x in (new, base))
    return compare_records([(f"new{i}", r) for i, r in enumerate(new)], [(f"base{i}", r) for i, r in enumerate(base)],
                           tolerances or load_tolerances(), allow_missing=allow_missing)


def row(report, metric_name, tok="tiny.vq"):
    return next(r for r in report.rows if r.metric == metric_name and r.tokenizer == tok)


def save(root, *records):
    for r in records:
        write_json_atomic(root / r["dataset"]["id"] / r["tokenizer"]["name"] / "result.json", r)
    return root


# -- the rule --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("new_psnr, status", [(30.0, "ok"), (29.96, "ok"), (29.95, "ok"), (29.94, "regressed"),
                                              (30.06, "improved"), (25.0, "regressed")])
def test_higher_is_better_with_abs_tolerance(new_psnr, status):
    rep = gate(record(psnr=new_psnr), record(psnr=30.0))
    r = row(rep, "psnr")
    assert r.status == status and r.tolerance == 0.05 and r.delta == pytest.approx(new_psnr - 30.0)
    assert rep.exit_code == (1 if status == "regressed" else 0)


@pytest.mark.parametrize("new_lpips, status", [(0.101, "ok"), (0.103, "regressed"), (0.097, "improved")])
def test_lower_is_better(new_lpips, status):
    assert row(gate(record(lpips=new_lpips), record(lpips=0.1)), "lpips").status == status


def test_rel_and_abs_take_the_larger():
    # rfid: rel 0.02 and abs 0.05 -> allowed = max(0.05, 0.02 * |b|)
    assert row(gate(record(rfid=10.19), record(rfid=10.0)), "rfid").status == "ok"
    r = row(gate(record(rfid=10.21), record(rfid=10.0)), "rfid")
    assert r.status == "regressed" and r.tolerance == pytest.approx(0.2)
    r = row(gate(record(rfid=0.56), record(rfid=0.5)), "rfid")  # 2% of 0.5 is 0.01: the abs floor applies
    assert r.status == "regressed" and r.tolerance == 0.05
    assert row(gate(record(rfid=0.54), record(rfid=0.5)), "rfid").status == "ok"
    assert Tolerance(abs=0.1, rel=0.5).allowed(-4.0) == 2.0
    assert Tolerance(abs=0.1, rel=0.5).allowed(math.inf) == 0.1  # rel is meaningless against an infinite baseline


def test_infinite_values():
    assert row(gate(record(psnr=math.inf), record(psnr=math.inf)), "psnr").status == "ok"
    assert row(gate(record(psnr=60.0), record(psnr=math.inf)), "psnr").status == "regressed"
    assert row(gate(record(psnr=math.inf), record(psnr=60.0)), "psnr").status == "improved"


def test_informational_metrics_never_gate():
    rep = gate(record(token_entropy=2.0, decode_images_per_s=5.0, psnr=30.0),
               record(token_entropy=8.0, decode_images_per_s=500.0, psnr=30.0))
    assert row(rep, "token_entropy").status == "info" and row(rep, "token_entropy").delta == -6.0
    speed = row(rep, "decode_images_per_s")  # the record says higher-is-better; compare.toml says timings inform
    assert speed.status == "info" and speed.higher_is_better is None and "direction = none" in speed.note
    assert rep.exit_code == 0


def test_direction_override_gates_a_rate():
    # bpp has no direction in the record; the default tolerances gate it as lower-is-better (1%)
    r = row(gate(record(bpp=0.5), record(bpp=0.25)), "bpp")
    assert r.status == "regressed" and r.higher_is_better is False
    assert row(gate(record(bpp=0.2), record(bpp=0.25)), "bpp").status == "improved"
    # and a tolerance file can turn it off again
    tols = load_tolerances(abs_overrides={})
    tols.metrics["bpp"] = Tolerance(direction="none")
    assert row(gate(record(bpp=0.5), record(bpp=0.25), tols), "bpp").status == "info"


def test_direction_disagreement_is_incomparable():
    new = record(psnr=metric(30.0, hib=False))
    rep = gate(new, record(psnr=30.0))
    assert row(rep, "psnr").status == "incomparable" and rep.exit_code == 2


# -- null, NaN, missing, new -----------------------------------------------------------------------------

def test_null_handling():
    rep = gate(record(lpips=metric(None, False, reason="AlexNet weights not found"), ssim=metric(None, True, "x")),
               record(lpips=0.1, ssim=metric(None, True, "no skimage")))
    lp = row(rep, "lpips")
    assert lp.status == "regressed" and "metric became unavailable: AlexNet weights not found" in lp.note
    assert row(rep, "ssim").status == "info" and "skipped" in row(rep, "ssim").note
    assert rep.exit_code == 1
    rep = gate(record(lpips=0.1), record(lpips=metric(None, False, reason="no weights")))
    assert row(rep, "lpips").status == "new" and rep.exit_code == 0


# (a value that is not a number at all is malformed: incomparable, exit 2; tests/test_bad_inputs.py)
@pytest.mark.parametrize("new, base", [(math.nan, 30.0), (30.0, math.nan), (math.nan, math.nan)])
def test_nan_never_passes(new, base):
    rep = gate(record(psnr=new), record(psnr=base))
    assert row(rep, "psnr").status == "regressed" and rep.exit_code == 1
    json.dumps(rep.to_dict(), allow_nan=False)  # the JSON report stays valid


def test_missing_and_new_records():
    base = [record(psnr=30.0), record(tok="jpeg.q50", psnr=28.0)]
    new = [record(psnr=30.0), record(tok="webp.q50", psnr=29.0)]
    rep = gate(new, base)
    statuses = {(r.tokenizer, r.metric): r.status for r in rep.rows}
    assert statuses[("jpeg.q50", None)] == "missing" and statuses[("webp.q50", None)] == "new"
    assert rep.exit_code == 1 and "jpeg.q50" in rep.verdict
    rep = gate(new, base, allow_missing=True)
    assert rep.exit_code == 0 and "missing (allowed)" in rep.verdict


def test_metric_dropped_from_new_run_is_missing():
    rep = gate(record(psnr=30.0), record(psnr=30.0, ssim=0.9))
    assert row(rep, "ssim").status == "missing" and rep.exit_code == 1
    rep = gate(record(psnr=30.0), record(psnr=30.0, ssim=metric(None, True, "no skimage")))
    assert row(rep, "ssim").status == "info" and rep.exit_code == 0  # nothing was gated
    rep = gate(record(psnr=30.0, ssim=0.9), record(psnr=30.0))
    assert row(rep, "ssim").status == "new" and rep.exit_code == 0


# -- incomparable inputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("change, words", [({"version": "1.1"}, "protocol"), ({"revision": "r2"}, "revision"),
                                           ({"selection": "s2"}, "selection"), ({"n_used": 23}, "images used")])
def test_mismatch_is_incomparable(change, words):
    rep = gate(record(psnr=20.0, **change), record(psnr=30.0))
    assert rep.exit_code == 2 and rep.count("regressed") == 0
    assert rep.verdict.startswith("INCOMPARABLE") and words in rep.verdict


def test_preprocessing_mismatch_is_incomparable():
    new = record(psnr=30.0)
    new["dataset"]["policy"]["resolution"] = 128
    assert gate(new, record(psnr=30.0)).exit_code == 2


def test_nothing_in_common_or_duplicates():
    rep = gate(record(ds="imagenet", psnr=30.0), record(psnr=30.0))
    assert rep.exit_code == 2 and "no (tokenizer, dataset) in common" in rep.verdict
    with pytest.raises(CompareInputError, match="two results"):
        gate([record(psnr=30.0), record(psnr=31.0)], record(psnr=30.0))


# -- tolerances ------------------------------------------------------------------------------------------

def test_default_tolerance_file():
    tols = load_tolerances()
    assert tols.version and tols.sources == [str(DEFAULT_TOLERANCES)]
    assert tols.get("psnr") == Tolerance(abs=0.05)
    assert tols.get("rfid") == Tolerance(abs=0.05, rel=0.02)
    assert tols.get("peak_memory_mb").direction == "none"
    assert tols.get("some_future_metric") == tols.default == Tolerance(rel=0.01)


def test_tolerance_file_and_flags(tmp_path):
    f = tmp_path / "gate.toml"
    f.write_text('[tolerances.psnr]\nabs = 0.5\n[tolerances.rfid]\nabs = 1.0\n'
                 '[tolerances.decode_images_per_s]\ndirection = "higher"\nrel = 0.2\n')
    tols = load_tolerances(f)
    assert tols.get("rfid") == Tolerance(abs=1.0, rel=0.02)  # merged key by key over the defaults
    assert row(gate(record(psnr=29.7), record(psnr=30.0), tols), "psnr").status == "ok"
    assert row(gate(record(decode_images_per_s=70.0), record(decode_images_per_s=100.0), tols),
               "decode_images_per_s").status == "regressed"
    tols = load_tolerances(f, abs_overrides=parse_overrides(["psnr=0.1"], "--abs"),
                           rel_overrides=parse_overrides(["ssim=0.5"], "--rel"))
    assert row(gate(record(psnr=29.7), record(psnr=30.0), tols), "psnr").status == "regressed"
    assert tols.get("ssim") == Tolerance(abs=0.002, rel=0.5)
    assert "--abs psnr=0.1" in tols.sources[-1]


@pytest.mark.parametrize("text, words", [("[tolerances.psnr]\nabsolute = 1\n", "unknown key 'absolute'"),
                                         ("[tolerance.psnr]\nabs = 1\n", "unknown top-level"),
                                         ('[tolerances.psnr]\ndirection = "up"\n', "direction"),
                                         ("[tolerances.psnr]\nabs = -1\n", ">= 0"),
                                         ('[default]\ndirection = "lower"\n', "unknown key"),
                                         ("[tolerances.psnr\n", "invalid TOML")])
def test_invalid_tolerance_files(tmp_path, text, words):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(CompareInputError, match=words):
        load_tolerances(f)


@pytest.mark.parametrize("item", ["psnr", "psnr=", "=0.1", "psnr=abc", "psnr=nan", "psnr=-1"])
def test_invalid_flags(item):
    with pytest.raises(CompareInputError):
        parse_overrides([item], "--abs")


def test_flag_for_unknown_metric_is_an_error():
    tols = load_tolerances(abs_overrides={"pnsr": 0.1})
    rep = gate(record(psnr=30.0), record(psnr=30.0), tols)
    assert rep.exit_code == 2 and "Did you mean 'psnr'" in rep.verdict


# -- JUnit -----------------------------------------------------------------------------------------------

def test_junit_parse_back(tmp_path):
    base = [record(psnr=30.0, ssim=0.9, token_entropy=8.0), record(tok="jpeg.q50", psnr=28.0)]
    new = [record(psnr=29.0, ssim=0.9, token_entropy=7.0), record(tok="webp.q50", psnr=28.0)]
    path = write_junit(gate(new, base), tmp_path / "sub" / "report.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"tiny.vq on embedded", "jpeg.q50 on embedded", "webp.q50 on embedded"}
    cases = {c.get("name"): c for c in suites["tiny.vq on embedded"].findall("testcase")}
    assert "psnr" in cases["psnr"].find("failure").get("message") and cases["ssim"].find("failure") is None
    assert cases["token_entropy"].find("skipped") is not None
    assert suites["jpeg.q50 on embedded"].find("testcase/failure").get("type") == "missing"
    assert suites["webp.q50 on embedded"].find("testcase/skipped") is not None
    assert root.get("failures") == "2" and int(root.get("tests")) == 5
    inc = junit_xml(gate(record(psnr=30.0, version="2.0"), record(psnr=30.0))).getroot()
    assert inc.get("errors") == "1" and "protocol" in inc.find(".//error").get("message")


def test_hostile_names_keep_the_xml_valid(tmp_path):
    name = 'tok<"&\'>]]>\x00\x1b\ud800 ü\u2028[red]x[/red]'
    rep = gate(record(tok=name, psnr=20.0, lpips=metric(None, False, reason="</failure><x>&amp;\x07")),
               record(tok=name, psnr=30.0, lpips=0.1, ssim=metric(None, True, reason="\x00")))
    root = ET.parse(write_junit(rep, tmp_path / "r.xml")).getroot()
    suite = root.find("testsuite")
    assert suite.get("name").startswith('tok<"&\'>]]>') and "ü" in suite.get("name")
    assert root.get("failures") == "2" and root.get("skipped") == "1"  # psnr, lpips unavailable; ssim skipped
    lpips = next(c for c in suite.findall("testcase") if c.get("name") == "lpips")
    assert "</failure><x>&amp;" in lpips.find("failure").get("message")


# -- CLI -------------------------------------------------------------------------------------------------

def test_cli_exit_codes_and_outputs(tmp_path):
    base = save(tmp_path / "base", record(psnr=30.0, ssim=0.9), record(tok="[red]jpeg[/red]", psnr=28.0))
    same = save(tmp_path / "same", record(psnr=30.01, ssim=0.9), record(tok="[red]jpeg[/red]", psnr=28.0))
    worse = save(tmp_path / "worse", record(psnr=29.0, ssim=0.9), record(tok="[red]jpeg[/red]", psnr=28.0))
    other = save(tmp_path / "other", record(psnr=30.0, ssim=0.9, version="2.0"))

    r = runner.invoke(app, ["compare", str(same), str(base)])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[-1].startswith("PASS") and "[red]jpeg[/red]" in r.stdout

    junit = tmp_path / "report.xml"
    r = runner.invoke(app, ["compare", str(worse), str(base), "--junit", str(junit)])
    assert r.exit_code == 1 and "regressed" in r.stdout and "REGRESSED" in r.stdout
    assert ET.parse(junit).getroot().get("failures") == "1"

    r = runner.invoke(app, ["compare", str(worse), str(base), "--abs", "psnr=1.5", "--json"])
    obj = json.loads(r.stdout)
    assert r.exit_code == 0 and obj["exit_code"] == 0 and obj["counts"]["ok"] >= 2
    assert "--abs psnr=1.5" in obj["tolerances"]["sources"][-1]

    r = runner.invoke(app, ["compare", str(worse / "embedded" / "tiny.vq" / "result.json"), str(base)])
    assert r.exit_code == 1 and "missing" in r.stdout  # jpeg disappeared
    r = runner.invoke(app, ["compare", str(same / "embedded" / "tiny.vq" / "result.json"), str(base),
                            "--allow-missing"])
    assert r.exit_code == 0, r.output

    r = runner.invoke(app, ["compare", str(other), str(base), "--junit", str(junit)])
    assert r.exit_code == 2 and "INCOMPARABLE" in r.stdout and "protocol" in r.stdout
    assert ET.parse(junit).getroot().get("errors") == "1"


@pytest.mark.parametrize("args", [["missing_dir", "BASE"], ["EMPTY", "BASE"], ["BASE", "BASE", "--abs", "psnr"],
                                  ["BASE", "BASE", "--tolerances", "nope.toml"], ["BAD", "BASE"]])
def test_cli_unusable_inputs_exit_2(tmp_path, args):
    base = save(tmp_path / "base", record(psnr=30.0))
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "result.json").write_text("{not json")
    subst = {"BASE": str(base), "EMPTY": str(tmp_path / "empty"), "BAD": str(tmp_path / "bad"),
             "missing_dir": str(tmp_path / "missing"), "nope.toml": str(tmp_path / "nope.toml")}
    junit = tmp_path / "r.xml"
    r = runner.invoke(app, ["compare", *[subst.get(a, a) for a in args], "--json", "--junit", str(junit)])
    assert r.exit_code == 2, r.output
    obj = json.loads(r.stdout)
    assert obj["exit_code"] == 2 and obj["problems"]
    assert ET.parse(junit).getroot().find(".//error") is not None  # CI still gets a report saying why


def test_compare_reads_files_and_dirs(tmp_path):
    base = save(tmp_path / "base", record(psnr=30.0))
    rep = compare(base / "embedded" / "tiny.vq" / "result.json", base)
    assert rep.exit_code == 0 and rep.pairs[0].baseline_weights == "ab" * 32


def test_ls_protocols_still_lists():
    r = runner.invoke(app, ["ls", "protocols"])
    assert r.exit_code == 0 and "reconstruction@" in r.stdout
