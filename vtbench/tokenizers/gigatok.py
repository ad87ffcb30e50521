"""GigaTok (Xiong et al. 2025, SilentView/GigaTok): a hybrid CNN + transformer VQ tokenizer with 256 1D tokens.

vtbench's own implementation of the released ``VQVitModelPlus`` inference path; parameter names and shapes
follow the official checkpoints (``tokenizers/manifests/gigatok.*.json``), except the convolutional parts,
which reuse ``vtbench.tokenizers.ldm`` names and are remapped by ``GigaTokTokenizer.remap_state``.

Pipeline (images in [-1, 1], 256x256; ``L = len(ch_mult)`` levels, grid ``g = 256 / 2**(L-1) = 16``)::

    encode: CNN encoder (ldm.Encoder without attention) -> (N, z=256, g, g)
            -> 2D->1D Q-Former ``s2to1encoder``: memory = Linear(LN(features)) (+ learned 2D position
               embedding in the keys); T=256 queries start from a multi-level average pooling of the memory
               (1, 1, 2, 4, ..., T/2 cells: level k splits the grid into 2**ceil(k/2) columns x 2**floor(k/2)
               rows) through ``global_proj``, + learned 1D query position embedding; pre-norm layers
               (self-attention, cross-attention to the memory, GELU MLP); LN; 1x1 conv -> z
            -> 1x1 conv ``quant_conv`` z -> 8 -> l2-normalised nearest code in a 16384 x 8 l2-normalised codebook
    decode: codebook rows (l2-normalised) -> 1x1 conv ``post_quant_conv`` 8 -> z
            -> 1D->2D Q-Former ``s1to2decoder``: memory = Linear(LN(tokens)) (+ learned 1D position embedding
               in the keys); g*g queries all start from the first memory token, + learned 2D query position
               embedding; same layers; LN; 3x3 conv -> z map
            -> CNN decoder: conv_in, mid (2 res blocks), then per level from coarse to fine an adaptive group
               norm (GN without affine, scale = Linear(std of the z map), shift = Linear(mean of the z map)),
               num_res_blocks + 1 res blocks, depth-to-space x2 upsampling (3x3 conv to 4c, DCR order);
               GN, SiLU, 3x3 conv -> RGB

Training-only tensors in the release files are dropped: the semantic-regularisation head
``s1to2decoder.distill_mlp`` (aligns decoder layer 3 with DINOv2-B, out_inner_dim 768) and the quantiser's
usage buffer ``quantize.codebook_used``. The official quantiser applies the rotation trick in its forward pass;
at inference that returns the selected codebook row (up to rounding), and the official reconstruction script
decodes from the codes, as this adapter does.

pFID: the official quantiser l2-normalises latents and codebook before its squared-L2 argmin (``codebook_l2_norm:
True`` in every released config), as LlamaGen's does, so each token's neighbour set is the ``delta`` entries of the
normalised codebook nearest its normalised latent (``Tokens.quantizer_input``, (N, T, 8)).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vtbench.tokenizers.base import Tokens, code_bits
from vtbench.tokenizers.ldm import Encoder as ConvEncoder
from vtbench.tokenizers.ldm import ResnetBlock, norm
from vtbench.tokenizers.official import CheckpointTokenizer
from vtbench.tokenizers.quantizers import CodebookNeighbours, EmbeddingCodebook, nearest_code
from vtbench.tokenizers.weights import rename_keys

#: transformer sizes of the official ``model_size`` names (width, layers, heads)
SIZES = {"tiny": (256, 4, 4), "small": (512, 6, 8), "base": (768, 12, 12), "large": (1024, 24, 16),
         "xl": (1280, 36, 20), "xxl": (1536, 48, 24)}

DEFAULTS: dict[str, Any] = {
    "image_size": 256, "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "z_channels": 256,
    "num_tokens": 256, "codebook_size": 16384, "codebook_dim": 8, "l2_norm": True, "mlp_ratio": 4.0,
    "encoder_size": "small", "decoder_size": "small",
}


def _p(params: Mapping[str, Any], key: str) -> Any:
    return params[key] if key in params else DEFAULTS[key]


def _size(params: Mapping[str, Any], side: str) -> tuple[int, int, int]:
    """(width, layers, heads) of the encoder or decoder transformer: explicit ``{side}_width/_layers/_heads``
    override the named ``{side}_size``."""
    w, n, h = SIZES[str(_p(params, f"{side}_size"))]
    return (int(params.get(f"{side}_width", w)), int(params.get(f"{side}_layers", n)),
            int(params.get(f"{side}_heads", h)))


# -- transformer ------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention with packed input projections (``in_proj_weight`` rows ordered q, k, v, as
    ``torch.nn.MultiheadAttention`` stores them) and an ``out_proj``; batch-first tensors."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        n, lq, d = q.shape
        h = self.heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (N, L, D) -> (N, heads, L, D/heads)
            return x.reshape(n, x.shape[1], h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(F.linear(q, wq, bq)), split(F.linear(k, wk, bk)),
                                             split(F.linear(v, wv, bv)))
        return self.out_proj(out.transpose(1, 2).reshape(n, lq, d))


class QFormerLayer(nn.Module):
    """Pre-norm layer: queries attend to themselves, then to the memory, then a GELU MLP (DETR decoder layer
    order). Position embeddings are added to queries and keys, never to values."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.multihead_attn = Attention(dim, heads)
        self.linear1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.linear2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor,
                key_pos: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.self_attn(y + query_pos, y + query_pos, y)
        y = self.norm2(x)
        x = x + self.multihead_attn(y + query_pos, memory + key_pos, memory)
        return x + self.linear2(F.gelu(self.linear1(self.norm3(x))))


