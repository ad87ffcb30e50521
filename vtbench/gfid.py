"""gFID tier A: ``vtbench gfid SAMPLES --ref REF``, the ADM evaluation suite on generated samples.

Reports ``gfid``, ``sfid``, ``inception_score``, ``precision`` and ``recall`` (definitions and the ADM evaluator
line references in ``vtbench.metrics.generation``; protocol ``metrics/generation.toml``). Features are the FID
Inception of ``vtbench.metrics.inception``, resized with clean-fid's "clean" resize (the default) or, with
``resize="tf-bilinear"`` (CLI ``--resize adm``), with the TF1 bilinear resize inside the graph ADM's evaluator uses.

**Samples** (``iter_samples``), each read in order and streamed in batches of uint8 ``(B, 3, H, W)``:

- an image folder: every image file below it (recursive, sorted by path), decoded by ``load_image``; no crop or
  resize besides Inception's own;
- an ADM sample batch ``.npz``: ``arr_0`` uint8 ``(N, H, W, 3)`` (NHWC, as ADM's samplers save it; ``arr_1``
  labels, if present, are ignored). It is read member by member from the zip, so a 10 GB batch needs no 10 GB of
  memory. Other layouts (NCHW, float, grey) are refused with the fix;
- a token file ``.npz`` (format below), decoded with a named tokenizer.

**Token file** (``write_token_file`` / ``read_token_file``): an ``.npz`` with

- ``codes``: int64 ``(N, *layout)``, exactly the code tensor the tokenizer's ``encode`` makes at ``height x width``
  (``Tokens.codes``; e.g. ``(N, 16, 16)`` for a 16x16 VQ, ``(N, 8, 8, 4)`` for an RVQ);
- ``tokenizer`` (optional, 0-d str): the ``family.variant`` name; ``--tokenizer`` overrides it;
- ``height``, ``width`` (optional, 0-d int): the image size the codes decode to (default: the card's native size);
- ``labels`` (optional, int64 ``(N,)``): class labels, recorded, not used;
- ``format`` = ``"vtbench-tokens"``, ``format_version`` = 1.

Codes are decoded with ``tok.decode(tok.tokens_from_codes(codes, height, width))`` and quantised as the rFID
protocol does, ``round(clamp(x, 0, 1) * 255)``.

**Reference** (``open_reference``):

- an ``.npz`` of statistics: ADM's reference batches (``VIRTUAL_imagenet256_labeled.npz``: ``mu``, ``sigma``,
  ``mu_s``, ``sigma_s`` from ADM's evaluator over the training set, and ``arr_0``: 10,000 uint8 NHWC images), any
  subset of those keys, or vtbench's own reference files (the same keys plus ``features``, float ``(M, 2048)``
  pool_3 features, and ``vtbench_reference``, JSON metadata). gFID needs ``mu``/``sigma`` (else computed from
  ``arr_0``), sFID ``mu_s``/``sigma_s`` (computed from ``arr_0`` only when ``mu`` is absent too, as ADM does),
  precision/recall reference features (``features``, else Inception on ``arr_0``);
- anything ``open_dataset`` accepts (folder, ``embedded``, parquet), preprocessed with ``adm-center-crop`` at
  ``resolution``. Its statistics and (for at most ``pr_reference_size`` images, a seeded subset) its pool_3
  features are cached under ``cache_dir()/gfid_reference/`` keyed by dataset, revision, selection, policy,
  extractor and subset; the cache files are reference ``.npz`` files themselves.

**Mixed pipelines**: ``mu``/``sigma`` (``mu_s``/``sigma_s``) read from an ADM reference file were computed by ADM's
TF evaluator, which resizes to 299 x 299 bilinearly inside its graph. With the default clean-fid resize, ``gfid`` /
``sfid`` against such statistics carry ``extra["warning"]`` (comparable with ADM-evaluated numbers only up to that
resize difference; the fix is ``--resize adm``). With ``resize="tf-bilinear"`` the samples go through ADM's resize
and no warning is given (what remains is the TorchScript port of the same graph); those values are keyed
``gfid@adm``, ``sfid@adm``, ... and written to ``generation-adm/``. A reference whose features came from another
extractor id (weights file or resize) warns on every reference-based value. Warnings that apply together
(rank-deficient N, mixed pipeline, size mismatch) are joined with ``"; "``.

**Sizes** (``gfid_run``): samples record their ``height`` x ``width`` (token files: the size the codes decode to;
folders and ADM ``.npz``: the first image's). A reference of another image size (a dataset at ``resolution``,
an ``.npz``'s ``arr_0``) is refused with ``SizeMismatchError`` unless ``allow_size_mismatch`` (then a warning on
every value). A dataset reference with no ``resolution`` is cropped to the samples' size when they are square,
else to 256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from vtbench.data.images import load_image
from vtbench.fid_tool import list_images
from vtbench.metrics.base import MetricValue
from vtbench.metrics.frechet import FeatureStats, GaussianStats, frechet_distance
from vtbench.metrics.generation import IS_SPLIT_SIZE, NEAREST_K, PR_BLOCK_SIZE, GenerationState, precision_recall
from vtbench.metrics.inception import (FEATURE_DIM, SPATIAL_DIM, SPATIAL_ID, InceptionExtractor, check_resize_mode,
                                       load_inception)
from vtbench.results import (RESULT_FILE, environment, new_record, protocol_section, run_dir, write_json_atomic,
                             write_npz_atomic)

log = logging.getLogger("vtbench")

TOKEN_FILE_FORMAT = "vtbench-tokens"
TOKEN_FILE_VERSION = 1
REFERENCE_META_KEY = "vtbench_reference"
REFERENCE_CACHE_VERSION = 1
PR_REFERENCE_SIZE = 10_000  # ADM's reference batches hold 10,000 images for precision/recall
FULL_RANK_N = FEATURE_DIM
# (display name, higher is better) of each output, in report order
OUTPUTS: dict[str, tuple[str, bool]] = {"gfid": ("gFID", False), "sfid": ("sFID", False),
                                        "inception_score": ("IS", True), "precision": ("Precision", True),
                                        "recall": ("Recall", True)}
# ADM-resize values are other numbers than clean ones: their own metric keys (``gfid@adm``) and result folder, so
# the two never overwrite each other or share a leaderboard column or a compare row
RESIZE_SUFFIX = {"clean": "", "tf-bilinear": "@adm"}


def metric_key(base: str, resize: str = "clean") -> str:
    """The record key of output ``base`` (``gfid``, ...) under a resize mode: ``gfid`` / ``gfid@adm``."""
    return base + RESIZE_SUFFIX[check_resize_mode(resize)]


class SampleFormatError(ValueError):
    """A samples or reference file whose layout vtbench cannot read; the message names the file and the fix."""


class SizeMismatchError(ValueError):
    """Samples and reference images of different sizes; the message names both sizes and the fix."""


DEFAULT_RESOLUTION = 256


def _join_warnings(*parts: str | None) -> str | None:
    """Non-empty warnings joined with ``"; "`` (None when there are none)."""
    kept = [p for p in parts if p]
    return "; ".join(kept) if kept else None


def mixed_pipeline_warning(source: str, what: str = "mu/sigma") -> str:
    """The warning on a Frechet distance whose reference Gaussian was read from ``source`` (not this extractor)."""
    return (f"mixed pipelines: the reference {what} come from {source} (ADM's TF evaluator resizes bilinearly to "
            "299x299 inside its graph), the samples' features from vtbench's extractor (clean-fid resize), so the "
            "value is comparable with ADM-evaluated numbers only up to the resize difference (clean-fid vs legacy "
            "resize); score with --resize adm (resize='tf-bilinear') to use ADM's resize")


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


# ---------------------------------------------------------------------------------------------------- samples


@dataclass
class Samples:
    """Generated samples: iterating yields uint8 ``(B, 3, H, W)`` CPU batches in a fixed order (re-iterable).

    ``kind`` is ``"folder"``, ``"adm-npz"`` or ``"tokens"``; ``provenance`` goes into result records;
    ``tokenizer`` is the decoding ``Tokenizer`` of a token file.
    """

    spec: str
    kind: str
    n: int
    provenance: dict[str, Any]
    batches: Callable[[], Iterator[torch.Tensor]]
    tokenizer: Any = None
    size: tuple[int, int] | None = None  # (height, width) of the images (folders, ADM .npz: the first one's)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches())

    def __len__(self) -> int:
        return self.n


def _quantise(x: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8, the rFID protocol's ``round(clamp(x, 0, 1) * 255)``."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def _nhwc_to_tensor(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 3, 1, 2)))


def _folder_samples(root: Path, batch_size: int, limit: int | None) -> Samples:
    files = list_images(root)[:limit]
    if not files:
        raise SampleFormatError(f"{root}: no image files found (recursive)")

    h, w = load_image(files[0]).shape[:2]

    def batches() -> Iterator[torch.Tensor]:
        group: list[np.ndarray] = []
        seen: set[tuple[int, int]] = set()
        for p in files:
            img = load_image(p)
            seen.add((int(img.shape[0]), int(img.shape[1])))
            if group and (img.shape != group[0].shape or len(group) == batch_size):  # stack equal sizes only
                yield _nhwc_to_tensor(np.stack(group))
                group = []
            group.append(img)
        if group:
            yield _nhwc_to_tensor(np.stack(group))
        prov["sizes"] = [list(s) for s in sorted(seen)]  # every size met (more than one: a mixed folder)

    prov = {"spec": str(root), "kind": "folder", "n_files": len(files), "first": files[0].name,
            "last": files[-1].name, "height": int(h), "width": int(w)}
    return Samples(str(root), "folder", len(files), prov, batches, size=(int(h), int(w)))


def _adm_npz_samples(path: Path, batch_size: int, limit: int | None) -> Samples:
    from vtbench.hashing import sha256sum

    keys = npz_keys(path)
    if "arr_0" not in keys:
        raise SampleFormatError(f"{path}: an ADM sample batch needs 'arr_0' (uint8 N x H x W x 3); keys found: "
                                f"{', '.join(keys) or 'none'} (a token file needs 'codes')")
    shape, dtype = npz_array_info(path, "arr_0")
    check_adm_images(path, shape, dtype, keys)
    n = shape[0] if limit is None else min(shape[0], limit)

    def batches() -> Iterator[torch.Tensor]:
        for rows in iter_npz_rows(path, "arr_0", batch_size, limit=n):
            yield _nhwc_to_tensor(rows)

    prov = {"spec": str(path), "kind": "adm-npz", "sha256": sha256sum(path), "shape": list(shape),
            "keys": keys, "n_used": n, "height": int(shape[1]), "width": int(shape[2])}
    return Samples(str(path), "adm-npz", n, prov, batches, size=(int(shape[1]), int(shape[2])))


def _token_samples(path: Path, tokenizer: Any, weights: str | None, batch_size: int, limit: int | None,
                   device: str | torch.device, trust: bool = False) -> Samples:
    from vtbench.hashing import sha256sum
    from vtbench.tokenizers import Tokenizer, build_tokenizer

    tf = read_token_file(path)
    if isinstance(tokenizer, Tokenizer):
        tok = tokenizer
    else:
        name = tokenizer or tf.tokenizer
        if not name:
            raise SampleFormatError(f"{path}: the token file names no tokenizer; pass one (--tokenizer NAME)")
        if tf.tokenizer and name != tf.tokenizer:
            log.warning("%s: decoding with %s, not the file's %s", path, name, tf.tokenizer)
        tok = build_tokenizer(name, weights=weights, trust=trust, device=device)
    codes = tf.codes[:limit]
    tok.tokens_from_codes(torch.from_numpy(codes[:1]), tf.height, tf.width)  # shape/range check before any work

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(codes), batch_size):
            tokens = tok.tokens_from_codes(torch.from_numpy(codes[start:start + batch_size]), tf.height, tf.width)
            with torch.inference_mode():
                images = tok.decode(tokens)
            if not torch.isfinite(images).all():
                raise RuntimeError(f"{tok.name} decoded NaN/Inf pixels from codes {start}..{start + len(tokens) - 1}"
                                   f" of {path}")
            yield _quantise(images.float()).cpu()

    native = tok.card.native_size
    h, w = tf.height or native, tf.width or native  # tokens_from_codes has checked that these exist
    prov = {"spec": str(path), "kind": "tokens", "sha256": sha256sum(path), "tokenizer": tok.name,
            "file_tokenizer": tf.tokenizer, "codes_shape": list(tf.codes.shape), "height": h, "width": w,
            "file_height": tf.height, "file_width": tf.width,
            "n_labels": None if tf.labels is None else int(len(tf.labels)), "n_used": len(codes)}
    size = (int(h), int(w)) if h is not None and w is not None else None
    return Samples(str(path), "tokens", len(codes), prov, batches, tokenizer=tok, size=size)


def iter_samples(spec: str | os.PathLike, *, tokenizer: Any = None, batch_size: int = 32, limit: int | None = None,
                 device: str | torch.device = "cpu", weights: str | None = None, trust: bool = False) -> Samples:
    """Open generated samples: an image folder, an ADM ``.npz`` (``arr_0``) or a token file (``codes``).

    ``tokenizer`` (a name or a ``Tokenizer``) decodes a token file and overrides the name stored in it;
    ``weights`` and ``trust`` (allow unpickling a checkpoint that weights_only loading refuses) go to
    ``build_tokenizer``. ``limit``: the first N samples. Returns a re-iterable ``Samples`` of uint8
    ``(B, 3, H, W)`` batches (folders: consecutive images of equal size share a batch); ``Samples.size`` is
    their ``(height, width)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit}")
    path = Path(spec)
    if path.is_dir():
        return _folder_samples(path, batch_size, limit)
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such file or folder (samples: an image folder, an ADM .npz with "
                                "arr_0, or a token file .npz with codes)")
    if path.suffix.lower() != ".npz":
        raise SampleFormatError(f"{spec}: samples must be an image folder or an .npz (ADM arr_0 or token codes)")
    if "codes" in npz_keys(path):
        return _token_samples(path, tokenizer, weights, batch_size, limit, device, trust)
    return _adm_npz_samples(path, batch_size, limit)


