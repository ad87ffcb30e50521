"""File hashing shared by tokenizers and metrics (weights provenance)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vtbench.paths import cache_dir


def sha256sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, cached by (path, size, mtime) so large checkpoints are hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    memo = cache_dir() / "sha256" / f"{key}.txt"
    if memo.exists():
        return memo.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    digest = h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(digest)
    os.replace(tmp, memo)
    return digest
