"""The static leaderboard: view model, escaping, plots, assets and the CLI, from a real small run and from
hand-made hostile records."""

from __future__ import annotations

import copy
import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vtbench.cli import app
from vtbench.leaderboard import build_site
from vtbench.leaderboard.images import detail_window, error_map
from vtbench.leaderboard.view import Entry, assign_slugs, build_sections, build_table, rd_series
from vtbench.results import RESULT_FILE, iter_records, write_json_atomic
from vtbench.runner import RunConfig, run

EVIL = "<script>alert(1)</script>"
TOKENIZERS = ["jpeg.q10", "jpeg.q50", "tiny.vq", "tiny.fsq"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("lb-results")
    run(TOKENIZERS, RunConfig(limit=6, metrics=["psnr", "ssim", "compression"], progress=False, out=out))
    return out


@pytest.fixture(scope="module")
def site(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("lb-site") / "site"
    return build_site([results], out)


def make_hostile(results: Path, root: Path) -> Path:
    """A copy of one real run with hostile strings in every place a record carries text."""
    src = results / "embedded" / "tiny.vq" / "reconstruction"
    dst = root / "evil" / "run"
    shutil.copytree(src, dst)
    rec = json.loads((dst / RESULT_FILE).read_text())
    rec["tokenizer"].update(name=EVIL, family="evil", description='<b onmouseover="alert(4)">card</b>',
                            license="<iframe src=javascript:alert(7)>")
    rec["dataset"]["id"] = "<img src=x onerror=alert(2)>"
    rec["metrics"]["psnr"].update(value=None, reason='"><script>alert(3)</script>')
    rec["metrics"]["ssim"]["display_name"] = "<svg onload=alert(5)>"
    rec["thumbnails"][0]["id"] = "<script>alert(6)</script>"
    rec["thumbnails"].append({"id": "escape", "original": "../../../../../../etc/passwd",
                              "reconstruction": "../../../../../../etc/passwd"})
    write_json_atomic(dst / RESULT_FILE, rec)
    # a second hostile name: mathtext and legend conventions must not apply to names
    dst2 = root / "evil" / "run2"
    shutil.copytree(src, dst2)
    rec2 = copy.deepcopy(rec)
    rec2["tokenizer"].update(name="_$\\frac{1}{0}$ --> ]]>", family="evil2")
    write_json_atomic(dst2 / RESULT_FILE, rec2)
    return root / "evil"


@pytest.fixture(scope="module")
def hostile_site(results, tmp_path_factory):
    root = tmp_path_factory.mktemp("lb-hostile")
    evil = make_hostile(results, root)
    return build_site([evil, results / "embedded" / "jpeg.q10" / "reconstruction"], root / "site")


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(html_text: str) -> list[tuple[str, dict[str, str | None]]]:
    p = Tags()
    p.feed(html_text)
    return p.tags


def svgs(html_text: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", html_text, flags=re.S)


def assert_self_contained(page: Path, site_root: Path) -> None:
    text = page.read_text()
    parsed = tags(text)
    csp = [a.get("content") or "" for t, a in parsed
           if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1 and "default-src 'none'" in csp[0]
    for tag, attrs in parsed:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        if tag == "script":
            assert "src" not in attrs
        if tag == "link":
            assert attrs.get("href", "").startswith("data:"), attrs
        for key in ("src", "href", "xlink:href"):
            ref = attrs.get(key)
            if ref is None:
                continue
            assert not re.match(r"^[a-z][a-z0-9+.-]*:", ref) or ref.startswith("data:"), (tag, ref)
            if not ref.startswith(("#", "data:")):
                assert (page.parent / ref.split("#")[0]).resolve().is_file(), (page, ref)
                assert site_root.resolve() in (page.parent / ref).resolve().parents
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text)
    assert "@import" not in text and "url(http" not in text


# -- the real site --------------------------------------------------------------------------------------------

def test_index_tables_arrows_and_references(site):
    text = site.read_text()
    measured = text[:text.index("<h2>Reported by the authors</h2>")]
    assert measured.count('<table class="sortable"') == 1  # then the reported tables and the card list
    assert '<tbody class="layer" data-layer="reported">' not in measured  # no card reports on the embedded data
    assert text.count("<script>") == 1  # the inline sorter, nothing else
    assert '<section class="task" data-task="reconstruction">' in text
    for header in ("PSNR", "SSIM", "Tokens / image", "Bits / token", "Bits / image", "Bits / pixel",
                   "Compression ratio"):  # display names come from the records
        assert f">{header} " in text, header
    assert re.search(r'data-key="psnr"[^>]*>PSNR <span class="dir up"', text)
    assert re.search(r'data-key="bpp"[^>]*>Bits / pixel <span class="unit">bpp</span>', text)  # no arrow: a rate
    assert text.count('<tr class="ref">') == 2  # jpeg.q10, jpeg.q50
    assert 'class="best"' in text  # tiny.vq vs tiny.fsq
    assert "protocol reconstruction v1.0" in text and "embedded" in text
    assert len(svgs(text)) == 2  # rate-distortion and quality-vs-tokens
    assert_self_contained(site, site.parent)


def test_tokenizer_pages_and_assets(site):
    root = site.parent
    for name in TOKENIZERS:
        page = root / "tokenizers" / f"{name}.html"
        text = page.read_text()
        assert_self_contained(page, root)
        assert f'href="tokenizers/{name}.html"' in site.read_text()
        assert "weights sha256" in text and "commit" in text and "env torch" in text
        imgs = [a["src"] for t, a in tags(text) if t == "img"]
        assert len(imgs) == 5 * 6, name  # 6 thumbnails x (orig, recon, 2 crops, error map)
        crops = [s for s in imgs if "crop" in s]
        assert crops and all(Image.open(page.parent / s).size == (192, 192) for s in crops)
        errors = [s for s in imgs if s.endswith(".error.png")]
        assert len(errors) == 6 and all((page.parent / s).is_file() for s in errors)
    vq = (root / "tokenizers" / "tiny.vq.html").read_text()
    assert "9c1358064ff7ed0a356c45bef5d74996e4f035a426e4747562ccab6c054e4d9f" in vq  # weights sha256
    assert "a codec has no token positions" in (root / "tokenizers" / "jpeg.q10.html").read_text()


def test_rebuild_in_place_and_refuse_foreign_folder(results, site, tmp_path):
    assert build_site([results], site.parent) == site  # a site folder is rebuilt
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a vtbench site"):
        build_site([results], tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="no result.json"):
        build_site([tmp_path], tmp_path / "new")


def test_cli_build(results, tmp_path):
    r = CliRunner().invoke(app, ["leaderboard", "build", str(results), "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(tmp_path / "s" / "index.html")
    r = CliRunner().invoke(app, ["leaderboard", "build", str(tmp_path / "missing"), "--out", str(tmp_path / "t")])
    assert r.exit_code == 1 and "missing" in r.output


# -- the view model -------------------------------------------------------------------------------------------

def entries(results: Path) -> list[Entry]:
    es = [Entry(p, r) for p, r in iter_records(results)]
    assign_slugs(es)
    return es


def test_view_cells_nulls_best_and_metadata(results):
    es = entries(results)
    es[0].record["metrics"]["ssim"]["display_name"] = "Structural similarity"
    table = build_table("t", es)
    keys = [c.key for c in table.columns]
    assert keys[:3] == ["_tokenizer", "_kind", "_n"] and keys.index("psnr") < keys.index("bpp")
    assert next(c for c in table.columns if c.key == "ssim").header == "Structural similarity"
    col = {c.key: i for i, c in enumerate(table.columns)}
    by_name = {row.cells[0].text: row for row in table.rows}
    tok_cell = by_name["jpeg.q50"].cells[col["tokens_per_image"]]
    assert tok_cell.text == "–" and tok_cell.sort_key is None and "no token positions" in tok_cell.title
    assert by_name["jpeg.q50"].css == ("ref",)
    psnr_best = [name for name, row in by_name.items() if "best" in row.cells[col["psnr"]].css]
    vq, fsq = (by_name[n].cells[col["psnr"]].value for n in ("tiny.vq", "tiny.fsq"))
    assert psnr_best == ["tiny.vq" if vq >= fsq else "tiny.fsq"]  # jpeg.q50 is higher but a reference
    assert not any("best" in row.cells[col["bpp"]].css for row in table.rows)  # no direction, no best


def test_rate_sweeps_form_one_series(results):
    es = entries(results)
    series = {s.label: s for s in rd_series(es, ["psnr"])}
    assert set(series) == {"jpeg", "tiny.vq", "tiny.fsq"}  # tiny vq/fsq differ in kind: not one sweep
    jpeg = series["jpeg"]
    assert jpeg.reference and [p.tokenizer for p in jpeg.points] == ["jpeg.q10", "jpeg.q50"]
    assert jpeg.points[0].bpp < jpeg.points[1].bpp and jpeg.points[0].tokens is None


def test_tasks_group_generically(results, tmp_path):
    for task in ("text", "3d"):
        dst = tmp_path / task / "tiny.vq"
        shutil.copytree(results / "embedded" / "tiny.vq" / "reconstruction", dst)
        rec = json.loads((dst / RESULT_FILE).read_text())
        rec["protocol"].update(task=task, name=f"{task}-proto", version="0.1")
        rec["metrics"]["ocr_accuracy"] = {"value": 0.5, "n": 6, "higher_is_better": True, "unit": "",
                                          "display_name": "OCR accuracy", "reason": None}
        write_json_atomic(dst / RESULT_FILE, rec)
    sections = build_sections(entries(results) + entries(tmp_path))
    assert [s.task for s in sections] == ["reconstruction", "text", "3d"]
    assert "ocr_accuracy" in [c.key for c in sections[1].quality_columns()]
    text = build_site([results, tmp_path], tmp_path / "site").read_text()
    assert 'data-task="text"' in text and "<h2>Text</h2>" in text and "<h2>3D</h2>" in text
    assert "OCR accuracy" in text


def test_detail_window_and_error_map():
    img = np.full((96, 128, 3), 128, np.uint8)
    rng = np.random.default_rng(0)
    img[40:88, 64:112] = rng.integers(0, 255, (48, 48, 3))  # the only textured region
    x, y, side = detail_window(img)
    assert (x, y, side) == (64, 40, 48)
    em = error_map(img, img)
    assert em.mode == "P" and em.size == (128, 96)
    assert len(set(np.asarray(em).ravel().tolist())) == 1  # no error: one colour


# -- hostile records ------------------------------------------------------------------------------------------

def test_hostile_strings_are_escaped_everywhere(hostile_site):
    root = hostile_site.parent
    pages = [hostile_site, *sorted((root / "tokenizers").glob("*.html"))]
    assert {p.name for p in pages[1:]} >= {"script-alert-1-script.html", "_-frac-1-0.html", "jpeg.q10.html"}
    for page in pages:
        text = page.read_text()
        assert_self_contained(page, root)
        assert text.count("<script") == 1, page  # only the sorter
        for raw in ("<script>alert", "<img src=x", "<b onmouseover", "<svg onload", "<iframe", "\"><script"):
            assert raw not in text, (page, raw)
        assert "iframe" not in [t for t, _ in tags(text)]
    index = hostile_site.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert "&lt;img src=x onerror=alert(2)&gt;" in index
    assert "&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in index  # the null cell's reason tooltip
    assert "&lt;svg onload=alert(5)&gt;" in index  # a display name from the record
    evil = (root / "tokenizers" / "script-alert-1-script.html").read_text()
    assert "&lt;b onmouseover=&quot;alert(4)&quot;&gt;card&lt;/b&gt;" in evil
    assert "&lt;script&gt;alert(6)&lt;/script&gt;" in evil  # a thumbnail id
    # the path-traversal thumbnail was skipped, nothing outside the run directory was copied
    assert "escape" not in re.findall(r"<code>([^<]*)</code>", evil)
    assert not [p for p in root.rglob("*") if "passwd" in p.name]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in root.rglob("*"))


def test_hostile_names_in_svg_plots(hostile_site):
    plots = svgs(hostile_site.read_text())
    assert plots
    ids: list[str] = []
    for svg in plots:
        assert "alert" not in svg and "<!--" not in svg and "frac" not in svg
        tree = ET.fromstring(svg)
        for el in tree.iter():
            assert not el.tag.endswith(("script", "foreignObject")), el.tag
            assert not any(k.lower().startswith("on") for k in el.attrib)
            ids += [v for k, v in el.attrib.items() if k == "id"]
    assert len(ids) == len(set(ids))  # several inline SVGs, no shared id