# -------------------------------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """What samples are scored against.

    ``pool`` / ``spatial``: Gaussians of pool_3 (gFID) and spatial (sFID) features; ``features``: float32
    ``(M, 2048)`` pool_3 features for precision/recall; ``extractor``: id of the extractor that computed what
    vtbench computed (None when everything came from a file); ``missing``: part (``gfid``, ``sfid``,
    ``precision_recall``) -> why it is absent; ``description`` becomes the result's ``dataset`` section;
    ``warnings``: part (``gfid``, ``sfid``) -> the warning every value of it carries (statistics read from a file
    that another pipeline computed).
    """

    id: str
    description: dict[str, Any]
    pool: GaussianStats | None = None
    spatial: GaussianStats | None = None
    features: torch.Tensor | None = None
    extractor: str | None = None
    missing: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int | None:
        return None if self.pool is None else self.pool.n

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Reference":
        """Read a reference file written by ``save`` (``SampleFormatError`` when it is not one)."""
        path = Path(path)
        keys = npz_keys(path)
        if REFERENCE_META_KEY not in keys:
            raise SampleFormatError(f"{path}: not a vtbench reference file (no {REFERENCE_META_KEY}; keys: "
                                    f"{', '.join(keys)})")
        with np.load(path, allow_pickle=False) as z:
            a = {k: np.asarray(z[k]) for k in keys if k != "arr_0"}
        meta = json.loads(str(a[REFERENCE_META_KEY]))
        pool, spatial, feats = _arrays_to_stats(path, a)
        return cls(id=meta["id"], description=dict(meta["description"]), pool=pool, spatial=spatial,
                   features=feats, extractor=meta.get("extractor"), missing=dict(meta.get("missing") or {}),
                   warnings=dict(meta.get("warnings") or {}))

    def save(self, path: str | os.PathLike) -> Path:
        """Write as a reference ``.npz`` (ADM keys + ``features`` + metadata), atomically."""
        arrays: dict[str, np.ndarray] = {}
        if self.pool is not None:
            arrays.update(mu=self.pool.mu, sigma=self.pool.sigma)
            if self.pool.n is not None:
                arrays["n"] = np.asarray(self.pool.n, np.int64)
        if self.spatial is not None:
            arrays.update(mu_s=self.spatial.mu, sigma_s=self.spatial.sigma)
        if self.features is not None:
            arrays["features"] = self.features.cpu().numpy().astype(np.float32)
        meta = {"id": self.id, "description": self.description, "extractor": self.extractor,
                "missing": self.missing, "warnings": self.warnings, "version": REFERENCE_CACHE_VERSION}
        arrays[REFERENCE_META_KEY] = np.asarray(json.dumps(meta))
        return write_npz_atomic(path, **arrays)


_SPATIAL_WHAT = "ADM's spatial (mixed_6/conv, 7 x 17 x 17)"


def _check_dims(path: Path, name: str, mu: np.ndarray, sigma: np.ndarray, dim: int, what: str) -> None:
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise SampleFormatError(f"{path}: {name} has shapes {mu.shape} / {sigma.shape}; {what} statistics have "
                                f"{dim} dimensions")


def _check_features(path: Path, f: np.ndarray) -> np.ndarray:
    if f.ndim != 2 or f.shape[1] != FEATURE_DIM or not np.issubdtype(f.dtype, np.floating):
        raise SampleFormatError(f"{path}: features must be float (M, {FEATURE_DIM}) pool_3 features, got "
                                f"{f.dtype} {f.shape}")
    return f.astype(np.float32)


def _arrays_to_stats(path: Path, a: dict[str, np.ndarray]
                     ) -> tuple[GaussianStats | None, GaussianStats | None, torch.Tensor | None]:
    """Pool and spatial Gaussians and P/R features from an npz's arrays (each None when absent), checked."""
    n = int(a["n"]) if "n" in a else None
    pool = spatial = feats = None
    if "mu" in a and "sigma" in a:
        _check_dims(path, "mu/sigma", a["mu"], a["sigma"], FEATURE_DIM, "pool_3")
        pool = GaussianStats(a["mu"].astype(np.float64), a["sigma"].astype(np.float64), n)
    if "mu_s" in a and "sigma_s" in a:
        _check_dims(path, "mu_s/sigma_s", a["mu_s"], a["sigma_s"], SPATIAL_DIM, _SPATIAL_WHAT)
        spatial = GaussianStats(a["mu_s"].astype(np.float64), a["sigma_s"].astype(np.float64), n)
    if "features" in a:
        feats = torch.from_numpy(_check_features(path, a["features"]))
    return pool, spatial, feats


