"""Pieces every evaluation path shares (reconstruction, text, detail, generation, the AR probe): the 8-bit
quantisation of decoded images, the progress display on stderr and the fingerprint of a run's settings.

One copy of each, so a task cannot drift from another in how it rounds pixels, keys its resume files and caches,
or shows progress.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import torch


def quantise_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in ``[0, 1]`` -> uint8 ``round(clamp(x, 0, 1) * 255)``, the rFID protocol's saving step
    (ADM/LlamaGen save PNGs the same way). Applied to every reconstruction and generated sample before any
    metric, so numbers match what a PNG round trip would give."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def fingerprint(*parts: Any, length: int = 16) -> str:
    """A short stable hash of ``parts`` (JSON with sorted keys; non-JSON values by ``str``): the key of resume
    files, checkpoints and caches. Any settings change gives another fingerprint."""
    canon = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()[:length]


class Progress:
    """A rich progress bar on stderr, silent when disabled (``--quiet``, ``--json``, torchrun ranks other than 0).

    Use ``advance(n, info=None)`` and ``close()``, or as a context manager that yields ``advance``.
    """

    def __init__(self, enabled: bool, total: int | None, label: str, *, show_info: bool = False):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress
            columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn()]
            if show_info:
                columns.append(TextColumn("{task.fields[info]}"))
            self.bar = RichProgress(*columns, console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, info="")

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, **({"info": info} if info is not None else {}))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> Callable[..., None]:
        return self.advance

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Progress", "fingerprint", "quantise_uint8"]
