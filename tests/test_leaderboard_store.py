"""The published leaderboard: the results store and `vtbench leaderboard add` (each refusal with its reason), the
"reported by the authors" layer for every registered card, calibration, merging of fewer-metrics runs, CSV/JSON
downloads, record links, the atomic rebuild and extreme values."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vtbench.cards import parse_card_file
from vtbench.cli import app
from vtbench.config import all_cards
from vtbench.leaderboard import build_site
from vtbench.leaderboard.reported import reported_numbers
from vtbench.leaderboard.store import StoreRefused, add, check_record, current_protocols, measurement_key, stored
from vtbench.results import RESULT_FILE, iter_record_paths, write_json_atomic
from vtbench.runner import RunConfig, run

REPO = Path(__file__).resolve().parents[1]
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs of the same (tokenizer, data): a fuller one and a later one that selected fewer metrics."""
    full = tmp_path_factory.mktemp("store-full")
    run(["tiny.vq", "jpeg.q50"], RunConfig(limit=4, metrics=["psnr", "ssim", "compression"], progress=False, out=full))
    few = tmp_path_factory.mktemp("store-few")
    run(["tiny.vq"], RunConfig(limit=4, metrics=["psnr"], progress=False, out=few))
    return full, few


def rec_dir(root: Path, tok: str) -> Path:
    return root / "embedded" / tok / "reconstruction"


def variant(runs, tmp_path: Path, name: str, edit=None, tok: str = "tiny.vq", raw: str | None = None) -> Path:
    """A copy of the full tiny.vq run folder with ``edit(record)`` applied (or the file replaced by ``raw``)."""
    dst = tmp_path / name
    shutil.copytree(rec_dir(runs[0], tok), dst)
    if raw is not None:
        (dst / RESULT_FILE).write_text(raw)
    elif edit is not None:
        rec = json.loads((dst / RESULT_FILE).read_text())
        edit(rec)
        (dst / RESULT_FILE).write_text(json.dumps(rec))  # allow_nan: a hostile file may hold NaN
    return dst / RESULT_FILE


def cli(*args: str):
    return CliRunner().invoke(app, ["leaderboard", *args])


# -- add: accepted ---------------------------------------------------------------------------------------------

def test_add_accepts_valid_records_byte_for_byte(runs, tmp_path):
    store = tmp_path / "store"
    r = cli("add", str(runs[0]), "--store", str(store))
    assert r.exit_code == 0, r.output
    assert r.stdout.count("added ") == 2
    paths = iter_record_paths(store)
    assert len(paths) == 2
    for p in paths:
        tok = json.loads(p.read_text())["tokenizer"]["name"]
        src = rec_dir(runs[0], tok) / RESULT_FILE
        assert p.read_bytes() == src.read_bytes()  # published as produced
        assert (p.parent / "samples.csv").is_file()
        assert len(list((p.parent / "thumbs").glob("*.png"))) == 2 * 4
        assert p.parent.parent.name == "reconstruction" and p.parent.name == json.loads(p.read_text())["run"][
            "fingerprint"]
    # the same again is a duplicate; nothing changes
    r = cli("add", str(rec_dir(runs[0], "tiny.vq") / RESULT_FILE), "--store", str(store))
    assert r.exit_code == 1
    assert "duplicate of" in r.stderr and "--replace" in r.stderr
    assert re.search(r"shared metrics [a-z_, ]*psnr, ssim", r.stderr)
    assert str(rec_dir(runs[0], "tiny.vq") / RESULT_FILE) in r.stderr
    assert len(iter_record_paths(store)) == 2
    # --replace replaces it in place
    r = cli("add", str(rec_dir(runs[0], "tiny.vq") / RESULT_FILE), "--store", str(store), "--replace")
    assert r.exit_code == 0, r.output
    assert len(iter_record_paths(store)) == 2
    assert not [p for p in store.rglob("*") if p.name.startswith(".")]  # no temporary folders left


# -- add: refused, each with its reason ------------------------------------------------------------------------

def _set(path: list[str], value):
    def edit(rec):
        node = rec
        for k in path[:-1]:
            node = node[k]
        if value is KeyError:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return edit


