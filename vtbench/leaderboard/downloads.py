"""The site's tables as files: CSV and JSON per table (wide: one row per tokenizer, one column per metric) and for
the whole page (long: one row per value), written next to the HTML under ``data/``.

Every row says its layer (``measured`` or ``reported``), so the two never mix in a download either. Measured values
link the result record they come from (``records/...`` inside the site); reported values carry their source and
protocol note. Text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or
carriage return) are prefixed with ``'``; numbers are written as numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from vtbench.leaderboard.view import Entry, Section, as_dict, as_text, number

_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(v: Any) -> Any:
    """A CSV cell: numbers as numbers (non-finite as empty), None as empty, formula-like text defused."""
    if v is None or isinstance(v, bool):
        return "" if v is None else str(v).lower()
    if isinstance(v, (int, float)):
        return v if math.isfinite(v) else ""
    text = str(v)
    return "'" + text if text.startswith(_FORMULA) else text


def to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([_cell(c) for c in columns])
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def to_json(obj: Any) -> str:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def _metric_keys(section: Section) -> list[str]:
    return [c.key for c in section.table.columns if not c.key.startswith("_")]


def table_rows(section: Section, records: dict[int, str]) -> list[dict[str, Any]]:
    """The wide rows of a section's table: measured entries, then reported rows."""
    keys = _metric_keys(section)
    rows: list[dict[str, Any]] = []
    for e in section.entries:
        ds = as_dict(e.record.get("dataset"))
        row: dict[str, Any] = {"layer": "measured", "tokenizer": e.name, "kind": e.kind, "reference": e.reference,
                               "n_images": number(ds.get("n_used")), "resolution": e.resolution,
                               "record": records.get(id(e))}
        row.update({k: e.value(k) for k in keys})
        rows.append(row)
    for r in section.reported:
        row = {"layer": "reported", "tokenizer": r.tokenizer, "kind": r.kind, "reference": False,
               "n_images": None, "resolution": r.resolution, "record": None}
        row.update({k: (r.numbers[k].value if k in r.numbers else None) for k in keys})
        rows.append(row)
    return rows


TABLE_FIXED = ["layer", "tokenizer", "kind", "reference", "n_images", "resolution", "record"]


def table_files(section: Section, records: dict[int, str]) -> tuple[str, str]:
    """(CSV text, JSON text) of one section's table."""
    rows = table_rows(section, records)
    keys = _metric_keys(section)
    csv_text = to_csv(rows, TABLE_FIXED + keys)
    cols = [{"key": c.key, "header": c.header, "unit": c.unit, "higher_is_better": c.higher_is_better,
             "group": c.group} for c in section.table.columns if not c.key.startswith("_")]
    detail = []
    for row, src in zip(rows, [*section.entries, *section.reported]):
        out = dict(row)
        if isinstance(src, Entry):
            out["reasons"] = {k: m.get("reason") for k, m in src.metrics.items() if m.get("reason")}
        else:
            out["sources"] = {k: {"source": n.source, "protocol_note": n.protocol_note, "tolerance": n.tolerance,
                                  "dataset": n.dataset} for k, n in src.numbers.items()}
        detail.append(out)
    doc = {"title": section.table.title, "task": section.task, "dataset": section.dataset,
           "protocol": section.protocol, "protocol_version": section.protocol_version, "columns": cols, "rows": detail,
           "calibration": [c.to_dict() for c in section.calibrations]}
    return csv_text, to_json(doc)


LONG_COLUMNS = ["layer", "task", "dataset", "protocol", "protocol_version", "tokenizer", "kind", "metric", "value",
                "unit", "higher_is_better", "n", "resolution", "reason", "record", "source", "protocol_note",
                "tolerance"]


def long_rows(entries: list[Entry], reported: list[Any], records: dict[int, str]) -> list[dict[str, Any]]:
    """Every measured metric value and every reported number, one row each."""
    rows = []
    for e in entries:
        task, ds, proto, ver = e.group_key()
        for k, m in e.metrics.items():
            hib = m.get("higher_is_better")
            rows.append({"layer": "measured", "task": task, "dataset": ds, "protocol": proto,
                         "protocol_version": ver, "tokenizer": e.name, "kind": e.kind, "metric": k,
                         "value": number(m.get("value")), "unit": as_text(m.get("unit")),
                         "higher_is_better": hib if isinstance(hib, bool) else None, "n": number(m.get("n")),
                         "resolution": e.resolution, "reason": m.get("reason"),
                         "record": records.get(id(e)), "source": None, "protocol_note": None, "tolerance": None})
    for r in reported:
        rows.append({"layer": "reported", "task": None, "dataset": r.dataset, "protocol": None,
                     "protocol_version": None, "tokenizer": r.tokenizer, "kind": r.kind, "metric": r.metric,
                     "value": r.value, "unit": None, "higher_is_better": None, "n": None,
                     "resolution": r.resolution, "reason": None, "record": None, "source": r.source,
                     "protocol_note": r.protocol_note, "tolerance": r.tolerance})
    return rows
