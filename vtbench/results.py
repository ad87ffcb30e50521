"""Run results: a versioned JSON record per (tokenizer, dataset) plus a per-sample table.

Layout of a results directory::

    OUT/<dataset>/<tokenizer>/<task>/result.json    # RunResult (schema_version, provenance, metric values)
    OUT/<dataset>/<tokenizer>/<task>/samples.csv    # one row per image: id and per-image metric values
    OUT/<dataset>/<tokenizer>/<task>/progress.pt    # only while a run is incomplete (resume state)

``<dataset>`` is ``dataset_dirname``: the embedded data's name, or a user dataset's name plus 8 hex digits of
its resolved location (two folders named ``val`` never share results); every folder is built by ``run_dir``.

``load(DIR)`` reads every result.json below DIR into a tidy pandas DataFrame.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from vtbench import __version__
from vtbench.paths import REPO_ROOT, join_under, safe_name

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
SAMPLES_FILE = "samples.csv"


def slug(text: str) -> str:
    """A file-system-safe name for a dataset or tokenizer."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[:120] or "unnamed"


def dataset_dirname(dataset: Any) -> str:
    """The results folder of a dataset (a ``DatasetInfo``, or a record's ``dataset`` mapping with ``id`` and,
    for user data, ``kind`` and ``root``): ``embedded-photos`` for the embedded sets; for folders, parquet files
    and reference batches the sanitised name plus 8 hex digits of the resolved location."""
    if isinstance(dataset, str):
        dataset = {"id": dataset}
    get = dataset.get if isinstance(dataset, dict) else (lambda k, d=None: getattr(dataset, k, d))
    ident = str(get("id", "") or "unnamed")
    kind, root = get("kind"), get("root") or get("path") or get("reference_file")
    if kind == "embedded" or not root:
        return safe_name(ident.replace("/", "-"))
    where = hashlib.sha1(os.path.realpath(str(root)).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe_name(ident)}-{where}"


def run_dir(out: str | os.PathLike, dataset: Any, tokenizer: str, task: str, *sub: str) -> Path:
    """The one place a result folder is decided: ``OUT/<dataset_dirname>/<tokenizer>/<task>/<sub...>``.

    ``task`` is the protocol's folder: its name for ``vtbench run`` (``reconstruction``, ``text``, ``detail``, a
    custom protocol's name), ``generation`` / ``generation-adm`` for ``vtbench gfid``, ``probe-<size>`` for the AR
    probe; so records of different tasks on the same (dataset, tokenizer) never overwrite each other. Every
    part goes through ``safe_name`` and the whole is checked to stay inside ``out``."""
    return join_under(out, dataset_dirname(dataset), safe_name(tokenizer), safe_name(task),
                      *(safe_name(s) for s in sub))