REFUSALS = {
    "no-schema": (_set(["schema_version"], KeyError), "no schema_version"),
    "old-schema": (_set(["schema_version"], 0), "schema_version 0: the store takes schema 1"),
    "new-schema": (_set(["schema_version"], 99), "newer than this vtbench"),
    "unknown-protocol": (_set(["protocol", "name"], "recon-x"), "'recon-x' is not a known protocol"),
    "old-protocol-version": (_set(["protocol", "version"], "0.9"), "is not the current version 1.0"),
    "edited-settings": (_set(["protocol", "settings_sha256"], "0123456789abcdef"), "is not the current settings'"),
    "no-dataset-id": (_set(["dataset", "id"], KeyError), "no dataset identity"),
    "no-revision": (_set(["dataset", "revision"], ""), "no dataset revision"),
    "no-images": (_set(["dataset", "n_used"], 0), "at least one image"),
    "no-environment": (_set(["environment"], {"python": "3.11"}), "environment lacks platform, device, torch"),
    "no-version": (_set(["vtbench", "version"], KeyError), "no vtbench.version"),
    "no-finished": (_set(["finished"], None), "no 'finished' timestamp"),
    "no-fingerprint": (_set(["run", "fingerprint"], KeyError), "no run.fingerprint"),
    "no-weights-sha": (_set(["tokenizer", "weights_sha256"], None), "no tokenizer.weights_sha256"),
    "other-weights": (_set(["tokenizer", "weights_sha256"], "ab" * 32), "is not the one"),
    "unregistered": (_set(["tokenizer", "name"], "mine.v1"), "'mine.v1' is not a registered tokenizer"),
    "nan": (_set(["metrics", "psnr", "value"], float("nan")), "'psnr' value nan is not finite"),
    "infinite": (_set(["metrics", "psnr", "value"], float("inf")), "'psnr' value inf is not finite"),
    "text-value": (_set(["metrics", "psnr", "value"], "19.0"), "'psnr' value '19.0' is not a number"),
    "null-no-reason": (lambda r: r["metrics"]["psnr"].update(value=None, reason=None), "null without a reason"),
    "no-metrics": (_set(["metrics"], {}), "no metrics"),
    "traversal": (lambda r: r["thumbnails"][0].update(original="../../../../etc/passwd"),
                  "is not inside the record's folder"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_add_refuses_with_the_reason(runs, tmp_path, case):
    edit, reason = REFUSALS[case]
    bad = variant(runs, tmp_path, case, edit)
    good = rec_dir(runs[0], "jpeg.q50") / RESULT_FILE
    store = tmp_path / "store"
    r = cli("add", str(good), str(bad), "--store", str(store))
    assert r.exit_code == 1, r.output
    assert f"{bad}: refused:" in r.stderr and reason in r.stderr, r.stderr
    assert "nothing was added" in r.stderr
    assert not iter_record_paths(store) if store.exists() else True  # all or nothing: the good one stayed out


@pytest.mark.parametrize("raw, reason", [("", "not valid JSON"), ('{"schema_version": 1', "not valid JSON"),
                                          ("[1, 2]", "not a result record"), ("\xff\xfe", "not valid JSON")])
def test_add_refuses_unreadable_files(runs, tmp_path, raw, reason):
    bad = variant(runs, tmp_path, "raw", raw=raw)
    r = cli("add", str(bad), "--store", str(tmp_path / "store"))
    assert r.exit_code == 1 and f"{bad}: refused:" in r.stderr and reason in r.stderr, r.stderr


def test_add_missing_path_and_batch_duplicates(runs, tmp_path):
    r = cli("add", str(tmp_path / "nope"), "--store", str(tmp_path / "store"))
    assert r.exit_code == 1 and "nope: no such result file or folder" in r.stderr
    a = rec_dir(runs[0], "tiny.vq") / RESULT_FILE
    b = variant(runs, tmp_path, "copy", lambda rec: None)
    r = cli("add", str(a), str(b), "--store", str(tmp_path / "store"))
    assert r.exit_code == 1 and "also being added" in r.stderr


def test_pinned_weights_accept_a_converted_copy(runs):
    """A `vtbench weights convert` copy has its own sha256; it is the card's weights when it was converted from
    the pinned file (as the adapters check it)."""
    rec = json.loads((rec_dir(runs[0], "tiny.vq") / RESULT_FILE).read_text())
    cards, protocols = all_cards(), current_protocols()
    pinned = cards["tiny.vq"].weights["sha256"]
    rec["tokenizer"]["weights_sha256"] = "cd" * 32
    assert any("is not the one" in w for w in check_record(rec, cards, protocols))
    rec["tokenizer"]["checkpoint"] = {"converted_from": {"sha256": pinned}}
    assert check_record(rec, cards, protocols) == []


# -- fewer metrics never erase more -----------------------------------------------------------------------------

def test_fewer_metrics_run_is_merged_not_erasing(runs, tmp_path):
    full, few = runs
    full_rec = json.loads((rec_dir(full, "tiny.vq") / RESULT_FILE).read_text())
    few_rec = json.loads((rec_dir(few, "tiny.vq") / RESULT_FILE).read_text())
    assert set(few_rec["metrics"]) == {"psnr"} and "ssim" in full_rec["metrics"]
    assert measurement_key(full_rec) == measurement_key(few_rec)  # one measurement, different selections
    assert full_rec["run"]["fingerprint"] != few_rec["run"]["fingerprint"]

    store = tmp_path / "store"
    assert cli("add", str(full), "--store", str(store)).exit_code == 0
    r = cli("add", str(few), "--store", str(store))  # shares psnr with the stored run: a duplicate
    assert r.exit_code == 1 and "shared metrics psnr" in r.stderr
    r = cli("add", str(few), "--store", str(store), "--replace")
    assert r.exit_code == 0, r.output
    assert "kept beside" in r.stdout  # the earlier run still holds ssim and compression
    assert len(stored(store)) == 3

    # a record with only other metrics of the same measurement enters without --replace
    only_ssim = variant(runs, tmp_path, "only-ssim", lambda rec: rec.update(
        metrics={"ssim": rec["metrics"]["ssim"]}, run={**rec["run"], "fingerprint": "feedfeedfeedfeed"}))
    store2 = tmp_path / "store2"
    assert cli("add", str(rec_dir(few, "tiny.vq")), "--store", str(store2)).exit_code == 0
    r = cli("add", str(only_ssim), "--store", str(store2))
    assert r.exit_code == 0, r.output and "kept beside" in r.stdout

    for site_src in ([store], [full, few]):  # from the store, and straight from two results folders
        index = build_site(site_src, tmp_path / f"site-{len(site_src)}")
        data = list(csv.DictReader(io.StringIO((index.parent / "data" / "leaderboard.csv").read_text())))
        vq = {r["metric"]: r for r in data if r["tokenizer"] == "tiny.vq" and r["layer"] == "measured"}
        assert {"psnr", "ssim", "bpp", "tokens_per_image"} <= set(vq)  # ssim and compression survived
        assert float(vq["psnr"]["value"]) == pytest.approx(few_rec["metrics"]["psnr"]["value"])
        html = index.read_text()
        assert html.count('href="tokenizers/tiny.vq.html"') == 2  # one merged row (+ the coverage table)
        assert "from an earlier run of the same measurement" in html
        page = (index.parent / "tokenizers" / "tiny.vq.html").read_text()
        assert "2 records of this measurement, merged" in page and "merged earlier record" in page


# -- the reported layer -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(runs, tmp_path_factory):
    return build_site([runs[0]], tmp_path_factory.mktemp("store-site") / "site")


def test_reported_layer_covers_every_card(site):
    cards = all_cards()
    numbers = reported_numbers(cards)
    assert len(numbers) >= 29 and {n.dataset for n in numbers} >= {"imagenet-val-50k", "coco2017-val-5k"}
    html = site.read_text()
    assert "<h2>Reported by the authors</h2>" in html and "<h2>Every registered tokenizer</h2>" in html
    coverage = html[html.index('id="coverage"'):]
    for name in cards:  # every registered tokenizer has a page and a coverage row
        page = site.parent / "tokenizers" / f"{name}.html"
        assert page.is_file(), name
        assert f'href="tokenizers/{name}.html">{name}</a>' in coverage
    for n in numbers:  # every published number is on the index (reported section of its dataset) and its page
        section = html[html.index(f'id="reported-{n.dataset}"'):]
        section = section[:section.index("</section>")]
        assert f">{n.tokenizer}</a><span class=\"mark\"" in section, n
        assert n.source.replace("'", "&#x27;") in section or n.source in section
        page = (site.parent / "tokenizers" / f"{n.tokenizer}.html").read_text()
        assert "<h2>Reported by the authors</h2>" in page
    # reported cells carry a visible mark and live in their own tbody
    assert html.count('<tbody class="layer" data-layer="reported">') == 3
    assert re.search(r'<td class="reported" title="reported by the authors[^"]*" data-sort="0\.81">0\.81'
                     r'<span class="mark"', html)
    assert "Calibration: measured minus reported" not in html  # nothing measured on the authors' datasets here


def test_sweep_numbers_show_under_their_setting(site):
    numbers = {(n.tokenizer, n.metric): n for n in reported_numbers(all_cards())}
    rn = numbers[("restok.l-128-k128", "rfid")]
    assert rn.setting == 128 and rn.also == ("restok.l-128",)  # the group variant runs k = 128 too
    assert ("restok.l-128", "rfid") not in numbers  # shown once


def test_calibration_measured_minus_reported(runs, tmp_path):
    """A measured record of a tokenizer whose card reports the same metric on the same dataset gets the
    difference and the calibration status, with the card's protocol note."""
    card_file = tmp_path / "calib.toml"
    card_file.write_text('''family = "calib"
kind = "vq"
entry = "vtbench.tokenizers.tiny:TinyTokenizer"
[variants.a]
description = "calibration test card"
[[variants.a.published]]
metric = "psnr"
value = 19.0
dataset = "embedded"
resolution = 256
source = "a test"
protocol = "same as vtbench's: <b>exactly</b>"
tolerance = 5.0
calibrate = true
[[variants.a.published]]
metric = "ssim"
value = 0.99
dataset = "embedded"
resolution = 256
source = "a test"
protocol = "another window"
tolerance = 0.01
calibrate = false
''')
    cards = {**all_cards(), **{c.name: c for c in parse_card_file(card_file)}}
    rec_path = variant(runs, tmp_path, "calib-run", _set(["tokenizer", "name"], "calib.a"))
    measured = json.loads(rec_path.read_text())["metrics"]
    index = build_site([rec_path, rec_dir(runs[0], "jpeg.q50")], tmp_path / "site", cards=cards)
    html = index.read_text()
    board = html[html.index('id="reconstruction-embedded'):]
    board = board[:board.index("</section>")]
    assert '<tbody class="layer" data-layer="reported">' in board  # reported rows under the measured ones
    assert "Calibration: measured minus reported" in board
    diff = measured["psnr"]["value"] - 19.0
    assert f"{diff:+.4g}" in board and "within tolerance" in board
    assert "outside tolerance; not a calibration target (protocols differ, see the note)" in board
    assert "same as vtbench&#x27;s: &lt;b&gt;exactly&lt;/b&gt;" in board  # the note, escaped
    data = json.loads((index.parent / "data" / "leaderboard.json").read_text())
    cal = {c["metric"]: c for c in data["calibration"]}
    assert cal["psnr"]["within_tolerance"] is True and cal["psnr"]["difference"] == pytest.approx(diff)
    assert cal["ssim"]["within_tolerance"] is False and cal["ssim"]["calibrate"] is False
    page = (index.parent / "tokenizers" / "calib.a.html").read_text()
    assert "Calibration: measured minus reported" in page and "a test" in page


# -- downloads and records --------------------------------------------------------------------------------------

def test_csv_and_json_downloads(site):
    root = site.parent
    html = site.read_text()
    links = re.findall(r'<a href="(data/[^"]+)" download>', html)
    assert "data/leaderboard.csv" in links and "data/leaderboard.json" in links
    assert len(links) == 2 * (1 + 1 + 3)  # page + embedded table + 3 reported datasets
    for link in links:
        assert (root / link).is_file(), link
    table = list(csv.DictReader(io.StringIO((root / "data" / "reconstruction-embedded-reconstruction-1.0.csv")
                                            .read_text())))
    assert {r["tokenizer"] for r in table} == {"tiny.vq", "jpeg.q50"} and {r["layer"] for r in table} == {"measured"}
    vq = next(r for r in table if r["tokenizer"] == "tiny.vq")
    assert float(vq["psnr"]) > 10 and vq["record"].startswith("records/tiny.vq/")
    assert (root / vq["record"]).is_file()
    rep = json.loads((root / "data" / "reported-imagenet-val-50k.json").read_text())
    assert {r["layer"] for r in rep["rows"]} == {"reported"}
    giga = next(r for r in rep["rows"] if r["tokenizer"] == "gigatok.s-s")
    assert giga["rfid"] == 1.01 and "GigaTok README" in giga["sources"]["rfid"]["source"]
    assert {c["key"] for c in rep["columns"]} >= {"rfid", "lpips"}
    long = list(csv.DictReader(io.StringIO((root / "data" / "leaderboard.csv").read_text())))
    assert {r["layer"] for r in long} == {"measured", "reported"}
    assert len([r for r in long if r["layer"] == "reported"]) == len(reported_numbers(all_cards()))


def test_tokenizer_pages_link_their_records(runs, site):
    root = site.parent
    page = (root / "tokenizers" / "tiny.vq.html").read_text()
    hrefs = re.findall(r'href="\.\./(records/[^"]+)"', page)
    assert any(h.endswith("result.json") for h in hrefs) and any(h.endswith("samples.csv") for h in hrefs)
    rec = next(h for h in hrefs if h.endswith("result.json"))
    assert (root / rec).read_bytes() == (rec_dir(runs[0], "tiny.vq") / RESULT_FILE).read_bytes()
    card_only = (root / "tokenizers" / "gigatok.s-s.html").read_text()
    assert "no measured record of this tokenizer yet" in card_only and "1.01" in card_only


def test_csv_defuses_formulas(runs, tmp_path):
    rec_path = variant(runs, tmp_path, "formula", lambda r: r["metrics"]["psnr"].update(
        value=None, reason="=HYPERLINK(\"http://x\")"))
    index = build_site([rec_path], tmp_path / "site")
    text = (index.parent / "data" / "leaderboard.csv").read_text()
    assert "'=HYPERLINK" in text and "\n=HYPERLINK" not in text and ",=HYPERLINK" not in text


# -- rebuilds, extremes, hostile strings ------------------------------------------------------------------------

def test_rebuild_is_atomic(runs, tmp_path, monkeypatch):
    out = tmp_path / "site"
    index = build_site([runs[0]], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    from vtbench.leaderboard import pages

    calls = {"n": 0}
    real = pages.tokenizer_page

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full (simulated)")
        return real(*a, **kw)

    monkeypatch.setattr(pages, "tokenizer_page", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        build_site([runs[0], runs[1]], out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the old site is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary folder left behind
    monkeypatch.setattr(pages, "tokenizer_page", real)
    assert build_site([runs[0], runs[1]], out) == index
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    assert (out / ".vtbench-site").is_file() and (out / ".nojekyll").is_file()
    assert out.stat().st_mode & 0o755 == 0o755  # readable by a web server


def test_extreme_values_still_plot(runs, tmp_path):
    def huge(rec):
        rec["metrics"]["psnr"]["value"] = 1e308
        rec["metrics"]["ssim"]["value"] = -1e308
        rec["metrics"]["bpp"]["value"] = 1e308
        rec["metrics"]["tokens_per_image"]["value"] = 5e-324
    a = variant(runs, tmp_path, "huge", huge)
    b = variant(runs, tmp_path, "tiny", lambda rec: rec["tokenizer"].update(name="tiny.fsq"))
    index = build_site([a, b], tmp_path / "site")
    html = index.read_text()
    assert html.count('<svg class="plot"') == 2
    assert "1e+308" in html and "×1e308" not in html  # the cell; the axis label is drawn as glyph paths
    data = json.loads((index.parent / "data" / "leaderboard.json").read_text())
    assert any(r["value"] == 1e308 for r in data["rows"])


def test_hostile_cards_and_records_stay_escaped(runs, tmp_path):
    card_file = tmp_path / "evil.toml"
    card_file.write_text(f'''family = "evil"
kind = "vq"
entry = "vtbench.tokenizers.tiny:TinyTokenizer"
description = "{EVIL}"
[variants.x]
[[variants.x.published]]
metric = "psnr"
value = 30.0
dataset = "<img src=x onerror=alert(2)>"
source = "{EVIL}"
protocol = "\\"><script>alert(3)</script>"
''')
    cards = {**all_cards(), **{c.name: c for c in parse_card_file(card_file)}}
    rec_path = variant(runs, tmp_path, "evil-run", lambda r: r["tokenizer"].update(name="evil.x"))
    index = build_site([rec_path], tmp_path / "site", cards=cards)
    for page in [index, *(index.parent / "tokenizers").glob("evil*.html")]:
        text = page.read_text()
        assert "<script>alert" not in text and "<img src=x" not in text and '"><script' not in text
        assert text.count("<script") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index.read_text()
    for f in (index.parent / "data").iterdir():
        if f.suffix == ".json":
            json.loads(f.read_text())


# -- the committed store and the no-argument build ---------------------------------------------------------------

def test_committed_store_is_valid():
    """Every record in leaderboard/store passes the checks `add` applies (a protocol change must re-run them)."""
    store = REPO / "leaderboard" / "store"
    records = stored(store)
    assert records, "leaderboard/store holds no records"
    cards, protocols = all_cards(), current_protocols()
    names = set()
    for folder, rec in records:
        assert check_record(rec, cards, protocols) == [], folder
        names.add(rec["tokenizer"]["name"])
    assert {c.name for c in cards.values() if c.default_run and c.modality == "image"} <= names  # default run


def test_build_without_arguments_uses_the_store(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("build")
    assert r.exit_code == 2 and "leaderboard/store: no results store here" in r.stderr
    assert add([runs[0]], Path("leaderboard/store")).added
    r = cli("build")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(Path("leaderboard/site/index.html"))
    assert (tmp_path / "leaderboard" / "site" / "tokenizers" / "tiny.vq.html").is_file()


def test_store_refuses_to_build_from_a_corrupt_record(runs, tmp_path):
    store = tmp_path / "store"
    add([runs[0]], store)
    site = build_site([store], tmp_path / "site")
    before = site.read_bytes()
    victim = iter_record_paths(store)[0]
    victim.write_text("{ truncated")
    r = cli("build", str(store), "--out", str(tmp_path / "site"))
    assert r.exit_code == 1 and str(victim) in r.stderr and "re-run" in r.stderr  # file:line, what, the fix
    assert site.read_bytes() == before
    with pytest.raises(ValueError, match="restore it from version control"):
        add([runs[1]], store)


def test_add_refusal_object(runs, tmp_path):
    bad = variant(runs, tmp_path, "x", _set(["schema_version"], 7))
    with pytest.raises(StoreRefused) as exc:
        add([bad], tmp_path / "store")
    assert exc.value.refusals[0].path == bad and "newer" in exc.value.refusals[0].reasons[0]
    assert copy.deepcopy(str(exc.value)).startswith(f"{bad}: refused:")
    write_json_atomic(tmp_path / "ok.json", {})  # an empty object: every reason at once
    with pytest.raises(StoreRefused) as exc:
        add([tmp_path / "ok.json"], tmp_path / "store")
    assert len(exc.value.refusals[0].reasons) >= 8


def test_publish_example_builds_the_store_without_arguments():
    """examples/leaderboard: the workflow and the script build exactly `vtbench leaderboard build` (the store), and
    the workflow's store check selects a test that exists."""
    import subprocess
    example = REPO / "examples" / "leaderboard"
    workflow = (example / "github-pages.yml").read_text()
    script = (example / "publish.sh").read_text()
    for text in (workflow, script):
        lines = [ln.split("#")[0].strip() for ln in text.splitlines() if ln.strip().startswith("vtbench ")]
        assert lines == ["vtbench leaderboard build"], lines
    assert "path: leaderboard/site" in workflow
    check = re.search(r"pytest -q (\S+) -k (\S+)", workflow)
    assert check and check.group(1) == "tests/test_leaderboard_store.py"
    assert f"def test_{check.group(2)}" in Path(__file__).read_text()
    assert subprocess.run(["bash", "-n", str(example / "publish.sh")]).returncode == 0
    assert (REPO / "leaderboard" / ".gitignore").read_text().split() == ["site/"]


def test_a_site_inside_the_results_is_not_read_back(runs, tmp_path):
    res = tmp_path / "res"
    shutil.copytree(runs[0], res)
    for _ in range(2):  # the second build sees the first site's record copies under res/site/records
        index = build_site([res], res / "site")
        assert "2 measured result records" in index.read_text()
