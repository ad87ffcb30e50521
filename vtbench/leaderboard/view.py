"""The leaderboard's view model: result records -> sections of tables and rate-distortion series.

Measured rows come from RunResult records: display names, units and the direction of "better" come from each
record's ``metrics[k]`` entry, as HELM's ``Table``/``Cell`` view model takes them from the metrics' own metadata.
Records of one measurement (``store.measurement_key``: same tokenizer, weights, data, preprocessing, protocol
settings and seeds) are merged into one row metric by metric, newest value first (``merge_entries``), so a later
run that selected fewer metrics does not hide an earlier run's other metrics. Reported rows come from the cards'
published numbers (``reported``); they sit in their own ``tbody`` (sorted apart), carry a visible mark, and never
count for "best". Nothing here knows HTML; ``render`` turns these values into markup and escapes every string on
the way out.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vtbench.leaderboard.reported import Reported, metric_outputs, record_resolution
from vtbench.report import fmt as _fmt
from vtbench.results import slug

# Column groups, in display order. Metrics not named here are quality metrics of their task (a text task's
# OCR accuracy, a 3D task's Chamfer distance), so new tasks get columns without code changes.
QUALITY_ORDER = ("psnr", "ssim", "lpips", "rfid", "gfid", "sfid", "inception_score", "precision", "recall",
                 "gfid@adm", "sfid@adm", "inception_score@adm", "precision@adm", "recall@adm")
COMPRESSION = ("tokens_per_image", "bits_per_token", "bits_per_image", "bpp", "compression_ratio",
               "tokens_per_shape", "bits_per_shape", "bytes_per_shape", "compression_ratio_stored",
               "compression_ratio_reference")
CODEBOOK = ("codebook_usage", "token_entropy", "codebook_perplexity")
SPEED = ("encode_images_per_s", "decode_images_per_s", "peak_memory_mb")
GROUPS = ("quality", "compression", "codebook", "speed")
TASK_ORDER = ("reconstruction", "text", "detail", "generation", "shape")
NULL_TEXT = "–"
REPORTED_MARK = "R"  # shown beside every reported value (render adds the tooltip)
REPORTED_TASK = "reported"
RESERVED_SLUGS = frozenset({"originals"})  # assets/originals holds the shared original images


def as_dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def as_text(x: Any, default: str = "") -> str:
    return default if x is None else str(x)


def number(x: Any) -> float | None:
    """A metric value as a float, or None when it is missing or not a number (booleans are not numbers)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def fmt(value: Any) -> str:
    """A number for a table cell: ``report.fmt``, with very large or very small magnitudes in exponent form."""
    if isinstance(value, float) and math.isfinite(value) and value != 0 and not 1e-4 <= abs(value) < 1e9:
        return f"{value:.3g}"
    return _fmt(value)


def fmt_reported(value: float) -> str:
    """A published number as its card states it (no digits added: 0.81 stays 0.81)."""
    return f"{value:.6g}"


def metric_group(key: str) -> str:
    if key in COMPRESSION:
        return "compression"
    if key in CODEBOOK:
        return "codebook"
    if key in SPEED:
        return "speed"
    return "quality"


