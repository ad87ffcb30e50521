"""The static leaderboard: result records and the cards' published numbers (``reported``) -> view model
(``view``) -> HTML (``render``, ``pages``) with inline SVG plots (``plots``), thumbnail assets (``images``) and
CSV/JSON downloads (``downloads``). ``build_site`` is the entry point; ``store`` is the published results store
under ``leaderboard/store/`` and its checked way in (``vtbench leaderboard add``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def build_site(results: list[Path], out: Path, cards: Mapping[str, Any] | None = None) -> Path:
    """Build the site from result files/folders (and the registered cards) into ``out``; returns ``index.html``."""
    from vtbench.leaderboard.build import build_site as _build
    return _build(results, out, cards)


__all__ = ["build_site"]
