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
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

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


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_npz_atomic(path: str | os.PathLike, **arrays: Any) -> Path:
    """``np.savez`` to ``path`` atomically (tmp + os.replace); through a file object, so no ".npz" is appended."""
    import numpy as np
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
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


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """Bring an older RunResult up to the current schema (older versions keep loading)."""
    version = record.get("schema_version", 0)
    if version > SCHEMA_VERSION:
        raise ValueError(f"result schema {version} is newer than this vtbench ({SCHEMA_VERSION}); upgrade vtbench")
    if version == 0:  # pre-release records: metrics as plain numbers
        record["metrics"] = {k: (v if isinstance(v, dict) else {"value": v, "n": None, "higher_is_better": None})
                             for k, v in record.get("metrics", {}).items()}
        record["schema_version"] = 1
    return record


def read_record(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a valid result file ({exc}); delete it and re-run") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a valid result file (not UTF-8 text: {exc}); delete it and re-run") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a valid result file (a JSON {type(record).__name__}, not an object); delete "
                         "it and re-run")
    return upgrade(record)


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


def iter_records(root: str | Path) -> Iterable[tuple[Path, dict[str, Any]]]:
    """Every result record below ``root`` (or ``root`` itself), per-seed records under a seeds summary left out."""
    for p in iter_record_paths(root):
        yield p, read_record(p)


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

