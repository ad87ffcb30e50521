"""HTML for the leaderboard: page chrome (inline CSS, a small inline sorter), tables and the index page.

Every string that can come from a result record goes through ``esc`` (``html.escape`` with quotes) on its way
into text or an attribute value; attributes are always double-quoted. The page loads nothing: a Content Security
Policy allows only inline style and script and images from the site itself, so it works from ``file://``.
The sorter reads ``data-sort`` attributes and moves existing rows; it never parses or writes HTML.
"""

from __future__ import annotations

import html
from typing import Any, Iterable

from vtbench import __version__
from vtbench.leaderboard.view import REPORTED_TASK, Cell, Section, Table, fmt, fmt_reported

CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
:root{--fg:#1d1f23;--muted:#6b7078;--line:#e3e5e8;--head:#f5f6f8;--best:#e3f4e6;--bestfg:#11602a;--link:#1f5fbf}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0;padding:24px 32px;max-width:1600px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:20px;margin:32px 0 8px;border-bottom:2px solid var(--line);padding-bottom:4px}
h3{font-size:16px;margin:24px 0 6px}a{color:var(--link);text-decoration:none}a:hover{text-decoration:underline}
p.lead,.muted{color:var(--muted)}ul.legend{color:var(--muted);margin:6px 0 0;padding-left:18px}
dl.facts{display:flex;flex-wrap:wrap;gap:4px 20px;margin:4px 0 10px;color:var(--muted)}
dl.facts div{display:flex;gap:6px}dl.facts dt{font-weight:600}dl.facts dd{margin:0}
.scroll{overflow-x:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;width:100%}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:var(--head);font-weight:600;vertical-align:bottom;position:relative;white-space:normal;min-width:4.5em;line-height:1.25}
thead tr.groups th{text-align:center;font-weight:500;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
thead tr.groups th+th,thead tr.cols th.g0{border-left:1px solid var(--line)}
th.sortable{cursor:pointer;user-select:none}th.sortable:hover{background:#e9ecf0}
th .unit{display:block;font-weight:400;color:var(--muted);font-size:11px}
th .dir{color:var(--bestfg)}th .dir.down{color:#8a3b12}
th[aria-sort=ascending]::after{content:"\\25B2";font-size:9px;margin-left:3px}
th[aria-sort=descending]::after{content:"\\25BC";font-size:9px;margin-left:3px}
td.text,th.text{text-align:left}
tr.ref td{color:var(--muted);background:#fafafa;font-style:italic}
tr.ref td:first-child::after{content:"ref";font-style:normal;font-size:10px;margin-left:6px;padding:0 4px;border:1px solid #ccc;border-radius:3px;color:#888}
td.best{background:var(--best);color:var(--bestfg);font-weight:700}
td.null{color:#b0b4ba}
tbody tr:hover td{background:#f2f6fc}
figure{margin:16px 0}figcaption{color:var(--muted);font-size:13px;margin-bottom:4px}
svg.plot{max-width:100%;height:auto;display:block}
nav.toc a{margin-right:14px}
table.kv{width:auto}table.kv th{text-align:left;background:none;width:14em}table.kv td{text-align:left;white-space:normal;word-break:break-word}
.thumbs{margin:8px 0 24px}.pair{border-top:1px solid var(--line);padding:6px 0 10px}.pair p{margin:0 0 6px}
.pair .row{display:grid;grid-template-columns:repeat(5,minmax(110px,220px));gap:10px}
.thumbs figure{margin:0}.thumbs img{width:100%;image-rendering:pixelated;border:1px solid var(--line);display:block}
.thumbs figcaption{font-size:12px;margin:2px 0 0}
.framed{position:relative}.framed .box{position:absolute;border:2px solid #00e5ff;box-shadow:0 0 0 1px #000}
code{font-size:12px;word-break:break-all}td.note{white-space:normal;min-width:24em;max-width:60em}
tr.reported td{background:#f7f5fc;color:#3d2f66}tbody.layer-head th{text-align:left;background:#efeaf9;color:#3d2f66;font-weight:600;white-space:normal}
span.mark{display:inline-block;font-size:10px;font-style:normal;font-weight:700;margin-left:4px;padding:0 3px;border:1px solid #7a62b8;border-radius:3px;color:#5a3fa0;background:#fff;line-height:1.3}
td.merged{text-decoration:underline dotted #999}
td.cal-ok{color:var(--bestfg);font-weight:600}td.cal-off{color:#a4281a;font-weight:600}td.cal-na,td.cal-ok-info,td.cal-off-info{color:var(--muted)}
p.downloads{margin:4px 0 0;font-size:13px}p.downloads a{margin-right:10px}
details{margin:8px 0}summary{cursor:pointer;color:var(--link)}
"""  # noqa: E501 (long CSS lines kept: the page's bytes stay as they are)

# Plain DOM only: no eval, no innerHTML. Rows are moved, not re-created.
JS = """
(function () {
  "use strict";
  function key(row, i) {
    var cell = row.cells[i];
    var s = cell ? cell.getAttribute("data-sort") : null;
    if (s === null || s === "") { return null; }
    var n = Number(s);
    return isNaN(n) ? s : n;
  }
  function compare(x, y) {
    if (typeof x === "number" && typeof y === "number") { return x - y; }
    return String(x).localeCompare(String(y));
  }
  function sortBody(body, i, dir) {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, i), y = key(b, i);
      if (x === null || y === null) { return x === null ? (y === null ? 0 : 1) : -1; }
      var c = compare(x, y);
      return dir === "ascending" ? c : -c;
    });
    for (var r = 0; r < rows.length; r++) { body.appendChild(rows[r]); }
  }
  function sortBy(th) {
    var table = th.closest("table"), i = th.cellIndex;
    var current = th.getAttribute("aria-sort");
    var first = th.getAttribute("data-first") === "descending" ? "descending" : "ascending";
    var dir = current === null ? first : (current === "ascending" ? "descending" : "ascending");
    var heads = table.querySelectorAll("th[aria-sort]");
    for (var h = 0; h < heads.length; h++) { heads[h].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", dir);
    // each layer (measured, reported) is sorted within its own tbody: the layers never mix
    var bodies = table.querySelectorAll("tbody.layer");
    for (var b = 0; b < bodies.length; b++) { sortBody(bodies[b], i, dir); }
  }
  var ths = document.querySelectorAll("table.sortable thead tr.cols th");
  for (var t = 0; t < ths.length; t++) {
    ths[t].classList.add("sortable");
    ths[t].tabIndex = 0;
    ths[t].addEventListener("click", function () { sortBy(this); });
    ths[t].addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortBy(this); }
    });
  }
}());
"""


def esc(value: Any) -> str:
    """Escape any value for HTML text or a double-quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def attrs(**kw: Any) -> str:
    """`` name="value"`` pairs (escaped); None and False are left out; ``css`` becomes ``class``."""
    out = []
    for k, v in kw.items():
        if v is None or v is False or v == ():
            continue
        name = "class" if k == "css" else k.replace("_", "-")
        out.append(f' {name}="{esc(" ".join(v) if isinstance(v, tuple) else v)}"')
    return "".join(out)


def page(title: str, body: str, root: str = "") -> str:
    """A complete document; ``root`` is the relative path from this page to the site root ("" or "../")."""
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{esc(CSP)}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"referrer\" content=\"no-referrer\"><link rel=\"icon\" href=\"data:,\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n"
            f"<footer class=\"muted\"><p>Built by vtbench {esc(__version__)} from result records. "
            f"<a href=\"{esc(root)}index.html\">Leaderboard</a></p></footer>\n"
            f"<script>{JS}</script>\n</body></html>\n")


def arrow(hib: bool | None) -> str:
    if hib is True:
        return '<span class="dir up" title="higher is better">↑</span>'
    if hib is False:
        return '<span class="dir down" title="lower is better">↓</span>'
    return ""


def sort_attr(key: float | str | None) -> str:
    """A ``data-sort`` value the sorter reads with ``Number()`` (numbers) or as text; "" sorts last."""
    if key is None:
        return ""
    if isinstance(key, float):
        return "Infinity" if key == float("inf") else "-Infinity" if key == float("-inf") else repr(key)
    return str(key)


def cell_html(c: Cell, text_col: bool) -> str:
    css = c.css + (("text",) if text_col else ()) + (("null",) if c.value is None and not text_col and c.text == "–"
                                                      else ())
    sort = sort_attr(c.sort_key)
    inner = f'<a href="{esc(c.href)}">{esc(c.text)}</a>' if c.href else esc(c.text)
    if c.mark:
        inner += f'<span class="mark" title="reported by the authors, not measured by vtbench">{esc(c.mark)}</span>'
    return f"<td{attrs(css=css, title=c.title)} data-sort=\"{esc(sort)}\">{inner}</td>"


def table_html(table: Table, table_id: str) -> str:
    cols = table.columns
    groups: list[tuple[str, int]] = []
    for c in cols:
        if groups and groups[-1][0] == c.group:
            groups[-1] = (c.group, groups[-1][1] + 1)
        else:
            groups.append((c.group, 1))
    parts = [f'<div class="scroll"><table class="sortable" id="{esc(table_id)}"><caption hidden>{esc(table.title)}'
             '</caption><thead><tr class="groups">']
    parts += [f'<th colspan="{n}">{esc("" if g == "run" else g)}</th>' for g, n in groups]
    parts.append('</tr><tr class="cols">')
    prev = None
    for c in cols:
        text = c.group == "run" and c.key not in ("_n", "_res")
        first = "descending" if c.higher_is_better is True else "ascending"
        css = (("text",) if text else ()) + (("g0",) if prev is not None and c.group != prev else ())
        unit = f'<span class="unit">{esc(c.unit)}</span>' if c.unit else ""
        parts.append(f"<th{attrs(css=css, title=c.title, data_key=c.key, data_first=first, scope='col')}>"
                     f"{esc(c.header)} {arrow(c.higher_is_better)}{unit}</th>")
        prev = c.group
    parts.append("</tr></thead>")
    layers = [("measured", [r for r in table.rows if r.layer != "reported"]),
              ("reported", [r for r in table.rows if r.layer == "reported"])]
    for layer, rows in layers:
        if not rows:
            continue
        if layer == "reported":
            parts.append(f'<tbody class="layer-head"><tr><th colspan="{len(cols)}" scope="colgroup">Reported by the '
                         'authors <span class="mark">R</span> — the cards\' published numbers, with their sources; not '
                         "measured by vtbench, sorted separately, never marked best (hover a value for its source "
                         "and protocol)</th></tr></tbody>")
        parts.append(f'<tbody class="layer" data-layer="{layer}">')
        for row in rows:
            parts.append(f"<tr{attrs(css=row.css)}>")
            parts += [cell_html(cell, c.group == "run" and c.key not in ("_n", "_res"))
                      for cell, c in zip(row.cells, cols)]
            parts.append("</tr>")
        parts.append("</tbody>")
    parts.append("</table></div>")
    return "".join(parts)


def facts_html(facts: Iterable[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts) + "</dl>"


TASK_TITLES = {"reconstruction": "Reconstruction", "text": "Text", "detail": "Detail",
               "generation": "Generation", "3d": "3D", REPORTED_TASK: "Reported by the authors"}


def downloads_html(links: tuple[str, str] | None, what: str = "this table") -> str:
    if not links:
        return ""
    csv, js = links
    return (f'<p class="downloads muted">Download {esc(what)}: <a href="{esc(csv)}" download>CSV</a>'
            f'<a href="{esc(js)}" download>JSON</a></p>')


def calibration_html(cals: list[Any], link_prefix: str = "tokenizers/") -> str:
    """Measured beside reported for the same tokenizer, metric, dataset and resolution."""
    if not cals:
        return ""
    out = ['<h4>Calibration: measured minus reported</h4><p class="muted">Where vtbench measured what a card '
           "reports (same tokenizer, metric, dataset and resolution): the difference and whether it is within the "
           "card's tolerance. The protocol note says how the authors' evaluation differs from vtbench's.</p>",
           '<div class="scroll"><table class="calibration"><thead><tr class="cols"><th class="text">Tokenizer</th>'
           '<th class="text">Metric</th><th>Res.</th><th>Measured</th><th>Reported</th><th>Measured − reported</th>'
           '<th>Tolerance</th><th class="text">Status</th><th class="text">Protocol note</th>'
           '<th class="text">Source</th></tr></thead><tbody>']
    for c in cals:
        r = c.reported
        out.append(f'<tr><td class="text"><a href="{esc(link_prefix + c.entry_slug)}.html">{esc(c.tokenizer)}</a></td>'
                   f'<td class="text"><code>{esc(r.metric)}</code></td><td>{esc(r.resolution or "–")}</td>'
                   f"<td>{esc(fmt(c.measured))}</td><td>{esc(fmt_reported(r.value))}"
                   '<span class="mark" title="reported by the authors">R</span></td>'
                   f"<td>{esc(f'{c.difference:+.4g}')}</td>"
                   f"<td>{esc('±' + fmt_reported(r.tolerance) if r.tolerance is not None else '–')}</td>"
                   f'<td{attrs(css=("text", c.css))}>{esc(c.status)}</td>'
                   f'<td class="text note">{esc(r.protocol_note or "–")}</td>'
                   f'<td class="text note">{esc(r.source)}</td></tr>')
    out.append("</tbody></table></div>")
    return "".join(out)


def reported_details_html(section: Section) -> str:
    """Every published number of a reported table in long form: value, resolution, protocol note and source."""
    items = sorted((n for row in section.reported for n in row.numbers.values()),
                   key=lambda n: (n.tokenizer, n.metric, n.resolution or 0))
    if not items:
        return ""
    out = [f"<details><summary>Sources and protocol notes of these {len(items)} numbers</summary>"
           '<div class="scroll"><table><thead><tr class="cols"><th class="text">Tokenizer</th><th class="text">'
           'Metric</th><th>Value</th><th>Res.</th><th>Tolerance</th><th class="text">Protocol note</th>'
           '<th class="text">Source</th></tr></thead><tbody>']
    for n in items:
        out.append(f'<tr class="reported"><td class="text">{esc(n.tokenizer)}</td><td class="text"><code>'
                   f"{esc(n.metric)}</code></td><td>{esc(fmt_reported(n.value))}"
                   '<span class="mark" title="reported by the authors">R</span></td>'
                   f"<td>{esc(n.resolution or '–')}</td>"
                   f"<td>{esc('±' + fmt_reported(n.tolerance) if n.tolerance is not None else '–')}</td>"
                   f'<td class="text note">{esc(n.protocol_note or "–")}</td>'
                   f'<td class="text note">{esc(n.source)}</td></tr>')
    out.append("</tbody></table></div></details>")
    return "".join(out)


def coverage_html(rows: list[tuple[str, str, str, str, int, int]]) -> str:
    """Every registered tokenizer: (name, slug, family, kind, reported numbers, measured records)."""
    out = ['<section class="task" id="coverage"><h2>Every registered tokenizer</h2><p class="muted">Each card, '
           "with how many numbers its authors report and how many vtbench records measure it. Tokenizers without "
           "a measurement are covered by their reported numbers until someone runs them (`vtbench run -t NAME`, "
           "then `vtbench leaderboard add`).</p>",
           '<div class="scroll"><table class="sortable" id="t-coverage"><thead><tr class="cols">'
           '<th class="text" data-key="_tokenizer">Tokenizer</th><th class="text" data-key="_family">Family</th>'
           '<th class="text" data-key="_kind">Kind</th><th data-key="_reported" data-first="descending">Reported '
           'numbers</th><th data-key="_measured" data-first="descending">Measured records</th></tr></thead>'
           '<tbody class="layer" data-layer="cards">']
    for name, sl, fam, kind, n_rep, n_meas in rows:
        out.append(f'<tr><td class="text" data-sort="{esc(name.lower())}"><a href="tokenizers/{esc(sl)}.html">'
                   f'{esc(name)}</a></td><td class="text" data-sort="{esc(fam)}">{esc(fam)}</td>'
                   f'<td class="text" data-sort="{esc(kind)}">{esc(kind)}</td>'
                   f'<td data-sort="{n_rep}">{n_rep}</td><td data-sort="{n_meas}">{n_meas}</td></tr>')
    out.append("</tbody></table></div></section>")
    return "".join(out)


def index_html(sections: list[Section], plots: dict[str, dict[str, Any]], n_records: int,
               coverage: list[tuple[str, str, str, str, int, int]] | None = None,
               downloads: dict[str, tuple[str, str]] | None = None,
               all_downloads: tuple[str, str] | None = None, notes: list[str] | None = None) -> str:
    """The leaderboard page: per task, per (dataset, protocol), a sortable table (measured rows, then the authors'
    reported rows) and its plots; then the reported layer per dataset; then every registered tokenizer."""
    downloads = downloads or {}
    tasks: dict[str, list[Section]] = {}
    for s in sections:
        tasks.setdefault(s.task, []).append(s)
    n_measured = sum(1 for s in sections if s.task != REPORTED_TASK)
    n_reported = sum(len(row.numbers) for s in sections if s.task == REPORTED_TASK for row in s.reported)
    toc = [f'<a href="#{esc(s.anchor)}">{esc(TASK_TITLES.get(s.task, s.task))}: {esc(s.dataset)}</a>'
           for s in sections]
    if coverage:
        toc.append('<a href="#coverage">Every registered tokenizer</a>')
    body = ["<header><h1>vtbench leaderboard</h1>",
            f'<p class="lead">{n_records} measured result record{"s" if n_records != 1 else ""} in '
            f"{n_measured} table{'s' if n_measured != 1 else ''}; {n_reported} number{'s' if n_reported != 1 else ''}"
            " reported by the authors. Click a column header to sort (again to reverse; missing values stay last; "
            "measured and reported rows sort separately).</p>",
            '<ul class="legend"><li><b>↑</b> higher is better, <b>↓</b> lower is better; compression and speed '
            "columns without an arrow are rates, not scores.</li>"
            "<li>Grey italic rows marked <i>ref</i> are references (identity, resize, classic codecs): bounds, "
            "not competitors.</li><li>Green: best measured non-reference value of a column. – : not available (hover "
            "for the reason).</li>"
            '<li>Values marked <span class="mark">R</span> (violet rows, hollow markers and dotted lines in the '
            "plots) are <b>reported by the authors</b> (the tokenizer cards' published numbers, each with its "
            "source and protocol note): not measured by vtbench, usually under other protocols, and never mixed "
            "with measured values.</li>"
            "<li>Records of one measurement (same tokenizer, weights, data, preprocessing, protocol settings and "
            "seeds) are merged into one row metric by metric, the newest run's value first: a later run that "
            "selected fewer metrics keeps the earlier run's other metrics (those cells are dotted-underlined; hover "
            "for the run they come from).</li>"
            + "".join(f"<li>{esc(n)}</li>" for n in notes or []) + "</ul>",
            downloads_html(all_downloads, "every value on this page (long form)"),
            '<nav class="toc">' + "".join(toc) + "</nav></header>"]
    for task, secs in tasks.items():
        body.append(f'<section class="task" data-task="{esc(task)}"><h2>{esc(TASK_TITLES.get(task, task))}</h2>')
        if task == REPORTED_TASK:
            body.append('<p class="muted">Every published number of every registered tokenizer card, by the dataset '
                        "the authors used. These are the authors' figures under their own protocols (see each "
                        "number's protocol note): compare them with each other with care, and with vtbench's "
                        "measured tables not at all except through the calibration tables.</p>")
        for s in secs:
            if task == REPORTED_TASK:
                head = (f'<h3>{esc(s.dataset)} <span class="muted">· reported by the authors '
                        '<span class="mark">R</span></span></h3>')
                facts = facts_html([("dataset", s.dataset), *s.facts])
            else:
                head = (f'<h3>{esc(s.dataset)} <span class="muted">· protocol {esc(s.protocol)} '
                        f"v{esc(s.protocol_version)}</span></h3>")
                facts = facts_html([("dataset", s.dataset), ("protocol", f"{s.protocol} {s.protocol_version}"),
                                    *s.facts])
            body.append(f'<section class="board" id="{esc(s.anchor)}">{head}{facts}')
            body.append(table_html(s.table, f"t-{s.anchor}"))
            body.append(downloads_html(downloads.get(s.anchor)))
            if s.notes:
                body.append('<ul class="legend">' + "".join(f"<li>{esc(n)}</li>" for n in s.notes) + "</ul>")
            if task == REPORTED_TASK:
                body.append(reported_details_html(s))
            body.append(calibration_html(s.calibrations))
            p = plots.get(s.anchor, {})
            hollow = (" Hollow markers on dotted lines: reported by the authors, placed at the rate vtbench "
                      "measured for that tokenizer." if any(x.reported for x in s.series) else "")
            left = f" {p['unplaced']} reported number(s) not drawn: no measured rate." if p.get("unplaced") else ""
            if p.get("rd"):
                body.append("<figure><figcaption>Rate–distortion: quality versus bits per pixel (log scale). "
                            "Variants of one family and kind (a rate sweep such as jpeg.q10/q50/q90) form one "
                            f"line; dashed grey lines are references.{hollow}{left}</figcaption>" + p["rd"] +
                            "</figure>")
            if p.get("tokens"):
                body.append("<figure><figcaption>Quality versus tokens per image (log scale), token-based "
                            f"tokenizers only.{hollow}</figcaption>" + p["tokens"] + "</figure>")
            body.append("</section>")
        body.append("</section>")
    if coverage:
        body.append(coverage_html(coverage))
    return page("vtbench leaderboard", "\n".join(body))