def multilevel_cells(n_tokens: int) -> list[tuple[int, int]]:
    """(rows, columns) of the pooling grid of each query group for ``n_tokens = 2**n`` queries: one global
    cell twice, then level k = 1..n-1 with 2**ceil(k/2) columns and 2**floor(k/2) rows (2**k cells)."""
    n = int(round(math.log2(n_tokens)))
    if 2 ** n != n_tokens:
        raise ValueError(f"num_tokens must be a power of two, got {n_tokens}")
    return [(1, 1)] + [(2 ** (k // 2), 2 ** ((k + 1) // 2)) for k in range(n)]


def multilevel_queries(fmap: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """(N, C, g, g) -> (N, n_tokens, C): average pools over ever finer grids, each flattened row-major."""
    groups = []
    g_h, g_w = fmap.shape[-2:]
    for rows, cols in multilevel_cells(n_tokens):
        if g_h % rows or g_w % cols:
            raise ValueError(f"a {g_h}x{g_w} grid cannot be split into {rows}x{cols} cells for {n_tokens} tokens")
        pooled = F.avg_pool2d(fmap, kernel_size=(g_h // rows, g_w // cols))
        groups.append(pooled.flatten(2).transpose(1, 2))
    return torch.cat(groups, dim=1)


class Encoder2Dto1D(nn.Module):
    """``s2to1encoder``: g*g CNN features -> ``num_tokens`` 1D latents of ``token_size`` channels."""

    def __init__(self, grid: int, num_tokens: int, token_size: int, width: int, layers: int, heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.grid, self.num_tokens = grid, num_tokens
        multilevel_cells(num_tokens)  # validates the token count
        scale = width ** -0.5
        self.ln_pre = nn.LayerNorm(token_size)
        self.encoder_embed = nn.Linear(token_size, width)
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid, 1, width))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(num_tokens, 1, width))
        self.global_proj = nn.Linear(width, width)
        self.transformer = nn.ModuleList(QFormerLayer(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)
        self.conv_out = nn.Conv2d(width, token_size, 1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:  # (N, z, g, g) -> (N, z, 1, T)
        n, _, gh, gw = s.shape
        if (gh, gw) != (self.grid, self.grid):
            raise ValueError(f"expected a {self.grid}x{self.grid} feature grid, got {gh}x{gw}")
        memory = self.encoder_embed(self.ln_pre(s.flatten(2).transpose(1, 2)))  # (N, g*g, W)
        x = self.global_proj(multilevel_queries(memory.transpose(1, 2).reshape(n, -1, gh, gw), self.num_tokens))
        key_pos = self.positional_embedding.transpose(0, 1)
        query_pos = self.latent_token_positional_embedding.transpose(0, 1)
        for layer in self.transformer:
            x = layer(x, memory, query_pos, key_pos)
        x = self.ln_post(x)  # (N, T, W)
        return self.conv_out(x.transpose(1, 2).unsqueeze(2))


class Decoder1Dto2D(nn.Module):
    """``s1to2decoder``: ``num_tokens`` 1D latents -> a g x g map of ``token_size`` channels."""

    def __init__(self, grid: int, num_tokens: int, token_size: int, width: int, layers: int, heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.grid, self.num_tokens = grid, num_tokens
        scale = width ** -0.5
        self.ln_pre = nn.LayerNorm(token_size)
        self.decoder_embed = nn.Linear(token_size, width)
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid, 1, width))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(num_tokens, 1, width))
        self.transformer = nn.ModuleList(QFormerLayer(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)
        self.conv_out = nn.Conv2d(width, token_size, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (N, z, T) -> (N, z, g, g)
        n, _, t = z.shape
        memory = self.decoder_embed(self.ln_pre(z.transpose(1, 2)))  # (N, T, W)
        x = memory[:, :1].expand(n, self.grid * self.grid, memory.shape[-1])
        query_pos = self.positional_embedding.transpose(0, 1)
        key_pos = self.latent_token_positional_embedding[:t].transpose(0, 1)
        for layer in self.transformer:
            x = layer(x, memory, query_pos, key_pos)
        x = self.ln_post(x)  # (N, g*g, W), row-major positions
        # contiguous, as the official code: the transposed view is channels-last, and the convolution would keep
        # that layout through the whole pixel decoder, whose CPU kernels then round differently (8e-4 on a
        # scaled official model's [-1, 1] output, tests/test_parity_official.py)
        return self.conv_out(x.transpose(1, 2).reshape(n, -1, self.grid, self.grid).contiguous())


# -- pixel decoder ----------------------------------------------------------------------------------------
class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine whose per-channel scale and shift are linear maps of the per-channel standard
    deviation (unbiased variance + eps, square-rooted) and mean of a conditioning map (MAGVIT-v2 style)."""

    def __init__(self, cond_channels: int, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.groups = 32
        self.gamma = nn.Linear(cond_channels, channels)
        self.beta = nn.Linear(cond_channels, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        flat = cond.flatten(2)
        scale = self.gamma((flat.var(dim=-1) + self.eps).sqrt())[..., None, None]
        shift = self.beta(flat.mean(dim=-1))[..., None, None]
        return scale * F.group_norm(x, self.groups, eps=self.eps) + shift


class DepthToSpaceUp(nn.Module):
    """x2 upsampling: 3x3 conv to 4c channels, then channel blocks (row offset, column offset, c) to pixels."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, 4 * c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n, c4, h, w = y.shape
        c = c4 // 4
        y = y.view(n, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, c, 2 * h, 2 * w)


class PixelDecoder(nn.Module):
    """CNN decoder with adaptive group norm and depth-to-space upsampling; ``up`` is indexed by level
    (``up[0]`` runs last, at full resolution), as in ``vtbench.tokenizers.ldm.Decoder``."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 out_channels: int = 3):
        super().__init__()
        self.levels = len(ch_mult)
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(c, c)
        self.mid.block_2 = ResnetBlock(c, c)
        ups: list[nn.Module] = [nn.Module() for _ in ch_mult]
        for i in reversed(range(self.levels)):
            level = ups[i]
            level.adagn = AdaptiveGroupNorm(z_channels, c)
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(c, ch * ch_mult[i]))
                c = ch * ch_mult[i]
            if i != 0:
                level.upsample = DepthToSpaceUp(c)
        self.up = nn.ModuleList(ups)
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.block_1(self.conv_in(z)))
        for i in reversed(range(self.levels)):
            level = self.up[i]
            h = level.adagn(h, z)
            for block in level.block:
                h = block(h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# -- quantiser and model ----------------------------------------------------------------------------------
class Codebook(EmbeddingCodebook):
    """``quantize.embedding``: nearest code by squared L2 (after l2 normalisation of both sides if enabled)."""

    def encode(self, z: torch.Tensor) -> torch.Tensor:  # (N, T, d) -> (N, T)
        n, t, d = z.shape
        z = F.normalize(z, dim=-1) if self.l2_norm else z
        return nearest_code(z.reshape(-1, d).float(), self.table().float()).view(n, t)


class GigaTokModel(nn.Module):
    def __init__(self, params: Mapping[str, Any]):
        super().__init__()
        ch_mult = [int(m) for m in _p(params, "ch_mult")]
        z = int(_p(params, "z_channels"))
        image_size = int(_p(params, "image_size"))
        down = 2 ** (len(ch_mult) - 1)
        if image_size % down:
            raise ValueError(f"image_size {image_size} is not divisible by the downsampling factor {down}")
        grid = image_size // down
        self.num_tokens = int(_p(params, "num_tokens"))
        ch, nrb = int(_p(params, "ch")), int(_p(params, "num_res_blocks"))
        mlp = float(_p(params, "mlp_ratio"))
        dim = int(_p(params, "codebook_dim"))
        self.encoder = ConvEncoder(ch=ch, ch_mult=ch_mult, num_res_blocks=nrb, attn_levels=(), z_channels=z,
                                   mid_attn=False)
        self.s2to1encoder = Encoder2Dto1D(grid, self.num_tokens, z, *_size(params, "encoder"), mlp_ratio=mlp)
        self.quant_conv = nn.Conv2d(z, dim, 1)
        self.quantize = Codebook(int(_p(params, "codebook_size")), dim, bool(_p(params, "l2_norm")))
        self.post_quant_conv = nn.Conv2d(dim, z, 1)
        self.s1to2decoder = Decoder1Dto2D(grid, self.num_tokens, z, *_size(params, "decoder"), mlp_ratio=mlp)
        self.decoder = PixelDecoder(ch=ch, ch_mult=ch_mult, num_res_blocks=nrb, z_channels=z)

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> pre-quantisation latents (N, T, codebook_dim)."""
        h = self.quant_conv(self.s2to1encoder(self.encoder(x)))  # (N, d, 1, T)
        return h.flatten(2).transpose(1, 2)

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize.encode(self.encode_latents(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        zq = self.quantize.lookup(codes).transpose(1, 2).unsqueeze(2)  # (N, d, 1, T)
        h = self.post_quant_conv(zq).squeeze(2)  # (N, z, T)
        return self.decoder(self.s1to2decoder(h))


def official_to_vtbench_rules(n_levels: int) -> list[tuple[str, str]]:
    """Regex rules: official CNN names (``conv_blocks`` in run order, ``mid.0``/``mid.1``, ``adaptive.k``,
    ``upsample.conv1``) -> this module's names (``down``/``up`` indexed by level)."""
    rules = [
        (r"^encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down.\1.block."),
        (r"^encoder\.conv_blocks\.(\d+)\.downsample\.", r"encoder.down.\1.downsample."),
        (r"^(encoder|decoder)\.mid\.0\.", r"\1.mid.block_1."),
        (r"^(encoder|decoder)\.mid\.1\.", r"\1.mid.block_2."),
    ]
    for k in range(n_levels):
        lvl = n_levels - 1 - k
        rules += [
            (rf"^decoder\.conv_blocks\.{k}\.res\.", f"decoder.up.{lvl}.block."),
            (rf"^decoder\.conv_blocks\.{k}\.upsample\.conv1\.", f"decoder.up.{lvl}.upsample.conv."),
            (rf"^decoder\.adaptive\.{k}\.", f"decoder.up.{lvl}.adagn."),
        ]
    return rules


class GigaTokTokenizer(CodebookNeighbours, CheckpointTokenizer):
    """GigaTok adapter: 256 1D tokens per 256x256 image, 14 bits each (16384 codes)."""

    drop_prefixes = ("quantize.codebook_used", "s1to2decoder.distill_mlp.", "distill_mlp.")

    @classmethod
    def build_model(cls, params: Mapping[str, Any]) -> nn.Module:
        return GigaTokModel(params)

    @classmethod
    def remap_state(cls, state: dict[str, torch.Tensor], params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return rename_keys(state, official_to_vtbench_rules(len(_p(params, "ch_mult"))))

    @property
    def model_image_size(self) -> int:
        return int(_p(self.params, "image_size"))

    @property
    def codebook_size(self) -> int:
        return int(_p(self.params, "codebook_size"))

    def tokens_per_image(self, height: int, width: int) -> int:
        self.check_size(height, width)
        return int(_p(self.params, "num_tokens"))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Tokens:
        n, _, h, w = images.shape
        self.check_size(h, w)
        if (h, w) != (self.model_image_size, self.model_image_size):
            raise ValueError(f"{self.name}: the model is built for {self.model_image_size}x{self.model_image_size}")
        z = self.model.encode_latents(self.to_model(images))
        codes = self.model.quantize.encode(z)  # = model.encode_codes(x)
        t = codes.shape[1]
        return Tokens(kind=self.card.kind, bits=code_bits(t, self.codebook_size, n), tokens_per_image=t,
                      codes=codes.long(), layout=("token",), codebook_size=self.codebook_size,
                      quantizer_input=self.model.quantize.quantizer_input(z))

    NEIGHBOUR_INPUT = "quant_conv output"

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if tokens.codes is None:
            raise ValueError(f"{self.name}: decode needs integer codes")
        return self.from_model(self.model.decode_codes(tokens.codes.to(self.device)))


__all__ = ["GigaTokModel", "GigaTokTokenizer", "SIZES", "multilevel_cells", "multilevel_queries",
           "official_to_vtbench_rules"]
