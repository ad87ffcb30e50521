"""Reading ADM ``.npz`` sample batches member by member, and vtbench token files (format in the package docstring)."""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from vtbench.gfid.common import TOKEN_FILE_FORMAT, TOKEN_FILE_VERSION, SampleFormatError
from vtbench.results import write_npz_atomic

log = logging.getLogger("vtbench")

# ------------------------------------------------------------------------------------------------ npz reading


def npz_keys(path: str | os.PathLike) -> list[str]:
    """Array names in an ``.npz`` (without reading any array)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
    except (zipfile.BadZipFile, OSError) as exc:
        raise SampleFormatError(f"{path}: not a readable .npz file ({exc})") from None


def _npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, fortran_order, dtype) of an open ``.npy`` stream; None for formats read whole (v3)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return None


def npz_array_info(path: str | os.PathLike, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``key`` in an ``.npz`` from its header alone."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        header = _npy_header(f)
    if header is None:
        with np.load(path, allow_pickle=False) as z:
            arr = z[key]
            return tuple(arr.shape), arr.dtype
    return tuple(header[0]), header[2]


def iter_npz_rows(path: str | os.PathLike, key: str, batch_size: int, *, limit: int | None = None,
                  keep: set[int] | None = None) -> Iterator[np.ndarray]:
    """Rows of array ``key`` in order, ``batch_size`` at a time, streamed from the zip member (C-order arrays;
    others are loaded whole). ``limit``: only the first rows; ``keep``: only these row indices."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        header = _npy_header(f)
        if header is None or header[1] or header[2].hasobject:  # rare layouts: read whole
            with np.load(path, allow_pickle=False) as z:
                arr = z[key]
            read = lambda start, stop: arr[start:stop]  # noqa: E731
            shape = arr.shape
        else:
            shape, _, dtype = header
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

            def read(start: int, stop: int) -> np.ndarray:
                want, chunks = (stop - start) * row_bytes, []
                while want > 0:
                    chunk = f.read(want)
                    if not chunk:
                        raise SampleFormatError(f"{path}: {key} is truncated (expected {shape[0]} rows)")
                    chunks.append(chunk)
                    want -= len(chunk)
                return np.frombuffer(b"".join(chunks), dtype=dtype).reshape(stop - start, *shape[1:])
        n = shape[0] if limit is None else min(shape[0], limit)
        for start in range(0, n, batch_size):
            rows = read(start, min(start + batch_size, n))
            if keep is not None:
                rows = rows[np.fromiter((i in keep for i in range(start, start + len(rows))), bool, len(rows))]
            if len(rows):
                yield rows


def check_adm_images(path: str | os.PathLike, shape: tuple[int, ...], dtype: np.dtype, keys: list[str],
                     key: str = "arr_0") -> None:
    """Raise ``SampleFormatError`` unless ``key`` is uint8 ``(N, H, W, 3)`` (ADM's NHWC sample layout)."""
    found = f"{key} is {dtype} {shape} (keys: {', '.join(keys)})"
    if len(shape) == 4 and shape[-1] == 3 and dtype == np.uint8:
        return
    if len(shape) == 4 and shape[1] == 3 and shape[-1] != 3:
        fix = ("it looks like NCHW; ADM sample batches are NHWC: save "
               f"np.savez(path, {key}=x.transpose(0, 2, 3, 1))")
    elif np.issubdtype(dtype, np.floating):
        fix = ("ADM sample batches are uint8 in [0, 255]: save np.clip(np.round(x * 255), 0, 255).astype(np.uint8) "
               "for [0, 1] images (np.clip(np.round(127.5 * x + 128), 0, 255) for [-1, 1])")
    elif len(shape) == 4 and shape[-1] in (1, 4):
        fix = "ADM sample batches are RGB: expand grey images to 3 channels / drop alpha"
    else:
        fix = "expected uint8 images of shape (N, H, W, 3), as ADM's samplers write them"
    raise SampleFormatError(f"{path}: {found}; {fix}")


# ------------------------------------------------------------------------------------------------ token files


@dataclass
class TokenFile:
    """A decoded token file (see the module docstring for the format)."""

    codes: np.ndarray  # int64 (N, *layout)
    tokenizer: str | None = None
    height: int | None = None
    width: int | None = None
    labels: np.ndarray | None = None


def write_token_file(path: str | os.PathLike, codes: torch.Tensor | np.ndarray, tokenizer: Any,
                     height: int | None, width: int | None, labels: torch.Tensor | np.ndarray | None = None) -> Path:
    """Write ``codes`` ``(N, *layout)`` of ``tokenizer`` (a name or a ``Tokenizer``) at ``height x width``
    (None: the card's native size) to a token file, atomically. Returns the path."""
    c = torch.as_tensor(codes).cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if not np.issubdtype(c.dtype, np.integer) or c.ndim < 2:
        raise ValueError(f"codes must be integers of shape (N, *layout), got {c.dtype} {c.shape}")
    name = tokenizer if isinstance(tokenizer, str) or tokenizer is None else tokenizer.name
    arrays: dict[str, np.ndarray] = {"codes": c.astype(np.int64), "format": np.asarray(TOKEN_FILE_FORMAT),
                                     "format_version": np.asarray(TOKEN_FILE_VERSION, np.int64)}
    if name:
        arrays["tokenizer"] = np.asarray(str(name))
    for key, v in (("height", height), ("width", width)):
        if v is not None:
            arrays[key] = np.asarray(int(v), np.int64)
    if labels is not None:
        lab = torch.as_tensor(labels).cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if lab.shape != (c.shape[0],):
            raise ValueError(f"labels must have shape ({c.shape[0]},), got {lab.shape}")
        arrays["labels"] = lab.astype(np.int64)
    return write_npz_atomic(path, **arrays)


def read_token_file(path: str | os.PathLike) -> TokenFile:
    """Read and check a token file (``SampleFormatError`` naming the file and its keys when it is not one)."""
    keys = npz_keys(path)
    if "codes" not in keys:
        raise SampleFormatError(f"{path}: not a token file (no 'codes'; keys: {', '.join(keys)})")
    with np.load(path, allow_pickle=False) as z:
        codes = z["codes"]
        if not np.issubdtype(codes.dtype, np.integer) or codes.ndim < 2:
            raise SampleFormatError(f"{path}: codes must be integers of shape (N, *layout), got {codes.dtype} "
                                    f"{codes.shape}")
        name = str(z["tokenizer"]) if "tokenizer" in keys else None
        h = int(z["height"]) if "height" in keys else None
        w = int(z["width"]) if "width" in keys else None
        labels = np.asarray(z["labels"]) if "labels" in keys else None
    return TokenFile(codes.astype(np.int64, copy=False), name or None, h, w, labels)
