"""Declarations read from TOML: tokenizer cards (``tokenizers/*.toml``, see ``vtbench.cards``) and protocols
(``metrics/*.toml``).

A protocol file holds only keys that vtbench reads (``PROTOCOL_SCHEMAS`` says which, per task, and what reads
them); explanations of fixed behaviour live under its free-form ``[notes]`` table. An unknown key is an error
with a did-you-mean naming the file and the table, so a misspelt setting cannot silently fall back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from vtbench._compat import tomllib
from vtbench.cards import CardError, TokenizerCard, all_cards, get_card, parse_card_file, use_cards  # noqa: F401 (re-exports)
from vtbench.paths import PROTOCOLS_DIR
from vtbench.registry import UnknownNameError, did_you_mean


class ProtocolError(ValueError):
    """A protocol file breaks its schema; the message names the file, the table and the key."""


@dataclass(frozen=True)
class Each:
    """A table whose keys are data (metric names, probe sizes, resolutions), each value checked by ``spec``."""

    spec: Any = None


# A schema maps each allowed key to None (a value), a dict (a sub-table) or ``Each`` (a table of named entries).
_TOP = {"name": None, "version": None, "task": None, "description": None, "default_data": None}
# Metric tables: the protocol's table named like a metric is that metric's ``settings`` (runner.metric_config);
# these keys are the settings each metric reads (tests/test_protocol_schema.py checks them against the metrics).
METRIC_SETTINGS: dict[str, dict[str, Any]] = {
    "pfid": {"alpha": None, "delta": None, "beta": None, "seed": None},  # metrics/pfid.py PerturbationSpec
    "detail": {k: None for k in ("color", "luma_weights", "data_range", "window", "mean", "bands",
                                 "ratio_reduction", "gradient")},  # metrics/detail.py DEFAULT_SETTINGS
    "text": {"engine": None, "edges": Each(), "filter_original": None, "crop_margin": None},  # metrics/text.py
    "ocr": {"engine": None},  # metrics/text.py OCRMetric
}
_EVAL = {**_TOP,  # runner.run / selected_metrics
         "preprocessing": {"policy": None, "resolution": None},
         "metrics": {"default": None},
         **METRIC_SETTINGS}
_PROBE_TRAIN = {k: None for k in ("batch_size", "lr", "betas", "weight_decay", "grad_clip", "schedule",
                                  "warmup_steps", "hflip", "checkpoint_every", "log_every")}  # probe/settings.py
_PROBE_SAMPLING = {k: None for k in ("cfg_scale", "cfg_search", "cfg_search_step", "cfg_search_min", "cfg_schedule",
                                     "temperature", "top_k", "top_p", "samples_per_class", "batch_size")}
PROTOCOL_SCHEMAS: dict[str, dict[str, Any]] = {
    "reconstruction": _EVAL, "detail": _EVAL, "text": _EVAL,
    # vtbench/gfid.py reads the name and version only; the AR probe (a generation protocol with [sizes]) reads
    # vtbench/probe/run.py + settings.py
    "generation": {**_TOP, "default_size": None,
                   "preprocessing": {"policy": None, "resolution": None},
                   "split": {"val_fraction": None},
                   "model": {k: None for k in ("rope_base", "initializer_range", "token_dropout", "attn_dropout",
                                               "resid_dropout", "ffn_dropout", "class_dropout")},
                   "train": _PROBE_TRAIN, "sampling": _PROBE_SAMPLING,
                   "validation": {"batch_size": None},
                   "sizes": Each({k: None for k in ("n_layer", "n_head", "dim", "multiple_of", "resolution", "steps",
                                                    "epochs", "require_val_data")}
                                 | {"train": _PROBE_TRAIN, "sampling": _PROBE_SAMPLING})},
    # the 3D track: vtbench/three_d/metrics.py ShapeSettings.from_protocol (sampling, fscore, iou) and
    # vtbench/three_d/data.py open_shapes (normalisation.policy)
    "shape": {**_TOP, "normalisation": {"policy": None}, "sampling": {"points": None},
              "fscore": {"taus": None}, "iou": {"points": None, "box": None}, "metrics": {"default": None}},
    # vtbench/compare.py (which checks the same keys itself, with its own messages)
    "compare": {**_TOP, "default": {"abs": None, "rel": None},
                "tolerances": Each({"abs": None, "rel": None, "direction": None})},
}


def check_schema(doc: Mapping[str, Any], schema: Mapping[str, Any], where: str, table: str = "") -> None:
    """Raise ``ProtocolError`` for a key of ``doc`` that ``schema`` does not allow (``[notes]`` is free-form)."""
    for key, value in doc.items():
        path = f"{table}.{key}" if table else key
        if not table and key == "notes":
            continue
        if key not in schema:
            raise ProtocolError(f"{where}: [{table or 'top level'}] {did_you_mean(key, schema, 'key')}. Keys that "
                                "vtbench does not read belong under [notes]")
        spec = schema[key]
        if isinstance(spec, Each):
            if not isinstance(value, dict):
                raise ProtocolError(f"{where}: {path} must be a table, got {value!r}")
            if spec.spec is not None:
                for name, sub in value.items():
                    if not isinstance(sub, dict):
                        raise ProtocolError(f"{where}: {path}.{name} must be a table, got {sub!r}")
                    check_schema(sub, spec.spec, where, f"{path}.{name}")
        elif isinstance(spec, dict):
            if not isinstance(value, dict):
                raise ProtocolError(f"{where}: {path} must be a table, got {value!r}")
            check_schema(value, spec, where, path)


@dataclass
class Protocol:
    """A versioned evaluation protocol (``metrics/<name>.toml``)."""

    name: str
    version: str
    task: str
    settings: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    description: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.settings
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "task": self.task, "settings": self.settings}


def list_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOLS_DIR.glob("*.toml"))


def load_protocol(name: str) -> Protocol:
    path = PROTOCOLS_DIR / f"{name}.toml"
    if not path.is_file():
        raise UnknownNameError(did_you_mean(name, list_protocols(), "protocol"))
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{path}: invalid TOML ({exc})") from None
    for key in ("version", "task"):
        if key not in doc:
            raise ProtocolError(f"{path}: protocol has no {key!r}")
    if doc["task"] not in PROTOCOL_SCHEMAS:
        raise ProtocolError(f"{path}: {did_you_mean(str(doc['task']), PROTOCOL_SCHEMAS, 'task')}")
    check_schema(doc, PROTOCOL_SCHEMAS[doc["task"]], str(path))
    settings = {k: v for k, v in doc.items() if k not in ("version", "task", "name", "description", "notes")}
    return Protocol(name=doc.get("name", name), version=str(doc["version"]), task=doc["task"],
                    settings=settings, path=str(path), description=doc.get("description", ""),
                    notes=doc.get("notes", {}))


def protocol_for_task(task: str) -> str:
    """The protocol that defines ``task`` (``vtbench run --task text``): the one named like the task, else the
    only protocol with that task; unknown tasks get a did-you-mean error."""
    tasks: dict[str, list[str]] = {}
    for name in list_protocols():
        t = load_protocol(name).task
        if t != "compare":
            tasks.setdefault(t, []).append(name)
    if task not in tasks:
        raise UnknownNameError(did_you_mean(task, sorted(tasks), "task"))
    return task if task in tasks[task] else tasks[task][0]
