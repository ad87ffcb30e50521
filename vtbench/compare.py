"""Regression gate: compare NEW results against BASELINE results, metric by metric, with tolerances.

Records (``result.json``) are matched by (tokenizer name, dataset id). A matched pair is comparable only when
both sides ran the same protocol (name and version) on the same data (dataset revision, split, subset
selection, images used, preprocessing policy); otherwise the pair is *incomparable* and the verdict is exit 2.

The rule, per metric, with b = baseline value, n = new value (tolerances from ``metrics/compare.toml``,
overridable by a file and by flags; see ``load_tolerances``)::

    allowed = max(abs, rel * |b|)            # missing abs / rel count as 0; rel is ignored when b is +-inf
    worse   = b - n  (higher is better)  or  n - b  (lower is better)
    regressed  if  worse > allowed + slack,  improved  if  -worse > allowed + slack,  ok otherwise
    slack   = 1e-9 * max(1, |b|, |n|)         # float noise only: a move of exactly `allowed` passes

The direction is the record's ``higher_is_better`` unless the tolerances set ``direction`` ("higher", "lower",
"none"). A metric with no direction is informational: shown with its delta, never gates. For a gated metric:
a number on the baseline and null (or absent) on the new side is a regression ("metric became unavailable:
<reason>"), NaN on either side is a regression, null on both sides is skipped (shown with the reason), and
null on the baseline only is reported as new. Records only in BASELINE are *missing* (a failure unless
``allow_missing``); records only in NEW are *new* (never a failure).

Exit codes: 0 nothing regressed; 1 a regression (or a missing record/metric); 2 the inputs cannot be
compared (unreadable input, protocol or dataset mismatch, no pair in common, an invalid tolerance). A malformed
record (``vtbench.results.RecordError``: bad JSON, NaN, an unknown schema) or a metric value that is not a number
is incomparable, never a regression: exit 2, with the file and line, while every other pair is still compared.
A run that failed (``run.failed``, e.g. a tokenizer that produced NaN pixels) has every metric null with the
failure as the reason, so it regresses each gated metric of its baseline.
This module computes; it prints nothing (``vtbench compare`` renders the ``Report``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from vtbench._compat import tomllib
from vtbench.paths import PROTOCOLS_DIR
from vtbench.registry import did_you_mean
from vtbench.report import fmt
from vtbench.results import check_record, iter_records, upgrade

DEFAULT_TOLERANCES = PROTOCOLS_DIR / "compare.toml"
STATUSES = ("ok", "improved", "regressed", "missing", "new", "incomparable", "info")
EXIT_OK, EXIT_REGRESSION, EXIT_INCOMPARABLE = 0, 1, 2
_DIRECTIONS = {"higher": True, "lower": False, "none": None}
_SLACK = 1e-9


class CompareInputError(ValueError):
    """The inputs or the tolerances cannot be used at all (exit 2)."""


# -- tolerances ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move in its worse direction: ``max(abs, rel * |baseline|)``."""

    abs: float = 0.0
    rel: float = 0.0
    direction: str | None = None  # "higher" / "lower" / "none" overrides the record; None: the record's

    def allowed(self, baseline: float) -> float:
        return max(self.abs, self.rel * abs(baseline) if math.isfinite(baseline) else 0.0)

    def describe(self) -> str:
        parts = ([f"abs {self.abs:g}"] if self.abs else []) + ([f"rel {self.rel:g}"] if self.rel else [])
        return " | ".join(parts) or "exact"


