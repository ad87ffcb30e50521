"""Build the static leaderboard site from result files and the registered cards:
``build_site([results...], out) -> out/index.html``.

Layout of the site (everything relative, so it opens from disk or any static host)::

    SITE/index.html                      per task, per (dataset, protocol): sortable table (measured rows, then the
                                         authors' reported rows) + inline SVG plots; the reported layer per dataset;
                                         every registered tokenizer
    SITE/tokenizers/<slug>.html          one page per registered tokenizer (and per tokenizer records name)
    SITE/records/<slug>/<run>-<k>/       the result records behind each row (result.json, samples.csv), as produced
    SITE/data/<table>.csv|json           each table; data/leaderboard.csv|json: every value, long form
    SITE/assets/<slug>/<run>/NNN.*.png   thumbnails, detail crops and error maps
    SITE/.vtbench-site                   marks a folder this builder owns (replaced as a whole on rebuild)

A rebuild writes the new site into a temporary sibling folder and swaps it in only when it is complete: a build
that fails leaves the old site as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from vtbench.leaderboard import downloads, pages, plots
from vtbench.leaderboard.images import Thumb, thumbnails
from vtbench.leaderboard.render import index_html
from vtbench.leaderboard.reported import calibrations, reported_numbers
from vtbench.leaderboard.view import Entry, as_dict, as_text, assign_slugs, build_sections, merge_entries
from vtbench.results import SAMPLES_FILE, iter_record_paths, read_record, write_text_atomic

log = logging.getLogger("vtbench")

MARKER = ".vtbench-site"


def collect(results: list[Path]) -> list[Entry]:
    """Every result record under the given files or folders (each file once, in a stable order); a malformed
    record is an error naming the file (the site is not built from a partial view)."""
    seen: set[Path] = set()
    entries = []
    for root in results:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such result file or folder")
        for path in iter_record_paths(root):
            key = path.resolve()
            if key in seen or any((parent / MARKER).is_file() for parent in key.parents):
                continue  # each file once; the record copies inside a built site are not records of their own
            seen.add(key)
            try:
                record = read_record(path)
            except ValueError as exc:
                raise ValueError(f"{exc} (or move it out of {root} to build without it)") from None
            entries.append(Entry(path, record))
    return entries


def _check_out(out: Path) -> None:
    """``out`` may be new, empty, or a site built here before; never another folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; --out needs a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValueError(f"{out} is not empty and is not a vtbench site; choose an empty or new folder")


