"""Where vtbench finds its declarations (cards, protocols, embedded data, bundled weights), in a checkout or
an installed wheel, and keeps its caches."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# A wheel carries the declarations inside the package (pyproject.toml's package-dir maps the repository's
# top-level tokenizers/, metrics/ and data/embedded/ there); a checkout or editable install has them beside it.
SHIPPED_DIR = PACKAGE_DIR / "_declarations"


def _repo_root() -> Path | None:
    """The repository the code runs from (a checkout, an editable install), or None for an installed wheel.
    Checked by its pyproject.toml: beside an installed package lies site-packages, whose ``tokenizers`` folder
    is Hugging Face's."""
    root = PACKAGE_DIR.parent
    return root if not SHIPPED_DIR.is_dir() and (root / "pyproject.toml").is_file() else None


REPO_ROOT = _repo_root()
# Where cards, protocols, embedded data and bundled weights are: $VTBENCH_HOME (a folder laid out like the
# repository), else the checkout, else the wheel's copy. Cards' ``bundled`` paths are relative to it.
DECLARATIONS_ROOT = Path(os.environ.get("VTBENCH_HOME") or REPO_ROOT or SHIPPED_DIR)
CARDS_DIR = DECLARATIONS_ROOT / "tokenizers"
PROTOCOLS_DIR = DECLARATIONS_ROOT / "metrics"
DATA_DIR = DECLARATIONS_ROOT / "data"


_TRUE = ("1", "true", "yes")


def downloads_allowed() -> bool:
    """Whether vtbench may fetch weights from the internet (Hugging Face hub, torchvision's model store): not when
    ``HF_HUB_OFFLINE`` or ``VTBENCH_OFFLINE`` is set to 1/true/yes. Shared by tokenizer and metric weights."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in _TRUE and \
        os.environ.get("VTBENCH_OFFLINE", "0").lower() not in _TRUE


def offline_switches() -> list[str]:
    """The environment variables that turn downloads off now (``["VTBENCH_OFFLINE=1"]``), for error messages."""
    return [f"{v}={os.environ[v]}" for v in ("VTBENCH_OFFLINE", "HF_HUB_OFFLINE")
            if os.environ.get(v, "0").lower() in _TRUE]


def cache_dir() -> Path:
    """Cache root: ``$VTBENCH_CACHE`` or ``~/.cache/vtbench``."""
    root = os.environ.get("VTBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vtbench"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- names of files vtbench writes -------------------------------------------------------------------------
# Sample ids, dataset and tokenizer names come from data and result files: they can hold '../', absolute paths,
# spaces and control characters. Every name vtbench writes goes through ``safe_name``; every path is checked by
# ``join_under`` to stay below its root.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SAFE_EXT = re.compile(r"\.[A-Za-z0-9]{1,10}")


def safe_name(text: str, max_len: int = 120) -> str:
    """A file-system-safe single path component for ``text``; injective (different texts, different names).

    Names of letters, digits, ``.``, ``_`` and ``-`` (not starting with ``.``/``_``/``-``, no ``..``, at most
    ``max_len``) are kept as they are. Any other name is sanitised and tagged with ``~`` and 8 hex digits of
    its sha1, before its extension (``a b.png`` -> ``a_b~1a2b3c4d.png``); ``~`` never occurs in a kept name, so a
    tagged name cannot collide with a kept one, and two tagged names differ in their hash.
    """
    text = str(text)
    if _SAFE_NAME.fullmatch(text) and ".." not in text and len(text) <= max_len:
        return text
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem, ext = os.path.splitext(text)
    if not _SAFE_EXT.fullmatch(ext) or not stem:
        stem, ext = text, ""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-").replace("..", "_")[: max(8, max_len - 20)]
    return f"{base or 'unnamed'}~{digest}{ext}"


def safe_relpath(sample_id: str) -> Path:
    """A relative path for a sample id (``a/b.png`` stays ``a/b.png``): every component through ``safe_name``;
    empty and ``.`` components dropped, ``..`` and absolute roots become tagged names, never parent steps."""
    parts = [p for p in re.split(r"[/\\]+", str(sample_id)) if p not in ("", ".")]
    return Path(*[safe_name(p) for p in parts]) if parts else Path(safe_name(str(sample_id)))


def png_relpath(sample_id: str) -> Path:
    """Where a sample's PNG (a reconstruction) goes: ``safe_relpath`` with ``.png`` kept, or ``~.png`` appended
    to other names (``x.jpg`` -> ``x.jpg~.png``), so ``x.png``, ``x.jpg`` and ``x`` never share a file."""
    rel = safe_relpath(sample_id)
    return rel if rel.name.endswith(".png") else rel.with_name(rel.name + "~.png")


class UnsafePathError(ValueError):
    """A path built from outside input would leave its root."""


def join_under(root: str | Path, *parts: str | Path) -> Path:
    """``root / parts`` after checking that the result (symlinks resolved) stays inside ``root``."""
    root = Path(root)
    path = root.joinpath(*parts)
    base, full = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([base, full]) != base:
        raise UnsafePathError(f"{path} would be written outside {root}; refusing (a hostile sample or dataset name?)")
    return path
