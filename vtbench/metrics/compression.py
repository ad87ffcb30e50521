"""Compression and token statistics: what a tokenizer costs, and how it uses its codebook.

Definitions (metrics/reconstruction.toml, REFERENCE.md section 3):
- ``bits_per_image``: mean over images of the exact bits of each image's tokens (``Tokens.bits``).
- ``tokens_per_image``: token positions per image (RVQ: one position carries ``depth`` codes). A tokenizer with
  several honest ways to count its tokens (TokenBridge: 4096 scalar tokens or 256 positions) puts the others in
  ``Tokens.meta["token_views"]`` ({view: tokens per image}); they are reported in ``extra["views"]`` with the
  same bits per image.
- ``bits_per_token`` = bits / tokens per image (RVQ: depth x log2 K).
- ``bpp`` = total bits / total pixels of the originals; ``compression_ratio`` = 24 / bpp (raw 8-bit RGB).
- ``token_entropy``: empirical entropy (bits) of the code histogram over the dataset, averaged over separate
  codebooks (RVQ depths); ``codebook_perplexity`` = 2 ** entropy; ``codebook_usage``: fraction of entries used
  at least once, averaged likewise. These need discrete codes: codecs and continuous latents give null.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vtbench.metrics.base import Batch, Metric, MetricContext, MetricValue, Output


def histogram_entropy(hist: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of each row of a count histogram ``(G, K)``."""
    p = hist.double() / hist.double().sum(dim=1, keepdim=True).clamp_min(1)
    return -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(dim=1)


#: layout axes whose entries are coded by separate quantisers (RVQ depth; per-channel scalar quantisers)
GROUP_AXES = ("depth", "channel")

#: the alternative token counts a tokenizer may report in ``Tokens.meta["token_views"]``; each is a summed state
#: (so it merges across processes and survives resume), hence a fixed list: a new view is added here
TOKEN_VIEWS = ("positions", "scalars")


def code_groups(codes: torch.Tensor, layout: tuple[str, ...]) -> torch.Tensor:
    """Codes as ``(G, M)``: one row per separate codebook (RVQ ``depth``, scalar ``channel``), else one row."""
    axis_name = next((a for a in GROUP_AXES if a in layout), None)
    if axis_name is not None:
        axis = 1 + layout.index(axis_name)
        return codes.movedim(axis, 0).reshape(codes.shape[axis], -1)
    return codes.reshape(1, -1)