@dataclass
class Tolerances:
    """Per-metric tolerances; metrics not listed use ``default``."""

    default: Tolerance = field(default_factory=Tolerance)
    metrics: dict[str, Tolerance] = field(default_factory=dict)
    version: str | None = None
    sources: list[str] = field(default_factory=list)
    flagged: set[str] = field(default_factory=set)  # metrics named by --abs/--rel (checked against the results)

    def get(self, metric: str) -> Tolerance:
        return self.metrics.get(metric, self.default)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise CompareInputError(f"{where}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _tolerance_fields(doc: Any, where: str, allow_direction: bool = True) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise CompareInputError(f"{where}: expected a table of abs / rel / direction, got {doc!r}")
    allowed = ("abs", "rel", "direction") if allow_direction else ("abs", "rel")
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if k not in allowed:
            raise CompareInputError(f"{where}: unknown key {k!r} (allowed: {', '.join(allowed)})")
        if k == "direction":
            if v not in _DIRECTIONS:
                raise CompareInputError(f"{where}.direction: {v!r}; "
                                        f"expected one of {', '.join(map(repr, _DIRECTIONS))}")
            out[k] = v
        else:
            out[k] = _number(v, f"{where}.{k}")
    return out


def _merge_file(tols: Tolerances, path: Path) -> None:
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CompareInputError(f"tolerance file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise CompareInputError(f"{path}: invalid TOML ({exc})") from None
    unknown = set(doc) - {"name", "version", "task", "description", "default", "tolerances"}
    if unknown:
        raise CompareInputError(f"{path}: unknown top-level key(s) {sorted(unknown)} "
                                "(expected [default] and [tolerances.<metric>] tables)")
    if "default" in doc:
        tols.default = replace(tols.default, **_tolerance_fields(doc["default"], f"{path}: [default]", False))
    table = doc.get("tolerances", {})
    if not isinstance(table, dict):
        raise CompareInputError(f"{path}: 'tolerances' must be a table of [tolerances.<metric>] tables")
    for metric, sub in table.items():
        fields = _tolerance_fields(sub, f"{path}: [tolerances.{metric}]")
        tols.metrics[metric] = replace(tols.metrics.get(metric, Tolerance()), **fields)
    if "version" in doc and tols.version is None:  # the base file's version names the defaults in use
        tols.version = str(doc["version"])
    tols.sources.append(str(path))


def parse_overrides(items: Iterable[str] | None, flag: str) -> dict[str, float]:
    """``["psnr=0.1", ...]`` -> ``{"psnr": 0.1}`` (for ``--abs`` / ``--rel``)."""
    out: dict[str, float] = {}
    for item in items or []:
        metric, sep, value = item.partition("=")
        metric = metric.strip()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not metric:
            raise CompareInputError(f"{flag} {item!r}: expected METRIC=VALUE, e.g. {flag} psnr=0.1")
        out[metric] = _number(number, f"{flag} {item!r}")
    return out


def load_tolerances(file: str | Path | None = None, abs_overrides: Mapping[str, float] | None = None,
                    rel_overrides: Mapping[str, float] | None = None,
                    base: str | Path | None = DEFAULT_TOLERANCES) -> Tolerances:
    """``base`` (the versioned defaults), then ``file`` merged over it key by key, then the flags.

    A flag for a metric that has no entry starts from ``[default]``; an entry in a file replaces only the keys
    it names (set ``rel = 0`` to drop an inherited relative tolerance).
    """
    tols = Tolerances()
    for path in (base, file):
        if path is not None:
            _merge_file(tols, Path(path))
    for key, overrides in (("abs", abs_overrides or {}), ("rel", rel_overrides or {})):
        for metric, value in overrides.items():
            start = tols.metrics.get(metric, replace(tols.default, direction=None))
            tols.metrics[metric] = replace(start, **{key: value})
            tols.flagged.add(metric)
    if abs_overrides or rel_overrides:
        tols.sources.append("flags: " + " ".join([f"--abs {m}={v:g}" for m, v in (abs_overrides or {}).items()]
                                                 + [f"--rel {m}={v:g}" for m, v in (rel_overrides or {}).items()]))
    return tols


# -- report ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the verdict; ``metric`` is None for record-level rows (missing / new / incomparable)."""

    tokenizer: str
    dataset: str
    metric: str | None
    status: str
    baseline: float | None = None
    new: float | None = None
    delta: float | None = None  # new - baseline
    tolerance: float | None = None  # the allowed move in the worse direction (gated metrics only)
    higher_is_better: bool | None = None
    unit: str = ""
    note: str = ""
    reason: str | None = None  # why a value is null (also inside ``note``); views state each reason once

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("baseline", "new", "delta", "tolerance"):  # JSON has no NaN / inf
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = None
        return d


@dataclass
class Pair:
    """Provenance of one compared (tokenizer, dataset)."""

    tokenizer: str
    dataset: str
    baseline_path: str | None = None
    new_path: str | None = None
    baseline_weights: str | None = None
    new_weights: str | None = None
    protocol: str | None = None


@dataclass
class Report:
    new: str
    baseline: str
    rows: list[Row] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # reasons the inputs as a whole cannot be compared
    allow_missing: bool = False
    tolerances_version: str | None = None
    tolerance_sources: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.status == "regressed" or (r.status == "missing" and not self.allow_missing)]

    @property
    def exit_code(self) -> int:
        if self.problems or self.count("incomparable"):
            return EXIT_INCOMPARABLE
        return EXIT_REGRESSION if self.failures() else EXIT_OK

    @property
    def verdict(self) -> str:
        code = self.exit_code
        if code == EXIT_INCOMPARABLE:
            reasons = self.problems + [f"{r.tokenizer} on {r.dataset}: {r.note}"
                                       for r in self.rows if r.status == "incomparable"]
            return "INCOMPARABLE: " + "; ".join(reasons)
        if code == EXIT_REGRESSION:
            fails = self.failures()
            shown = "; ".join(describe_failure(r) for r in fails[:3]) + (" ..." if len(fails) > 3 else "")
            return f"REGRESSED: {len(fails)} failure{'s' * (len(fails) != 1)}: {shown}"
        gated = sum(r.status in ("ok", "improved") for r in self.rows)
        extra = [f"{self.count('improved')} improved"] if self.count("improved") else []
        extra += [f"{self.count('info')} informational"] if self.count("info") else []
        extra += [f"{self.count('new')} new"] if self.count("new") else []
        extra += [f"{self.count('missing')} missing (allowed)"] if self.count("missing") else []
        tail = f" ({', '.join(extra)})" if extra else ""
        return f"PASS: {gated} gated metric{'s' * (gated != 1)} within tolerance{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "exit_code": self.exit_code, "new": self.new, "baseline": self.baseline,
                "problems": self.problems, "allow_missing": self.allow_missing,
                "tolerances": {"version": self.tolerances_version, "sources": self.tolerance_sources},
                "counts": {s: self.count(s) for s in STATUSES},
                "pairs": [asdict(p) for p in self.pairs], "rows": [r.to_dict() for r in self.rows]}


