"""RQ-VAE (Lee et al., CVPR 2022; kakaobrain/rq-vae-transformer), stage 1: a VQGAN-style convolutional
autoencoder whose latent is coded by residual quantisation.

vtbench's own implementation; only parameter names and shapes follow the official checkpoint so that its
``stage1/model.pt`` loads. What the official stage-1 model computes (and this module reproduces):

- encoder: the LDM/taming conv encoder (``vtbench.tokenizers.ldm.Encoder``, identical parameter names;
  attention at the levels whose side is in ``attn_resolutions``, mid attention always), then a 1x1
  ``quant_conv`` from ``z_channels`` to ``embed_dim``;
- quantiser: the (H, W, embed_dim) latent is regrouped into ``code_shape[:2]`` positions (each position
  stacks ``H/h x W/w`` latent vectors; 1 x 1 for the released 8x8x4 models) and coded ``depth =
  code_shape[2]`` times: at each depth the residual's nearest codebook entry (squared L2, computed as
  ``||r||^2 + ||e||^2 - 2 r.e``) is chosen and subtracted. With ``shared_codebook`` one codebook serves every
  depth. The official codebook is an ``nn.Embedding`` of ``n_embed + 1`` rows whose last row is a padding
  entry never searched nor produced; vtbench keeps the ``n_embed`` real rows;
- decoder: the sum of the chosen entries over depth, a 1x1 ``post_quant_conv`` back to ``z_channels`` and
  the LDM/taming conv decoder. Images are in [-1, 1]; the output is mapped to [0, 1] and clamped, as the
  official ``get_recon_imgs`` does.

Checkpoint layout (official ``trainer_rqvae.save_ckpt``): ``{"epoch", "state_dict", "discriminator",
"optimizer", "scheduler"}`` (plus ``state_dict_ema`` when EMA was trained; the ImageNet stage-1 config has
none). The official loaders (``compute_rfid.py``, ``notebook_utils.load_model``) read ``state_dict``, so the
card's ``wrapper_keys`` is ``["state_dict"]``. Training-only EMA statistics of the codebooks
(``cluster_size_ema``, ``embed_ema``) are dropped; a shared codebook appears once per depth under
``quantizer.codebooks.{i}`` and must be the same tensor each time.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from vtbench.tokenizers.base import Tokens, code_bits
from vtbench.tokenizers.ldm import Decoder, Encoder, attn_levels_from_resolutions
from vtbench.tokenizers.neighbours import nearest_entries
from vtbench.tokenizers.official import CheckpointTokenizer
from vtbench.tokenizers.quantizers import nearest_code_full
from vtbench.tokenizers.weights import WeightsMismatchError

# distance rows computed at once (rows x codebook entries); larger batches are split by rows


class ResidualQuantizer(nn.Module):
    """Residual quantisation of a channels-last latent (N, H, W, D) into codes (N, h, w, depth).

    ``codebook``: (K, dim) when shared across depths, else (depth, K, dim); ``dim = rH * rW * D`` where
    ``(rH, rW) = (H / h, W / w)`` is how many latent vectors one code position stacks.
    """

    def __init__(self, *, n_embed: int, embed_dim: int, depth: int, shared: bool, divisor: tuple[int, int]):
        super().__init__()
        self.n_embed, self.depth, self.shared = int(n_embed), int(depth), bool(shared)
        self.divisor = (int(divisor[0]), int(divisor[1]))
        self.embed_dim = int(embed_dim)
        self.dim = self.divisor[0] * self.divisor[1] * self.embed_dim
        shape = (self.n_embed, self.dim) if self.shared else (self.depth, self.n_embed, self.dim)
        self.codebook = nn.Parameter(torch.randn(shape) / math.sqrt(self.dim))

    def book(self, i: int) -> torch.Tensor:
        return self.codebook if self.shared else self.codebook[i]

    def group(self, z: torch.Tensor) -> torch.Tensor:
        """(N, H, W, D) -> (N, H/rH, W/rW, rH*rW*D): each position's latent vectors, row-major."""
        n, hh, ww, d = z.shape
        rh, rw = self.divisor
        return z.reshape(n, hh // rh, rh, ww // rw, rw, d).permute(0, 1, 3, 2, 4, 5).reshape(n, hh // rh, ww // rw, -1)

    def ungroup(self, v: torch.Tensor) -> torch.Tensor:
        """Inverse of ``group``."""
        n, h, w, _ = v.shape
        rh, rw = self.divisor
        return v.reshape(n, h, w, rh, rw, self.embed_dim).permute(0, 1, 3, 2, 4, 5).reshape(n, h * rh, w * rw, -1)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (N, H, W, D) -> int64 codes (N, h, w, depth)."""
        return self.encode_with_inputs(z)[0]

    @torch.no_grad()
    def encode_with_inputs(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z: (N, H, W, D) -> (codes (N, h, w, depth), the residual each depth quantised (N, h, w, depth, dim))."""
        v = self.group(z.float())
        n, h, w, dim = v.shape
        residual = v.reshape(-1, dim).clone()
        codes, inputs = [], []
        for i in range(self.depth):
            book = self.book(i)
            inputs.append(residual.clone())
            c = nearest_code_full(residual, book)
            residual.sub_(book[c])
            codes.append(c)
        return (torch.stack(codes, dim=-1).view(n, h, w, self.depth),
                torch.stack(inputs, dim=1).view(n, h, w, self.depth, dim))

    @torch.no_grad()
    def neighbours(self, qin: torch.Tensor, delta: int) -> torch.Tensor:
        """pFID sets: at depth i, the ``min(delta, n_embed)`` entries of depth i's codebook (the shared one when
        shared; only the ``n_embed`` real rows exist here, so the official padding row is never a candidate)
        nearest the residual ``qin[..., i, :]`` -> int64 (N, h, w, depth, k), nearest first."""
        sets = []
        for i in range(self.depth):
            x = qin[..., i, :]
            rows = nearest_entries(x.reshape(-1, self.dim), self.book(i).float(), delta)
            sets.append(rows.view(*x.shape[:-1], rows.shape[1]))
        return torch.stack(sets, dim=-2)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, h, w, depth) -> latent (N, H, W, D): the sum of the chosen entries over depth."""
        parts = [self.book(i)[codes[..., i].long()] for i in range(self.depth)]
        return self.ungroup(torch.stack(parts, dim=-2).sum(dim=-2))


class RQVAEModel(nn.Module):
    """Encoder -> quant_conv -> residual quantiser -> post_quant_conv -> decoder."""

    def __init__(self, p: Mapping[str, Any]):
        super().__init__()
        ch_mult = tuple(int(m) for m in p["ch_mult"])
        resolution = int(p.get("resolution", 256))
        attn = attn_levels_from_resolutions(resolution, len(ch_mult), p.get("attn_resolutions", ()))
        arch = dict(ch=int(p["ch"]), ch_mult=ch_mult, num_res_blocks=int(p["num_res_blocks"]), attn_levels=attn,
                    z_channels=int(p["z_channels"]), mid_attn=True, fused_qkv=False)
        self.encoder = Encoder(in_channels=int(p.get("in_channels", 3)), double_z=bool(p.get("double_z", False)),
                               **arch)
        self.decoder = Decoder(out_channels=int(p.get("out_ch", 3)), **arch)
        latent, code = tuple(p["latent_shape"]), tuple(p["code_shape"])
        if latent[0] % code[0] or latent[1] % code[1]:
            raise ValueError(f"code_shape {code} does not divide latent_shape {latent}")
        embed_dim = int(p["embed_dim"])
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.quant_conv = nn.Conv2d(int(p["z_channels"]), embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, int(p["z_channels"]), 1)
        self.quantizer = ResidualQuantizer(n_embed=int(p["n_embed"]), embed_dim=embed_dim, depth=int(code[2]),
                                           shared=bool(p.get("shared_codebook", False)),
                                           divisor=(latent[0] // code[0], latent[1] // code[1]))

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> channels-last latent (N, H, W, embed_dim)."""
        return self.quant_conv(self.encoder(x)).permute(0, 2, 3, 1).contiguous()

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z.permute(0, 3, 1, 2).contiguous()))


