"""Tokenizer cards: the ``TokenizerCard`` record, the card-file schema, and where cards come from.

A card file (TOML) declares one family and its variants::

    family = "jpeg"
    kind = "codec"
    entry = "vtbench.tokenizers.reference:JpegTokenizer"   # or "mytok.py:MyTokenizer", beside the card
    [defaults]            # shared by all variants
    [variants.q50]
    params = { quality = 50 }
    default_run = true

A variant's fields override the family's; ``params`` tables are merged. Every key is checked against the schema
below (unknown keys are errors with a did-you-mean naming the file and the variant), so a typo such as
``defualt_run`` cannot pass silently. ``params`` is the adapter's own table and is not checked here.

Cards come from the built-in ``tokenizers/`` folder, ``--cards PATH`` (``use_cards``), ``$VTBENCH_CARDS``
(``os.pathsep``-separated files or folders) and the ``vtbench.cards`` entry points of installed packages; a name
or family declared twice is an error. This module imports no torch: listing and checking names stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from vtbench._compat import tomllib
from vtbench.registry import UnknownNameError, did_you_mean, load_object

KINDS = ("vq", "rvq", "multiscale", "fsq", "lfq", "scalar", "continuous", "codec", "reference")
INPUT_RANGES = ("[0,1]", "[-1,1]")
# what a tokenizer encodes: images (NCHW, the vtbench.tokenizers contract) or 3D shapes (vtbench.three_d codecs:
# encode(shape) -> Encoded, decode -> mesh); image runs list image cards only
MODALITIES = ("image", "shape")
ENV_VAR = "VTBENCH_CARDS"
ENTRY_POINT_GROUP = "vtbench.cards"


class CardError(ValueError):
    """A card breaks the schema, or two cards clash; the message names the file(s), the variant and the key."""


@dataclass
class TokenizerCard:
    """One tokenizer variant as declared in a ``tokenizers/*.toml`` card."""

    name: str  # "family.variant"
    family: str
    variant: str
    kind: str
    entry: str  # "module:Class" of the adapter, or "file.py:Class" relative to the card file
    description: str = ""
    source: str = ""
    license: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] | None = None  # see WEIGHTS_FIELDS
    native_size: int | None = None  # None: any size (subject to ``size_multiple``)
    size_multiple: int = 1
    input_range: str = "[0,1]"
    reference: bool = False  # identity / resize / codec rows: bounds, not tokenizers
    default_run: bool = False
    published: list[dict[str, Any]] = field(default_factory=list)
    official_preprocessing: dict[str, Any] | None = None  # see OFFICIAL_PREPROCESSING_FIELDS
    # a rate sweep (see SWEEP_FIELDS): on the group variant, the declared sweep; on each generated setting,
    # {"group": "restok.l-128", "param": "num_tokens", "value": 16}
    sweep: dict[str, Any] | None = None
    modality: str = "image"  # "image" or "shape" (the 3D track: vtbench run --task shape)
    card_path: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "family": self.family, "variant": self.variant, "kind": self.kind,
            "description": self.description, "source": self.source, "license": self.license,
            "params": self.params, "weights": self.weights, "native_size": self.native_size,
            "size_multiple": self.size_multiple, "input_range": self.input_range,
            "reference": self.reference, "published": self.published,
            "official_preprocessing": self.official_preprocessing, "sweep": self.sweep, "modality": self.modality,
            "card_path": self.card_path,
        }

    @property
    def sweep_group(self) -> str | None:
        """The name shared by every setting of this variant's rate sweep (None: not part of a sweep)."""
        if not self.sweep:
            return None
        return self.sweep.get("group", self.name)

    @property
    def sweep_settings(self) -> list[str]:
        """On a sweep's group variant: the names of its settings, in declared order (else ``[]``)."""
        if not self.sweep or "group" in self.sweep:
            return []
        return [sweep_setting_name(self.name, self.sweep, v) for v in self.sweep["values"]]


# -- schema: key -> accepted types ---------------------------------------------------------------------------
_NUM = (int, float)
CARD_FIELDS: dict[str, tuple[type, ...]] = {
    "kind": (str,), "entry": (str,), "description": (str,), "source": (str,), "license": (str,),
    "params": (dict,), "weights": (dict,), "native_size": (int,), "size_multiple": (int,),
    "input_range": (str,), "reference": (bool,), "default_run": (bool,), "published": (list,),
    "official_preprocessing": (dict,), "sweep": (dict,), "modality": (str,),
}
# a rate sweep: the variant is evaluated at every value of one adapter parameter (a token count), each setting a
# tokenizer of its own named ``<variant>-<label><value>`` (``restok.l-128-k16``) with one result record; the
# variant's own name runs its ``params`` value (the full rate), and ``vtbench run --sweep`` runs them all
SWEEP_FIELDS: dict[str, tuple[type, ...]] = {"param": (str,), "values": (list,), "label": (str,), "note": (str,)}
# how the family's official evaluation preprocesses images, where it differs from the protocol's policy: a
# vtbench policy that reproduces it (with its parameters), where that is written in the official code, and why
# it matters; tests/test_calibration.py uses it to reproduce the family's published numbers
OFFICIAL_PREPROCESSING_FIELDS: dict[str, tuple[type, ...]] = {
    "policy": (str,), "interpolation": (str,), "resize_ratio": _NUM, "source": (str,), "note": (str,),
}
# read by vtbench.tokenizers.weights (resolution), official.py (sha256 check), ls/info (file); size_bytes and
# url are shown in the missing-weights message and the leaderboard
WEIGHTS_FIELDS: dict[str, tuple[type, ...]] = {
    "file": (str,), "sha256": (str,), "url": (str,), "hub_repo": (str,), "hub_filename": (str,),
    "hub_files": (list,), "bundled": (str,), "directory": (bool,), "subfolder": (str,), "gated": (bool,),
    "size_bytes": (int,),
}
# one published number (tests/test_calibration.py reproduces those with calibrate = true)
PUBLISHED_FIELDS: dict[str, tuple[type, ...]] = {
    "metric": (str,), "value": _NUM, "dataset": (str,), "resolution": (int,), "source": (str,),
    "protocol": (str,), "tolerance": _NUM, "calibrate": (bool,),
    "setting": _NUM,  # a rate sweep's setting the number was measured at (e.g. the token count)
}
PUBLISHED_REQUIRED = ("metric", "value", "dataset", "source")
_FILE_KEYS = ("family", "variants", "defaults")
_ENTRY = re.compile(r"[\w./-]+(\.py)?:[A-Za-z_][\w.]*")
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table",
               list: "an array"}


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:  # TOML true is not an integer here
        return False
    return isinstance(value, types)


def check_table(table: Mapping[str, Any], fields: Mapping[str, tuple[type, ...]], where: str,
                extra: Iterable[str] = ()) -> None:
    """Raise ``CardError`` for a key of ``table`` not in ``fields`` (+ ``extra``) or a value of the wrong type."""
    known = [*fields, *extra]
    for key, value in table.items():
        if key not in known:
            raise CardError(f"{where}: {did_you_mean(key, known, 'key')}")
        if key in fields and not _type_ok(value, fields[key]):
            want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in fields[key])
            raise CardError(f"{where}: {key!r} must be {want}, got {value!r}")


def _check_level(table: Mapping[str, Any], where: str, extra: Iterable[str] = ()) -> None:
    """One level of a card (family, [defaults] or a variant) with its weights table and published entries."""
    check_table(table, CARD_FIELDS, where, extra)
    if isinstance(table.get("weights"), dict):
        check_table(table["weights"], WEIGHTS_FIELDS, f"{where}: [weights]")
    if isinstance(table.get("official_preprocessing"), dict):
        check_table(table["official_preprocessing"], OFFICIAL_PREPROCESSING_FIELDS,
                    f"{where}: [official_preprocessing]")
        if "policy" not in table["official_preprocessing"]:
            raise CardError(f"{where}: [official_preprocessing] needs 'policy' (a vtbench preprocessing policy)")
    for i, entry in enumerate(table.get("published") or []):
        w = f"{where}: published[{i}]"
        if not isinstance(entry, dict):
            raise CardError(f"{w}: expected a table ([[...published]]), got {entry!r}")
        check_table(entry, PUBLISHED_FIELDS, w)
        missing = [k for k in PUBLISHED_REQUIRED if k not in entry]
        if missing:
            raise CardError(f"{w}: missing {', '.join(map(repr, missing))} (a published number needs "
                            f"{', '.join(PUBLISHED_REQUIRED)})")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_card_file(path: str | Path) -> list[TokenizerCard]:
    """The variants declared by one card file; ``CardError`` (a ``ValueError``) names file, variant and key."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CardError(f"{path}: invalid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise CardError(f"{path}: not UTF-8 text (byte {exc.start}); save the card as UTF-8") from None
    family = doc.get("family", path.stem)
    if not isinstance(family, str) or not re.fullmatch(r"[A-Za-z0-9][\w-]*", family):
        raise CardError(f"{path}: family {family!r} must be a name of letters, digits, '_' and '-'")
    _check_level(doc, f"{path} (family level)", extra=_FILE_KEYS)
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise CardError(f"{path}: 'defaults' must be a table ([defaults])")
    _check_level(defaults, f"{path}: [defaults]")
    variants = doc.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise CardError(f"{path}: declares no variants (add a [variants.NAME] table)")
    family_level = _merge({k: v for k, v in doc.items() if k not in _FILE_KEYS}, defaults)
    cards = []
    for variant, vdoc in variants.items():
        where = f"{path}: variant {variant!r}"
        if not isinstance(vdoc, dict):
            raise CardError(f"{where}: expected a table ([variants.{variant}]), got {vdoc!r}")
        _check_level(vdoc, where)
        merged = _merge(family_level, vdoc)
        kind = merged.get("kind")
        if kind not in KINDS:
            hint = did_you_mean(str(kind), KINDS, "kind") if isinstance(kind, str) else f"expected one of {KINDS}"
            raise CardError(f"{path}: variant {variant!r} has kind {kind!r}; {hint}")
        if "entry" not in merged:
            raise CardError(f"{path}: variant {variant!r} has no 'entry' (module:Class of its adapter)")
        if not _ENTRY.fullmatch(merged["entry"]):
            raise CardError(f"{where}: entry {merged['entry']!r} must be 'package.module:Class' or 'file.py:Class'")
        if merged.get("modality", "image") not in MODALITIES:
            raise CardError(f"{where}: modality {merged['modality']!r}; expected one of {MODALITIES}")
        if merged.get("input_range", "[0,1]") not in INPUT_RANGES:
            raise CardError(f"{where}: input_range {merged['input_range']!r}; expected one of {INPUT_RANGES}")
        if merged.get("size_multiple", 1) < 1 or merged.get("native_size", 1) < 1:
            raise CardError(f"{where}: native_size and size_multiple must be positive")
        kw = {k: merged[k] for k in CARD_FIELDS if k in merged and k != "params"}
        card = TokenizerCard(name=f"{family}.{variant}", family=family, variant=variant,
                             params=merged.get("params", {}), card_path=str(path), raw=merged, **kw)
        cards.append(card)
        if card.sweep is not None:
            cards += _sweep_settings(card, where)
    return cards


def sweep_setting_name(group: str, sweep: Mapping[str, Any], value: Any) -> str:
    return f"{group}-{sweep.get('label', '')}{value}"


def _sweep_settings(card: TokenizerCard, where: str) -> list[TokenizerCard]:
    """The settings of ``card``'s rate sweep, one card each (``params[param] = value``)."""
    sweep = card.sweep or {}
    check_table(sweep, SWEEP_FIELDS, f"{where}: [sweep]")
    param, values = sweep.get("param"), sweep.get("values")
    if not param or not values or not all(_type_ok(v, _NUM) for v in values):
        raise CardError(f"{where}: [sweep] needs 'param' (an adapter parameter) and 'values' (a non-empty array of "
                        f"numbers), got {dict(sweep)!r}")
    if len(set(values)) != len(values):
        raise CardError(f"{where}: [sweep] values repeat: {values!r}")
    out = []
    for v in values:
        name = sweep_setting_name(card.name, sweep, v)
        out.append(dataclasses.replace(
            card, name=name, variant=name.split(".", 1)[1], params={**card.params, param: v}, default_run=False,
            published=[p for p in card.published if p.get("setting", v) == v and "setting" in p],
            sweep={"group": card.name, "param": param, "value": v, "label": sweep.get("label", "")}))
    return out


# -- where cards come from --------------------------------------------------------------------------------
_cli_paths: tuple[str, ...] = ()


def use_cards(paths: Iterable[str | Path] | None) -> None:
    """Add card files or folders for this process (``--cards PATH``), in addition to ``$VTBENCH_CARDS``."""
    global _cli_paths
    _cli_paths = tuple(str(p) for p in paths or ())


def _entry_point_paths() -> list[tuple[str, str]]:
    """``(origin, path)`` for every ``vtbench.cards`` entry point: each names a folder or card file (str or
    PathLike), or a list of them (e.g. ``mypkg.cards:CARDS`` with ``CARDS = Path(__file__).parent``)."""
    return list(_entry_point_paths_on(tuple(sys.path)))


@functools.lru_cache(maxsize=4)
def _entry_point_paths_on(search_path: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    # scanning installed distributions costs ~30 ms: once per search path, not at every card look-up
    from importlib.metadata import entry_points
    out = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        origin = f"entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP})"
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin names itself instead of a bare traceback
            raise CardError(f"{origin}: cannot load ({type(exc).__name__}: {exc})") from exc
        items = [obj] if isinstance(obj, (str, os.PathLike)) else obj
        if not isinstance(items, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) for p in items):
            raise CardError(f"{origin}: must be a path (card file or folder) or a list of paths, got {obj!r}")
        out += [(origin, os.fspath(p)) for p in items]
    return tuple(out)


def card_sources() -> list[tuple[str, str]]:
    """``(origin, path)`` of every card file or folder, in order: built-in, --cards, $VTBENCH_CARDS, plugins."""
    from vtbench.paths import CARDS_DIR
    env = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return ([("built-in", str(CARDS_DIR))] + [("--cards", p) for p in _cli_paths]
            + [(f"${ENV_VAR}", p) for p in env] + _entry_point_paths())


def _card_files() -> list[tuple[str, Path]]:
    files: dict[Path, tuple[str, Path]] = {}  # keyed by resolved path: a folder named twice counts once
    for origin, spec in card_sources():
        p = Path(spec).expanduser()
        if p.is_dir():
            found = sorted(p.glob("*.toml"))
        elif p.is_file() and p.suffix == ".toml":
            found = [p]
        else:
            raise CardError(f"{origin} {spec}: not a card file (.toml) or a folder of them")
        for f in found:
            files.setdefault(f.resolve(), (origin, f))
    return list(files.values())


@functools.lru_cache(maxsize=8)
def _load(files: tuple[tuple[str, str, int], ...]) -> dict[str, TokenizerCard]:
    cards: dict[str, TokenizerCard] = {}
    family_file: dict[str, str] = {}
    for origin, path, _mtime in files:
        for card in parse_card_file(path):
            first = family_file.setdefault(card.family, path)
            if first != path:
                raise CardError(f"tokenizer family {card.family!r} is declared twice: {first} and {path} "
                                f"({origin}). Names must be unique and built-in cards cannot be overridden: "
                                "give your card another family name")
            if card.name in cards:  # same file, same name: TOML itself refuses duplicate tables
                raise CardError(f"tokenizer {card.name!r} is declared twice ({cards[card.name].card_path}, {path})")
            cards[card.name] = card
    return cards


def all_cards() -> dict[str, TokenizerCard]:
    """Every declared variant by name (``family.variant``), from every card source."""
    files = tuple((origin, str(p), p.stat().st_mtime_ns) for origin, p in _card_files())
    return _load(files)


def get_card(name: str) -> TokenizerCard:
    """The card of ``name``; a bare family name gives its first default-run variant, else its first."""
    cards = all_cards()
    if name not in cards:
        fam = [c for c in cards.values() if c.family == name]
        if fam:
            return next((c for c in fam if c.default_run), fam[0])
        raise UnknownNameError(did_you_mean(name, cards, "tokenizer"))
    return cards[name]


def load_entry(card: TokenizerCard) -> Any:
    """The adapter class a card's ``entry`` names: ``package.module:Class`` is imported; ``file.py:Class`` is
    loaded from that file, relative to the card file (its code runs: use cards you trust, as any package)."""
    module, _, attr = card.entry.partition(":")
    if not module.endswith(".py"):
        return load_object(card.entry)
    path = (Path(card.card_path).parent / module).resolve()
    if not path.is_file():
        raise CardError(f"{card.card_path}: variant {card.variant!r}: entry file {path} does not exist")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]  # one module per file, whatever its name
    mod_name = f"vtbench_card_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    mod = sys.modules.get(mod_name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod  # before exec: dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[mod_name]
            raise
    obj: Any = mod
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
