"""The MaskGIT VQGAN CNN (TiTok / ResTok ``modeling/modules/maskgit_vqgan.py`` Encoder and Decoder): no attention,
bias-free 3x3 convolutions in the residual blocks, 2x2 average-pool downsampling, nearest x2 + 3x3 conv upsampling.

vtbench's own implementation with the official parameter names (``conv_in``, ``down.{i}.block.{j}``, ``mid.{j}``,
``up.{i}.block.{j}``, ``up.{i}.upsample_conv``, ``norm_out``, ``conv_out``; ``up`` indexed by level, run from the
coarsest). GroupNorm has 32 groups and eps 1e-6. Quirk kept from the official code: where a residual block changes
channels, its 1x1 ``nin_shortcut`` (out -> out) projects the block's OUTPUT, and that projection replaces the input
as the residual (``h + nin_shortcut(h)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """GN, SiLU, conv3x3 (no bias), GN, SiLU, conv3x3 (no bias). Where channels change, the official block adds a
    1x1 projection of its own OUTPUT (``nin_shortcut``, out -> out) instead of the input."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _gn(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = _gn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(c_out, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(h))


class _Level(nn.Module):
    def __init__(self, c_in: int, c_out: int, n_blocks: int, up: bool = False):
        super().__init__()
        self.block = nn.ModuleList([ResBlock(c_in if j == 0 else c_out, c_out) for j in range(n_blocks)])
        if up:
            self.upsample_conv = nn.Conv2d(c_out, c_out, 3, padding=1)


class PixelEncoder(nn.Module):
    """conv_in 3x3 -> per level num_res_blocks ResBlocks (+ 2x2 average pooling except at the last level) -> mid
    ResBlocks -> GN, SiLU, 1x1 conv_out -> z channels."""

    def __init__(self, ch: int, ch_mult: list[int], n_blocks: int, z: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1, bias=False)
        mult = [1] + list(ch_mult)
        self.down = nn.ModuleList([_Level(ch * mult[i], ch * mult[i + 1], n_blocks) for i in range(len(ch_mult))])
        top = ch * ch_mult[-1]
        self.mid = nn.ModuleList([ResBlock(top, top) for _ in range(n_blocks)])
        self.norm_out = _gn(top)
        self.conv_out = nn.Conv2d(top, z, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for block in level.block:
                h = block(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, kernel_size=2, stride=2)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class PixelDecoder(nn.Module):
    """conv_in 3x3 -> mid ResBlocks -> per level from the coarsest num_res_blocks ResBlocks (+ nearest x2 and 3x3
    ``upsample_conv`` except at level 0) -> GN, SiLU, conv_out 3x3 -> RGB. ``up`` is indexed by level."""

    def __init__(self, ch: int, ch_mult: list[int], n_blocks: int, z: int):
        super().__init__()
        top = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z, top, 3, padding=1)
        self.mid = nn.ModuleList([ResBlock(top, top) for _ in range(n_blocks)])
        last = len(ch_mult) - 1
        self.up = nn.ModuleList([_Level(ch * ch_mult[min(i + 1, last)], ch * ch_mult[i], n_blocks, up=i > 0)
                                 for i in range(len(ch_mult))])
        self.norm_out = _gn(ch * ch_mult[0])
        self.conv_out = nn.Conv2d(ch * ch_mult[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample_conv"):
                h = level.upsample_conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


__all__ = ["PixelDecoder", "PixelEncoder", "ResBlock"]