@dataclass
class Entry:
    """One result record as the site sees it: where it came from and the tokenizer page it links to."""

    path: Path
    record: dict[str, Any]
    slug: str = ""
    # the records merged into this row (newest first; the first is ``path``/``record``'s source) and, per metric
    # taken from an older one, its index there
    sources: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    origin: dict[str, int] = field(default_factory=dict)

    @property
    def tokenizer(self) -> dict[str, Any]:
        return as_dict(self.record.get("tokenizer"))

    @property
    def name(self) -> str:
        return as_text(self.tokenizer.get("name"), "unnamed")

    @property
    def reference(self) -> bool:
        return self.tokenizer.get("reference") is True

    @property
    def family(self) -> str:
        return as_text(self.tokenizer.get("family")) or self.name.split(".")[0]

    @property
    def kind(self) -> str:
        return as_text(self.tokenizer.get("kind"))

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        return {str(k): as_dict(v) for k, v in as_dict(self.record.get("metrics")).items()}

    def value(self, key: str) -> float | None:
        return number(self.metrics.get(key, {}).get("value"))

    @property
    def resolution(self) -> int | None:
        return record_resolution(self.record)

    def origin_note(self, key: str) -> str | None:
        """For a metric merged in from an older record: which one (None: from this row's newest record)."""
        i = self.origin.get(key)
        if not i:
            return None
        rec = self.sources[i][1]
        fp = as_text(as_dict(rec.get("run")).get("fingerprint"))
        return (f"from an earlier run of the same measurement (finished {as_text(rec.get('finished'), '?')}, "
                f"fingerprint {fp or '?'}), merged: the newer run did not select this metric")

    def group_key(self) -> tuple[str, str, str, str]:
        proto, ds = as_dict(self.record.get("protocol")), as_dict(self.record.get("dataset"))
        return (as_text(proto.get("task"), "unknown"), as_text(ds.get("id"), "unknown"),
                as_text(proto.get("name"), "unknown"), as_text(proto.get("version"), "?"))


def assign_slugs(entries: list[Entry], names: Iterable[str] = ()) -> dict[str, str]:
    """Give each tokenizer name one page slug (entries' names first, then ``names``: registered tokenizers without
    a record); different names that slug alike get -2, -3 ...; returns name -> slug."""
    by_name: dict[str, str] = {}
    taken: set[str] = set(RESERVED_SLUGS)
    for name in [e.name for e in entries] + list(names):
        if name not in by_name:
            base = s = slug(name)
            i = 2
            while s.lower() in taken:  # case-insensitive file systems
                s, i = f"{base}-{i}", i + 1
            taken.add(s.lower())
            by_name[name] = s
    for e in entries:
        e.slug = by_name[e.name]
    return by_name


def merge_entries(entries: list[Entry]) -> list[Entry]:
    """One entry per measurement (``store.measurement_key``, weights included): the newest record (by ``finished``)
    leads; each metric comes from the newest record with a numeric value for it, else the newest that has it.
    Single records pass through unchanged (with ``sources`` filled in)."""
    from vtbench.leaderboard.store import measurement_key
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(measurement_key(e.record), []).append(e)
    out = []
    for group in groups.values():
        group.sort(key=lambda e: (as_text(e.record.get("finished")), str(e.path)), reverse=True)
        lead = group[0]
        sources = [(e.path, e.record) for e in group]
        if len(group) == 1:
            out.append(Entry(lead.path, lead.record, lead.slug, sources, {}))
            continue
        metrics: dict[str, Any] = {}
        origin: dict[str, int] = {}
        keys = list(dict.fromkeys(k for e in group for k in e.metrics))
        for k in keys:
            having = [i for i, e in enumerate(group) if k in e.metrics]
            numeric = [i for i in having if group[i].value(k) is not None]
            i = (numeric or having)[0]
            metrics[k] = group[i].metrics[k]
            if i:
                origin[k] = i
        out.append(Entry(lead.path, {**lead.record, "metrics": metrics}, lead.slug, sources, origin))
    return out


@dataclass(frozen=True)
class Cell:
    text: str
    value: float | None = None
    sort_key: float | str | None = None  # None sorts last in either direction
    title: str | None = None
    css: tuple[str, ...] = ()
    href: str | None = None
    mark: str | None = None  # a visible mark after the text (reported values)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    unit: str = ""
    higher_is_better: bool | None = None
    group: str = ""
    title: str = ""


@dataclass
class Row:
    cells: list[Cell]
    css: tuple[str, ...] = ()
    layer: str = "measured"  # "measured" or "reported": separate tbody, sorted apart


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[Row]


@dataclass
class Point:
    tokenizer: str
    bpp: float | None
    tokens: float | None
    values: dict[str, float]


@dataclass
class Series:
    """One rate-distortion curve: the variants of one (family, kind), e.g. jpeg.q10/q50/q90, by bpp. A reported
    series (the authors' numbers) is drawn hollow and dotted; ``key`` pairs it with the measured series of the
    same tokenizers (same colour)."""

    label: str
    family: str
    kind: str
    reference: bool
    points: list[Point]
    reported: bool = False
    key: str = ""