class RQVAETokenizer(CheckpointTokenizer):
    """Adapter for RQ-VAE stage-1 checkpoints (``stage1/model.pt``)."""

    @classmethod
    def build_model(cls, params: Mapping[str, Any]) -> nn.Module:
        return RQVAEModel(params)

    @classmethod
    def _ema_prefixes(cls, params: Mapping[str, Any]) -> list[str]:
        depth = int(params["code_shape"][2])
        return [f"quantizer.codebooks.{i}.{b}" for i in range(depth) for b in ("cluster_size_ema", "embed_ema")]

    @classmethod
    def state_from_object(cls, obj, params, *, source="checkpoint"):
        params = dict(params)
        params["drop_prefixes"] = list(params.get("drop_prefixes", ())) + cls._ema_prefixes(params)
        return super().state_from_object(obj, params, source=source)

    @classmethod
    def remap_state(cls, state: dict[str, torch.Tensor], params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Official ``quantizer.codebooks.{i}.weight`` (n_embed + 1 rows, the last a padding entry) ->
        ``quantizer.codebook``; a shared codebook must be the same tensor at every depth."""
        depth = int(params["code_shape"][2])
        shared = bool(params.get("shared_codebook", False))
        out = {k: v for k, v in state.items() if not k.startswith("quantizer.codebooks.")}
        books = [state.get(f"quantizer.codebooks.{i}.weight") for i in range(depth)]
        extra = sorted(k for k in state if k.startswith("quantizer.codebooks.")
                       and k not in {f"quantizer.codebooks.{i}.weight" for i in range(depth)})
        out.update({k: state[k] for k in extra})  # left unmapped: strict loading reports them
        if any(b is None for b in books):
            return out  # strict loading reports the missing codebook
        if shared:
            first = books[0]
            for i, b in enumerate(books[1:], 1):
                if b.shape != first.shape or (not first.is_meta and not torch.equal(b, first)):
                    raise WeightsMismatchError(
                        f"quantizer.codebooks.{i}.weight differs from quantizer.codebooks.0.weight although the "
                        f"card says shared_codebook = true")
            out["quantizer.codebook"] = first[:-1]
        else:
            out["quantizer.codebook"] = torch.stack([b[:-1] for b in books])
        return out

    # -- contract ------------------------------------------------------------------------------------------
    def tokens_per_image(self, height: int, width: int) -> int:
        d = self.model.downsample
        rh, rw = self.model.quantizer.divisor
        return (height // d // rh) * (width // d // rw)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Tokens:
        self.check_size(images.shape[-2], images.shape[-1])
        q = self.model.quantizer
        codes, qin = q.encode_with_inputs(self.model.latent(self.to_model(images)))
        n, h, w, depth = codes.shape
        return Tokens(kind=self.card.kind, bits=code_bits(h * w * depth, q.n_embed, n), tokens_per_image=h * w,
                      codes=codes, layout=("h", "w", "depth"), codebook_size=q.n_embed,
                      meta={"depth": depth}, quantizer_input=qin)

    @property
    def neighbour_rule(self) -> str:  # type: ignore[override]
        book = ("the shared codebook" if self.model.quantizer.shared else "that depth's codebook")
        return (f"rvq: at every depth, the delta entries of {book} (its n_embed real rows; the checkpoint's padding "
                "row is never a candidate) nearest (squared L2) the residual that depth quantised, nearest first, "
                "ties to the lower index")

    def neighbour_quantizer(self) -> Any:
        return self.model.quantizer

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        z = self.model.quantizer.lookup(tokens.codes.to(self.device))
        return self.from_model(self.model.decode_latent(z))


__all__ = ["RQVAEModel", "RQVAETokenizer", "ResidualQuantizer"]