def _image_features(batches: Iterable[torch.Tensor], extractor: InceptionExtractor, *, keep: Callable[[int], bool],
                    progress: bool, total: int | None, label: str) -> tuple[GenerationState, torch.Tensor, int]:
    """Pool + spatial statistics of all batches; pool features of the rows ``keep(i)`` accepts."""
    state = GenerationState(FEATURE_DIM, SPATIAL_DIM, keep_features=False, device=extractor.device)
    kept: list[torch.Tensor] = []
    i = 0
    with _Progress(progress, total, label) as advance:
        for batch in batches:
            out = extractor.features_all(batch, logits=False)
            state.update(out.pool, out.spatial)
            rows = [j for j in range(batch.shape[0]) if keep(i + j)]
            if rows:
                kept.append(out.pool[rows].to("cpu", torch.float32))
            i += batch.shape[0]
            advance(batch.shape[0])
    feats = torch.cat(kept) if kept else torch.zeros(0, FEATURE_DIM, dtype=torch.float32)
    return state, feats, i


def _gaussian(stats: FeatureStats) -> GaussianStats | None:
    if int(stats.n) < 2:
        return None
    mu, sigma = stats.mean_cov()
    return GaussianStats(mu, sigma, int(stats.n))


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _cache_path(key: str) -> Path:
    from vtbench.paths import cache_dir
    return cache_dir() / "gfid_reference" / f"{key}.npz"