def describe_failure(r: Row) -> str:
    where = f"{r.tokenizer} on {r.dataset}" + (f" {r.metric}" if r.metric else "")
    if r.status == "regressed" and r.delta is not None and math.isfinite(r.delta):
        unit = f" {r.unit}" if r.unit else ""
        return f"{where} {fmt(r.baseline)} -> {fmt(r.new)} ({r.delta:+.4g}{unit}, allowed {r.tolerance:.4g})"
    return f"{where}: {r.note or r.status}"


# -- the comparison --------------------------------------------------------------------------------------


class _Malformed(ValueError):
    """A metric entry whose value is neither null nor a number: the pair cannot be compared (exit 2)."""


def _value(m: Mapping[str, Any] | None) -> float | None:
    if m is not None and not isinstance(m, Mapping):
        raise _Malformed(f"metric entry is {type(m).__name__}, not an object")
    v = None if m is None else m.get("value")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Malformed(f"value {v!r:.60} is not a number")
    return float(v)


def _reason(m: Mapping[str, Any] | None) -> str:
    return (m or {}).get("reason") or "no reason recorded"


def compare_metric(tokenizer: str, dataset: str, metric: str, base: Mapping[str, Any] | None,
                   new: Mapping[str, Any] | None, tol: Tolerance) -> Row:
    """One metric of one matched pair (``base`` / ``new``: the records' metric entries, None when absent)."""
    try:
        b, n = _value(base), _value(new)
    except _Malformed as exc:  # a damaged record is never read as a regression (exit 1), it cannot be compared
        return Row(tokenizer, dataset, metric, "incomparable", note=f"malformed metric entry: {exc}")
    row = Row(tokenizer, dataset, metric, "info", unit=(base or new or {}).get("unit") or "")
    if tol.direction is not None:
        hib = _DIRECTIONS[tol.direction]
    else:
        hb, hn = (base or {}).get("higher_is_better"), (new or {}).get("higher_is_better")
        if hb is not None and hn is not None and hb != hn:
            row.status, row.note = "incomparable", f"direction differs: baseline higher_is_better={hb}, new {hn}"
            return row
        hib = hb if hb is not None else hn
    row.higher_is_better = hib
    row.baseline, row.new = b, n
    if n is None and new is not None and new.get("reason"):
        row.reason = str(new["reason"])
    elif b is None and base is not None and base.get("reason"):
        row.reason = str(base["reason"])
    if b is not None and n is not None and math.isfinite(b) and math.isfinite(n):
        row.delta = n - b
    elif b is not None and n is not None and b == n:
        row.delta = 0.0  # equal infinities
    if hib is None:
        why = "direction = none in tolerances" if tol.direction == "none" else "no direction"
        row.note = (f"informational ({why})" + ("; absent from new results" if new is None else "")
                    + (f"; new: {_reason(new)}" if new is not None and n is None else ""))
        return row
    if base is None:
        row.status, row.note = "new", "not in the baseline"
        return row
    if b is None and n is None:  # nothing was gated (includes: null in the baseline, absent from NEW)
        row.note = f"skipped: no value on either side ({_reason(new if new is not None else base)})"
        return row
    if new is None:
        row.status, row.note = "missing", "not in the new results (was it dropped from --metrics?)"
        return row
    if b is None:
        row.status, row.note = "new", f"baseline had no value ({_reason(base)}); not gated"
        return row
    if n is None:
        row.status, row.note = "regressed", f"metric became unavailable: {_reason(new)}"
        return row
    if math.isnan(b) or math.isnan(n):
        row.status = "regressed"
        row.note = ("new value is not a number" if math.isnan(n)
                    else "baseline value is not a number: regenerate the baseline")
        return row
    row.tolerance = allowed = tol.allowed(b)
    if b == n:
        worse = 0.0
    else:
        worse = (b - n) if hib else (n - b)  # +-inf when one side is infinite: always outside any tolerance
    slack = _SLACK * max(1.0, abs(b) if math.isfinite(b) else 0.0, abs(n) if math.isfinite(n) else 0.0)
    if worse > allowed + slack:
        row.status = "regressed"
    elif -worse > allowed + slack:
        row.status = "improved"
    else:
        row.status = "ok"
    row.note = f"{'higher' if hib else 'lower'} is better; tolerance {tol.describe()}"
    return row


