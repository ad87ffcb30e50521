"""ResTok networks (Kwai-Kolors/ResTok ``modeling/restok.py``, ``modeling/modules/blocks.py``, ``rope.py``,
``quantizer/quantizer.py``): the ViT encoder with residual merging, the ViT decoder, the quantiser and the whole
model. vtbench's own implementation with the official parameter names; the pipeline is described in
``vtbench.tokenizers.restok`` (the adapter)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vtbench.tokenizers.maskgit import PixelDecoder, PixelEncoder
from vtbench.tokenizers.quantizers import EmbeddingCodebook

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm IMAGENET_DEFAULT_MEAN / STD, applied inside the official model
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the official ViT size table (width, layers, heads); ``{enc,dec}_{width,layers,heads}`` params override it
SIZES = {"small": (512, 6, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}

DEFAULTS: dict[str, Any] = {
    "image_size": 256, "patch_size": 16, "codebook_size": 8192, "token_size": 8, "use_l2_norm": True,
    "vit_enc_model_size": "large", "vit_dec_model_size": "large", "num_latent_tokens": 128, "num_min_tokens": 4,
    "num_tokens": 128, "merge_tokens": True, "hierarchy_stages": 4, "reduction_ratio": 0.5,
    "residual_image_tokens": True, "residual_latent_tokens": True, "rope_base_len": 10000,
    # the CNN that ResTok.__init__ hard-codes (MaskGIT VQGAN: hidden_channels, channel_mult, num_res_blocks, z)
    "pixel_ch": 128, "pixel_ch_mult": [1, 1, 2, 2, 4], "pixel_num_res_blocks": 2, "pixel_z_channels": 256,
}


def param(params: Mapping[str, Any], key: str) -> Any:
    """``params[key]``, else the released model's value (``DEFAULTS``)."""
    return params[key] if key in params else DEFAULTS[key]


def vit_size(params: Mapping[str, Any], side: str) -> tuple[int, int, int]:
    """(width, layers, heads) of the ``enc`` or ``dec`` ViT: the named ``vit_{side}_model_size``, with explicit
    ``{side}_width`` / ``{side}_layers`` / ``{side}_heads`` overrides (scaled test configurations; a name outside
    the official table needs all three)."""
    name = str(param(params, f"vit_{side}_model_size"))
    keys = (f"{side}_width", f"{side}_layers", f"{side}_heads")
    if name not in SIZES and not all(k in params for k in keys):
        raise ValueError(f"vit_{side}_model_size {name!r} is not one of {sorted(SIZES)}; give {', '.join(keys)}")
    table = SIZES.get(name, (0, 0, 0))
    return tuple(int(params.get(k, v)) for k, v in zip(keys, table))  # type: ignore[return-value]


def latent_levels(num_latent_tokens: int) -> list[int]:
    """Sizes of the latent token levels, in order: 1, 1, 2, 4, ..., L/2 (prefix lengths 1, 2, 4, ..., L)."""
    n = int(num_latent_tokens)
    if n < 2 or n & (n - 1):
        raise ValueError(f"ResTok needs a power of two >= 2 latent tokens, got {n}")
    return [1] + [1 << i for i in range(int(math.log2(n)))]


def pooling_cells(n: int) -> tuple[int, int]:
    """(rows, columns) of the pooling grid that initialises a latent level of ``n = 2**k`` tokens:
    2**floor(k/2) x 2**ceil(k/2) (the width doubles first)."""
    k = int(math.log2(n))
    return 1 << (k // 2), 1 << (k - k // 2)


def merge_layers(layers: int, stages: int, merge: bool = True) -> list[int]:
    """The encoder layers after whose attention an image level is merged (official ``merge_indices``)."""
    if not merge or stages <= 0:
        return []
    return [int(s / stages * layers) - 1 for s in range(1, stages)]


def hierarchical_mask(group_sizes: list[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Additive attention mask (1, 1, T, T), float 0 / -inf: token i may attend to token j when the group of i comes
    at or after the group of j in ``group_sizes``."""
    level = torch.repeat_interleave(torch.arange(len(group_sizes)), torch.tensor(group_sizes))
    allowed = level.view(-1, 1) >= level.view(1, -1)
    zero = torch.zeros((), dtype=torch.float32)
    return torch.where(allowed, zero, torch.tensor(float("-inf"))).view(1, 1, *allowed.shape).to(device)


def grid_positions(h: int, w: int, offset: int = 0) -> torch.Tensor:
    """(h*w, 2) float64 (row, column) positions of a row-major grid, both shifted by ``offset``."""
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    return torch.stack([rows, cols], -1).reshape(-1, 2) + offset


def line_positions(n: int, offset: int = 0) -> torch.Tensor:
    """(n, 2) float64: 1D positions ``offset .. offset+n-1`` used on both RoPE axes."""
    return (torch.arange(n, dtype=torch.float64) + offset).view(-1, 1).repeat(1, 2)


def rope_tables(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial RoPE for positions (T, 2): the first half of each head's channel pairs rotate with the first axis, the
    second half with the second (per axis frequencies ``theta ** (-2i / (head_dim/2))``). Angles in float64, tables
    (T, head_dim/2) in float32, as the official (FLUX) ``rope``."""
    half = head_dim // 2
    if half % 2:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
    omega = 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.float64) / half))
    angles = torch.cat([pos[:, :1] * omega, pos[:, 1:] * omega], dim=1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate adjacent channel pairs (x0, x1) of ``x`` (N, heads, T, head_dim) by the tables' angles."""
    cos, sin = rope
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], -1).reshape(x.shape).type_as(x)