def protocol_section(protocol: Any) -> dict[str, Any]:
    """A record's ``protocol`` section: name, version, task and ``settings_sha256``, the hash of the settings in
    force (the protocol file's tables other than ``notes``), so an edited protocol file whose version was not
    bumped is still told apart (fingerprints, ``vtbench compare``)."""
    settings = {k: v for k, v in (getattr(protocol, "settings", None) or {}).items() if k != "notes"}
    canon = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return {"name": protocol.name, "version": str(protocol.version), "task": protocol.task,
            "settings_sha256": hashlib.sha256(canon.encode()).hexdigest()[:16]}


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_tmp(path: Path, text: str) -> Path:
    """``text`` into a temporary file beside ``path``, flushed to disk; the temporary file is removed when the
    write fails (disk full, quota), so a failed write leaves nothing behind."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: the old content or the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_tmp(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_texts_together(files: dict[Path, str]) -> None:
    """Replace several files so that either all of them hold the new content or all keep the old one (e.g. a
    run's ``samples.csv`` and ``result.json``).

    Every new file is written (and flushed) to a temporary file first; only when all of them are on disk are they
    renamed into place. Should a rename fail halfway, the files already replaced get their old content back
    (kept as hard links until the end). Temporary files never outlive a failure."""
    tmps: dict[Path, Path] = {}
    backups: dict[Path, Path | None] = {}
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmps[path] = _write_tmp(path, text)
        for path in files:
            bak = path.with_name(f".{path.name}.{os.getpid()}.bak")
            bak.unlink(missing_ok=True)
            if path.exists():
                os.link(path, bak)
                backups[path] = bak
            else:
                backups[path] = None
        done: list[Path] = []
        try:
            for path, tmp in tmps.items():
                os.replace(tmp, path)
                done.append(path)
        except BaseException:
            for path in done:  # put the old content back: all old or all new
                bak = backups.get(path)
                if bak is not None:
                    os.replace(bak, path)
                else:
                    path.unlink(missing_ok=True)
            raise
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
        for bak in backups.values():
            if bak is not None:
                bak.unlink(missing_ok=True)


def write_npz_atomic(path: str | os.PathLike, **arrays: Any) -> Path:
    """``np.savez`` to ``path`` atomically (tmp + os.replace); through a file object, so no ".npz" is appended."""
    import numpy as np
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> dict[str, Any]:
    """The commit (and dirtiness) of the checkout vtbench runs from; None for an installed wheel, which is
    not a checkout (a git repository around site-packages is someone else's)."""
    if REPO_ROOT is None:
        return {"commit": None, "dirty": None}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=5).stdout.strip()) if head else None
    except (OSError, subprocess.SubprocessError):
        head, dirty = None, None
    return {"commit": head, "dirty": dirty}


def environment(device: str) -> dict[str, Any]:
    import torch
    env = {"python": platform.python_version(), "platform": platform.platform(), "device": device}
    for pkg in ("torch", "torchvision", "torchmetrics", "clean-fid", "numpy", "scipy", "pillow"):
        env[pkg] = _version(pkg)
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    env["threads"] = torch.get_num_threads()
    return env


def new_record(**sections: Any) -> dict[str, Any]:
    """A RunResult dict with the provenance header filled in."""
    return {"schema_version": SCHEMA_VERSION,
            "vtbench": {"version": __version__, **git_commit()},
            **sections}


