"""Declarations read from TOML: tokenizer cards (``tokenizers/*.toml``) and protocols (``metrics/*.toml``).

A card file declares one family and its variants::

    family = "jpeg"
    kind = "codec"
    entry = "vtbench.tokenizers.reference:JpegTokenizer"
    [defaults]            # shared by all variants
    [variants.q50]
    params = { quality = 50 }
    default_run = true

A variant's fields override the family's; ``params`` tables are merged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtbench._compat import tomllib
from vtbench.paths import CARDS_DIR, PROTOCOLS_DIR
from vtbench.registry import UnknownNameError, did_you_mean
from vtbench.tokenizers.base import KINDS, TokenizerCard

_CARD_FIELDS = ("kind", "entry", "description", "source", "license", "weights", "native_size",
                "size_multiple", "input_range", "reference", "default_run", "published")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_card_file(path: Path) -> list[TokenizerCard]:
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML ({exc})") from None
    family = doc.get("family") or path.stem
    family_level = {k: v for k, v in doc.items() if k not in ("family", "variants", "defaults")}
    family_level = _merge(family_level, doc.get("defaults", {}))
    cards = []
    for variant, vdoc in doc.get("variants", {}).items():
        merged = _merge(family_level, vdoc)
        kind = merged.get("kind")
        if kind not in KINDS:
            raise ValueError(f"{path}: variant {variant!r} has kind {kind!r}; expected one of {KINDS}")
        if "entry" not in merged:
            raise ValueError(f"{path}: variant {variant!r} has no 'entry' (module:Class of its adapter)")
        kw = {k: merged[k] for k in _CARD_FIELDS if k in merged}
        cards.append(TokenizerCard(name=f"{family}.{variant}", family=family, variant=variant,
                                   params=merged.get("params", {}), card_path=str(path), raw=merged, **kw))
    return cards


@functools.lru_cache(maxsize=None)
def _all_cards(cards_dir: str) -> dict[str, TokenizerCard]:
    cards: dict[str, TokenizerCard] = {}
    for path in sorted(Path(cards_dir).glob("*.toml")):
        for card in parse_card_file(path):
            if card.name in cards:
                raise ValueError(f"tokenizer {card.name!r} is declared twice ({cards[card.name].card_path}, {path})")
            cards[card.name] = card
    return cards


def all_cards() -> dict[str, TokenizerCard]:
    return _all_cards(str(CARDS_DIR))


def get_card(name: str) -> TokenizerCard:
    cards = all_cards()
    if name not in cards:
        families = {c.family for c in cards.values()}
        if name in families:  # a bare family name: its first default variant, else its first
            fam = [c for c in cards.values() if c.family == name]
            return next((c for c in fam if c.default_run), fam[0])
        raise UnknownNameError(did_you_mean(name, cards, "tokenizer"))
    return cards[name]


@dataclass
class Protocol:
    """A versioned evaluation protocol (``metrics/<name>.toml``)."""

    name: str
    version: str
    task: str
    settings: dict[str, Any] = field(default_factory=dict)
    path: str = ""

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
    doc = tomllib.loads(path.read_text())
    for key in ("version", "task"):
        if key not in doc:
            raise ValueError(f"{path}: protocol has no {key!r}")
    settings = {k: v for k, v in doc.items() if k not in ("version", "task", "name")}
    return Protocol(name=doc.get("name", name), version=str(doc["version"]), task=doc["task"],
                    settings=settings, path=str(path))


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
