"""Checks shared by the official-adapter tests."""

from __future__ import annotations

import dataclasses
import math

import torch

from vtbench.config import get_card


def smooth_images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size)`` float in [0, 1]: seeded noise at a quarter of the size, bilinearly upsampled (smooth,
    image-like inputs for the adapter tests)."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=g), size=(size, size),
                                           mode="bilinear", align_corners=False)


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


def scaled_card(name: str, params: dict):
    """The card ``name`` with a scaled-down architecture (any even input size) for fast tests."""
    return dataclasses.replace(get_card(name), params=params, native_size=None, size_multiple=2)


def perturbed(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """``model`` with every parameter moved by seeded Gaussian noise (so default inits do not hide bugs)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model