@dataclass
class ReportedRow:
    """The published numbers of one tokenizer on one dataset at one resolution (one table row)."""

    tokenizer: str
    family: str
    kind: str
    group: str  # the rate sweep it belongs to (its group variant), else the tokenizer
    resolution: int | None
    numbers: dict[str, Reported]
    slug: str = ""


@dataclass
class Section:
    task: str
    dataset: str
    protocol: str
    protocol_version: str
    entries: list[Entry]
    table: Table
    series: list[Series]
    facts: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reported: list[ReportedRow] = field(default_factory=list)
    calibrations: list[Any] = field(default_factory=list)  # reported.Calibration

    @property
    def anchor(self) -> str:
        if self.task == REPORTED_TASK:
            return slug(f"reported-{self.dataset}")
        return slug(f"{self.task}-{self.dataset}-{self.protocol}-{self.protocol_version}")

    def quality_columns(self) -> list[Column]:
        return [c for c in self.table.columns if c.group == "quality"]


def _column(k: str, m: dict[str, Any]) -> Column:
    hib = m.get("higher_is_better")
    hib = hib if isinstance(hib, bool) else None
    header = as_text(m.get("display_name")) or k
    unit = as_text(m.get("unit"))
    direction = {True: "higher is better", False: "lower is better", None: "neither higher nor lower is better"}
    return Column(k, header, unit, hib, metric_group(k), f"{k}{f' ({unit})' if unit else ''}: {direction[hib]}")


def _column_order(k: str) -> tuple[int, int, str]:
    g = metric_group(k)
    fixed = {"quality": QUALITY_ORDER, "compression": COMPRESSION, "codebook": CODEBOOK, "speed": SPEED}[g]
    return (GROUPS.index(g), fixed.index(k) if k in fixed else len(fixed), k)


def metric_columns(entries: Iterable[Entry], reported: Iterable[ReportedRow] = ()) -> list[Column]:
    """Every metric key present in ``entries`` (or only in ``reported`` rows), grouped and ordered, with metadata
    taken from the records (for reported-only keys: from the metric registry)."""
    meta: dict[str, dict[str, Any]] = {}
    for e in entries:
        for k, m in e.metrics.items():
            meta.setdefault(k, m)
    registry = None
    for row in reported:
        for k in row.numbers:
            if k not in meta:
                registry = metric_outputs() if registry is None else registry
                meta[k] = registry.get(k, {})
    return [_column(k, meta[k]) for k in sorted(meta, key=_column_order)]


def _metric_cell(entry: Entry, col: Column) -> Cell:
    m = entry.metrics.get(col.key)
    if m is None:
        return Cell(NULL_TEXT, title="not measured in this run")
    raw = m.get("value")
    v = number(raw)
    origin = entry.origin_note(col.key)
    if v is None:
        if raw is None:
            return Cell(NULL_TEXT, title="; ".join(filter(None, [as_text(m.get("reason")) or "not available", origin])))
        return Cell(as_text(raw), title=as_text(m.get("reason")) or None)  # not a number: shown as text
    title = "; ".join(filter(None, [as_text(m.get("reason")) or as_text(as_dict(m.get("extra")).get("warning")),
                                    origin])) or None
    return Cell(fmt(v), value=v, sort_key=None if math.isnan(v) else v, title=title,
                css=("merged",) if origin else ())


def reported_title(r: Reported) -> str:
    parts = [f"reported by the authors, not measured by vtbench: {fmt_reported(r.value)}", f"source: {r.source}"]
    if r.resolution:
        parts.append(f"resolution {r.resolution}")
    if r.setting is not None:
        parts.append(f"setting {fmt_reported(r.setting)}")
    if r.protocol_note:
        parts.append(f"their protocol: {r.protocol_note}")
    if r.tolerance is not None:
        parts.append(f"calibration tolerance ±{fmt_reported(r.tolerance)}")
    return "; ".join(parts)


