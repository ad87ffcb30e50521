"""The leaderboard's view model: result records -> sections of tables and rate-distortion series.

Built from RunResult records only (no registry, no cards on disk): display names, units and the direction of
"better" come from each record's ``metrics[k]`` entry, as HELM's ``Table``/``Cell`` view model takes them from
the metrics' own metadata. Nothing here knows HTML; ``render`` turns these values into markup and escapes every
string on the way out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vtbench.report import fmt
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

    def group_key(self) -> tuple[str, str, str, str]:
        proto, ds = as_dict(self.record.get("protocol")), as_dict(self.record.get("dataset"))
        return (as_text(proto.get("task"), "unknown"), as_text(ds.get("id"), "unknown"),
                as_text(proto.get("name"), "unknown"), as_text(proto.get("version"), "?"))


def assign_slugs(entries: list[Entry]) -> None:
    """Give each tokenizer name one page slug; different names that slug alike get -2, -3 ..."""
    by_name: dict[str, str] = {}
    taken: set[str] = set(RESERVED_SLUGS)
    for e in entries:
        if e.name not in by_name:
            base = s = slug(e.name)
            i = 2
            while s.lower() in taken:  # case-insensitive file systems
                s, i = f"{base}-{i}", i + 1
            taken.add(s.lower())
            by_name[e.name] = s
        e.slug = by_name[e.name]


@dataclass(frozen=True)
class Cell:
    text: str
    value: float | None = None
    sort_key: float | str | None = None  # None sorts last in either direction
    title: str | None = None
    css: tuple[str, ...] = ()
    href: str | None = None


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
    """One rate-distortion curve: the variants of one (family, kind), e.g. jpeg.q10/q50/q90, by bpp."""

    label: str
    family: str
    kind: str
    reference: bool
    points: list[Point]


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

    @property
    def anchor(self) -> str:
        return slug(f"{self.task}-{self.dataset}-{self.protocol}-{self.protocol_version}")

    def quality_columns(self) -> list[Column]:
        return [c for c in self.table.columns if c.group == "quality"]


def metric_columns(entries: Iterable[Entry]) -> list[Column]:
    """Every metric key present in ``entries``, grouped and ordered, with metadata taken from the records."""
    meta: dict[str, dict[str, Any]] = {}
    for e in entries:
        for k, m in e.metrics.items():
            meta.setdefault(k, m)
    def order(k: str) -> tuple[int, int, str]:
        g = metric_group(k)
        fixed = {"quality": QUALITY_ORDER, "compression": COMPRESSION, "codebook": CODEBOOK, "speed": SPEED}[g]
        return (GROUPS.index(g), fixed.index(k) if k in fixed else len(fixed), k)
    cols = []
    for k in sorted(meta, key=order):
        m = meta[k]
        hib = m.get("higher_is_better")
        hib = hib if isinstance(hib, bool) else None
        header = as_text(m.get("display_name")) or k
        unit = as_text(m.get("unit"))
        direction = {True: "higher is better", False: "lower is better", None: "neither higher nor lower is better"}
        cols.append(Column(k, header, unit, hib, metric_group(k),
                           f"{k}{f' ({unit})' if unit else ''}: {direction[hib]}"))
    return cols


def _metric_cell(entry: Entry, col: Column) -> Cell:
    m = entry.metrics.get(col.key)
    if m is None:
        return Cell(NULL_TEXT, title="not measured in this run")
    raw = m.get("value")
    v = number(raw)
    if v is None:
        if raw is None:
            return Cell(NULL_TEXT, title=as_text(m.get("reason")) or "not available")
        return Cell(as_text(raw), title=as_text(m.get("reason")) or None)  # not a number: shown as text
    title = as_text(m.get("reason")) or as_text(as_dict(m.get("extra")).get("warning")) or None
    return Cell(fmt(v), value=v, sort_key=None if math.isnan(v) else v, title=title)


def _mark_best(rows: list[Row], entries: list[Entry], columns: list[Column], first: int) -> None:
    """Bold the best value of each directed column among non-reference rows (ties all marked)."""
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
                rows[i].cells[first + j] = Cell(c.text, c.value, c.sort_key,
                                                ((c.title + "; ") if c.title else "") + "best non-reference value",
                                                c.css + ("best",), c.href)


def build_table(title: str, entries: list[Entry], link_prefix: str = "tokenizers/") -> Table:
    mcols = metric_columns(entries)
    fixed = [Column("_tokenizer", "Tokenizer", group="run",
                    title="tokenizer (family.variant); grey rows are references"),
             Column("_kind", "Kind", group="run", title="quantiser kind, or reference / codec"),
             Column("_n", "N", "images", group="run", title="images used")]
    rows = []
    for e in entries:
        n = number(as_dict(e.record.get("dataset")).get("n_used"))
        cells = [Cell(e.name, sort_key=e.name.lower(), title=as_text(e.tokenizer.get("description")) or None,
                      href=f"{link_prefix}{e.slug}.html"),
                 Cell(e.kind or NULL_TEXT, sort_key=e.kind.lower() or None),
                 Cell(fmt(int(n)) if n is not None else NULL_TEXT, n, n)]
        cells += [_metric_cell(e, c) for c in mcols]
        rows.append(Row(cells, ("ref",) if e.reference else ()))
    _mark_best(rows, entries, mcols, len(fixed))
    return Table(title, fixed + mcols, rows)


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
        if (fam, kind_key) in sweeps:
            label = f"{sweeps[(fam, kind_key)]} (k sweep)" if len(members) > 1 else members[0].name
        elif len(members) == 1:
            label = members[0].name
        else:
            label = fam if kinds_per_family[fam] == 1 else f"{fam} ({kind})"
        out.append(Series(label, fam, kind, all(e.reference for e in members), pts))
    return out


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


def build_sections(entries: list[Entry]) -> list[Section]:
    """Group records by (protocol task, dataset, protocol name, protocol version); one table per group."""
    groups: dict[tuple[str, str, str, str], list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.group_key(), []).append(e)
    out = []
    for key in sorted(groups, key=lambda k: (_task_order(k[0]), k[1:])):
        task, ds, proto, ver = key
        members = sorted(groups[key], key=lambda e: (e.reference, e.family, e.value("bpp") or 0.0, e.name))
        table = build_table(f"{ds} · {proto} v{ver}", members)
        quality = [c.key for c in table.columns if c.group == "quality"]
        notes = sorted({as_text(as_dict(m.get("extra")).get("warning")) for e in members
                        for m in e.metrics.values()} - {""})
        out.append(Section(task, ds, proto, ver, members, table, rd_series(members, quality), _facts(members), notes))
    return out
