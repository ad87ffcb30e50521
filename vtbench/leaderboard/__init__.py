"""The static leaderboard: result records -> view model (``view``) -> HTML (``render``, ``pages``) with inline
SVG plots (``plots``) and thumbnail assets (``images``). ``build_site`` is the entry point; it reads result files
only (``vtbench.results.iter_records``)."""

from __future__ import annotations

from pathlib import Path


def build_site(results: list[Path], out: Path) -> Path:
    """Build the site from result files/folders into ``out``; returns the path of ``index.html``."""
    from vtbench.leaderboard.build import build_site as _build
    return _build(results, out)


__all__ = ["build_site"]