class RecordError(ValueError):
    """A result file that cannot be used; ``str(err)`` reads ``FILE:LINE: what is wrong. Fix: ...``."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str,
                 fix: str = "delete the file (or its run folder) and re-run; results are never repaired by guessing"):
        self.path, self.line, self.problem, self.fix = str(path), line, problem, fix
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {problem}. Fix: {fix}")


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """Bring an older RunResult up to the current schema (older versions keep loading)."""
    if not isinstance(record, dict):
        raise ValueError(f"a result record is a JSON object, got {type(record).__name__}")
    version = record.get("schema_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"schema_version must be a whole number >= 0, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ValueError(f"result schema {version} is newer than this vtbench ({SCHEMA_VERSION}); upgrade vtbench")
    if version == 0:  # pre-release records: metrics as plain numbers
        metrics = record.get("metrics", {})
        if isinstance(metrics, dict):
            record["metrics"] = {k: (v if isinstance(v, dict) else {"value": v, "n": None, "higher_is_better": None})
                                 for k, v in metrics.items()}
        record["schema_version"] = 1
    return record


# Control characters (C0, DEL, C1) and bidirectional overrides in a name a terminal or a page shows
# would let a record rewrite the screen or disguise itself (``tiny.vq\u202e...``); names never need them.
_HOSTILE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def _line_of(text: str, *keys: str) -> int | None:
    """The line of ``"keys[-1]"`` (searched after each earlier key in turn), for ``file:line`` messages."""
    pos = 0
    for key in keys:
        at = text.find(json.dumps(key), pos)
        if at < 0:
            return None
        pos = at
    return text.count("\n", 0, pos) + 1


def check_record(rec: dict[str, Any], path: str | os.PathLike = "<record>", text: str = "", *,
                 strict: bool = True) -> dict[str, Any]:
    """Check the parts of a (current-schema) record that readers rely on; raise ``RecordError`` (file:line) for
    the first problem: identity sections, metric entries and counts; with ``strict`` (files) also values (null or
    a finite number) and names (no control characters). Records still in memory may hold inf/NaN and any name
    (their views escape them; ``vtbench compare`` calls a value that is no number incomparable)."""
    def bad(problem: str, *keys: str) -> RecordError:
        return RecordError(path, _line_of(text, *keys) if keys else None, problem)

    for section, key in (("tokenizer", "name"), ("dataset", "id")):
        sec = rec.get(section)
        if not isinstance(sec, dict):
            raise bad(f"'{section}' must be an object with '{key}' (is this a vtbench result.json?)",
                      *((section,) if section in rec else ()))
        if not isinstance(sec.get(key), str) or not sec[key].strip():
            raise bad(f"'{section}.{key}' must be a non-empty string, got {sec.get(key)!r}", section)
    for section in ("protocol", "run", "vtbench", "environment", "timings"):
        if section in rec and rec[section] is not None and not isinstance(rec[section], dict):
            raise bad(f"'{section}' must be an object, got {type(rec[section]).__name__}", section)
    names = [("tokenizer.name", rec["tokenizer"]["name"], ("tokenizer", "name")),
             ("dataset.id", rec["dataset"]["id"], ("dataset", "id"))]
    proto = rec.get("protocol") or {}
    if isinstance(proto.get("name"), str):
        names.append(("protocol.name", proto["name"], ("protocol", "name")))
    metrics = rec.get("metrics", {})
    if not isinstance(metrics, dict):
        raise bad(f"'metrics' must be an object of metric entries, got {type(metrics).__name__}", "metrics")
    for key, m in metrics.items():
        names.append((f"metric key {key!r}", key, ("metrics", key)))
        if not isinstance(m, dict):
            raise bad(f"metric {key!r} must be an object with 'value', got {m!r:.80}", "metrics", key)
        v = m.get("value")
        if strict and v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                         or not math.isfinite(v)):
            raise bad(f"metric {key!r}: 'value' must be a finite number or null (with a 'reason'), got {v!r:.80}",
                      "metrics", key, "value")
        n = m.get("n")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise bad(f"metric {key!r}: 'n' must be a count >= 0 or null, got {n!r:.80}", "metrics", key, "n")
        hib = m.get("higher_is_better")
        if hib is not None and not isinstance(hib, bool):
            raise bad(f"metric {key!r}: 'higher_is_better' must be true, false or null, got {hib!r:.80}",
                      "metrics", key, "higher_is_better")
    for what, name, keys in names:
        if not isinstance(name, str) or (strict and _HOSTILE.search(name)):
            raise bad(f"{what} {name!r:.120} holds control or bidirectional-override characters", *keys)
    return rec


_NON_FINITE = re.compile(r'(?<![\w"])(-?Infinity|NaN)(?![\w"])')


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number in JSON")


def parse_record(text: str, path: str | os.PathLike = "<record>") -> dict[str, Any]:
    """A record from the text of a ``result.json``: strict JSON (no NaN / Infinity), a known schema version
    (older ones upgraded), the shape ``check_record`` asks for. Raises ``RecordError`` naming ``path:line``."""
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        truncated = not text.rstrip().endswith(("}", "]"))
        raise RecordError(path, exc.lineno, f"not valid JSON ({exc.msg}, column {exc.colno})"
                          + ("; the file ends early (truncated: an interrupted write or copy?)" if truncated else ""),
                          "delete the file (or its run folder) and re-run") from None
    except ValueError as exc:  # NaN / Infinity (json.loads would take them; JSON has no such numbers)
        found = _NON_FINITE.search(text)
        line = text.count("\n", 0, found.start()) + 1 if found else None
        raise RecordError(path, line, f"{exc}; vtbench writes a value it could not compute as null with a reason",
                          "delete the file (or its run folder) and re-run") from None
    except RecursionError:
        raise RecordError(path, None, "nested too deeply to be a result record") from None
    if not isinstance(obj, dict):
        raise RecordError(path, 1, f"a result record is a JSON object, got {type(obj).__name__}")
    version = obj.get("schema_version", 0)
    try:
        rec = upgrade(obj)
    except ValueError as exc:
        fix = ("upgrade vtbench (a newer checkout or wheel), or read the file with the vtbench that wrote "
               "it") if isinstance(version, int) and version > SCHEMA_VERSION else \
            "delete the file (or its run folder) and re-run"
        raise RecordError(path, _line_of(text, "schema_version"), str(exc), fix) from None
    return check_record(rec, path, text)


def read_record(path: str | Path) -> dict[str, Any]:
    """Read and check one ``result.json`` (see ``parse_record``); ``RecordError`` (a ``ValueError``) names the file
    and line of any problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecordError(path, None, f"cannot read the file ({exc.strerror or exc})",
                          "check its permissions and the storage it lives on") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(path, raw.count(b"\n", 0, exc.start) + 1, "not UTF-8 text (a binary or damaged file)",
                          "delete the file (or its run folder) and re-run") from None
    if not text.strip():
        raise RecordError(path, None, "the file is empty (an interrupted write?)",
                          "delete the file (or its run folder) and re-run")
    return parse_record(text, path)


