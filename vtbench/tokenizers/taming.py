"""VQGAN (Esser, Rombach and Ommer, "Taming Transformers", CompVis/taming-transformers): the ImageNet f16
checkpoints with 1024 and 16384 codes.

vtbench's own implementation. The architecture is the LDM/VQGAN convolutional encoder and decoder of
``vtbench.tokenizers.ldm`` (whose parameter names already follow taming's), a ``1x1`` ``quant_conv`` down to
the codebook width, a nearest-neighbour vector quantiser over ``quantize.embedding.weight`` (plain squared L2,
no normalisation), and a ``1x1`` ``post_quant_conv`` back up before the decoder. ``VQGAN`` is shared with
LlamaGen's tokenizer (``vtbench.tokenizers.llamagen``), which has the same layout with an l2-normalised
codebook and other module names.

Official files are PyTorch Lightning checkpoints (``checkpoints/last.ckpt`` in each heibox folder): the weights
are under ``state_dict`` next to Lightning's bookkeeping (epoch, optimizer states, callbacks pickled with their
classes); the training loss (``loss.*``: the PatchGAN discriminator and the LPIPS network) shares the state dict
and is dropped. The file is read without running its pickled objects (``load_official_checkpoint``).

Images: RGB in ``[-1, 1]``; codes ``(N, H/16, W/16)`` int64, ``log2(K)`` bits each.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vtbench.tokenizers.base import Tokens, code_bits
from vtbench.tokenizers.ldm import Decoder, Encoder, attn_levels_from_resolutions
from vtbench.tokenizers.neighbours import nearest_entries
from vtbench.tokenizers.official import CheckpointTokenizer
from vtbench.tokenizers.quantizers import nearest_code


class EmbeddingQuantizer(nn.Module):
    """Nearest-neighbour lookup in a ``K x d`` codebook kept as ``embedding.weight`` (an ``nn.Embedding``).

    ``l2_norm=True`` compares unit vectors (latents and codes are both l2-normalised, and ``lookup`` returns
    normalised codes), as LlamaGen does. ``usage_buffer > 0`` registers the ``codebook_used`` buffer LlamaGen
    keeps for its training statistics (float, ``usage_buffer`` entries): it is part of the official state dict,
    so it is loaded, but never read or written here.
    """

    def __init__(self, codebook_size: int, dim: int, *, l2_norm: bool = False, usage_buffer: int = 0):
        super().__init__()
        self.codebook_size = int(codebook_size)
        self.dim = int(dim)
        self.l2_norm = bool(l2_norm)
        self.embedding = nn.Embedding(self.codebook_size, self.dim)
        if usage_buffer:
            self.register_buffer("codebook_used", torch.zeros(int(usage_buffer)))

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=1) if self.l2_norm else w

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: float (N, d, h, w) -> int64 codes (N, h, w)."""
        n, d, h, w = z.shape
        z = z.float()
        if self.l2_norm:
            z = F.normalize(z, p=2, dim=1)
        rows = z.permute(0, 2, 3, 1).reshape(-1, d)
        return nearest_code(rows, self.codebook().float()).view(n, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """int codes (N, h, w) -> float (N, d, h, w)."""
        return F.embedding(codes.long(), self.codebook()).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def quantizer_input(self, z: torch.Tensor) -> torch.Tensor:
        """What ``encode``'s nearest-neighbour search sees, channels last: (N, h, w, d), l2-normalised when
        ``l2_norm`` (the same float32 vectors ``encode`` compares)."""
        z = z.float()
        if self.l2_norm:
            z = F.normalize(z, p=2, dim=1)
        return z.permute(0, 2, 3, 1).contiguous()

    @torch.no_grad()
    def neighbours(self, qin: torch.Tensor, delta: int) -> torch.Tensor:
        """pFID sets: the ``min(delta, K)`` entries of ``codebook()`` (normalised when ``l2_norm``) nearest each
        vector of ``qin`` (..., d), nearest first -> int64 (..., k)."""
        rows = nearest_entries(qin.reshape(-1, self.dim), self.codebook().float(), delta)
        return rows.view(*qin.shape[:-1], rows.shape[1])


class VQGAN(nn.Module):
    """encoder -> quant_conv -> quantize -> post_quant_conv -> decoder (taming's module names)."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_levels: Sequence[int],
                 z_channels: int, codebook_size: int, embed_dim: int, l2_norm: bool = False, usage_buffer: int = 0):
        super().__init__()
        arch = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, attn_levels=tuple(attn_levels),
                    z_channels=z_channels)
        self.encoder = Encoder(**arch, double_z=False)
        self.decoder = Decoder(**arch)
        self.quantize = EmbeddingQuantizer(codebook_size, embed_dim, l2_norm=l2_norm, usage_buffer=usage_buffer)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.codebook_size = int(codebook_size)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latent (N, embed_dim, H/f, W/f) of images in the model's range."""
        return self.quant_conv(self.encoder(x))

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize.encode(self.encode_latent(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))


class VQGANTokenizer(CheckpointTokenizer):
    """Shared encode/decode of VQGAN-layout tokenizers (taming, LlamaGen): one code per ``f x f`` patch."""

    model: VQGAN

    # pFID neighbour rules (``Tokenizer.neighbour_rule``): plain codebooks (taming) and l2-normalised ones (LlamaGen)
    RULE_PLAIN = ("vq: the delta codebook entries nearest (squared L2) the quant_conv output vector the quantiser "
                  "compared, nearest first, ties to the lower index")
    RULE_L2NORM = ("vq, l2-normalised codebook: the delta entries of the l2-normalised codebook nearest (squared L2 "
                   "on unit vectors, i.e. largest cosine) the l2-normalised quant_conv output, nearest first, ties to "
                   "the lower index (ImageFolder's latent_perturbation)")

    @property
    def neighbour_rule(self) -> str:  # type: ignore[override]
        return self.RULE_L2NORM if self.model.quantize.l2_norm else self.RULE_PLAIN

    def neighbour_quantizer(self) -> Any:
        return self.model.quantize

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    @property
    def downsample(self) -> int:
        return self.model.downsample

    def tokens_per_image(self, height: int, width: int) -> int:
        return (height // self.downsample) * (width // self.downsample)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> Tokens:
        """images: float (N, 3, H, W) in [0, 1] -> codes (N, H/f, W/f)."""
        n, _, h, w = images.shape
        self.check_size(h, w)
        z = self.model.encode_latent(self.to_model(images))
        codes = self.model.quantize.encode(z).long()  # = model.encode_codes(x)
        per_image = codes[0].numel()
        return Tokens(kind=self.card.kind, bits=code_bits(per_image, self.codebook_size, n),
                      tokens_per_image=self.tokens_per_image(h, w), codes=codes, layout=("h", "w"),
                      codebook_size=self.codebook_size, meta={"image_size": (h, w)},
                      quantizer_input=self.model.quantize.quantizer_input(z))

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        """Codes (N, h, w) -> float (N, 3, f*h, f*w) in [0, 1] (clamped)."""
        if tokens.codes is None:
            raise ValueError(f"{self.name}: decode needs discrete codes, got Tokens without codes")
        codes = tokens.codes.to(self.device).long()
        if codes.ndim != 3:
            raise ValueError(f"{self.name}: expected codes (N, h, w), got shape {tuple(codes.shape)}")
        return self.from_model(self.model.decode_codes(codes))


class TamingVQGAN(VQGANTokenizer):
    """taming-transformers ``VQModel`` checkpoints.

    Card params follow the official ``model.yaml`` (``ddconfig``): ``ch``, ``ch_mult``, ``num_res_blocks``,
    ``attn_resolutions`` with ``resolution`` (attention sits at the levels whose feature side is listed, fixed by
    the training resolution), ``z_channels``, ``embed_dim``, ``codebook_size`` (``n_embed``).
    """

    drop_prefixes = ("loss.",)  # VQLPIPSWithDiscriminator: discriminator + LPIPS, training only

    @classmethod
    def build_model(cls, params: Mapping[str, Any]) -> nn.Module:
        ch_mult = [int(m) for m in params["ch_mult"]]
        attn = attn_levels_from_resolutions(int(params["resolution"]), len(ch_mult), params["attn_resolutions"])
        return VQGAN(ch=int(params["ch"]), ch_mult=ch_mult, num_res_blocks=int(params["num_res_blocks"]),
                     attn_levels=attn, z_channels=int(params["z_channels"]),
                     codebook_size=int(params["codebook_size"]), embed_dim=int(params["embed_dim"]))


__all__ = ["EmbeddingQuantizer", "TamingVQGAN", "VQGAN", "VQGANTokenizer"]
