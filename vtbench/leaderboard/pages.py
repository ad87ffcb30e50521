"""One page per registered tokenizer (``tokenizers/<slug>.html``), and per tokenizer that only records name: card,
the authors' reported numbers with their calibration against vtbench's measurements, and for each measured run
every metric with its reason, thumbnails (original, reconstruction, x4 crops of the most detailed region, error
map), provenance and links to the result records themselves (copied into the site under ``records/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vtbench.leaderboard.images import ERROR_FULL_SCALE, ZOOM, Thumb
from vtbench.leaderboard.render import arrow, calibration_html, esc, page
from vtbench.leaderboard.reported import Calibration, Reported
from vtbench.leaderboard.view import NULL_TEXT, Entry, as_dict, as_text, fmt, fmt_reported, number

# Card fields shown under provenance rather than in the card table.
_PROVENANCE_FIELDS = ("name", "description", "weights", "weights_sha256", "weights_path", "card_path", "published",
                      "checkpoint")


def show(value: Any) -> str:
    """Any record value as display text (containers as compact JSON)."""
    if value is None or value == "" or value == [] or value == {}:
        return NULL_TEXT
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return fmt(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def kv_table(rows: list[tuple[str, Any]], code: tuple[str, ...] = ()) -> str:
    out = ['<table class="kv">']
    for k, v in rows:
        text = esc(show(v))
        out.append(f"<tr><th scope=\"row\">{esc(k)}</th><td>{f'<code>{text}</code>' if k in code else text}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _short_path(path: Path) -> str:
    return "/".join(path.parts[-3:])


def provenance(entry: Entry) -> str:
    r, tok = entry.record, entry.tokenizer
    vt, ds, run = as_dict(r.get("vtbench")), as_dict(r.get("dataset")), as_dict(r.get("run"))
    proto = as_dict(r.get("protocol"))
    weights = as_dict(tok.get("weights"))
    commit = as_text(vt.get("commit")) or NULL_TEXT
    if vt.get("dirty") is True:
        commit += " (uncommitted changes)"
    rows: list[tuple[str, Any]] = [
        ("weights sha256", tok.get("weights_sha256") or weights.get("sha256")),
        ("weights file", weights.get("file")),
        ("weights source", {k: v for k, v in weights.items() if k not in ("file", "sha256")} or None),
        ("checkpoint loading", tok.get("checkpoint")),
        ("vtbench", vt.get("version")), ("commit", commit), ("schema", r.get("schema_version")),
        ("created", r.get("created")), ("finished", r.get("finished")),
        ("protocol", f"{as_text(proto.get('name'))} {as_text(proto.get('version'))} "
                     f"(task {as_text(proto.get('task'))})"),
        ("dataset", ds.get("id")), ("revision", ds.get("revision")), ("split", ds.get("split")),
        ("images", f"{show(ds.get('n_used'))} used of {show(ds.get('n_requested') or ds.get('n_total'))}"),
        ("selection", ds.get("selection")), ("preprocessing", ds.get("policy")),
        ("skipped", ds.get("skipped")),
    ]
    rows += [(f"run {k}", v) for k, v in run.items()]
    rows += [(f"timing {k}", v) for k, v in as_dict(r.get("timings")).items()]
    rows += [(f"env {k}", v) for k, v in as_dict(r.get("environment")).items()]
    rows.append(("result file", _short_path(entry.path)))
    return kv_table(rows, code=("weights sha256", "commit", "selection", "run fingerprint"))


def metrics_table(entry: Entry) -> str:
    out = ['<div class="scroll"><table><thead><tr class="cols"><th class="text">Metric</th><th class="text">key</th>'
           '<th>value</th><th class="text">unit</th><th>better</th><th>n</th><th class="text">note</th></tr>'
           "</thead><tbody>"]
    for key, m in entry.metrics.items():
        v = number(m.get("value"))
        hib = m.get("higher_is_better")
        note = "; ".join(filter(None, [as_text(m.get("reason")) or as_text(as_dict(m.get("extra")).get("warning")),
                                       entry.origin_note(key)]))
        value = fmt(v) if v is not None else (NULL_TEXT if m.get("value") is None else as_text(m.get("value")))
        out.append(f"<tr><td class=\"text\">{esc(as_text(m.get('display_name')) or key)}</td>"
                   f"<td class=\"text\"><code>{esc(key)}</code></td><td>{esc(value)}</td>"
                   f"<td class=\"text\">{esc(m.get('unit'))}</td>"
                   f"<td>{arrow(hib if isinstance(hib, bool) else None) or NULL_TEXT}</td>"
                   f"<td>{esc(show(m.get('n')))}</td><td class=\"text note\">{esc(note)}</td></tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def reported_table(numbers: list[Reported]) -> str:
    """The card's published numbers: value, dataset, resolution, setting, protocol note, source, tolerance."""
    if not numbers:
        return '<p class="muted">The card states no published numbers.</p>'
    out = ['<p class="muted">Reported by the authors <span class="mark">R</span>: not measured by vtbench; each '
           "under the authors' protocol (the note says how it differs from vtbench's).</p>",
           '<div class="scroll"><table><thead><tr class="cols"><th class="text">Metric</th><th>Value</th>'
           '<th class="text">Dataset</th><th>Res.</th><th>Setting</th><th>Tolerance</th><th class="text">'
           'Protocol note</th><th class="text">Source</th></tr></thead><tbody>']
    for n in numbers:
        out.append(f'<tr class="reported"><td class="text"><code>{esc(n.metric)}</code></td>'
                   f"<td>{esc(fmt_reported(n.value))}"
                   '<span class="mark" title="reported by the authors">R</span></td>'
                   f'<td class="text">{esc(n.dataset)}</td><td>{esc(n.resolution or NULL_TEXT)}</td>'
                   f"<td>{esc(fmt_reported(n.setting) if n.setting is not None else NULL_TEXT)}</td>"
                   f"<td>{esc('±' + fmt_reported(n.tolerance) if n.tolerance is not None else NULL_TEXT)}</td>"
                   f'<td class="text note">{esc(n.protocol_note or NULL_TEXT)}</td>'
                   f'<td class="text note">{esc(n.source)}</td></tr>')
    out.append("</tbody></table></div>")
    return "".join(out)