def _reported_cell(row: ReportedRow, col: Column) -> Cell:
    r = row.numbers.get(col.key)
    if r is None:
        return Cell(NULL_TEXT, title="not reported by the authors on this dataset")
    return Cell(fmt_reported(r.value), value=r.value, sort_key=r.value if math.isfinite(r.value) else None,
                title=reported_title(r), css=("reported",), mark=REPORTED_MARK)


def _mark_best(rows: list[Row], entries: list[Entry], columns: list[Column], first: int) -> None:
    """Bold the best value of each directed column among measured non-reference rows (ties all marked)."""
    for j, col in enumerate(columns):
        if col.higher_is_better is None:
            continue
        cand = [i for i, e in enumerate(entries) if not e.reference
                and rows[i].cells[first + j].value is not None and math.isfinite(rows[i].cells[first + j].value)]
        if len(cand) < 2:  # a lone learned tokenizer is not "best" of anything
            continue
        vals = [rows[i].cells[first + j].value for i in cand]
        best = max(vals) if col.higher_is_better else min(vals)
        for i in cand:
            c = rows[i].cells[first + j]
            if c.value == best:
                rows[i].cells[first + j] = dataclasses.replace(
                    c, title=((c.title + "; ") if c.title else "") + "best non-reference value", css=c.css + ("best",))


def build_table(title: str, entries: list[Entry], link_prefix: str = "tokenizers/",
                reported: list[ReportedRow] | None = None) -> Table:
    """Measured rows (one per entry), then reported rows (one per ``ReportedRow``), over the union of columns."""
    reported = reported or []
    mcols = metric_columns(entries, reported)
    fixed = [Column("_tokenizer", "Tokenizer", group="run",
                    title="tokenizer (family.variant); grey rows are references, rows marked R are reported by "
                          "the authors"),
             Column("_kind", "Kind", group="run", title="quantiser kind, or reference / codec"),
             Column("_n", "N", "images", group="run", title="images used (reported rows: see the source)"),
             Column("_res", "Res.", "px", group="run", title="evaluation resolution (preprocessing policy)")]
    rows = []
    for e in entries:
        n = number(as_dict(e.record.get("dataset")).get("n_used"))
        res = e.resolution
        cells = [Cell(e.name, sort_key=e.name.lower(), title=as_text(e.tokenizer.get("description")) or None,
                      href=f"{link_prefix}{e.slug}.html"),
                 Cell(e.kind or NULL_TEXT, sort_key=e.kind.lower() or None),
                 Cell(fmt(int(n)) if n is not None else NULL_TEXT, n, n),
                 Cell(str(res) if res else NULL_TEXT, res, res)]
        cells += [_metric_cell(e, c) for c in mcols]
        rows.append(Row(cells, ("ref",) if e.reference else ()))
    _mark_best(rows, entries, mcols, len(fixed))
    for r in reported:
        cells = [Cell(r.tokenizer, sort_key=r.tokenizer.lower(), title="reported by the authors (the card's "
                      "published numbers), not measured by vtbench", href=f"{link_prefix}{r.slug}.html",
                      css=("reported",), mark=REPORTED_MARK),
                 Cell(r.kind or NULL_TEXT, sort_key=r.kind.lower() or None),
                 Cell(NULL_TEXT, title="the authors' evaluation set: see the source"),
                 Cell(str(r.resolution) if r.resolution else NULL_TEXT, r.resolution, r.resolution)]
        cells += [_reported_cell(r, c) for c in mcols]
        rows.append(Row(cells, ("reported",), layer="reported"))
    return Table(title, fixed + mcols, rows)


def _series_label(members: list[str], group: str | None, family: str, kind: str, kinds_in_family: int) -> str:
    if group:
        return f"{group} (k sweep)" if len(members) > 1 else members[0]
    if len(members) == 1:
        return members[0]
    return family if kinds_in_family == 1 else f"{family} ({kind})"