def is_seed_record(path: Path) -> bool:
    """A per-seed record of a sampling decoder (``.../<task>/seed-<s>/result.json``) whose seeds' summary sits
    one folder up: leaderboards and compare read the summary (mean and spread), not each seed."""
    return path.parent.name.startswith("seed-") and (path.parent.parent / RESULT_FILE).is_file()


def iter_record_paths(root: str | Path) -> list[Path]:
    """The result files below ``root`` (or ``root`` itself), sorted, per-seed records under a seeds summary and
    hidden folders (a store's temporary ``.add-*`` folders) left out."""
    root = Path(root)
    if root.is_file():
        return [root]
    return [p for p in sorted(root.rglob(RESULT_FILE)) if not is_seed_record(p)
            and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])]


def iter_records(root: str | Path, on_error: Callable[[Path, RecordError], None] | None = None
                 ) -> Iterable[tuple[Path, dict[str, Any]]]:
    """Every result record below ``root`` (or ``root`` itself), per-seed records under a seeds summary and hidden
    folders left out.

    A malformed file raises ``RecordError`` unless ``on_error`` is given: then it is called with the path and the
    error, and the walk goes on (``warn_skip`` logs it), so one damaged file does not hide every other result."""
    for p in iter_record_paths(root):
        try:
            rec = read_record(p)
        except RecordError as exc:
            if on_error is None:
                raise
            on_error(p, exc)
            continue
        yield p, rec


def warn_skip(path: Path, err: RecordError) -> None:
    """``iter_records``' ``on_error`` for views (summaries, tables): log the file and the fix, go on."""
    import logging
    logging.getLogger("vtbench").warning("skipping malformed result: %s", err)


def load(root: str | Path) -> pd.DataFrame:
    """All results below ``root`` as a tidy DataFrame: one row per (tokenizer, dataset, protocol, metric)."""
    rows = []
    for path, rec in iter_records(root):
        tok, ds, proto = rec.get("tokenizer", {}), rec.get("dataset", {}), rec.get("protocol", {})
        for key, m in rec.get("metrics", {}).items():
            rows.append({
                "tokenizer": tok.get("name"), "family": tok.get("family"), "kind": tok.get("kind"),
                "reference": bool(tok.get("reference", False)), "dataset": ds.get("id"),
                "protocol": proto.get("name"), "protocol_version": proto.get("version"), "metric": key,
                "value": m.get("value"), "n": m.get("n"), "higher_is_better": m.get("higher_is_better"),
                "unit": m.get("unit"), "reason": m.get("reason"), "path": str(path),
            })
    cols = ["tokenizer", "family", "kind", "reference", "dataset", "protocol", "protocol_version", "metric",
            "value", "n", "higher_is_better", "unit", "reason", "path"]
    return pd.DataFrame(rows, columns=cols)


def load_samples(root: str | Path) -> pd.DataFrame:
    """Per-sample tables below ``root``, with tokenizer and dataset columns added."""
    frames = []
    for path, rec in iter_records(root):
        samples = path.parent / SAMPLES_FILE
        if samples.is_file():
            df = pd.read_csv(samples)
            df.insert(0, "tokenizer", rec["tokenizer"]["name"])
            df.insert(1, "dataset", rec["dataset"]["id"])
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

