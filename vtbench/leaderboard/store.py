"""The published results store (``leaderboard/store/``) and the only way into it, ``vtbench leaderboard add``.

Layout (one folder per record, named by its run fingerprint)::

    STORE/<dataset id>/<tokenizer>/<protocol>/<fingerprint>/result.json   # the record, byte for byte as produced
    STORE/.../<fingerprint>/samples.csv                                    # per-image values, when the run has them
    STORE/.../<fingerprint>/thumbs/*.png                                   # the thumbnails the record names
    STORE/.../<fingerprint>/seed-<s>/result.json                           # a seeds summary's per-seed records

``add`` checks every record before any enters (all or nothing): the schema version; the protocol's name, version
and settings hash equal to the current protocol's (``vtbench.results.protocol_section``); the dataset's identity;
complete provenance (vtbench version, timestamps, environment, run fingerprint, and the weights' sha256 where the
tokenizer's card has weights); the weights' sha256 equal to the one the card pins; finite metric values (a null
needs its reason); and no duplicate. A refusal names the file and every reason.

Duplicates: two records *measure the same thing* when they share the tokenizer, the dataset (id, revision,
selection, preprocessing policy), the protocol (name, version, settings) and the run settings that move numbers
(seed, precision, decoder seeds; ``measurement_key``). A record that measures the same thing as a stored one and
shares a metric with it is a duplicate: refused unless ``--replace``. One that adds *other* metrics of the same
measurement (a later ``--metrics rfid`` run beside an earlier ``psnr,ssim`` run) is kept beside it, and the site
merges the two metric by metric (``view.merge_entries``): a run that selects fewer metrics never erases the metrics
of an earlier one. ``--replace`` removes the stored records it supersedes: those whose metrics it all carries, and
those measured with other weights; a stored record that still holds metrics the new one lacks stays, and the newer
record's values win where both have a metric.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from vtbench.results import RESULT_FILE, SAMPLES_FILE, SCHEMA_VERSION, iter_record_paths, protocol_section, slug

STORE_DIR = Path("leaderboard") / "store"  # relative to the working directory, as `vtbench run`'s results/
SITE_DIR = Path("leaderboard") / "site"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# run-section keys that say how a run was executed, not what it measured (left out of the measurement key)
_HOW = frozenset({"fingerprint", "batch_size", "metrics_selected", "processes", "world_size", "workers",
                  "per_seed_records", "reference_spec", "samples_spec", "trust_checkpoint"})


def _d(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def measurement_key(record: Mapping[str, Any], weights: bool = True) -> str:
    """What a record measured, as 16 hex digits: tokenizer (and its weights' sha256 when ``weights``), dataset
    identity and preprocessing, protocol name/version/settings and the run settings that move numbers, but not
    which metrics were selected nor how the run was executed (batch size, processes)."""
    tok, ds, proto, run = (_d(record.get(k)) for k in ("tokenizer", "dataset", "protocol", "run"))
    parts = {
        "tokenizer": tok.get("name"),
        "protocol": [proto.get("task"), proto.get("name"), proto.get("version"), proto.get("settings_sha256")],
        "dataset": [ds.get("id"), ds.get("revision"), ds.get("file_sha256"), ds.get("selection"), ds.get("policy")],
        "run": {"precision": "fp32", **{k: v for k, v in run.items() if k not in _HOW}},
        "samples": _d(record.get("samples")).get("sha256"),
    }
    if weights:
        parts["weights"] = tok.get("weights_sha256")
    canon = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def metric_keys(record: Mapping[str, Any]) -> set[str]:
    return set(_d(record.get("metrics")))


# -- checks -------------------------------------------------------------------------------------------------

def current_protocols() -> dict[str, dict[str, Any]]:
    """``protocol_section`` of every evaluation protocol, by the name records carry."""
    from vtbench.config import list_protocols, load_protocol
    out = {}
    for stem in list_protocols():
        p = load_protocol(stem)
        if p.task != "compare":
            out[p.name] = protocol_section(p)
    return out


def _text(x: Any) -> bool:
    return isinstance(x, str) and x.strip() != ""


def check_record(record: Any, cards: Mapping[str, Any], protocols: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every reason ``record`` cannot enter the store (empty: it can). ``cards``: registered cards by name;
    ``protocols``: ``current_protocols()``."""
    if not isinstance(record, dict):
        return [f"not a result record (a JSON object), got {type(record).__name__}"]
    why: list[str] = []
    sv = record.get("schema_version")
    if not isinstance(sv, int) or isinstance(sv, bool):
        why.append("no schema_version: not a vtbench result record")
    elif sv > SCHEMA_VERSION:
        why.append(f"schema_version {sv} is newer than this vtbench's ({SCHEMA_VERSION}); upgrade vtbench")
    elif sv != SCHEMA_VERSION:
        why.append(f"schema_version {sv}: the store takes schema {SCHEMA_VERSION} records; re-run with this vtbench")

    proto = _d(record.get("protocol"))
    name = proto.get("name")
    if not _text(name):
        why.append("no protocol name (protocol.name)")
    elif name not in protocols:
        why.append(f"protocol {name!r} is not a known protocol (known: {', '.join(sorted(protocols))})")
    else:
        cur = protocols[name]
        if str(proto.get("version")) != cur["version"]:
            why.append(f"protocol {name} version {proto.get('version')!r} is not the current version {cur['version']}"
                       f"; re-run with this vtbench")
        if proto.get("task") != cur["task"]:
            why.append(f"protocol {name} task {proto.get('task')!r} is not {cur['task']!r}")
        if proto.get("settings_sha256") != cur["settings_sha256"]:
            why.append(f"protocol {name} settings_sha256 {proto.get('settings_sha256')!r} is not the current "
                       f"settings' {cur['settings_sha256']} (measured under edited protocol settings); re-run with "
                       f"the published metrics/{name}.toml")

    ds = _d(record.get("dataset"))
    if not _text(ds.get("id")):
        why.append("no dataset identity (dataset.id)")
    if not (_text(ds.get("revision")) or _text(ds.get("file_sha256"))):
        why.append("no dataset revision (dataset.revision: the hash of the images' content)")
    n_used = ds.get("n_used")
    if not isinstance(n_used, int) or isinstance(n_used, bool) or n_used < 1:
        why.append(f"dataset.n_used is {n_used!r}: a published record needs at least one image evaluated")

    vt = _d(record.get("vtbench"))
    if not _text(vt.get("version")):
        why.append("incomplete provenance: no vtbench.version")
    for k in ("created", "finished"):
        if not _text(record.get(k)):
            why.append(f"incomplete provenance: no {k!r} timestamp")
    env = _d(record.get("environment"))
    missing = [k for k in ("python", "platform", "device", "torch") if not _text(env.get(k))]
    if missing:
        why.append(f"incomplete provenance: environment lacks {', '.join(missing)}")
    if not _text(_d(record.get("run")).get("fingerprint")):
        why.append("incomplete provenance: no run.fingerprint")

    tok = _d(record.get("tokenizer"))
    tname = tok.get("name")
    card = cards.get(tname) if isinstance(tname, str) else None
    if not _text(tname):
        why.append("no tokenizer name (tokenizer.name)")
    elif card is None:
        why.append(f"tokenizer {tname!r} is not a registered tokenizer (`vtbench ls tokenizers`); add its card to "
                   "tokenizers/ (or pass --cards) first")
    elif card.weights:
        got = tok.get("weights_sha256")
        pinned = (card.weights or {}).get("sha256")
        if not (isinstance(got, str) and _HEX64.fullmatch(got)):
            why.append(f"incomplete provenance: no tokenizer.weights_sha256 (the card {card.card_path} has weights; "
                       "the record must say which file was measured)")
        elif pinned:
            converted = _d(_d(tok.get("checkpoint")).get("converted_from")).get("sha256")
            if pinned not in (got, converted):
                why.append(f"weights sha256 {got} is not the one {card.card_path} pins for {tname} ({pinned}): "
                           "other weights; publish them under a card of their own")

    metrics = record.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        why.append("no metrics")
    else:
        for key, m in metrics.items():
            if not isinstance(m, dict):
                why.append(f"metric {key!r} is not an object")
                continue
            v = m.get("value")
            if v is None:
                if not _text(m.get("reason")):
                    why.append(f"metric {key!r} is null without a reason")
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                why.append(f"metric {key!r} value {v!r} is not a number")
            elif not math.isfinite(v):
                why.append(f"metric {key!r} value {v!r} is not finite (a metric that cannot be computed is null "
                           "with a reason)")
    return why


# -- the store ----------------------------------------------------------------------------------------------

@dataclass
class Refusal:
    path: Path
    reasons: list[str]

    def __str__(self) -> str:
        return f"{self.path}: refused: " + "; ".join(self.reasons)


class StoreRefused(ValueError):
    """One or more records were refused; nothing entered the store."""

    def __init__(self, refusals: list[Refusal]):
        self.refusals = refusals
        super().__init__("\n".join(map(str, refusals)))


@dataclass
class Added:
    added: list[Path] = field(default_factory=list)  # store folders written
    removed: list[Path] = field(default_factory=list)  # store folders superseded (--replace)
    kept_beside: list[Path] = field(default_factory=list)  # same measurement, other metrics: merged on the site


def same_measurement(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Same tokenizer, dataset, protocol and settings (the weights may differ)."""
    return measurement_key(a, weights=False) == measurement_key(b, weights=False)


def _weights(r: Mapping[str, Any]) -> Any:
    return _d(r.get("tokenizer")).get("weights_sha256")


def conflicts(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """A duplicate: the same measurement with a shared metric, or with other weights."""
    return same_measurement(new, old) and (bool(metric_keys(new) & metric_keys(old)) or _weights(new) != _weights(old))


def superseded(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether ``--replace`` with ``new`` removes ``old``: a conflict whose metrics ``new`` all carries, or other
    weights. A conflicting ``old`` with metrics ``new`` lacks stays beside it (``new`` wins where both measure)."""
    return conflicts(new, old) and (metric_keys(old) <= metric_keys(new) or _weights(new) != _weights(old))


def _duplicates(path: Path, rec: Mapping[str, Any], others: list[tuple[Path, dict[str, Any]]],
                fix: str) -> list[str]:
    why = []
    for other_path, other in others:
        if not conflicts(rec, other):
            continue
        shared = sorted(metric_keys(rec) & metric_keys(other))
        what = (f"shared metrics {', '.join(shared)}" if _weights(rec) == _weights(other)
                else f"other weights: {_weights(other)}")
        why.append(f"duplicate of {other_path} (same tokenizer, dataset, protocol and settings; {what}); {fix}")
        if (not superseded(other, rec) and str(other.get("finished", "")) > str(rec.get("finished", ""))):
            why.append(f"--replace cannot take effect: {other_path} is newer and also holds metrics this record "
                       f"lacks ({', '.join(sorted(metric_keys(other) - metric_keys(rec)))}); add a record that "
                       "measures those too")
    return why


def record_folder(store: Path, record: Mapping[str, Any]) -> Path:
    ds, tok, proto, run = (_d(record.get(k)) for k in ("dataset", "tokenizer", "protocol", "run"))
    return (Path(store) / slug(str(ds.get("id"))) / slug(str(tok.get("name"))) / slug(str(proto.get("name")))
            / slug(str(run.get("fingerprint"))))


def _read(path: Path) -> tuple[Any, str | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read ({type(exc).__name__}: {exc})"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"


def _inside(base: Path, rel: Any) -> Path | None:
    """``base/rel`` when ``rel`` is a relative path that stays inside ``base`` (else None)."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        return None
    p = (base / rel).resolve()
    return p if base.resolve() in p.parents else None


def _companions(path: Path, record: Mapping[str, Any]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Files that travel with a record (samples table, thumbnails, per-seed records) as (source, relative name),
    and reasons to refuse (a named file outside the record's folder)."""
    base, files, why = path.parent, [], []
    if (base / SAMPLES_FILE).is_file():
        files.append((base / SAMPLES_FILE, SAMPLES_FILE))
    thumbs = record.get("thumbnails")
    for t in thumbs if isinstance(thumbs, list) else []:
        for k in ("original", "reconstruction"):
            rel = _d(t).get(k)
            src = _inside(base, rel)
            if src is None:
                why.append(f"thumbnail path {rel!r} is not inside the record's folder")
            elif src.is_file():
                files.append((src, str(src.relative_to(base.resolve()))))
    for rel in _d(record.get("run")).get("per_seed_records") or []:
        src = _inside(base, rel)
        if src is None:
            why.append(f"per-seed record {rel!r} is not inside the record's folder")
        elif src.is_file():
            files.append((src, str(src.relative_to(base.resolve()))))
    return files, why


def stored(store: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every record in the store as (its folder, record); unreadable files are an error naming the file."""
    out = []
    if not Path(store).is_dir():
        return out
    for p in iter_record_paths(store):
        rec, err = _read(p)
        if err or not isinstance(rec, dict):
            raise ValueError(f"{p}: {err or 'not a result record'}; the store holds only checked records: restore "
                             "it from version control")
        out.append((p.parent, rec))
    return out


def _sources(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for root in paths:
        root = Path(root)
        if root.is_dir():
            found = list(iter_record_paths(root))
            if not found:
                raise FileNotFoundError(f"{root}: no {RESULT_FILE} in this folder")
            out += found
        elif root.is_file():
            out.append(root)
        else:
            raise FileNotFoundError(f"{root}: no such result file or folder")
    return out


def add(paths: Iterable[Path], store: Path = STORE_DIR, replace: bool = False,
        cards: Mapping[str, Any] | None = None) -> Added:
    """Check every record under ``paths`` (files or folders) and copy them into ``store``; all or nothing:
    ``StoreRefused`` lists every refused file with its reasons and nothing is written."""
    if cards is None:
        from vtbench.config import all_cards
        cards = all_cards()
    store = Path(store)
    protocols = current_protocols()
    existing = stored(store)
    refusals: list[Refusal] = []
    accepted: list[tuple[Path, dict[str, Any], list[tuple[Path, str]]]] = []
    for path in _sources(paths):
        rec, err = _read(path)
        why = [err] if err else check_record(rec, cards, protocols)
        files: list[tuple[Path, str]] = []
        if not why:
            files, more = _companions(path, rec)
            why += more
        if not why:
            why += _duplicates(path, rec, [(p, r) for p, r, _ in accepted], "also being added; add one of them")
            why += [w for w in _duplicates(path, rec, [(f / RESULT_FILE, r) for f, r in existing],
                                           "pass --replace to replace it") if not replace or "cannot" in w]
        if why:
            refusals.append(Refusal(path, why))
        else:
            accepted.append((path, rec, files))
    if refusals:
        raise StoreRefused(refusals)

    result = Added()
    store.mkdir(parents=True, exist_ok=True)
    for path, rec, files in accepted:
        dest = record_folder(store, rec)
        tmp = Path(tempfile.mkdtemp(prefix=".add-", dir=store))
        try:
            shutil.copyfile(path, tmp / RESULT_FILE)  # byte for byte: a published record is never rewritten
            for src, rel in files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, tmp / rel)
            if dest.exists():
                old = dest.with_name(f".old-{dest.name}-{os.getpid()}")
                os.replace(dest, old)
                os.replace(tmp, dest)
                shutil.rmtree(old)
                result.removed.append(dest)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        result.added.append(dest)
        for folder, other in existing:
            if folder == dest or not same_measurement(rec, other):
                continue
            if superseded(other, rec):
                shutil.rmtree(folder)
                result.removed.append(folder)
            else:
                result.kept_beside.append(folder)
        existing = [(f, r) for f, r in existing if f.exists() and f != dest] + [(dest, rec)]
    return result
