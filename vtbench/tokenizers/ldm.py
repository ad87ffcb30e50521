"""Convolutional encoder/decoder of the VQGAN / latent-diffusion lineage, written once for every family that
uses it (taming VQGAN, LlamaGen VQ, RQ-VAE, VAR's VQVAE, MAR's KL-16 VAE).

vtbench's own implementation. Parameter names follow the most common official layout (``down.{i}.block.{j}``,
``mid.block_1``, ``up.{i}.block.{j}``, ...), so most official state dicts load as they are; families with other
names (LlamaGen's ``conv_blocks``) remap keys in their adapter.

Structure (``L = len(ch_mult)`` levels, level ``i`` works at ``resolution / 2**i``)::

    encoder: conv_in 3x3 -> for each level: num_res_blocks x [ResBlock (+ Attn if level in attn_levels)]
             (+ Downsample except at the last level) -> mid (ResBlock, Attn, ResBlock) -> GN, SiLU, conv_out 3x3
    decoder: conv_in 3x3 -> mid -> for each level from L-1 down to 0: (num_res_blocks + 1) x [ResBlock (+ Attn)]
             (+ Upsample except at level 0) -> GN, SiLU, conv_out 3x3

``up`` is indexed by level (``up[0]`` runs last), as in the official files. GroupNorm has 32 groups and eps 1e-6;
Downsample pads right/bottom by one and convolves 3x3 with stride 2; Upsample is nearest x2 then 3x3.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN, SiLU, conv3x3, GN, SiLU, (dropout: none at inference), conv3x3, plus a 1x1 shortcut when channels change."""

    def __init__(self, c_in: int, c_out: int | None = None):
        super().__init__()
        c_out = c_in if c_out is None else c_out
        self.norm1 = norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, 1x1-conv projections, residual.

    ``fused_qkv=True`` keeps one ``qkv`` convolution (VAR's layout: output channels ordered q, k, v); otherwise
    separate ``q``, ``k``, ``v`` convolutions (taming's layout).
    """

    def __init__(self, c: int, fused_qkv: bool = False):
        super().__init__()
        self.norm = norm(c)
        self.fused = fused_qkv
        if fused_qkv:
            self.qkv = nn.Conv2d(c, 3 * c, 1)
        else:
            self.q = nn.Conv2d(c, c, 1)
            self.k = nn.Conv2d(c, c, 1)
            self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        if self.fused:
            q, k, v = self.qkv(y).chunk(3, dim=1)
        else:
            q, k, v = self.q(y), self.k(y), self.v(y)
        # (N, C, H, W) -> (N, 1, HW, C): one head of width C, scale 1/sqrt(C)
        q, k, v = (t.reshape(n, 1, c, h * w).transpose(2, 3) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(2, 3).reshape(n, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(c: int, attn: bool, fused_qkv: bool) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(c, c)
    mid.attn_1 = AttnBlock(c, fused_qkv) if attn else nn.Identity()
    mid.block_2 = ResnetBlock(c, c)
    return mid


def attn_levels_from_resolutions(resolution: int, n_levels: int, attn_resolutions: Sequence[int]) -> tuple[int, ...]:
    """Level indices whose feature map side is in ``attn_resolutions`` (taming/LDM configs use sides)."""
    return tuple(i for i in range(n_levels) if resolution // (2 ** i) in set(int(r) for r in attn_resolutions))


class Encoder(nn.Module):
    def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 attn_levels: Sequence[int] = (4,), z_channels: int = 256, double_z: bool = False,
                 in_channels: int = 3, mid_attn: bool = True, fused_qkv: bool = False):
        super().__init__()
        self.num_res_blocks = num_res_blocks
        self.levels = len(ch_mult)
        attn_levels = set(int(a) for a in attn_levels)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        c = ch
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(c, ch * mult))
                c = ch * mult
                if i in attn_levels:
                    level.attn.append(AttnBlock(c, fused_qkv))
            if i != self.levels - 1:
                level.downsample = Downsample(c)
            self.down.append(level)
        self.mid = _mid(c, mid_attn, fused_qkv)
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != self.levels - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 attn_levels: Sequence[int] = (4,), z_channels: int = 256, out_channels: int = 3,
                 mid_attn: bool = True, fused_qkv: bool = False):
        super().__init__()
        self.levels = len(ch_mult)
        attn_levels = set(int(a) for a in attn_levels)
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        self.mid = _mid(c, mid_attn, fused_qkv)
        ups: list[nn.Module] = [nn.Module() for _ in ch_mult]
        for i in reversed(range(self.levels)):
            level = ups[i]
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(c, ch * ch_mult[i]))
                c = ch * ch_mult[i]
                if i in attn_levels:
                    level.attn.append(AttnBlock(c, fused_qkv))
            if i != 0:
                level.upsample = Upsample(c)
        self.up = nn.ModuleList(ups)
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i in reversed(range(self.levels)):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