def rd_series(entries: list[Entry], keys: list[str]) -> list[Series]:
    """Rate-distortion curves, ordered by bpp: the settings of one declared rate sweep (a card's ``[sweep]``: token
    counts of one checkpoint) form one curve named after the sweep; other variants of one (family, kind) form one
    curve (e.g. jpeg.q10/q50/q90)."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    sweeps: dict[tuple[str, str], str] = {}
    for e in entries:
        sweep = as_dict(e.tokenizer.get("sweep"))
        group = as_text(sweep.get("group")) if sweep else ""
        key = (e.family, f"{e.kind}\x00{group}") if group else (e.family, e.kind)
        if group:
            sweeps[key] = group
        groups.setdefault(key, []).append(e)
    kinds_per_family: dict[str, int] = {}
    for fam, _ in groups:
        kinds_per_family[fam] = kinds_per_family.get(fam, 0) + 1
    out = []
    for (fam, kind_key), members in sorted(groups.items()):
        kind = kind_key.split("\x00")[0]
        pts = []
        for e in members:
            vals = {k: v for k in keys if (v := e.value(k)) is not None and math.isfinite(v)}
            # images: bits per pixel and tokens per image; shapes: bytes and tokens per shape
            bpp = e.value("bpp") if e.value("bpp") is not None else e.value("bytes_per_shape")
            tok = e.value("tokens_per_image") if e.value("tokens_per_image") is not None else e.value(
                "tokens_per_shape")
            pts.append(Point(e.name, bpp if bpp is not None and math.isfinite(bpp) and bpp > 0 else None,
                             tok if tok is not None and math.isfinite(tok) and tok > 0 else None, vals))
        pts.sort(key=lambda p: (p.bpp is None, p.bpp or 0.0, p.tokenizer))
        label = _series_label([e.name for e in members], sweeps.get((fam, kind_key)), fam, kind,
                              kinds_per_family[fam])
        out.append(Series(label, fam, kind, all(e.reference for e in members), pts, key=label))
    return out


Rates = dict[tuple[str, int | None], tuple[float | None, float | None]]


def measured_rates(entries: Iterable[Entry]) -> Rates:
    """(bpp, tokens per image) of each (tokenizer, resolution) that vtbench measured, to place the authors' numbers
    on the plots' rate axes (a token-based tokenizer's rate does not depend on the images)."""
    out: Rates = {}
    for e in entries:
        bpp, tok = e.value("bpp"), e.value("tokens_per_image")
        ok = lambda v: v if v is not None and math.isfinite(v) and v > 0 else None  # noqa: E731
        if e.kind in ("codec", "reference") or (ok(bpp) is None and ok(tok) is None):
            continue
        out.setdefault((e.name, e.resolution), (ok(bpp), ok(tok)))
    return out


def reported_series(rows: list[ReportedRow], keys: list[str], rates: Rates) -> list[Series]:
    """The authors' numbers as hollow curves: the settings of one rate sweep form one curve, others one point
    each. A number is placed at the rate vtbench measured for that tokenizer at that resolution; numbers without a
    measured rate are left out (the caption says how many)."""
    groups: dict[str, list[ReportedRow]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    out = []
    for group, members in sorted(groups.items()):
        pts = []
        for r in members:
            bpp, tok = rates.get((r.tokenizer, r.resolution), (None, None))
            vals = {k: n.value for k, n in r.numbers.items() if k in keys and math.isfinite(n.value)}
            pts.append(Point(r.tokenizer, bpp, tok, vals))
        pts.sort(key=lambda p: (p.bpp is None, p.bpp or 0.0, p.tokenizer))
        names = sorted({r.tokenizer for r in members})
        label = _series_label(names, group if group != names[0] or len(names) > 1 else None,
                              members[0].family, members[0].kind, 1)
        out.append(Series(f"{label} (reported)", members[0].family, members[0].kind, False, pts, reported=True,
                          key=label))
    return out


def reported_rows(numbers: Iterable[Reported], groups: dict[str, str] | None = None,
                  slugs: dict[str, str] | None = None) -> list[ReportedRow]:
    """Published numbers as table rows: one per (tokenizer, resolution); a second row where a tokenizer reports
    the same metric twice (two sources)."""
    rows: list[ReportedRow] = []
    for r in numbers:
        row = next((x for x in rows if x.tokenizer == r.tokenizer and x.resolution == r.resolution
                    and r.metric not in x.numbers), None)
        if row is None:
            row = ReportedRow(r.tokenizer, r.family, r.kind, (groups or {}).get(r.tokenizer, r.tokenizer),
                              r.resolution, {}, (slugs or {}).get(r.tokenizer, slug(r.tokenizer)))
            rows.append(row)
        row.numbers[r.metric] = r
    rows.sort(key=lambda x: (x.family, x.group, min((n.setting or 0.0 for n in x.numbers.values()), default=0.0),
                             x.tokenizer, x.resolution or 0))
    return rows


def _task_order(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def _facts(entries: list[Entry]) -> list[tuple[str, str]]:
    def distinct(get) -> str:
        vals = sorted({as_text(get(e)) for e in entries} - {""})
        return ", ".join(vals) if vals else NULL_TEXT
    ds = lambda e: as_dict(e.record.get("dataset"))  # noqa: E731
    pol = lambda e: as_dict(ds(e).get("policy"))  # noqa: E731
    return [
        ("images", distinct(lambda e: ds(e).get("n_used"))),
        ("revision", distinct(lambda e: ds(e).get("revision"))),
        ("split", distinct(lambda e: ds(e).get("split"))),
        ("preprocessing", distinct(lambda e: " ".join(as_text(pol(e).get(k)) for k in ("name", "resolution")
                                                      if pol(e).get(k) is not None))),
        ("vtbench", distinct(lambda e: as_dict(e.record.get("vtbench")).get("version"))),
    ]


def build_sections(entries: list[Entry], reported: Iterable[Reported] = (), groups: dict[str, str] | None = None,
                   slugs: dict[str, str] | None = None) -> list[Section]:
    """Group records by (protocol task, dataset, protocol name, protocol version); one table per group, with the
    authors' numbers on that dataset as reported rows below the measured ones. Then one "reported by the authors"
    table per dataset that cards publish numbers on (every published number appears there), and the calibration
    pairs (measured minus reported) of each measured table."""
    from vtbench.leaderboard.reported import calibrations
    reported = list(reported)
    by_dataset: dict[str, list[Reported]] = {}
    for r in reported:
        by_dataset.setdefault(r.dataset, []).append(r)
    rates = measured_rates(entries)
    groups_: dict[tuple[str, str, str, str], list[Entry]] = {}
    for e in entries:
        groups_.setdefault(e.group_key(), []).append(e)
    out = []
    for key in sorted(groups_, key=lambda k: (_task_order(k[0]), k[1:])):
        task, ds, proto, ver = key
        members = sorted(groups_[key], key=lambda e: (e.reference, e.family, e.value("bpp") or 0.0, e.name))
        rrows = reported_rows(by_dataset.get(ds, []), groups, slugs)
        table = build_table(f"{ds} · {proto} v{ver}", members, reported=rrows)
        quality = [c.key for c in table.columns if c.group == "quality"]
        notes = sorted({as_text(as_dict(m.get("extra")).get("warning")) for e in members
                        for m in e.metrics.values()} - {""})
        series = rd_series(members, quality) + reported_series(rrows, quality, rates)
        out.append(Section(task, ds, proto, ver, members, table, series, _facts(members), notes, rrows,
                           calibrations(by_dataset.get(ds, []), members)))
    for ds in sorted(by_dataset):
        rrows = reported_rows(by_dataset[ds], groups, slugs)
        table = build_table(f"{ds} · reported by the authors", [], reported=rrows)
        quality = [c.key for c in table.columns if c.group == "quality"]
        res = sorted({str(r.resolution) for r in by_dataset[ds] if r.resolution})
        facts = [("numbers", str(len(by_dataset[ds]))), ("tokenizers", str(len({r.tokenizer for r in by_dataset[ds]}))),
                 ("resolutions", ", ".join(res) or NULL_TEXT)]
        out.append(Section(REPORTED_TASK, ds, "reported", "", [], table, reported_series(rrows, quality, rates),
                           facts, [], rrows, []))
    return out
