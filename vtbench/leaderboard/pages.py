"""One page per tokenizer (``tokenizers/<slug>.html``): card, provenance, every metric with its reason, and
thumbnails (original, reconstruction, x4 crops of the most detailed region, error map) for each of its runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vtbench.leaderboard.images import ERROR_FULL_SCALE, ZOOM, Thumb
from vtbench.leaderboard.render import arrow, esc, page
from vtbench.leaderboard.view import NULL_TEXT, Entry, as_dict, as_text, number
from vtbench.report import fmt

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
        note = as_text(m.get("reason")) or as_text(as_dict(m.get("extra")).get("warning"))
        value = fmt(v) if v is not None else (NULL_TEXT if m.get("value") is None else as_text(m.get("value")))
        out.append(f"<tr><td class=\"text\">{esc(as_text(m.get('display_name')) or key)}</td>"
                   f"<td class=\"text\"><code>{esc(key)}</code></td><td>{esc(value)}</td>"
                   f"<td class=\"text\">{esc(m.get('unit'))}</td>"
                   f"<td>{arrow(hib if isinstance(hib, bool) else None) or NULL_TEXT}</td>"
                   f"<td>{esc(show(m.get('n')))}</td><td class=\"text note\">{esc(note)}</td></tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


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


def tokenizer_page(entries: list[Entry], thumbs: dict[int, list[Thumb]]) -> str:
    """The page of one tokenizer; ``entries`` are its runs, ``thumbs`` their assets keyed by ``id(entry)``."""
    first = entries[0]
    tok = first.tokenizer
    card = [(k, v) for k, v in tok.items() if k not in _PROVENANCE_FIELDS]
    ref = ' <span class="muted">(reference)</span>' if first.reference else ""
    body = ['<nav><a href="../index.html">← leaderboard</a></nav>',
            f"<h1>{esc(first.name)}{ref}</h1>",
            f'<p class="lead">{esc(tok.get("description") or "")}</p>', "<h2>Card</h2>", kv_table(card)]
    published = tok.get("published")
    if published:
        body += ["<h3>Published numbers</h3>", f"<p><code>{esc(show(published))}</code></p>"]
    nav = "".join(f'<a href="#run-{i}">{esc(as_text(as_dict(e.record.get("dataset")).get("id")))} · '
                  f"{esc(e.group_key()[2])} v{esc(e.group_key()[3])}</a>" for i, e in enumerate(entries))
    body.append(f'<h2>Runs</h2><nav class="toc">{nav}</nav>')
    for i, e in enumerate(entries):
        task, ds, proto, ver = e.group_key()
        body += [f'<section class="run" id="run-{i}"><h3>{esc(ds)} <span class="muted">· task {esc(task)} · '
                 f"protocol {esc(proto)} v{esc(ver)}</span></h3>",
                 "<h4>Metrics</h4>", metrics_table(e), "<h4>Reconstructions</h4>", thumbs_html(thumbs.get(id(e), [])),
                 "<h4>Provenance</h4>", provenance(e), "</section>"]
    return page(f"{first.name} · vtbench", "\n".join(body), root="../")