def _load_cached(path: Path) -> Reference | None:
    """A cached reference file, or None when it is missing or damaged (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        return Reference.load(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable reference cache (%s); recomputing", path, exc)
        return None


def _reference_from_npz(path: Path, *, extractor: InceptionExtractor | None, limit: int | None = None,
                        seed: int = 0, batch_size: int = 32, progress: bool = False) -> Reference:
    from vtbench.data.datasets import select_subset
    from vtbench.hashing import sha256sum

    keys = npz_keys(path)
    sha = sha256sum(path)
    if REFERENCE_META_KEY in keys:  # a vtbench reference file: as saved
        ref = Reference.load(path)
        ref.description.update(reference_file=str(path.resolve()), file_sha256=sha)
        return ref
    has_images = "arr_0" in keys
    if not ({"mu", "sigma"} <= set(keys) or has_images or "features" in keys):
        raise SampleFormatError(f"{path}: a reference needs mu/sigma (ADM statistics), arr_0 (uint8 NHWC images) "
                                f"or features; keys found: {', '.join(keys) or 'none'}")
    with np.load(path, allow_pickle=False) as z:
        a = {k: np.asarray(z[k]) for k in ("mu", "sigma", "mu_s", "sigma_s", "features", "n") if k in keys}
    pool, spatial, feats = _arrays_to_stats(path, a)
    pool_from_file, spatial_from_file = pool is not None, spatial is not None
    ext_id, n_images, n_selected, image_size = None, None, None, None
    if has_images:
        shape, dtype = npz_array_info(path, "arr_0")
        if len(shape) == 4:
            image_size = [int(shape[1]), int(shape[2])]
    if has_images and (feats is None or pool is None):
        check_adm_images(path, shape, dtype, keys)
        if extractor is None:
            raise ValueError(f"{path}: reading arr_0 images needs the Inception extractor")
        n_images = shape[0]
        subset = select_subset([str(i) for i in range(n_images)], limit, seed)
        n_selected = len(subset)
        cache = _cache_path(_digest("npz", sha, extractor.id, SPATIAL_ID, limit, seed, REFERENCE_CACHE_VERSION))
        images = _load_cached(cache)
        if images is None:
            rows = iter_npz_rows(path, "arr_0", batch_size, keep=set(subset) if n_selected < n_images else None)
            state, img_feats, _ = _image_features((_nhwc_to_tensor(r) for r in rows), extractor,
                                                  keep=lambda i: True, progress=progress, total=n_selected,
                                                  label=f"reference {path.name}")
            images = Reference(f"{path.name}#arr_0", {"file_sha256": sha}, _gaussian(state.pool),
                               _gaussian(state.spatial), img_feats, extractor.id)
            images.save(cache)
        ext_id = extractor.id
        if feats is None:
            feats = images.features
        if pool is None:  # ADM computes both statistics from arr_0 when the file holds no mu (evaluator L164-172)
            pool, spatial = images.pool, images.spatial
            pool_from_file = spatial_from_file = False
    missing: dict[str, str] = {}
    if pool is None:
        missing["gfid"] = f"{path.name} has no mu/sigma and fewer than 2 usable arr_0 images"
    if spatial is None:
        missing["sfid"] = f"{path.name} has no mu_s/sigma_s (ADM's spatial statistics)" + (
            "; its mu/sigma come from the file, so statistics of its arr_0 images would describe another set"
            if has_images and pool is not None and "mu" in a else "")
    if feats is None:
        missing["precision_recall"] = (f"{path.name} holds no reference images (arr_0, uint8 NHWC) or pool_3 "
                                       "features (features); precision/recall compare samples with reference "
                                       "features (ADM: the 10,000 images of its reference batch)")
    desc = {"id": path.stem, "kind": "npz", "root": str(path.resolve()), "file_sha256": sha, "keys": keys,
            "statistics": ("file (ADM's evaluator: TF graph, bilinear resize)" if "mu" in a
                           else f"vtbench: {ext_id}" if pool is not None else None),
            "n_reference": None if pool is None else pool.n,
            "n_reference_features": None if feats is None else int(feats.shape[0]),
            "n_images": n_images, "n_selected": n_selected, "limit": limit, "seed": seed,
            "selection": None if n_selected is None else _digest(limit, seed, n_images)[:12],
            "image_size": image_size}
    # statistics read from the file came from ADM's TF evaluator: ``score_state`` applies these warnings unless the
    # samples go through ADM's resize too
    warnings = {}
    if pool_from_file and pool is not None:
        warnings["gfid"] = mixed_pipeline_warning(f"{path.name}, not this extractor", "mu/sigma")
    if spatial_from_file and spatial is not None:
        warnings["sfid"] = mixed_pipeline_warning(f"{path.name}, not this extractor", "mu_s/sigma_s")
    return Reference(id=path.stem, description=desc, pool=pool, spatial=spatial, features=feats, extractor=ext_id,
                     missing=missing, warnings=warnings)


def _reference_from_dataset(spec: str, *, resolution: int, limit: int | None, seed: int, batch_size: int,
                            extractor: InceptionExtractor, progress: bool, pr_reference_size: int) -> Reference:
    from vtbench.data.datasets import collate, open_dataset, select_subset
    from vtbench.data.policies import get_policy

    ds = open_dataset(spec, get_policy("adm-center-crop", resolution), limit=limit, seed=seed)
    info = ds.info
    pr_n = min(len(ds), pr_reference_size)
    key = _digest("dataset", info.id, info.revision, info.selection, info.policy, extractor.id, SPATIAL_ID, pr_n,
                  seed, REFERENCE_CACHE_VERSION)
    cache = _cache_path(key)
    cached = _load_cached(cache)
    if cached is not None:
        log.info("reference %s: cached statistics %s", info.id, cache)
        cached.description.update(cache=str(cache), image_size=[resolution, resolution])
        return cached
    keep_ids = set(ds.ids) if pr_n == len(ds) else {ds.ids[i] for i in select_subset(ds.ids, pr_n, seed)}
    skipped: list[dict[str, str]] = []
    order: list[str] = []

    def batches() -> Iterator[torch.Tensor]:
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
        for chunk in loader:
            skipped.extend({"id": sid, "reason": err} for sid, err in chunk["errors"])
            for sid, err in chunk["errors"]:
                log.warning("reference: skipping %s: %s", sid, err)
            if chunk["images"]:  # adm-center-crop makes every image resolution x resolution
                order.extend(chunk["ids"])
                yield torch.stack(chunk["images"])

    state, feats, n = _image_features(batches(), extractor, keep=lambda i: order[i] in keep_ids,
                                      progress=progress, total=len(ds), label=f"reference {info.id}")
    pool, spatial = _gaussian(state.pool), _gaussian(state.spatial)
    missing = {} if pool is not None else {"gfid": f"reference {info.id} has {n} usable image(s); a covariance "
                                                   "needs at least 2"}
    if spatial is None:
        missing["sfid"] = missing["gfid"]
    desc = {**info.to_dict(), "reference_kind": "dataset", "n_reference": n,
            "n_reference_features": int(feats.shape[0]), "statistics": f"vtbench: {extractor.id}",
            "skipped": skipped, "image_size": [resolution, resolution]}
    ref = Reference(info.id, desc, pool, spatial, feats, extractor.id, missing)
    ref.save(cache)
    ref.description["cache"] = str(cache)
    return ref


def open_reference(spec: str, *, resolution: int = 256, limit: int | None = None, seed: int = 0,
                   batch_size: int = 32, device: str | torch.device = "cpu", inception_path: str | None = None,
                   progress: bool = False, pr_reference_size: int = PR_REFERENCE_SIZE,
                   resize: str = "clean") -> Reference:
    """Open a reference: an ADM/vtbench reference ``.npz`` or a dataset (see the module docstring).

    ``limit`` / ``seed``: a deterministic subset of the dataset (or of an npz's ``arr_0`` images);
    ``pr_reference_size``: at most this many dataset images (a seeded subset) keep pool_3 features for
    precision/recall. Raises ``MetricUnavailable`` when Inception weights are needed and missing,
    ``SampleFormatError`` / ``DatasetError`` (both ``ValueError``) for unreadable inputs. ``resize``: the
    extractor's resize mode (``"clean"`` or ``"tf-bilinear"``; part of every cache key).
    """
    check_resize_mode(resize)
    path = Path(spec)
    if path.suffix.lower() == ".npz" and path.is_file():
        keys = npz_keys(path)
        needs_images = "arr_0" in keys and not ({"mu", "sigma", "features"} <= set(keys))
        extractor = load_inception(inception_path, device).with_resize(resize) if needs_images else None
        return _reference_from_npz(path, extractor=extractor, limit=limit, seed=seed, batch_size=batch_size,
                                   progress=progress)
    if path.suffix.lower() == ".npz":
        raise FileNotFoundError(f"{spec}: no such reference file")
    return _reference_from_dataset(spec, resolution=resolution, limit=limit, seed=seed, batch_size=batch_size,
                                   extractor=load_inception(inception_path, device).with_resize(resize),
                                   progress=progress, pr_reference_size=pr_reference_size)


def reference_image_size(spec: str, resolution: int = DEFAULT_RESOLUTION) -> tuple[tuple[int, int] | None, str]:
    """(height, width) of the reference's images without computing anything, and what they are: a dataset is
    cropped to ``resolution`` square; an ``.npz`` has its ``arr_0`` size (a vtbench reference file: the size it
    recorded); None when unknown (statistics only)."""
    path = Path(spec)
    if path.suffix.lower() != ".npz":
        return (resolution, resolution), f"the dataset {spec} cropped by adm-center-crop at --resolution {resolution}"
    if not path.is_file():
        return None, str(spec)
    keys = npz_keys(path)
    if REFERENCE_META_KEY in keys:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z[REFERENCE_META_KEY]))
        size = (meta.get("description") or {}).get("image_size")
        return (tuple(int(v) for v in size) if size else None), f"the images behind the reference file {path.name}"
    if "arr_0" in keys:
        shape, _ = npz_array_info(path, "arr_0")
        if len(shape) == 4:
            return (int(shape[1]), int(shape[2])), f"the arr_0 images of {path.name}"
    return None, str(spec)


def check_sizes(samples: Samples, ref_spec: str, resolution: int = DEFAULT_RESOLUTION, *,
                allow_size_mismatch: bool = False) -> str | None:
    """Raise ``SizeMismatchError`` when the samples' and the reference's image sizes differ (naming both and the
    fix); with ``allow_size_mismatch`` return the warning instead. None when they match or a size is unknown."""
    ref_size, what = reference_image_size(ref_spec, resolution)
    if samples.size is None or ref_size is None or tuple(samples.size) == tuple(ref_size):
        return None
    (h, w), (rh, rw) = samples.size, ref_size
    msg = f"samples are {h}x{w} (H x W) but the reference images are {rh}x{rw} ({what})"
    if allow_size_mismatch:
        return f"{msg}: Frechet distances and precision/recall across image sizes are not comparable"
    dataset = Path(ref_spec).suffix.lower() != ".npz"
    if dataset and h == w:
        fix = f"pass --resolution {h} to crop the reference dataset to the samples' size"
    elif dataset:
        fix = ("the samples are not square and adm-center-crop makes square references: crop/resize the samples to a "
               "square size and pass it as --resolution")
    else:
        fix = (f"score samples generated at {rh}x{rw}, or use a reference of {h}x{w} images (a dataset with "
               f"--resolution {h})")
    raise SizeMismatchError(f"{msg}; {fix}, or pass --allow-size-mismatch to score anyway (the values are then "
                            "not comparable with same-size numbers)")


# ---------------------------------------------------------------------------------------------------- scoring


class _Progress:
    """A rich progress bar on stderr as a context manager yielding ``advance(n)`` (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int | None, label: str):
        self.enabled, self.total, self.label, self.bar = enabled, total, label, None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True))
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


