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

import torch

from vtbench.metrics.base import Batch, Metric, MetricValue, Output


def histogram_entropy(hist: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of each row of a count histogram ``(G, K)``."""
    p = hist.double() / hist.double().sum(dim=1, keepdim=True).clamp_min(1)
    return -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(dim=1)


#: layout axes whose entries are coded by separate quantisers (RVQ depth; per-channel scalar quantisers)
GROUP_AXES = ("depth", "channel")


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

    def __init__(self) -> None:
        super().__init__()
        self.add_state("n", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("bits", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("pixels", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("n_with_tokens", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("hist", torch.zeros(0, dtype=torch.float64), "sum")  # (G, K), shaped on first codes
        self.kind: str | None = None
        self.views: dict[str, float] = {}  # alternative token views: name -> tokens per image

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
            self.views[str(view)] = float(tpi)
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
        bpp = float(self.bits / self.pixels)
        out = {
            "bits_per_image": self.value("bits_per_image", float(self.bits / n), n),
            "bpp": self.value("bpp", bpp, n),
            "compression_ratio": self.value("compression_ratio", 24.0 / bpp if bpp > 0 else None, n,
                                            None if bpp > 0 else "zero bits"),
        }
        if int(self.n_with_tokens) == n:
            tpi = float(self.tokens / n)
            bpi = float(self.bits / n)
            views = {v: {"tokens_per_image": t, "bits_per_token": bpi / t} for v, t in sorted(self.views.items())}
            extra = {"views": views} if views else {}
            out["tokens_per_image"] = self.value("tokens_per_image", tpi, n, **extra)
            out["bits_per_token"] = self.value("bits_per_token", float(self.bits / self.tokens), n, **extra)
        else:
            why = f"a {self.kind} has no token positions (its cost is in bits_per_image and bpp)"
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
            why = f"a {self.kind} tokenizer has no discrete codebook"
            for key in ("token_entropy", "codebook_usage", "codebook_perplexity"):
                out[key] = self.value(key, None, n, why)
        return out
