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
from vtbench.leaderboard.view import Cell, Section, Table

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
  function sortBy(th) {
    var table = th.closest("table"), body = table.tBodies[0], i = th.cellIndex;
    var current = th.getAttribute("aria-sort");
    var first = th.getAttribute("data-first") === "descending" ? "descending" : "ascending";
    var dir = current === null ? first : (current === "ascending" ? "descending" : "ascending");
    var heads = table.querySelectorAll("th[aria-sort]");
    for (var h = 0; h < heads.length; h++) { heads[h].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", dir);
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, i), y = key(b, i);
      if (x === null || y === null) { return x === null ? (y === null ? 0 : 1) : -1; }
      var c = compare(x, y);
      return dir === "ascending" ? c : -c;
    });
    for (var r = 0; r < rows.length; r++) { body.appendChild(rows[r]); }
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
        text = c.group == "run" and c.key != "_n"
        first = "descending" if c.higher_is_better is True else "ascending"
        css = (("text",) if text else ()) + (("g0",) if prev is not None and c.group != prev else ())
        unit = f'<span class="unit">{esc(c.unit)}</span>' if c.unit else ""
        parts.append(f"<th{attrs(css=css, title=c.title, data_key=c.key, data_first=first, scope='col')}>"
                     f"{esc(c.header)} {arrow(c.higher_is_better)}{unit}</th>")
        prev = c.group
    parts.append("</tr></thead><tbody>")
    for row in table.rows:
        parts.append(f"<tr{attrs(css=row.css)}>")
        parts += [cell_html(cell, c.group == "run" and c.key != "_n") for cell, c in zip(row.cells, cols)]
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def facts_html(facts: Iterable[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts) + "</dl>"


TASK_TITLES = {"reconstruction": "Reconstruction", "text": "Text", "detail": "Detail",
               "generation": "Generation", "3d": "3D"}


def index_html(sections: list[Section], plots: dict[str, dict[str, str | None]], n_records: int) -> str:
    """The leaderboard page: per task, per (dataset, protocol), a sortable table and its plots."""
    tasks: dict[str, list[Section]] = {}
    for s in sections:
        tasks.setdefault(s.task, []).append(s)
    body = ["<header><h1>vtbench leaderboard</h1>",
            f'<p class="lead">{n_records} result record{"s" if n_records != 1 else ""}, '
            f"{len(sections)} table{'s' if len(sections) != 1 else ''}. Click a column header to sort "
            "(again to reverse; missing values stay last).</p>",
            '<ul class="legend"><li><b>↑</b> higher is better, <b>↓</b> lower is better; compression and speed '
            "columns without an arrow are rates, not scores.</li>"
            "<li>Grey italic rows marked <i>ref</i> are references (identity, resize, classic codecs): bounds, "
            "not competitors.</li><li>Green: best non-reference value of a column. – : not available (hover "
            "for the reason).</li></ul>",
            '<nav class="toc">' + "".join(f'<a href="#{esc(s.anchor)}">{esc(TASK_TITLES.get(s.task, s.task))}: '
                                          f"{esc(s.dataset)}</a>" for s in sections) + "</nav></header>"]
    for task, secs in tasks.items():
        body.append(f'<section class="task" data-task="{esc(task)}"><h2>{esc(TASK_TITLES.get(task, task))}</h2>')
        for s in secs:
            body.append(f'<section class="board" id="{esc(s.anchor)}"><h3>{esc(s.dataset)} '
                        f'<span class="muted">· protocol {esc(s.protocol)} v{esc(s.protocol_version)}</span></h3>')
            body.append(facts_html([("dataset", s.dataset), ("protocol", f"{s.protocol} {s.protocol_version}"),
                                    *s.facts]))
            body.append(table_html(s.table, f"t-{s.anchor}"))
            if s.notes:
                body.append('<ul class="legend">' + "".join(f"<li>{esc(n)}</li>" for n in s.notes) + "</ul>")
            p = plots.get(s.anchor, {})
            if p.get("rd"):
                body.append("<figure><figcaption>Rate–distortion: quality versus bits per pixel (log scale). "
                            "Variants of one family and kind (a rate sweep such as jpeg.q10/q50/q90) form one "
                            "line; dashed grey lines are references.</figcaption>" + p["rd"] + "</figure>")
            if p.get("tokens"):
                body.append("<figure><figcaption>Quality versus tokens per image (log scale), token-based "
                            "tokenizers only.</figcaption>" + p["tokens"] + "</figure>")
            body.append("</section>")
        body.append("</section>")
    return page("vtbench leaderboard", "\n".join(body))
