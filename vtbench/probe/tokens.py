"""The probe's training data: a dataset tokenised once, cached in the run directory, split by id hash.

The cache file is keyed by the tokenizer (name, weights sha256), the dataset (id, revision, selected ids), the
preprocessing policy and whether mirrored images are tokenised too; any change gives a new file. Under
``torchrun`` each rank encodes its share of the images and rank 0 merges the shares.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from vtbench.data.datasets import ImageDataset, collate
from vtbench.probe.train import barrier, dist_context, shard_slice
from vtbench.tokenizers import Tokenizer, TokenizerCard

log = logging.getLogger("vtbench")

TOKENS_FORMAT = "vtbench-probe-tokens/1"
NO_CODES_KINDS = ("continuous", "codec", "reference")


class NoCodesError(ValueError):
    """The tokenizer has no integer codes, so an autoregressive prior over them is not defined."""


def check_has_codes(tok: Tokenizer | TokenizerCard) -> None:
    """Raise :class:`NoCodesError` for continuous, codec and reference kinds (a tokenizer or its card)."""
    card = tok if isinstance(tok, TokenizerCard) else tok.card
    if card.kind in NO_CODES_KINDS:
        raise NoCodesError(f"{card.name} is a {card.kind} tokenizer: it has no integer codes, so the AR probe "
                           "(a GPT over token sequences) does not apply; gFID of continuous or codec tokenizers "
                           "needs another generator")


@dataclass
class TokenSet:
    """Codes of every image, flattened in layout order: ``codes`` int32 ``(N, T)``; ``shape`` the per-image code
    shape (``(h, w)``, ``(h, w, depth)``, ...) so ``codes.view(N, *shape)`` is what ``tokens_from_codes`` takes."""

    codes: torch.Tensor
    labels: torch.Tensor  # int64 (N,), unlabelled data: all 0
    ids: list[str]
    shape: tuple[int, ...]
    layout: tuple[str, ...]
    codebook_size: int
    kind: str
    flipped: torch.Tensor | None = None  # codes of the horizontally mirrored images (hflip training)
    skipped: list[dict[str, str]] = field(default_factory=list)
    key: str = ""

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 1

    def subset(self, index: Sequence[int]) -> "TokenSet":
        sel = torch.as_tensor(list(index), dtype=torch.long)
        return TokenSet(self.codes[sel], self.labels[sel], [self.ids[i] for i in sel.tolist()], self.shape,
                        self.layout, self.codebook_size, self.kind,
                        None if self.flipped is None else self.flipped[sel], [], self.key)

    def to_dict(self) -> dict[str, Any]:
        return {"format": TOKENS_FORMAT, "codes": self.codes, "labels": self.labels, "ids": self.ids,
                "shape": list(self.shape), "layout": list(self.layout), "codebook_size": self.codebook_size,
                "kind": self.kind, "flipped": self.flipped, "skipped": self.skipped, "key": self.key}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenSet":
        return cls(d["codes"], d["labels"], list(d["ids"]), tuple(d["shape"]), tuple(d["layout"]),
                   int(d["codebook_size"]), d["kind"], d.get("flipped"), list(d.get("skipped", [])), d.get("key", ""))


def tokens_key(tok: Tokenizer, dataset: ImageDataset, hflip: bool) -> str:
    info = dataset.info
    parts = [TOKENS_FORMAT, tok.name, tok.weights_sha256, info.id, info.revision, info.selection,
             sorted(dataset.policy.describe().items()), hflip]
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def _labels(raw: list[int], where: str) -> torch.Tensor:
    lab = torch.tensor(raw, dtype=torch.long)
    if len(lab) and bool((lab < 0).all()):
        return torch.zeros_like(lab)  # unlabelled data: one class
    if bool((lab < 0).any()):
        raise ValueError(f"{where}: some images have class labels and some do not")
    return lab


def _encode_part(tok: Tokenizer, dataset: ImageDataset, index: range, device: torch.device, batch_size: int,
                 hflip: bool, on_batch: Callable[[int], None] | None, workers: int = 0) -> dict[str, Any]:
    subset = torch.utils.data.Subset(dataset, list(index))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate,
                                         num_workers=workers)
    codes, flipped, ids, labels, skipped = [], [], [], [], []
    meta: dict[str, Any] = {}
    for chunk in loader:
        skipped += [{"id": i, "reason": e} for i, e in chunk["errors"]]
        if not chunk["ids"]:
            continue
        x = torch.stack([dataset.policy.to_model(img)[0] for img in chunk["images"]]).to(device)
        with torch.inference_mode():
            toks = tok.encode(x)
            if toks.codes is None:
                raise NoCodesError(f"{tok.name} returned no integer codes (kind {toks.kind}); the AR probe needs codes")
            codes.append(toks.codes.to(torch.int32).cpu())
            if hflip:
                flipped.append(tok.encode(x.flip(-1)).codes.to(torch.int32).cpu())
        meta = {"layout": tuple(toks.layout), "codebook_size": int(toks.codebook_size), "kind": toks.kind}
        ids += chunk["ids"]
        labels += chunk["labels"].tolist()
        if on_batch:
            on_batch(len(chunk["ids"]) + len(chunk["errors"]))
    return {"codes": torch.cat(codes) if codes else None, "flipped": torch.cat(flipped) if flipped else None,
            "ids": ids, "labels": labels, "skipped": skipped, **meta}


def tokenise(tok: Tokenizer, dataset: ImageDataset, cache_dir: Path, device: torch.device, *, batch_size: int = 32,
             hflip: bool = False, on_batch: Callable[[int], None] | None = None, workers: int = 0) -> TokenSet:
    """Encode every image of ``dataset`` (policy applied) with ``tok``, or load the cached result.
    ``workers``: DataLoader processes decoding images (0: in this process)."""
    check_has_codes(tok)
    key = tokens_key(tok, dataset, hflip)
    path = Path(cache_dir) / f"tokens-{key}.pt"
    rank, world = dist_context()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = _encode_part(tok, dataset, range(len(dataset))[shard_slice(len(dataset), rank, world)], device,
                            batch_size, hflip, on_batch, workers)
        parts = [part]
        if world > 1:
            part_path = path.with_name(f".{path.name}.rank{rank}")
            torch.save(part, part_path)
            barrier()
            if rank == 0:
                parts = [torch.load(path.with_name(f".{path.name}.rank{r}"), weights_only=True) for r in range(world)]
        if rank == 0:
            done = [p for p in parts if p["codes"] is not None]
            if not done:
                raise ValueError(f"{dataset.info.id}: no image could be tokenised")
            codes = torch.cat([p["codes"] for p in done])
            flipped = torch.cat([p["flipped"] for p in done]) if hflip else None
            ts = TokenSet(codes.flatten(1), _labels(sum((p["labels"] for p in done), []), dataset.info.id),
                          sum((p["ids"] for p in done), []), tuple(codes.shape[1:]), done[0]["layout"],
                          done[0]["codebook_size"], done[0]["kind"],
                          None if flipped is None else flipped.flatten(1), sum((p["skipped"] for p in parts), []), key)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(ts.to_dict(), tmp)
            os.replace(tmp, path)
            log.info("tokenised %d images with %s: codes %s, %d classes (%s)", len(ts.ids), tok.name,
                     tuple(codes.shape[1:]), ts.num_classes, path)
        barrier()
        if world > 1:
            path.with_name(f".{path.name}.rank{rank}").unlink(missing_ok=True)
    ts = TokenSet.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    if ts.codebook_size < 1 or int(ts.codes.max()) >= ts.codebook_size or int(ts.codes.min()) < 0:
        raise ValueError(f"{path}: codes outside [0, {ts.codebook_size})")
    return ts


def split_by_id(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices: ids ranked by ``sha1("<seed>:val:<id>")``; the first ``ceil(f * N)`` (at least 1,
    at most N-1) are the validation split. Depends only on the set of ids, not their order."""
    n = len(ids)
    if n < 2:
        raise ValueError(f"a train/validation split needs at least 2 images, got {n}")
    n_val = min(max(math.ceil(val_fraction * n), 1), n - 1)
    ranked = sorted(range(n), key=lambda i: (hashlib.sha1(f"{seed}:val:{ids[i]}".encode()).hexdigest(), ids[i]))
    val = sorted(ranked[:n_val])
    chosen = set(val)
    return [i for i in range(n) if i not in chosen], val
