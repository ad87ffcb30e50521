"""Where vtbench finds its declarations (cards, protocols, embedded data) and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

# vtbench is installed editable from its repository; cards, protocols and data live beside the package.
REPO_ROOT = Path(os.environ.get("VTBENCH_HOME", Path(__file__).resolve().parents[1]))
CARDS_DIR = REPO_ROOT / "tokenizers"
PROTOCOLS_DIR = REPO_ROOT / "metrics"
DATA_DIR = REPO_ROOT / "data"


def cache_dir() -> Path:
    """Cache root: ``$VTBENCH_CACHE`` or ``~/.cache/vtbench``."""
    root = os.environ.get("VTBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vtbench"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
