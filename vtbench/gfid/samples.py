"""Generated samples as uint8 batches: image folders, ADM ``.npz`` batches, token files decoded by a tokenizer."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from vtbench.core import quantise_uint8
from vtbench.data.images import load_image
from vtbench.fid_tool import list_images
from vtbench.gfid.common import SampleFormatError
from vtbench.gfid.files import check_adm_images, iter_npz_rows, npz_array_info, npz_keys, read_token_file

log = logging.getLogger("vtbench")

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
    # rows(positions): batches of the samples at these ascending positions only, as (positions, uint8 batch); a
    # torchrun rank reads, loads or decodes its own shard and nothing else
    rows: Callable[[list[int]], Iterator[tuple[list[int], torch.Tensor]]]
    tokenizer: Any = None
    size: tuple[int, int] | None = None  # (height, width) of the images (folders, ADM .npz: the first one's)

    def batches(self) -> Iterator[torch.Tensor]:
        """Every sample, in order."""
        return (images for _, images in self.rows(list(range(self.n))))

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches())

    def __len__(self) -> int:
        return self.n


def _nhwc_to_tensor(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 3, 1, 2)))


def _folder_samples(root: Path, batch_size: int, limit: int | None) -> Samples:
    files = list_images(root)[:limit]
    if not files:
        raise SampleFormatError(f"{root}: no image files found (recursive)")

    h, w = load_image(files[0]).shape[:2]

    def rows(positions: list[int]) -> Iterator[tuple[list[int], torch.Tensor]]:
        group: list[np.ndarray] = []
        at: list[int] = []
        seen: set[tuple[int, int]] = set()
        for i in positions:
            img = load_image(files[i])
            seen.add((int(img.shape[0]), int(img.shape[1])))
            if group and (img.shape != group[0].shape or len(group) == batch_size):  # stack equal sizes only
                yield at, _nhwc_to_tensor(np.stack(group))
                group, at = [], []
            group.append(img)
            at.append(i)
        if group:
            yield at, _nhwc_to_tensor(np.stack(group))
        if len(positions) == len(files):
            prov["sizes"] = [list(s) for s in sorted(seen)]  # every size met (more than one: a mixed folder)

    prov = {"spec": str(root), "kind": "folder", "n_files": len(files), "first": files[0].name,
            "last": files[-1].name, "height": int(h), "width": int(w)}
    return Samples(str(root), "folder", len(files), prov, rows, size=(int(h), int(w)))


def _adm_npz_samples(path: Path, batch_size: int, limit: int | None) -> Samples:
    from vtbench.hashing import sha256sum

    keys = npz_keys(path)
    if "arr_0" not in keys:
        raise SampleFormatError(f"{path}: an ADM sample batch needs 'arr_0' (uint8 N x H x W x 3); keys found: "
                                f"{', '.join(keys) or 'none'} (a token file needs 'codes')")
    shape, dtype = npz_array_info(path, "arr_0")
    check_adm_images(path, shape, dtype, keys)
    n = shape[0] if limit is None else min(shape[0], limit)

    def rows(positions: list[int]) -> Iterator[tuple[list[int], torch.Tensor]]:
        left = iter(positions)  # iter_npz_rows yields the kept rows in ascending order
        keep = None if len(positions) == n else set(positions)
        for chunk in iter_npz_rows(path, "arr_0", batch_size, limit=n, keep=keep):
            yield [next(left) for _ in range(len(chunk))], _nhwc_to_tensor(chunk)

    prov = {"spec": str(path), "kind": "adm-npz", "sha256": sha256sum(path), "shape": list(shape),
            "keys": keys, "n_used": n, "height": int(shape[1]), "width": int(shape[2])}
    return Samples(str(path), "adm-npz", n, prov, rows, size=(int(shape[1]), int(shape[2])))


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

    def rows(positions: list[int]) -> Iterator[tuple[list[int], torch.Tensor]]:
        for start in range(0, len(positions), batch_size):
            at = positions[start:start + batch_size]
            tokens = tok.tokens_from_codes(torch.from_numpy(codes[at]), tf.height, tf.width)
            with torch.inference_mode():
                images = tok.decode(tokens)
            if not torch.isfinite(images).all():
                raise RuntimeError(f"{tok.name} decoded NaN/Inf pixels from codes {at[0]}..{at[-1]} of {path}")
            yield at, quantise_uint8(images.float()).cpu()

    native = tok.card.native_size
    h, w = tf.height or native, tf.width or native  # tokens_from_codes has checked that these exist
    prov = {"spec": str(path), "kind": "tokens", "sha256": sha256sum(path), "tokenizer": tok.name,
            "file_tokenizer": tf.tokenizer, "codes_shape": list(tf.codes.shape), "height": h, "width": w,
            "file_height": tf.height, "file_width": tf.width,
            "n_labels": None if tf.labels is None else int(len(tf.labels)), "n_used": len(codes)}
    size = (int(h), int(w)) if h is not None and w is not None else None
    return Samples(str(path), "tokens", len(codes), prov, rows, tokenizer=tok, size=size)


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
