"""Build the static leaderboard site from result files: ``build_site([results...], out) -> out/index.html``.

Layout of the site (everything relative, so it opens from disk)::

    SITE/index.html                      per task, per (dataset, protocol): sortable table + inline SVG plots
    SITE/tokenizers/<slug>.html          one page per tokenizer
    SITE/assets/<slug>/<run>/NNN.*.png   thumbnails, detail crops and error maps
    SITE/.vtbench-site                   marks a folder this builder owns (rebuilt in place)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from vtbench.leaderboard import pages, plots
from vtbench.leaderboard.images import Thumb, thumbnails
from vtbench.leaderboard.render import index_html
from vtbench.leaderboard.view import Entry, assign_slugs, build_sections
from vtbench.results import iter_records, write_text_atomic

log = logging.getLogger("vtbench")

MARKER = ".vtbench-site"


def collect(results: list[Path]) -> list[Entry]:
    """Every result record under the given files or folders (each file once, in a stable order)."""
    seen: set[Path] = set()
    entries = []
    for root in results:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such result file or folder")
        for path, record in iter_records(root):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                entries.append(Entry(path, record if isinstance(record, dict) else {}))
    return entries


def _prepare(out: Path) -> None:
    """Create ``out``, or clear the generated parts of a site built here before; never touch other folders."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; --out needs a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValueError(f"{out} is not empty and is not a vtbench site; choose an empty or new folder")
    for sub in ("tokenizers", "assets"):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("built by vtbench leaderboard build; tokenizers/ and assets/ are regenerated\n")


def build_site(results: list[Path], out: Path) -> Path:
    """Write the site for every result record under ``results`` into ``out``; returns the index.html path."""
    entries = collect([Path(r) for r in results])
    if not entries:
        raise ValueError(f"no result.json found under {', '.join(map(str, results))}")
    out = Path(out)
    _prepare(out)
    assign_slugs(entries)
    sections = build_sections(entries)

    figures: dict[str, dict[str, str | None]] = {}
    for i, s in enumerate(sections):
        figures[s.anchor] = {"rd": plots.rd_plot(s, f"s{i}rd"), "tokens": plots.tokens_plot(s, f"s{i}tok")}

    by_slug: dict[str, list[Entry]] = {}
    for e in entries:
        by_slug.setdefault(e.slug, []).append(e)
    for slug, runs in by_slug.items():
        runs.sort(key=lambda e: e.group_key())
        thumbs: dict[int, list[Thumb]] = {}
        for k, e in enumerate(runs):
            thumbs[id(e)] = thumbnails(e.record, e.path.parent, out, f"assets/{slug}/run-{k}")
        write_text_atomic(out / "tokenizers" / f"{slug}.html", pages.tokenizer_page(runs, thumbs))

    index = out / "index.html"
    write_text_atomic(index, index_html(sections, figures, len(entries)))
    log.info("leaderboard: %d records, %d tables, %d tokenizer pages -> %s", len(entries), len(sections),
             len(by_slug), index)
    return index
