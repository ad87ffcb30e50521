"""The "reported by the authors" layer: every registered card's published numbers, and their calibration against
vtbench's measurements.

A card's ``[[variants.X.published]]`` entry (``vtbench.cards.PUBLISHED_FIELDS``: metric, value, dataset,
resolution, protocol note, source, tolerance, setting) becomes one ``Reported`` number. These are never measured by
vtbench: the site shows them in their own rows, marked, sorted apart from measured rows and drawn hollow in plots.

Where vtbench measured the same tokenizer, metric and dataset (the record's dataset id equals the card's
``dataset``) at the same resolution, ``calibrations`` pairs the two: measured minus reported and whether the
difference is within the card's ``tolerance`` (the calibration status), with the card's protocol note, which says
how the authors' protocol differs from vtbench's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from vtbench.cards import TokenizerCard
    from vtbench.leaderboard.view import Entry


@dataclass(frozen=True)
class Reported:
    """One published number of one tokenizer, as its card states it."""

    tokenizer: str  # the card it is shown under (a sweep's setting card for a number with ``setting``)
    family: str
    kind: str
    metric: str
    value: float
    dataset: str
    source: str
    resolution: int | None = None
    protocol_note: str = ""
    tolerance: float | None = None
    calibrate: bool = False
    setting: float | None = None
    also: tuple[str, ...] = ()  # other tokenizer names that run the same setting (a sweep's group variant)
    card_path: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """Every tokenizer name whose measurement this number can be compared with."""
        return (self.tokenizer, *self.also)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": "reported", "tokenizer": self.tokenizer, "family": self.family, "kind": self.kind,
                "metric": self.metric, "value": self.value, "dataset": self.dataset, "resolution": self.resolution,
                "setting": self.setting, "protocol_note": self.protocol_note, "source": self.source,
                "tolerance": self.tolerance, "calibrate": self.calibrate, "card": self.card_path}


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def reported_numbers(cards: Mapping[str, "TokenizerCard"]) -> list[Reported]:
    """Every published number of every card, each once.

    A rate sweep's group variant (``restok.l-128``) declares the numbers of its settings with ``setting = k``; each
    such number is shown under its setting's tokenizer (``restok.l-128-k128``) and, where the group variant itself
    runs that setting (its own ``params[param]``), is also compared with the group variant's measurements."""
    out: list[Reported] = []
    for name, card in sorted(cards.items()):
        sweep = card.sweep or {}
        if "group" in sweep:  # a setting's card: its numbers are the group's entries with its setting
            continue
        own_value = card.params.get(sweep["param"]) if sweep.get("param") else None
        settings = {v: n for v, n in zip(sweep.get("values") or [], card.sweep_settings)}
        for p in card.published or []:
            value = _num(p.get("value"))
            if value is None:
                continue
            setting = _num(p.get("setting"))
            owner, also = name, ()
            if setting is not None and setting in settings:
                owner = settings[setting]
                also = (name,) if own_value == setting else ()
            out.append(Reported(
                tokenizer=owner, family=card.family, kind=card.kind, metric=str(p.get("metric")), value=value,
                dataset=str(p.get("dataset")), source=str(p.get("source", "")),
                resolution=p.get("resolution") if isinstance(p.get("resolution"), int) else None,
                protocol_note=str(p.get("protocol", "")), tolerance=_num(p.get("tolerance")),
                calibrate=p.get("calibrate") is True, setting=setting, also=also, card_path=card.card_path))
    return out


@functools.lru_cache(maxsize=1)
def metric_outputs() -> dict[str, dict[str, Any]]:
    """Display name, unit and direction of every registered metric output (for columns that only reported numbers
    fill; a measured record's own metadata takes precedence)."""
    try:
        from vtbench.metrics import METRICS
    except Exception:  # pragma: no cover - the registry imports torch; the site still builds without it
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name in METRICS.names():
        try:
            cls = METRICS.get(name)
        except Exception:  # pragma: no cover - a metric whose optional dependency is missing
            continue
        for o in getattr(cls, "outputs", ()):
            out.setdefault(o.key, {"display_name": o.display_name, "unit": o.unit,
                                   "higher_is_better": o.higher_is_better})
    return out


def record_resolution(record: Mapping[str, Any]) -> int | None:
    policy = (record.get("dataset") or {}).get("policy") if isinstance(record.get("dataset"), dict) else None
    res = policy.get("resolution") if isinstance(policy, dict) else None
    return res if isinstance(res, int) and not isinstance(res, bool) else None


@dataclass(frozen=True)
class Calibration:
    """A measured value beside the published number it can be compared with."""

    reported: Reported
    tokenizer: str
    measured: float
    n_used: int | None
    n_total: int | None
    entry_slug: str
    record_dataset: str

    @property
    def difference(self) -> float:
        return self.measured - self.reported.value

    @property
    def within(self) -> bool | None:
        """Whether |measured - reported| <= tolerance (None: the card states no tolerance, or not finite)."""
        tol = self.reported.tolerance
        d = self.difference
        if tol is None or not math.isfinite(d):
            return None
        return abs(d) <= tol

    @property
    def subset(self) -> bool:
        return self.n_used is not None and self.n_total is not None and self.n_used < self.n_total

    @property
    def status(self) -> str:
        """The calibration status in words (the site's "status" column)."""
        w = self.within
        if w is None:
            text = "no tolerance on the card" if self.reported.tolerance is None else "not comparable"
        else:
            text = "within tolerance" if w else "outside tolerance"
        if not self.reported.calibrate:
            text += "; not a calibration target (protocols differ, see the note)"
        if self.subset:
            text += f"; measured on a subset ({self.n_used} of {self.n_total} images)"
        return text

    @property
    def css(self) -> str:
        w = self.within
        if w is None or not self.reported.calibrate or self.subset:
            return "cal-na" if w is None else ("cal-ok-info" if w else "cal-off-info")
        return "cal-ok" if w else "cal-off"

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "metric": self.reported.metric, "dataset": self.reported.dataset,
                "resolution": self.reported.resolution, "measured": self.measured, "reported": self.reported.value,
                "difference": self.difference, "tolerance": self.reported.tolerance, "within_tolerance": self.within,
                "calibrate": self.reported.calibrate, "status": self.status, "n_used": self.n_used,
                "n_total": self.n_total, "protocol_note": self.reported.protocol_note,
                "source": self.reported.source}


def matches(rep: Reported, entry: "Entry") -> bool:
    """Whether ``entry`` measured what ``rep`` reports: same tokenizer (or the sweep's group running that setting),
    dataset id equal to the card's ``dataset``, and the card's resolution (when it states one)."""
    ds = entry.record.get("dataset") if isinstance(entry.record.get("dataset"), dict) else {}
    if entry.name not in rep.names or str(ds.get("id")) != rep.dataset:
        return False
    return rep.resolution is None or record_resolution(entry.record) == rep.resolution


def calibrations(reported: Iterable[Reported], entries: Iterable["Entry"]) -> list[Calibration]:
    """Every (published number, measured value) pair of the same tokenizer, metric, dataset and resolution."""
    entries = list(entries)
    out = []
    for rep in reported:
        for e in entries:
            if not matches(rep, e):
                continue
            v = e.value(rep.metric)
            if v is None:
                continue
            ds = e.record.get("dataset") if isinstance(e.record.get("dataset"), dict) else {}
            n_used, n_total = ds.get("n_used"), ds.get("n_total")
            out.append(Calibration(rep, e.name, v, n_used if isinstance(n_used, int) else None,
                                   n_total if isinstance(n_total, int) else None, e.slug, str(ds.get("id"))))
    return out