def _swap(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` in place of ``out``; the old site is removed only after the new one is in place."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "site")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _copy_records(entries_by_slug: dict[str, list[Entry]], site: Path) -> tuple[dict[int, str], dict[int, list]]:
    """Copy every record behind every row into ``site/records``: (primary record link per entry, page links)."""
    primary: dict[int, str] = {}
    links: dict[int, list[tuple[str, str | None, str]]] = {}
    for slug, runs in entries_by_slug.items():
        for j, e in enumerate(runs):
            items = []
            for k, (path, rec) in enumerate(e.sources or [(e.path, e.record)]):
                rel = f"records/{slug}/{j}-{k}"
                (site / rel).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, site / rel / "result.json")
                samples = None
                if (path.parent / SAMPLES_FILE).is_file():
                    shutil.copyfile(path.parent / SAMPLES_FILE, site / rel / SAMPLES_FILE)
                    samples = f"{rel}/{SAMPLES_FILE}"
                label = (f"finished {as_text(rec.get('finished'), '?')}, metrics "
                         f"{', '.join(as_dict(rec.get('metrics')))}")
                if len(e.sources) > 1:
                    label = ("newest record: " if k == 0 else "merged earlier record: ") + label
                items.append((f"{rel}/result.json", samples, label))
            primary[id(e)] = items[0][0]
            links[id(e)] = items
    return primary, links


def build_site(results: list[Path], out: Path, cards: Mapping[str, Any] | None = None) -> Path:
    """Write the site for every result record under ``results`` and every registered card (``cards``; default
    ``vtbench.config.all_cards()``) into ``out``; returns the index.html path."""
    raw = collect([Path(r) for r in results])
    if not raw:
        raise ValueError(f"no result.json found under {', '.join(map(str, results))}")
    out = Path(out)
    _check_out(out)
    if cards is None:
        from vtbench.config import all_cards
        cards = all_cards()
    entries = merge_entries(raw)
    reported = reported_numbers(cards)
    groups = {name: (c.sweep_group or name) for name, c in cards.items()}
    slugs = assign_slugs(entries, [*sorted(cards), *(r.tokenizer for r in reported)])
    sections = build_sections(entries, reported, groups, slugs)
    cals = calibrations(reported, entries)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would make the published folder unreadable to a web server
        figures: dict[str, dict[str, Any]] = {}
        for i, s in enumerate(sections):
            figures[s.anchor] = {"rd": plots.rd_plot(s, f"s{i}rd"), "tokens": plots.tokens_plot(s, f"s{i}tok"),
                                 "unplaced": plots.unplaced(s)}

        by_slug: dict[str, list[Entry]] = {}
        for e in entries:
            by_slug.setdefault(e.slug, []).append(e)
        for runs in by_slug.values():
            runs.sort(key=lambda e: e.group_key())
        record_links, page_links = _copy_records(by_slug, tmp)

        names = dict.fromkeys([*sorted(cards), *(e.name for e in entries)])
        for name in names:
            slug = slugs[name]
            runs = by_slug.get(slug, [])
            thumbs: dict[int, list[Thumb]] = {}
            for k, e in enumerate(runs):
                thumbs[id(e)] = thumbnails(e.record, e.path.parent, tmp, f"assets/{slug}/run-{k}")
            card = cards.get(name)
            mine = [r for r in reported if name in r.names]
            html = pages.tokenizer_page(runs, thumbs, name=name, card=card.to_dict() if card else None,
                                        reported=mine if card is not None else None,
                                        calibrations=[c for c in cals if c.tokenizer == name], records=page_links)
            write_text_atomic(tmp / "tokenizers" / f"{slug}.html", html)

        table_links: dict[str, tuple[str, str]] = {}
        for s in sections:
            csv_text, json_text = downloads.table_files(s, record_links)
            table_links[s.anchor] = (f"data/{s.anchor}.csv", f"data/{s.anchor}.json")
            write_text_atomic(tmp / "data" / f"{s.anchor}.csv", csv_text)
            write_text_atomic(tmp / "data" / f"{s.anchor}.json", json_text)
        long = downloads.long_rows(entries, reported, record_links)
        write_text_atomic(tmp / "data" / "leaderboard.csv", downloads.to_csv(long, downloads.LONG_COLUMNS))
        write_text_atomic(tmp / "data" / "leaderboard.json", downloads.to_json(
            {"measured_records": len(raw), "rows": long, "calibration": [c.to_dict() for c in cals]}))

        coverage = [(name, slugs[name], (cards[name].family if name in cards else by_slug[slugs[name]][0].family),
                     (cards[name].kind if name in cards else by_slug[slugs[name]][0].kind),
                     sum(1 for r in reported if r.tokenizer == name),
                     sum(len(e.sources) for e in by_slug.get(slugs[name], [])))
                    for name in names]
        write_text_atomic(tmp / "index.html", index_html(
            sections, figures, len(raw), coverage=coverage, downloads=table_links,
            all_downloads=("data/leaderboard.csv", "data/leaderboard.json")))
        (tmp / MARKER).write_text("built by vtbench leaderboard build; the whole folder is replaced on rebuild\n")
        (tmp / ".nojekyll").write_text("")  # GitHub Pages: serve the files as they are
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    index = out / "index.html"
    log.info("leaderboard: %d records (%d rows), %d reported numbers, %d tables, %d tokenizer pages -> %s",
             len(raw), len(entries), len(reported), len(sections), len(names), index)
    return index
