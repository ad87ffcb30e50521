"""The built leaderboard in a real browser: headless Chromium (Debian's chromium + chromium-driver) via selenium.

Loads the site from file://, checks the tables, sorts by clicking headers, follows a tokenizer link, and reads
the console; a site built from hostile records must open no dialog and show the names as text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vtbench.leaderboard import build_site
from vtbench.results import RESULT_FILE, write_json_atomic
from vtbench.runner import RunConfig, run

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
EVIL = "<script>alert(1)</script>"

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the test extra)")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip("install Debian's chromium and chromium-driver (.ci/run does)", allow_module_level=True)

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("lbb-results")
    run(["identity.none", "jpeg.q10", "jpeg.q50", "tiny.vq", "tiny.fsq"],
        RunConfig(limit=6, metrics=["psnr", "ssim", "compression"], progress=False, out=out))
    return out


@pytest.fixture(scope="module")
def sites(results, tmp_path_factory):
    good = build_site([results], tmp_path_factory.mktemp("lbb-site") / "site")
    evil_dir = tmp_path_factory.mktemp("lbb-evil") / "evil"
    shutil.copytree(results / "embedded" / "tiny.vq" / "reconstruction", evil_dir)
    rec = json.loads((evil_dir / RESULT_FILE).read_text())
    rec["tokenizer"].update(name=EVIL, description='<img src=x onerror="alert(2)">')
    rec["dataset"]["id"] = "<img src=x onerror=alert(3)>"
    rec["metrics"]["psnr"].update(value=None, reason='"><script>alert(4)</script>')
    write_json_atomic(evil_dir / RESULT_FILE, rec)
    evil = build_site([evil_dir, results / "embedded" / "jpeg.q10" / "reconstruction"], evil_dir.parent / "site")
    return good, evil


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1500,1100", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def column_values(driver, table, key: str) -> list[float | None]:
    """The numeric data-sort values of column ``key``, in the current row order (None: empty)."""
    heads = table.find_elements(By.CSS_SELECTOR, "thead tr.cols th")
    i = [h.get_attribute("data-key") for h in heads].index(key)
    out = []
    for row in table.find_elements(By.CSS_SELECTOR, "tbody.layer tr"):
        s = row.find_elements(By.TAG_NAME, "td")[i].get_attribute("data-sort")
        out.append(float(s) if s else None)
    return out


def header(table, key: str):
    return table.find_element(By.CSS_SELECTOR, f'thead tr.cols th[data-key="{key}"]')


def test_index_tables_and_sorting(browser, sites, tmp_path):
    good, _ = sites
    browser.get(good.as_uri())
    assert browser.title == "vtbench leaderboard"
    tables = browser.find_elements(By.CSS_SELECTOR, "section.task[data-task=reconstruction] table.sortable")
    assert len(tables) == 1
    table = tables[0]
    assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == 5
    assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr.ref")) == 3
    assert len(browser.find_elements(By.CSS_SELECTOR, "section.task[data-task=reconstruction] svg.plot")) == 2

    # PSNR: higher is better, so the first click puts the best first; identity's PSNR is null -> last
    header(table, "psnr").click()
    vals = column_values(browser, table, "psnr")
    nums = [v for v in vals if v is not None]
    assert nums == sorted(nums, reverse=True) and vals[-1] is None and len(nums) == 4
    assert header(table, "psnr").get_attribute("aria-sort") == "descending"
    header(table, "psnr").click()
    vals = column_values(browser, table, "psnr")
    assert [v for v in vals if v is not None] == sorted(nums) and vals[-1] is None
    assert header(table, "psnr").get_attribute("aria-sort") == "ascending"

    # bits per pixel: a rate (no direction) sorts ascending first, then descending
    header(table, "bpp").click()
    bpp = column_values(browser, table, "bpp")
    assert None not in bpp and bpp == sorted(bpp)
    assert header(table, "psnr").get_attribute("aria-sort") is None
    header(table, "bpp").click()
    assert column_values(browser, table, "bpp") == sorted(bpp, reverse=True)

    # tokenizer names sort as text
    header(table, "_tokenizer").click()
    names = [r.find_element(By.TAG_NAME, "a").text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert names == sorted(names)
    assert browser.save_screenshot(str(tmp_path / "index.png"))
    assert severe(browser) == []


def test_tokenizer_page_loads_with_images(browser, sites):
    good, _ = sites
    browser.get(good.as_uri())
    browser.find_element(By.LINK_TEXT, "tiny.vq").click()
    assert browser.current_url.endswith("/tokenizers/tiny.vq.html")
    assert browser.find_element(By.TAG_NAME, "h1").text == "tiny.vq"
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 30
    loaded = browser.execute_script(
        "return Array.prototype.every.call(document.images, "
        "function (i) { return i.complete && i.naturalWidth > 0; });")
    assert loaded
    assert severe(browser) == []
    browser.find_element(By.LINK_TEXT, "← leaderboard").click()
    assert browser.current_url.endswith("/index.html")


def test_hostile_site_shows_text_and_runs_nothing(browser, sites):
    _, evil = sites
    for url in (evil.as_uri(), (evil.parent / "tokenizers" / "script-alert-1-script.html").as_uri()):
        browser.get(url)  # an alert would raise UnexpectedAlertPresentException on the next command
        body = browser.find_element(By.TAG_NAME, "body").text
        assert EVIL in body
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert
        assert severe(browser) == []
    browser.get(evil.as_uri())
    assert "<img src=x onerror=alert(3)>" in browser.find_element(By.TAG_NAME, "body").text
    cell = browser.find_element(By.CSS_SELECTOR, 'td[title^="\\"><script>"]')
    assert cell.text == "–"
    assert browser.execute_script("return document.scripts.length") == 1


def test_reported_layer_renders_and_sorts_apart(browser, sites, results, tmp_path_factory):
    """The authors' numbers: their own tables per dataset and, where a measured table shares the dataset, rows in
    their own tbody below the measured ones that sorting never mixes with them."""
    from vtbench.cards import parse_card_file
    from vtbench.config import all_cards
    good, _ = sites
    browser.get(good.as_uri())
    reported = browser.find_elements(By.CSS_SELECTOR, "section.task[data-task=reported] table.sortable")
    assert len(reported) == 3  # imagenet-val-50k, coco2017-val-5k, imagenet-train
    for t in reported:
        assert t.find_elements(By.CSS_SELECTOR, "tbody.layer-head th")[0].text.startswith("Reported by the authors")
        rows = t.find_elements(By.CSS_SELECTOR, "tbody.layer[data-layer=reported] tr")
        assert rows and all(r.get_attribute("class") == "reported" for r in rows)
        assert t.find_elements(By.CSS_SELECTOR, "td.reported span.mark")
    coverage = browser.find_element(By.ID, "t-coverage")
    assert len(coverage.find_elements(By.CSS_SELECTOR, "tbody tr")) == len(all_cards())
    assert severe(browser) == []

    root = tmp_path_factory.mktemp("lbb-calib")
    card = root / "calib.toml"
    card.write_text('family = "calib"\nkind = "vq"\nentry = "vtbench.tokenizers.tiny:TinyTokenizer"\n'
                    "[variants.a]\n[[variants.a.published]]\n"
                    'metric = "psnr"\nvalue = 99.0\ndataset = "embedded"\nsource = "test"\n'
                    "[[variants.a.published]]\n"
                    'metric = "psnr"\nvalue = 1.0\ndataset = "embedded"\nsource = "test 2"\n')
    cards = {**all_cards(), **{c.name: c for c in parse_card_file(card)}}
    site = build_site([results], root / "site", cards=cards)
    browser.get(site.as_uri())
    table = browser.find_element(By.CSS_SELECTOR, "section.task[data-task=reconstruction] table.sortable")
    for _ in range(2):  # both directions
        header(table, "psnr").click()
        vals = column_values(browser, table, "psnr")
        direction = header(table, "psnr").get_attribute("aria-sort")
        bodies = table.find_elements(By.CSS_SELECTOR, "tbody.layer")
        assert [b.get_attribute("data-layer") for b in bodies] == ["measured", "reported"]
        assert len(bodies[0].find_elements(By.TAG_NAME, "tr")) == 5
        measured, rep = [v for v in vals[:5] if v is not None], vals[5:]
        assert measured == sorted(measured, reverse=direction == "descending") and len(measured) == 4
        assert rep == sorted([1.0, 99.0], reverse=direction == "descending")  # sorted, but apart
    assert severe(browser) == []
