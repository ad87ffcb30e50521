"""Human-facing views of results: a rich table for the terminal and a plain, self-contained HTML summary.
Both read RunResult records only; every string from a record is escaped in HTML."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from vtbench.results import iter_records, warn_skip, write_text_atomic

# Columns of the summary, in order: (metric key, header).
COLUMNS = [
    ("text_acc", "T-ACC"), ("text_ned", "T-NED"), ("cer", "CER"), ("wer", "WER"),
    ("psnr", "PSNR"), ("ssim", "SSIM"), ("lpips", "LPIPS"), ("rfid", "rFID"), ("pfid@*", "pFID"),
    ("gfid", "gFID"), ("sfid", "sFID"), ("inception_score", "IS"), ("precision", "Prec"), ("recall", "Rec"),
    ("gfid@adm", "gFID adm"), ("sfid@adm", "sFID adm"), ("inception_score@adm", "IS adm"),
    ("precision@adm", "Prec adm"), ("recall@adm", "Rec adm"),
    ("val_ce", "val CE"),
    ("detail_band_ratio@0.25-0.5", "HF band"), ("detail_band_ratio@0.125-0.25", "MF band"),
    ("gradient_energy_ratio", "grad energy"),
    ("chamfer_l1", "CD-L1"), ("chamfer_l2", "CD-L2"), ("fscore@0.01", "F@1%"), ("fscore@0.02", "F@2%"),
    ("normal_consistency", "NC"), ("iou", "IoU"), ("tokens_per_shape", "tokens"), ("bytes_per_shape", "bytes"),
    ("compression_ratio_reference", "ratio vs PLY"),
    ("tokens_per_image", "tokens"), ("bits_per_token", "bits/tok"), ("bpp", "bpp"),
    ("compression_ratio", "ratio"), ("codebook_usage", "usage"), ("token_entropy", "entropy"),
    ("encode_images_per_s", "enc img/s"), ("decode_images_per_s", "dec img/s"),
]


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        a = abs(value)
        if a >= 1000:
            return f"{value:,.0f}"
        if a >= 100:
            return f"{value:.1f}"
        if a >= 1:
            return f"{value:.2f}"
        return f"{value:.4f}"
    return str(value)


def _arrow(hib: Any) -> str:
    return " ↑" if hib is True else " ↓" if hib is False else ""


def _present(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The columns present in ``records``; ``prefix@*`` entries expand to every configured key (pFID settings)."""
    keys = {k for r in records for k in r.get("metrics", {})}
    out = []
    for k, h in COLUMNS:
        if k.endswith("@*"):
            found = sorted(x for x in keys if x.startswith(k[:-1]))
            out += [(x, h if len(found) == 1 else f"{h} {x.split('@', 1)[1]}") for x in found]
        elif k in keys:
            out.append((k, h))
    return out


def rich_table(records: list[dict[str, Any]]):
    from rich.table import Table
    cols = _present(records)
    hib = {k: next((r["metrics"][k].get("higher_is_better") for r in records if k in r["metrics"]), None)
           for k, _ in cols}
    datasets = sorted({r["dataset"]["id"] for r in records})
    table = Table(title=f"vtbench: {', '.join(datasets)}", caption="– : not available (see result.json for the reason)")
    table.add_column("tokenizer", style="bold", no_wrap=True)
    table.add_column("n", justify="right")
    for k, h in cols:
        table.add_column(h + _arrow(hib[k]), justify="right")
    for r in records:
        m = r["metrics"]
        table.add_row(r["tokenizer"]["name"], str(r["dataset"].get("n_used")),
                      *[fmt(m.get(k, {}).get("value")) for k, _ in cols],
                      style="dim" if r["tokenizer"].get("reference") else None)
    return table


def summary_html(root: str | Path, out: str | Path | None = None) -> Path:
    """Write a plain HTML summary of every result below ``root`` (default ``root/index.html``)."""
    records = [rec for _, rec in iter_records(root, on_error=warn_skip)]  # one bad file hides nothing else
    out = Path(out) if out else Path(root) / "index.html"
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>vtbench results</title><style>",
             "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}"
             "td:first-child,th:first-child{text-align:left}tr.ref td{color:#777}",
             "</style></head><body><h1>vtbench results</h1>"]
    by_ds: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_ds.setdefault(str(r["dataset"]["id"]), []).append(r)
    for ds, recs in sorted(by_ds.items()):
        cols = _present(recs)
        proto = recs[0].get("protocol", {})
        parts.append(f"<h2>{e(ds)}</h2><p>protocol {e(str(proto.get('name')))} v{e(str(proto.get('version')))}, "
                     f"{e(str(recs[0]['dataset'].get('n_used')))} images</p><table><tr><th>tokenizer</th>")
        for k, h in cols:
            hib = next((r["metrics"][k].get("higher_is_better") for r in recs if k in r["metrics"]), None)
            parts.append(f"<th>{e(h + _arrow(hib))}</th>")
        parts.append("</tr>")
        for r in recs:
            cls = " class='ref'" if r["tokenizer"].get("reference") else ""
            parts.append(f"<tr{cls}><td>{e(str(r['tokenizer']['name']))}</td>")
            for k, _ in cols:
                m = r["metrics"].get(k, {})
                title = f" title='{e(str(m.get('reason')), quote=True)}'" if m.get("reason") else ""
                parts.append(f"<td{title}>{e(fmt(m.get('value')))}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    write_text_atomic(out, "".join(parts))
    return out