# -- ViT ---------------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention: packed ``qkv`` without bias plus learned ``q_bias`` / ``v_bias`` (k has none),
    LayerNorm on each head's queries and keys, RoPE, output ``proj``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.q_norm = nn.LayerNorm(head_dim, eps=1e-5)
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-5)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        n, t, d = x.shape
        qkv = F.linear(x, self.qkv.weight, torch.cat([self.q_bias, self.k_bias, self.v_bias]))
        q, k, v = qkv.reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = apply_rope(self.q_norm(q), rope), apply_rope(self.k_norm(k), rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block with layer scale; ``attend`` and ``feed_forward`` are separate so the encoder can merge
    image levels between them (the official residual merging block)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.ones(dim))
        self.gamma_2 = nn.Parameter(torch.ones(dim))

    def attend(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
               mask: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.gamma_1 * self.attn(self.norm1(x), rope, mask)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma_2 * self.mlp(self.norm2(x))


def _level_embeddings(count: int, dim: int) -> nn.ParameterList:
    return nn.ParameterList([nn.Parameter(torch.zeros(1, dim)) for _ in range(count)])


class Encoder(nn.Module):
    """Image tokens + pooled latent tokens through a ViT with residual merging; returns the latents before
    quantisation, (N, L, token_size)."""

    def __init__(self, params: Mapping[str, Any]):
        super().__init__()
        self.width, depth, self.heads = vit_size(params, "enc")
        self.levels = latent_levels(int(param(params, "num_latent_tokens")))
        self.num_latent_tokens = sum(self.levels)
        self.theta = float(param(params, "rope_base_len"))
        self.ratio = float(param(params, "reduction_ratio"))
        self.residual_image = bool(param(params, "residual_image_tokens"))
        self.residual_latent = bool(param(params, "residual_latent_tokens"))
        self.merges = merge_layers(depth, int(param(params, "hierarchy_stages")), bool(param(params, "merge_tokens")))
        if self.merges and not 0 < self.ratio < 1:
            raise ValueError(f"reduction_ratio must lie in (0, 1), got {self.ratio}")
        token = int(param(params, "token_size"))
        self.patch_embed = nn.Conv2d(int(param(params, "pixel_z_channels")), self.width, 1)
        self.ln_pre = nn.LayerNorm(self.width)
        self.blocks = nn.ModuleList([Block(self.width, self.heads) for _ in range(depth)])
        self.ln_post = nn.LayerNorm(self.width)
        self.level_embedding = _level_embeddings(len(self.merges) + 1, self.width)
        self.latent_token_level_embedding = _level_embeddings(len(self.levels), self.width)
        self.conv_out = nn.ModuleList([nn.Conv2d(self.width, token, 1) for _ in self.levels])

    def initial_latents(self, fmap: torch.Tensor) -> torch.Tensor:
        """(N, W, h, w) -> (N, L, W): each level area-pools what the earlier levels left of the map."""
        groups, rest = [], fmap
        for n in self.levels:
            pooled = F.interpolate(rest, size=pooling_cells(n), mode="area")
            groups.append(pooled.flatten(2).transpose(1, 2))
            if self.residual_latent:
                rest = rest - F.interpolate(pooled, size=fmap.shape[-2:], mode="nearest")
        return torch.cat(groups, dim=1)

    def _add_per_level(self, x: torch.Tensor) -> torch.Tensor:
        emb = torch.cat([e.expand(n, -1) for e, n in zip(self.latent_token_level_embedding, self.levels)])
        return x + emb.to(x.dtype)

    def rope(self, grids: list[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Image grids (coarsest first) one after the other in the position space, then the latent tokens."""
        pos, offset = [], 0
        for h, w in grids:
            pos.append(grid_positions(h, w, offset))
            offset += h * w
        pos.append(line_positions(self.num_latent_tokens, offset))
        cos, sin = rope_tables(torch.cat(pos), self.width // self.heads, self.theta)
        return cos.to(device), sin.to(device)

    def merge(self, x: torch.Tensor, n_image: int) -> tuple[torch.Tensor, int]:
        """After a merging layer's attention: the newest image level (the first ``n_image`` tokens) resampled to
        ``int(n_image * (1 - ratio))`` tokens (1D nearest) and prepended; the finer level keeps its residual."""
        n_merged = int(n_image * (1 - self.ratio))
        fine = x[:, :n_image].transpose(1, 2)
        merged = F.interpolate(fine, size=n_merged, mode="nearest")
        if self.residual_image:
            fine = fine - F.interpolate(merged, size=n_image, mode="nearest")
        return torch.cat([merged.transpose(1, 2), fine.transpose(1, 2), x[:, n_image:]], dim=1), n_merged

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        fmap = self.patch_embed(features)  # (N, W, h, w)
        n, _, gh, gw = fmap.shape
        latents = self._add_per_level(self.initial_latents(fmap))
        image = fmap.flatten(2).transpose(1, 2) + self.level_embedding[0].to(fmap.dtype)
        x = self.ln_pre(torch.cat([image, latents], dim=1))
        image_groups, grids = [gh * gw], [(gh, gw)]
        mask = hierarchical_mask(image_groups + self.levels, x.device)
        rope = self.rope(grids, x.device)
        for i, block in enumerate(self.blocks):
            x = block.attend(x, rope, mask)
            if i in self.merges:
                x, n_new = self.merge(x, image_groups[0])
            x = block.feed_forward(x)
            if i in self.merges:
                image_groups.insert(0, n_new)
                mask = hierarchical_mask(image_groups + self.levels, x.device)
                level = len(image_groups) - 1
                x = torch.cat([x[:, :n_new] + self.level_embedding[level].to(x.dtype), x[:, n_new:]], dim=1)
                grids.insert(0, (grids[0][0], int(grids[0][1] * (1 - self.ratio))))
                if grids[0][0] * grids[0][1] != n_new:
                    raise ValueError(f"ResTok: merging {image_groups[1]} image tokens into {n_new} leaves a "
                                     f"{grids[0][0]}x{grids[0][1]} grid; the token grid is too narrow for "
                                     f"{len(self.merges)} merges (the official code fails here too)")
                rope = self.rope(grids, x.device)
        latents = self.ln_post(x[:, -self.num_latent_tokens:])
        # the official (is_legacy) read-out: (N, L, W) memory viewed as (N, W, L, 1), not transposed
        view = latents.reshape(n, self.width, self.num_latent_tokens, 1)
        out, start = [], 0
        for conv, size in zip(self.conv_out, self.levels):
            out.append(conv(view[:, :, start:start + size]))
            start += size
        return torch.cat(out, dim=2).reshape(n, -1, self.num_latent_tokens).transpose(1, 2)


class Decoder(nn.Module):
    """Code vectors (N, L, token_size; mask tokens past the prefix) + grid queries through a ViT -> (N, z, g, g)."""

    def __init__(self, params: Mapping[str, Any]):
        super().__init__()
        self.width, depth, self.heads = vit_size(params, "dec")
        self.levels = latent_levels(int(param(params, "num_latent_tokens")))
        self.num_latent_tokens = sum(self.levels)
        self.grid = int(param(params, "image_size")) // int(param(params, "patch_size"))
        self.theta = float(param(params, "rope_base_len"))
        token = int(param(params, "token_size"))
        self.latent_mask_token = nn.Parameter(torch.zeros(1, 1, token))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.width))
        self.ln_pre = nn.LayerNorm(self.width)
        self.blocks = nn.ModuleList([Block(self.width, self.heads) for _ in range(depth)])
        self.ln_post = nn.LayerNorm(self.width)
        self.ffn = nn.Conv2d(self.width, int(param(params, "pixel_z_channels")), 1)
        self.latent_token_level_embedding = _level_embeddings(len(self.levels), self.width)
        self.decoder_embed = nn.ModuleList([nn.Linear(token, self.width) for _ in self.levels])

    def rope(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent tokens at 1D positions 0..L-1, then the grid shifted by L."""
        pos = torch.cat([line_positions(self.num_latent_tokens), grid_positions(self.grid, self.grid,
                                                                                self.num_latent_tokens)])
        cos, sin = rope_tables(pos, self.width // self.heads, self.theta)
        return cos.to(device), sin.to(device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (N, k, token_size), 1 <= k <= L (the first k codes); positions k.. get ``latent_mask_token``."""
        n, k, _ = z.shape
        if not 1 <= k <= self.num_latent_tokens:
            raise ValueError(f"ResTok decodes 1..{self.num_latent_tokens} tokens, got {k}")
        z = torch.cat([z, self.latent_mask_token.expand(n, self.num_latent_tokens - k, -1).to(z.dtype)], dim=1)
        x, start = [], 0
        for embed, level_emb, size in zip(self.decoder_embed, self.latent_token_level_embedding, self.levels):
            x.append(embed(z[:, start:start + size]) + level_emb.to(z.dtype))
            start += size
        queries = self.mask_token.expand(n, self.grid * self.grid, -1).to(z.dtype)
        x = self.ln_pre(torch.cat(x + [queries], dim=1))
        rope = self.rope(x.device)
        for block in self.blocks:
            x = block.feed_forward(block.attend(x, rope))
        x = self.ln_post(x[:, self.num_latent_tokens:])
        x = x.transpose(1, 2).reshape(n, self.width, self.grid, self.grid).contiguous()
        return self.ffn(x)


# -- quantiser and model ------------------------------------------------------------------------------------------
class Quantizer(EmbeddingCodebook):
    """``K x d`` codebook (``embedding``); with ``l2_norm`` latents and rows are unit vectors for the search and
    the decoder receives unit rows."""

    @torch.no_grad()
    def encode(self, z: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """(N, T, d) -> int64 (N, T): argmin of ``|z|^2 + |e|^2 - 2 z.e`` (the official order of operations), ties
        to the lower index; rows in chunks so memory stays bounded."""
        x = self.quantizer_input(z).reshape(-1, z.shape[-1])
        table = self.table().float()
        e_sq = table.pow(2).sum(1)
        out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        for s in range(0, x.shape[0], chunk):
            xc = x[s:s + chunk]
            out[s:s + chunk] = (xc.pow(2).sum(1, keepdim=True) + e_sq - 2 * (xc @ table.t())).argmin(1)
        return out.view(z.shape[:-1])


class ResTokModel(nn.Module):
    def __init__(self, params: Mapping[str, Any]):
        super().__init__()
        image, patch = int(param(params, "image_size")), int(param(params, "patch_size"))
        ch_mult = [int(m) for m in param(params, "pixel_ch_mult")]
        if 2 ** (len(ch_mult) - 1) != patch or image % patch:
            raise ValueError(f"ResTok: the CNN downsamples by {2 ** (len(ch_mult) - 1)} (pixel_ch_mult {ch_mult}); "
                             f"patch_size must equal it ({patch}) and divide image_size ({image})")
        cnn = (int(param(params, "pixel_ch")), ch_mult, int(param(params, "pixel_num_res_blocks")),
               int(param(params, "pixel_z_channels")))
        self.image_size = image
        self.encoder = Encoder(params)
        self.decoder = Decoder(params)
        self.pixel_encoder = PixelEncoder(*cnn)
        self.pixel_decoder = PixelDecoder(*cnn)
        self.quantize = Quantizer(int(param(params, "codebook_size")), int(param(params, "token_size")),
                                  bool(param(params, "use_l2_norm")))
        self.register_buffer("imnet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imnet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (N, 3, S, S) -> pre-quantisation latents (N, L, token_size), all L tokens."""
        return self.encoder(self.pixel_encoder((images - self.imnet_mean) / self.imnet_std))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (N, k) of the first k tokens -> images (N, 3, S, S), unclamped ([0, 1] scale)."""
        return self.pixel_decoder(self.decoder(self.quantize.lookup(codes)).float())


__all__ = ["DEFAULTS", "SIZES", "Decoder", "Encoder", "Quantizer", "ResTokModel", "hierarchical_mask", "latent_levels",
           "merge_layers", "param", "pooling_cells", "rope_tables", "vit_size"]
