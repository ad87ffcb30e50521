"""Checks shared by the official-adapter tests."""

from __future__ import annotations

import math

import torch


def check_grid_vq_roundtrip(tok, x: torch.Tensor, *, codebook_size: int, grid: tuple[int, int]):
    """encode -> decode on ``x`` for a VQ adapter with a (h, w) code grid: kind, layout, dtype, range, bits,
    token count, output range and determinism. Returns (tokens, decoded)."""
    n = x.shape[0]
    t = tok.encode(x)
    assert t.kind == "vq" and t.layout == ("h", "w") and t.codebook_size == codebook_size
    assert t.codes.dtype == torch.int64 and t.codes.shape == (n, *grid)
    assert 0 <= int(t.codes.min()) and int(t.codes.max()) < codebook_size
    assert t.tokens_per_image == tok.tokens_per_image(*x.shape[-2:]) == grid[0] * grid[1]
    assert t.bits.dtype == torch.float64 and t.bits.tolist() == [grid[0] * grid[1] * math.log2(codebook_size)] * n
    y = tok.decode(t)
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    t2 = tok.encode(x)
    assert torch.equal(t.codes, t2.codes) and torch.equal(tok.decode(t2), y)
    return t, y