def extract_samples(samples: Iterable[torch.Tensor], extractor: InceptionExtractor, *, keep_features: bool = True,
                    seed: int = 0, progress: bool = False, split_size: int = IS_SPLIT_SIZE) -> GenerationState:
    """Stream ``samples`` (uint8 ``(B, 3, H, W)`` batches) through Inception into a ``GenerationState``.
    Seeds torch and numpy first, so sampling decoders behind the iterator are reproducible."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    state = GenerationState(FEATURE_DIM, SPATIAL_DIM, keep_features=keep_features, split_size=split_size,
                            device=extractor.device)
    total = len(samples) if hasattr(samples, "__len__") else None
    with _Progress(progress, total, "samples") as advance:
        for batch in samples:
            out = extractor.features_all(batch, logits=True)
            state.update(out.pool, out.spatial, out.logits)
            advance(batch.shape[0])
    return state


def _metric(key: str, value: float | None, n: int, reason: str | None = None, **extra: Any) -> MetricValue:
    display, hib = OUTPUTS[key]
    if value is not None and not np.isfinite(value):
        value, reason = None, reason or "the value is not finite"
    return MetricValue(value=None if value is None else float(value), n=n, higher_is_better=hib,
                       display_name=display, reason=reason if value is None else None, extra=extra)


def _frechet(key: str, stats: FeatureStats, ref: GaussianStats | None, missing: str | None, n: int,
             extra: dict[str, Any], foreign: str | None = None) -> MetricValue:
    """``foreign``: the mixed-pipeline warning when ``ref`` was not computed by this extractor."""
    if ref is None:
        return _metric(key, None, n, missing or "the reference has no statistics for it", **extra)
    if n < 2:
        return _metric(key, None, n, f"a covariance needs at least 2 samples, got {n}", **extra)
    extra = {**extra, "n_reference": ref.n}
    low = min(n, ref.n or n)
    rank = (f"Frechet distance on {low} < {FULL_RANK_N} images: the covariance is rank-deficient, so the value is "
            "biased high and only comparable at equal N") if low < FULL_RANK_N else None
    warning = _join_warnings(extra.get("warning"), rank, foreign)
    if warning:
        extra["warning"] = warning
    if foreign:
        extra["reference_statistics"] = "file (another pipeline)"
    mu, sigma = stats.mean_cov()
    return _metric(key, frechet_distance(mu, sigma, ref.mu, ref.sigma), n, **extra)


def score_state(state: GenerationState, reference: Reference, *, extractor: InceptionExtractor | None = None,
                nearest_k: int = NEAREST_K, device: str | torch.device = "cpu",
                block_size: int = PR_BLOCK_SIZE, warning: str | None = None) -> dict[str, MetricValue]:
    """The five numbers from a filled ``GenerationState`` (None + reason for each one that cannot be computed).
    ``warning`` goes into every value's ``extra["warning"]`` (joined with the values' own warnings)."""
    n = state.n
    base: dict[str, Any] = {"n_reference": reference.n}
    if warning:
        base["warning"] = warning
    resize = extractor.resize_mode if extractor is not None else "clean"
    other = None  # the reference's features came from another extractor (weights or resize)
    if extractor is not None:
        base.update(extractor=extractor.id, weights_sha256=extractor.sha256)
        if reference.extractor and reference.extractor != extractor.id:
            base["reference_extractor"] = reference.extractor
            other = (f"the reference was computed with {reference.extractor}, the samples with {extractor.id}: "
                     "values are comparable only up to that difference (open the reference with the same resize)")
            log.warning("%s", other)
    # ADM-file statistics: a mixed pipeline unless the samples went through ADM's resize too
    foreign = {} if resize == "tf-bilinear" else reference.warnings
    if resize == "tf-bilinear" and reference.warnings:
        base["reference_statistics"] = "file (ADM's evaluator; the same TF1 bilinear resize)"
    out = {"gfid": _frechet("gfid", state.pool, reference.pool, reference.missing.get("gfid"), n, base,
                            _join_warnings(other, foreign.get("gfid"))),
           "sfid": _frechet("sfid", state.spatial, reference.spatial, reference.missing.get("sfid"), n, base,
                            _join_warnings(other, foreign.get("sfid")))}
    is_extra = {**base, "split_size": state.inception.split_size}
    if n == 0:
        out["inception_score"] = _metric("inception_score", None, n, "no samples", **is_extra)
    elif state.n_logits != n:
        why = (extractor.logits_unavailable_reason() if extractor is not None and not extractor.has_logits
               else None) or "no classifier logits were given for the samples"
        out["inception_score"] = _metric("inception_score", None, n, why, **is_extra)
    else:
        n_splits = len(state.inception.scores) + (1 if n % state.inception.split_size else 0)
        out["inception_score"] = _metric("inception_score", state.inception.compute(), n, n_splits=n_splits,
                                         **is_extra)
    feats = state.features()
    pr_extra = {**base, "k": nearest_k, "distance": "squared euclidean, float64",
                "n_reference_features": None if reference.features is None else int(reference.features.shape[0])}
    if other:
        pr_extra["warning"] = _join_warnings(pr_extra.get("warning"), other)
    reason = None
    if reference.features is None:
        reason = reference.missing.get("precision_recall") or "the reference has no pool_3 features"
    elif feats is None:
        reason = "sample features were not kept"
    elif min(n, reference.features.shape[0]) < nearest_k + 1:
        reason = (f"k-NN manifolds with k={nearest_k} need at least {nearest_k + 1} images on each side, got "
                  f"{n} samples and {reference.features.shape[0]} reference images")
    if reason is not None:
        out["precision"] = _metric("precision", None, n, reason, **pr_extra)
        out["recall"] = _metric("recall", None, n, reason, **pr_extra)
    else:
        p, r = precision_recall(reference.features, feats, nearest_k, block_size=block_size, device=device)
        out["precision"] = _metric("precision", p, n, **pr_extra)
        out["recall"] = _metric("recall", r, n, **pr_extra)
    if resize == "clean":
        return out
    return {metric_key(k, resize): dataclasses.replace(v, display_name=f"{v.display_name} (ADM resize)",
                                                       extra={**v.extra, "resize": resize})
            for k, v in out.items()}


def score_samples(samples: Iterable[torch.Tensor], reference: Reference, *, device: str | torch.device = "cpu",
                  seed: int = 0, progress: bool = False, inception_path: str | None = None,
                  nearest_k: int = NEAREST_K, resize: str = "clean") -> dict[str, MetricValue]:
    """Score uint8 ``(B, 3, H, W)`` sample batches against ``reference``: ``gfid``, ``sfid``,
    ``inception_score``, ``precision``, ``recall`` (each ``MetricValue``; None + reason when not computable).

    Example::

        ref = open_reference("embedded/photos", resolution=256)
        values = score_samples(iter_samples("samples.npz", batch_size=32), ref)
        values["gfid"].value
    """
    extractor = load_inception(inception_path, device).with_resize(resize)
    state = extract_samples(samples, extractor, keep_features=reference.features is not None, seed=seed,
                            progress=progress)
    return score_state(state, reference, extractor=extractor, nearest_k=nearest_k, device=device)


# -------------------------------------------------------------------------------------------------- the run


def result_path(out: str | os.PathLike, reference: Any, name: str, resize: str = "clean") -> Path:
    """``results.run_dir(out, reference, name, "generation")/result.json`` (a subfolder, so a ``vtbench run`` of a
    tokenizer of the same name on the same data keeps its own ``result.json``); ``generation-adm/`` for the ADM
    resize, whose values are other numbers. ``reference``: its description (``id`` and ``root``/``path``)."""
    folder = "generation" + RESIZE_SUFFIX[check_resize_mode(resize)].replace("@", "-")
    return run_dir(out, reference, name, folder) / RESULT_FILE


def gfid_run(samples_spec: str, ref_spec: str, *, name: str | None = None, out: str | os.PathLike = "results",
             tokenizer: str | None = None, weights: str | None = None, resolution: int | None = None,
             limit: int | None = None, seed: int = 0, batch_size: int = 32, device: str | torch.device = "cpu",
             inception_path: str | None = None, nearest_k: int = NEAREST_K, progress: bool = False,
             ref_limit: int | None = None, trust_checkpoint: bool = False,
             allow_size_mismatch: bool = False, resize: str = "clean") -> dict[str, Any]:
    """Score ``samples_spec`` against ``ref_spec`` and write the result record (``result_path``); returns it.

    ``name``: the row name (default: the tokenizer of a token file, else the samples' file or folder name);
    ``limit``: the first N samples; ``ref_limit``: a seeded subset of the reference images (a dataset's ids, an
    npz's ``arr_0`` rows); ``resolution``: a dataset reference's crop size (None: the samples' size when square,
    else 256); ``trust_checkpoint``: passed to ``build_tokenizer`` as ``trust``. Samples and reference images of
    different sizes raise ``SizeMismatchError`` unless ``allow_size_mismatch`` (then every value warns).
    ``resize``: ``"clean"`` (clean-fid) or ``"tf-bilinear"`` (ADM's evaluator), for samples and reference alike.
    """
    from vtbench.config import load_protocol

    if ref_limit is not None and ref_limit < 1:
        raise ValueError(f"ref_limit must be a positive integer, got {ref_limit}")
    check_resize_mode(resize)
    started = datetime.now(timezone.utc).isoformat()
    protocol = load_protocol("generation")
    samples = iter_samples(samples_spec, tokenizer=tokenizer, batch_size=batch_size, limit=limit, device=device,
                           weights=weights, trust=trust_checkpoint)
    is_file = Path(ref_spec).suffix.lower() == ".npz"
    if is_file:
        used, source = None, "not used (npz reference)"
        if resolution is not None:
            log.warning("--resolution %s is ignored: %s is an .npz reference (its images are used as stored)",
                        resolution, ref_spec)
    elif resolution is not None:
        used, source = int(resolution), "--resolution"
    elif samples.size is not None and samples.size[0] == samples.size[1]:
        used, source = int(samples.size[0]), "samples"
    else:
        used, source = DEFAULT_RESOLUTION, "default"
    size_warning = check_sizes(samples, ref_spec, used or DEFAULT_RESOLUTION, allow_size_mismatch=allow_size_mismatch)
    if size_warning:
        log.warning("%s", size_warning)
    t0 = time.perf_counter()
    reference = open_reference(ref_spec, resolution=used or DEFAULT_RESOLUTION, limit=ref_limit, seed=seed,
                               batch_size=batch_size, device=device, inception_path=inception_path,
                               progress=progress, resize=resize)
    t1 = time.perf_counter()
    extractor = load_inception(inception_path, device).with_resize(resize)
    state = extract_samples(samples, extractor, keep_features=reference.features is not None, seed=seed,
                            progress=progress)
    t2 = time.perf_counter()
    sizes = samples.provenance.get("sizes") or []
    mixed = (f"the samples have {len(sizes)} image sizes ({', '.join(f'{h}x{w}' for h, w in sizes)}); the size "
             "check used the first one's") if len(sizes) > 1 else None
    values = score_state(state, reference, extractor=extractor, nearest_k=nearest_k, device=device,
                         warning=_join_warnings(size_warning, mixed))
    t3 = time.perf_counter()
    tok = samples.tokenizer
    if name is None:
        name = tok.name if tok is not None else (Path(samples_spec).stem or Path(samples_spec).resolve().name)
    if tok is not None:
        tok_section = {**tok.card.to_dict(), **tok.provenance(), "name": name}
    else:
        tok_section = {"name": name, "family": name.split(".")[0], "kind": "samples", "reference": False}
    record = new_record(
        created=started, finished=datetime.now(timezone.utc).isoformat(), environment=environment(str(device)),
        tokenizer=tok_section,
        # n_requested / n_used count samples (leaderboards and compare read them); the reference's own count is
        # n_reference, its subset ref_limit (+ the dataset's selection)
        dataset={"id": reference.id, **reference.description, "n_requested": limit, "n_used": state.n, "ref_limit": ref_limit},
        protocol=protocol_section(protocol),
        metrics={k: v.to_dict() for k, v in values.items()},
        timings={"reference_s": t1 - t0, "samples_s": t2 - t1, "metrics_s": t3 - t2},
        samples={**samples.provenance, "n_requested": limit, "n": state.n},
        extractor=extractor.describe(),
        run={"seed": seed, "batch_size": batch_size, "nearest_k": nearest_k, "resolution": used,
             "resolution_source": source, "resize": resize, "limit": limit, "ref_limit": ref_limit,
             "trust_checkpoint": bool(trust_checkpoint), "allow_size_mismatch": bool(allow_size_mismatch),
             "size_warning": size_warning, "reference_spec": str(ref_spec), "samples_spec": str(samples_spec)},
    )
    write_json_atomic(result_path(out, record["dataset"], name, resize), record)
    return record


__all__ = ["DEFAULT_RESOLUTION", "OUTPUTS", "Reference", "SampleFormatError", "Samples", "SizeMismatchError",
           "TokenFile", "check_sizes", "extract_samples", "gfid_run", "iter_npz_rows", "iter_samples", "metric_key",
           "npz_keys",
           "open_reference", "read_token_file", "reference_image_size", "result_path", "score_samples",
           "score_state", "write_token_file"]