class Compression(Metric):
    name = "compression"
    needs = frozenset({"tokens"})
    outputs = (
        Output("tokens_per_image", "Tokens / image", "tokens", None),
        Output("bits_per_token", "Bits / token", "bits", None),
        Output("bits_per_image", "Bits / image", "bits", None),
        Output("bpp", "Bits / pixel", "bpp", None),
        Output("compression_ratio", "Compression ratio", "x", None),
        Output("token_entropy", "Token entropy", "bits", None),
        Output("codebook_usage", "Codebook usage", "fraction", True),
        Output("codebook_perplexity", "Codebook perplexity", "", True),
    )

    def __init__(self, tokenizer: Any = None) -> None:
        super().__init__()
        self.add_state("n", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("bits", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("pixels", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("n_with_tokens", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("hist", torch.zeros(0, dtype=torch.float64), "sum")  # (G, K), shaped on first codes
        # alternative token views: summed tokens per image and the number of images that reported the view
        self.add_state("view_tokens", torch.zeros(len(TOKEN_VIEWS), dtype=torch.float64), "sum")
        self.add_state("view_n", torch.zeros(len(TOKEN_VIEWS), dtype=torch.float64), "sum")
        # the kind names the reason for null token counts; from the tokenizer, so that an instance that only
        # loaded or merged state (a resumed run with nothing left to do, a rank without data) knows it too
        self.kind: str | None = tokenizer.card.kind if tokenizer is not None else None

    @classmethod
    def from_context(cls, ctx: MetricContext) -> "Compression":
        return cls(tokenizer=ctx.tokenizer)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        tok = batch.tokens
        if tok is None:
            return {}
        self.kind = tok.kind
        bits = tok.bits.double().cpu()
        h, w = batch.original.shape[-2:]
        self.n += batch.size
        self.bits += bits.sum()
        self.pixels += float(h * w) * batch.size
        if tok.tokens_per_image:
            self.tokens += float(tok.tokens_per_image) * batch.size
            self.n_with_tokens += batch.size
        for view, tpi in (tok.meta.get("token_views") or {}).items():
            if view not in TOKEN_VIEWS:
                raise ValueError(f"token view {view!r} is not one of {TOKEN_VIEWS} (add it to TOKEN_VIEWS)")
            self.view_tokens[TOKEN_VIEWS.index(view)] += float(tpi) * batch.size
            self.view_n[TOKEN_VIEWS.index(view)] += batch.size
        if tok.codes is not None and tok.codebook_size:
            groups = code_groups(tok.codes.long().cpu(), tok.layout)
            if self.hist.numel() == 0:
                self.hist = torch.zeros(groups.shape[0], tok.codebook_size, dtype=torch.float64)
            for g in range(groups.shape[0]):
                self.hist[g] += torch.bincount(groups[g], minlength=tok.codebook_size).double()
        return {"bits_per_image": bits, "bpp": bits / float(h * w)}

    def compute(self) -> dict[str, MetricValue]:
        n = int(self.n)
        if n == 0:
            return self.unavailable("no images were tokenized")
        bits = float(self.bits)
        # a non-finite bit count (a tokenizer bug) makes every bit-derived value undefined: null, never 24/inf = 0
        bad_bits = None if math.isfinite(bits) else (f"the tokenizer reported a non-finite bit count ({bits}) for "
                                                     "an image: its cost is undefined")
        bpp = bits / float(self.pixels)
        out = {
            "bits_per_image": self.value("bits_per_image", None if bad_bits else bits / n, n, bad_bits),
            "bpp": self.value("bpp", None if bad_bits else bpp, n, bad_bits),
            "compression_ratio": self.value("compression_ratio", 24.0 / bpp if not bad_bits and bpp > 0 else None, n,
                                            bad_bits or (None if bpp > 0 else "zero bits")),
        }
        if int(self.n_with_tokens) == n:
            tpi = float(self.tokens / n)
            views = {v: {"tokens_per_image": float(t / n), "bits_per_token": None if bad_bits else bits / float(t)}
                     for v, t, k in zip(TOKEN_VIEWS, self.view_tokens, self.view_n) if int(k) == n}
            extra = {"views": views} if views else {}
            out["tokens_per_image"] = self.value("tokens_per_image", tpi, n, **extra)
            out["bits_per_token"] = self.value("bits_per_token", None if bad_bits else bits / float(self.tokens), n,
                                               bad_bits, **extra)
        else:
            who = f"a {self.kind}" if self.kind else "this tokenizer"
            why = f"{who} has no token positions (its cost is in bits_per_image and bpp)"
            out["tokens_per_image"] = self.value("tokens_per_image", None, n, why)
            out["bits_per_token"] = self.value("bits_per_token", None, n, why)
        if self.hist.numel():
            ent = histogram_entropy(self.hist)
            usage = (self.hist > 0).double().mean(dim=1)
            g, k = self.hist.shape
            extra = {"codebooks": g, "codebook_size": k}
            out["token_entropy"] = self.value("token_entropy", float(ent.mean()), n, **extra)
            out["codebook_usage"] = self.value("codebook_usage", float(usage.mean()), n, **extra)
            out["codebook_perplexity"] = self.value("codebook_perplexity", float((2 ** ent).mean()), n, **extra)
        else:
            why = f"{'a ' + self.kind if self.kind else 'this'} tokenizer has no discrete codebook"
            for key in ("token_entropy", "codebook_usage", "codebook_perplexity"):
                out[key] = self.value(key, None, n, why)
        return out