def _policy(ds: Mapping[str, Any]) -> Any:
    p = ds.get("policy")
    return {k: p.get(k) for k in ("name", "version", "resolution")} if isinstance(p, dict) else p


def incomparable_reasons(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why two records of the same (tokenizer, dataset) cannot be compared (empty: they can)."""
    reasons = []
    bp, np_ = base.get("protocol") or {}, new.get("protocol") or {}
    if (bp.get("name"), str(bp.get("version"))) != (np_.get("name"), str(np_.get("version"))):
        reasons.append(f"protocol differs: new {np_.get('name')}@{np_.get('version')}, "
                       f"baseline {bp.get('name')}@{bp.get('version')} "
                       "(regenerate the baseline under the new protocol)")
    elif bp.get("settings_sha256") != np_.get("settings_sha256"):
        reasons.append(f"protocol settings differ under the same version {np_.get('name')}@{np_.get('version')}: "
                       f"new {np_.get('settings_sha256')}, baseline {bp.get('settings_sha256')} (a protocol file was "
                       "edited without a version bump, or the baseline predates recorded settings; regenerate it)")
    bd, nd = base.get("dataset") or {}, new.get("dataset") or {}
    failed = any((r.get("run") or {}).get("failed") for r in (base, new))  # a failed run stops early: n_used moves
    for key, label in (("revision", "dataset revision"), ("split", "split"),
                       ("selection", "subset selection (--limit/--seed)"), ("n_used", "images used")):
        if key == "n_used" and failed:
            continue
        if bd.get(key) != nd.get(key):
            reasons.append(f"{label} differs: new {nd.get(key)!r}, baseline {bd.get(key)!r}")
    if _policy(bd) != _policy(nd):
        reasons.append(f"preprocessing differs: new {_policy(nd)}, baseline {_policy(bd)}")
    return reasons


def _index(records: Iterable[tuple[Any, Mapping[str, Any]]], side: str) -> dict[tuple[str, str], tuple[str, dict]]:
    out: dict[tuple[str, str], tuple[str, dict]] = {}
    for path, rec in records:
        try:
            rec = check_record(upgrade(dict(rec)), path, strict=False)  # in memory: inf/NaN possible
        except (ValueError, TypeError) as exc:
            raise CompareInputError(f"{side} {path}: not a usable vtbench result ({exc})") from None
        try:
            key = (str(rec["tokenizer"]["name"]), str(rec["dataset"]["id"]))
            proto = rec.get("protocol") or {}
            if proto.get("task") == "generation":  # gfid / probe results sit beside the run of the same pair
                adm = ", ADM resize" if (rec.get("run") or {}).get("resize") == "tf-bilinear" else ""
                key = (key[0], f"{key[1]} ({proto.get('name')}{adm})")
        except (KeyError, TypeError):
            raise CompareInputError(f"{side} {path}: not a vtbench result (no tokenizer.name / dataset.id)") from None
        if key in out:
            raise CompareInputError(f"{side} has two results for {key[0]} on {key[1]}: {out[key][0]} and {path}; "
                                    "point at one results directory per run")
        out[key] = (str(path), rec)
    return out


def compare_records(new: Iterable[tuple[Any, Mapping[str, Any]]], baseline: Iterable[tuple[Any, Mapping[str, Any]]],
                    tolerances: Tolerances | None = None, allow_missing: bool = False,
                    new_label: str = "NEW", baseline_label: str = "BASELINE") -> Report:
    """Compare ``(source, record)`` pairs (as ``vtbench.results.iter_records`` yields them)."""
    tols = tolerances if tolerances is not None else load_tolerances()
    report = Report(new=new_label, baseline=baseline_label, allow_missing=allow_missing,
                    tolerances_version=tols.version, tolerance_sources=list(tols.sources))
    new_ix, base_ix = _index(new, "NEW"), _index(baseline, "BASELINE")
    for side, ix in (("NEW", new_ix), ("BASELINE", base_ix)):
        if not ix:
            report.problems.append(f"{side} ({new_label if side == 'NEW' else baseline_label}) holds no readable "
                                   "result.json")
    if report.problems:
        return report
    keys = set(new_ix) | set(base_ix)
    if not set(new_ix) & set(base_ix):
        report.problems.append("no (tokenizer, dataset) in common: NEW has "
                               + ", ".join(f"{t} on {d}" for t, d in sorted(new_ix)) + "; BASELINE has "
                               + ", ".join(f"{t} on {d}" for t, d in sorted(base_ix)))
    all_metrics: set[str] = set()
    for tok, ds in sorted(keys):
        bpath, brec = base_ix.get((tok, ds), (None, None))
        npath, nrec = new_ix.get((tok, ds), (None, None))
        pair = Pair(tok, ds, bpath, npath, (brec or {}).get("tokenizer", {}).get("weights_sha256"),
                    (nrec or {}).get("tokenizer", {}).get("weights_sha256"))
        report.pairs.append(pair)
        if nrec is None:
            report.rows.append(Row(tok, ds, None, "missing",
                                   note=f"in the baseline ({bpath}) but not in the new results"))
            continue
        if brec is None:
            report.rows.append(Row(tok, ds, None, "new", note="not in the baseline; not gated"))
            continue
        proto = nrec.get("protocol") or {}
        pair.protocol = f"{proto.get('name')}@{proto.get('version')}"
        reasons = incomparable_reasons(brec, nrec)
        if reasons:
            report.rows.append(Row(tok, ds, None, "incomparable", note="; ".join(reasons)))
            continue
        bm, nm = brec.get("metrics") or {}, nrec.get("metrics") or {}
        all_metrics |= set(bm) | set(nm)
        for metric in list(bm) + [k for k in nm if k not in bm]:
            report.rows.append(compare_metric(tok, ds, metric, bm.get(metric), nm.get(metric), tols.get(metric)))
    for metric in sorted(tols.flagged - all_metrics):
        report.problems.append(f"--abs/--rel names {did_you_mean(metric, all_metrics, 'metric')}")
    return report


def compare(new: str | Path, baseline: str | Path, tolerances: Tolerances | None = None,
            allow_missing: bool = False) -> Report:
    """Compare two results directories (or single ``result.json`` files). Raises ``CompareInputError`` when an
    input does not exist or cannot be read."""
    sides, malformed = [], []
    for label, path in (("NEW", Path(new)), ("BASELINE", Path(baseline))):
        if not path.exists():
            raise CompareInputError(f"{label} {path} does not exist")
        try:  # a malformed record is incomparable (exit 2), never a regression; the other records are still shown
            sides.append(list(iter_records(path, on_error=lambda p, err, label=label:
                                           malformed.append(f"{label} record unreadable: {err}"))))
        except (ValueError, OSError) as exc:
            raise CompareInputError(f"{label}: {exc}") from None
    report = compare_records(sides[0], sides[1], tolerances, allow_missing, str(new), str(baseline))
    report.problems[:0] = malformed
    return report


# -- JUnit XML -------------------------------------------------------------------------------------------

# XML 1.0 cannot carry most control characters or lone surrogates, even escaped.
