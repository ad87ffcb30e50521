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


CONTENT_MEMO_VERSION = 1


def content_digests(root: str | Path, rel_paths: list[str], *, chunk: int = 1 << 20) -> list[str]:
    """sha256 (hex, 32 digits) of the content of each ``root/rel`` file, in order.

    Dataset revisions, and through them every cache keyed by a dataset (rFID/pFID reference statistics, gFID
    reference features, OCR of originals), use these, so overwriting an image with another of the same size
    changes the key. Digests are memoised per dataset root in one JSON file (``cache_dir()/content/``) by
    (relative path, size, mtime_ns): a file is read again only when one of those changed.
    """
    import json

    root = Path(root)
    base = os.path.realpath(root)
    memo_path = cache_dir() / "content" / f"{hashlib.sha1(base.encode('utf-8', 'surrogatepass')).hexdigest()}.json"
    memo: dict[str, list] = {}
    try:
        doc = json.loads(memo_path.read_text())
        if doc.get("version") == CONTENT_MEMO_VERSION and doc.get("root") == base:
            memo = doc["files"]
    except (OSError, ValueError, KeyError, TypeError):
        memo = {}
    out: list[str] = []
    changed = False
    for rel in rel_paths:
        st = (root / rel).stat()
        hit = memo.get(rel)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            out.append(hit[2])
            continue
        h = hashlib.sha256()
        with open(root / rel, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        digest = h.hexdigest()[:32]
        memo[rel] = [st.st_size, st.st_mtime_ns, digest]
        out.append(digest)
        changed = True
    if changed:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": CONTENT_MEMO_VERSION, "root": base, "files": memo}))
        os.replace(tmp, memo_path)
    return out