def records_links(links: list[tuple[str, str | None, str]]) -> str:
    """Links to the result records (and per-image tables) of a run, copied into the site."""
    if not links:
        return ""
    items = []
    for record, samples, label in links:
        extra = f' · <a href="../{esc(samples)}">per-image values (CSV)</a>' if samples else ""
        items.append(f'<li><a href="../{esc(record)}">result record (JSON)</a>{extra} <span class="muted">'
                     f"{esc(label)}</span></li>")
    return '<ul class="records">' + "".join(items) + "</ul>"


def _img(src: str, alt: str, caption: str, box: tuple[float, float, float, float] | None = None) -> str:
    frame = ""
    if box:  # the crop window, in percent of the image (numbers computed here, not taken from records)
        x, y, w, h = box
        frame = f'<span class="box" style="left:{x:.2f}%;top:{y:.2f}%;width:{w:.2f}%;height:{h:.2f}%"></span>'
    return (f'<figure><div class="framed"><img src="../{esc(src)}" alt="{esc(alt)}">{frame}</div>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def thumbs_html(thumbs: list[Thumb]) -> str:
    if not thumbs:
        return '<p class="muted">No thumbnails in this record.</p>'
    out = [f'<p class="muted">Left to right: original (cyan box: the {ZOOM}x crop, the window with the most '
           f"gradient energy), reconstruction, the crop of each (nearest-neighbour x{ZOOM}), and |original − "
           f"reconstruction| averaged over channels (inferno colour scale, {ERROR_FULL_SCALE} of 255 levels and "
           "above at the top).</p>", '<div class="thumbs">']
    for t in thumbs:
        box = None
        if t.window:
            x, y, side, width = t.window
            box = (100 * x / width, 100 * y / t.height, 100 * side / width, 100 * side / t.height)
        mae = f" · mean |error| {t.mean_abs_error:.2f}/255" if t.mean_abs_error is not None else ""
        out.append(f'<div class="pair"><p class="pid"><code>{esc(t.id)}</code>{esc(mae)}</p><div class="row">')
        out.append(_img(t.original, f"original {t.id}", "original", box))
        out.append(_img(t.reconstruction, f"reconstruction {t.id}", "reconstruction"))
        if t.crop_original and t.crop_reconstruction and t.error_map:
            out.append(_img(t.crop_original, f"detail crop of the original {t.id}", f"original, crop x{ZOOM}"))
            out.append(_img(t.crop_reconstruction, f"detail crop of the reconstruction {t.id}",
                            f"reconstruction, crop x{ZOOM}"))
            out.append(_img(t.error_map, f"error map {t.id}", "error map"))
        out.append("</div></div>")
    out.append("</div>")
    return "".join(out)


def tokenizer_page(entries: list[Entry], thumbs: dict[int, list[Thumb]], *, name: str | None = None,
                   card: dict[str, Any] | None = None, reported: list[Reported] | None = None,
                   calibrations: list[Calibration] | None = None,
                   records: dict[int, list[tuple[str, str | None, str]]] | None = None) -> str:
    """The page of one tokenizer. ``entries``: its measured runs (may be empty for a registered tokenizer nobody
    has run); ``thumbs`` and ``records``: their assets and copied records, keyed by ``id(entry)``; ``card``: the
    registered card (``TokenizerCard.to_dict()``), used when there is no run; ``reported``: the authors' numbers;
    ``calibrations``: measured-minus-reported pairs."""
    first = entries[0] if entries else None
    tok = first.tokenizer if first else dict(card or {})
    title = first.name if first else as_text(name or tok.get("name"), "unnamed")
    card_rows = [(k, v) for k, v in tok.items() if k not in _PROVENANCE_FIELDS]
    if first is None and tok.get("weights"):  # no run's provenance to show them: the card's weights table
        card_rows.append(("weights", tok.get("weights")))
    is_ref = first.reference if first else tok.get("reference") is True
    ref = ' <span class="muted">(reference)</span>' if is_ref else ""
    body = ['<nav><a href="../index.html">← leaderboard</a></nav>',
            f"<h1>{esc(title)}{ref}</h1>",
            f'<p class="lead">{esc(tok.get("description") or "")}</p>', "<h2>Card</h2>", kv_table(card_rows)]
    if first is None:
        body.append('<p class="muted">vtbench has no measured record of this tokenizer yet: the numbers below are '
                    "the authors'. Measure it with <code>vtbench run -t " + esc(title) + "</code> and publish "
                    "the record with <code>vtbench leaderboard add</code>.</p>")
    if reported is not None:
        body += ["<h2>Reported by the authors</h2>", reported_table(reported)]
    elif tok.get("published"):
        body += ["<h3>Published numbers</h3>", f"<p><code>{esc(show(tok.get('published')))}</code></p>"]
    if calibrations:
        body.append(calibration_html(calibrations, link_prefix=""))
    if entries:
        nav = "".join(f'<a href="#run-{i}">{esc(as_text(as_dict(e.record.get("dataset")).get("id")))} · '
                      f"{esc(e.group_key()[2])} v{esc(e.group_key()[3])}</a>" for i, e in enumerate(entries))
        body.append(f'<h2>Runs</h2><nav class="toc">{nav}</nav>')
    for i, e in enumerate(entries):
        task, ds, proto, ver = e.group_key()
        merged = (f'<p class="muted">{len(e.sources)} records of this measurement, merged metric by metric '
                  "(newest first).</p>" if len(e.sources) > 1 else "")
        body += [f'<section class="run" id="run-{i}"><h3>{esc(ds)} <span class="muted">· task {esc(task)} · '
                 f"protocol {esc(proto)} v{esc(ver)}</span></h3>", merged,
                 records_links((records or {}).get(id(e), [])),
                 "<h4>Metrics</h4>", metrics_table(e), "<h4>Reconstructions</h4>", thumbs_html(thumbs.get(id(e), [])),
                 "<h4>Provenance</h4>", provenance(e), "</section>"]
    return page(f"{title} · vtbench", "\n".join(body), root="../")
