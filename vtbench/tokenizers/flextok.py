"""FlexTok (Bachmann et al., 2025, apple/ml-flextok): images -> 1..256 ordered 1D tokens, decoded by rectified flow.

vtbench's own implementation of the released inference path; module and parameter names are the official ones
(``FlexTok.state_dict()``: ``vae.vae.*``, ``encoder.module_dict.*``, ``decoder.module_dict.*``), so the release
files load strictly without renaming (``tokenizers/manifests/flextok.*.json``).

Pipeline (images in [-1, 1], 256x256)::

    encode: VAE (diffusers AutoencoderKL, FlexTok's own f8 VAE with 16 channels; its weights are in the release
            file under vae.vae.*) -> posterior mode x scaling_factor, (N, 16, 32, 32)
            -> 2x2 patches -> Linear ``enc_patch_emb`` + 2D position embedding -> 256 patch tokens
            -> + 256 learned registers ``enc_register_module``; ViT ``enc_transformer`` (pre-norm, LayerNorm without
               affine, QK-norm, SwiGLU MLP, attention scale 8 / head_dim): patches attend to patches, register i
               to every patch and to registers 0..i (the official "causal_last" block mask)
            -> registers -> LayerNorm + Linear ``enc_to_latents`` -> FSQ levels [8, 8, 8, 5, 5, 5]: 64,000 codes
            -> the first k tokens are kept (any prefix decodes; the card's ``num_tokens``)
    decode: codes -> FSQ values -> Linear ``dec_from_latents`` + learned 1D position embedding; positions >= k
            replaced by the learned ``dec_nested_dropout`` mask token
            -> rectified flow from N(0, I) (t = 1) to the VAE latent (t = 0), ``decoder_steps`` Euler steps of
               x <- x - v / steps; v from a ViT over [noised 2x2 latent patches, registers] with full attention,
               adaLN-zero time modulation (separate modulations for patches and registers) and an adaLN linear
               head ``dec_to_patches``
            -> guidance: a second pass with every register replaced by the learned null condition
               ``dec_latent_dropout`` (cond and uncond are separate passes in the official pipeline, so a step costs
               2 network evaluations); ``guidance = "normalized"``: the official APG-style update (momentum -0.5,
               norm threshold 2.5, eta 0: the orthogonal part of the clipped difference, scaled by scale - 1);
               ``"cfg"``: uncond + scale * (cond - uncond); guidance_scale 1.0 switches it off
            -> latent / scaling_factor -> VAE decoder -> [-1, 1]

Official defaults of the recorded sampling settings: 20 steps, guidance scale 7.5, normalised guidance (README
"Getting started": ``detokenize(..., timesteps=20, guidance_scale=7.5, perform_norm_guidance=True)``).
All noise comes from ``per_image_normal`` (one (C, h, w) draw per image from its seed), so a decoded image depends
on its seed only, never on the batch. Tokens without runner seeds (``Tokens.seeds is None``) get seeds from their
own codes (``image_seeds`` of the code bytes): deterministic and batch-independent as well.

The release files store their hydra configuration in the safetensors metadata (one entry per top-level key, the
Python ``str`` of a dict). It is parsed as DATA (vtbench/tokenizers/flextok_config.py: json, else
``ast.literal_eval``, literals only); its ``_target_`` strings are compared with the expected class names and
nothing is imported or instantiated. The architecture is taken from it; anything this implementation does not
cover is an error naming the file and key.
The VAE posterior is always taken at its mode (deterministic tokens); the file's ``sample_posterior`` is recorded.

Attention is torch's ``scaled_dot_product_attention`` with boolean masks (no flex_attention, flash-attn or
xformers): runs on CPU. The official code packs images into one 128-padded sequence with block masks; padding is
never attended by real tokens, so per-image batches give the same values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vtbench.tokenizers.base import Tokens, code_bits, image_seeds, per_image_normal
from vtbench.tokenizers.flextok_config import (
    APG_ETA,
    APG_MOMENTUM,
    APG_NORM_THRESHOLD,
    DEFAULTS,
    GUIDANCE_MODES,
    FlexTokConfigError,
    config_metadata,
    config_targets,
    hydra_config,
    params_from_config,
    read_config,
    setting,
)
from vtbench.tokenizers.official import CheckpointTokenizer


#: architecture and sampling defaults; an architecture key present in the file's config wins
# -- layers ---------------------------------------------------------------------------------------------------
def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """The official Fp32LayerNorm without affine parameters (eps 1e-5), computed in float32."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=1e-5).type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1.0 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention with separate bias-free q, k, v, out projections, QK LayerNorm over each head and the
    muP scale 8 / head_dim."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width {dim} is not a multiple of head_dim {head_dim}")
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.wq, self.wk, self.wv = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n, length, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.wq(x)), heads(self.wk(x)), heads(self.wv(x))
        out = F.scaled_dot_product_attention(layer_norm(q), layer_norm(k), v, attn_mask=mask,
                                             scale=8.0 / self.head_dim)
        return self.proj(out.transpose(1, 2).reshape(n, length, d))


class GatedMlp(nn.Module):
    """SwiGLU: fc2(silu(fc1 x) * fc3 x), hidden int(2/3 * mlp_ratio * dim), no biases."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(2 * int(dim * mlp_ratio) / 3)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.fc3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


class Block(nn.Module):
    """Pre-norm transformer block; with ``adaln`` > 0 an adaLN-zero modulation (``adaLN_modulation``: SiLU, Linear
    to adaln x 6 x dim) whose six chunks are gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float, adaln: int = 0):
        super().__init__()
        self.attn = Attention(dim, head_dim)
        self.mlp = GatedMlp(dim, mlp_ratio)
        if adaln:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, adaln * 6 * dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                mod: torch.Tensor | None = None) -> torch.Tensor:
        if mod is None:
            x = x + self.attn(layer_norm(x), mask)
            return x + self.mlp(layer_norm(x))
        gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp = mod.chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(layer_norm(x), shift_msa, scale_msa), mask)
        return x + gate_mlp * self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp))


class Trunk(nn.Module):
    def __init__(self, dim: int, depth: int, head_dim: int, mlp_ratio: float, adaln: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, head_dim, mlp_ratio, adaln) for _ in range(depth))


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(1, dim, h, w) sine-cosine table in the official layout (MoCo-v3 style; the first axis of the flattened
    (w, h) meshgrid is laid out as rows). Only the initial value: the release files store the table."""
    if dim % 4:
        raise ValueError(f"sincos position embeddings need a width divisible by 4, got {dim}")
    gw, gh = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                            indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    ow, oh = gw.reshape(-1, 1) * omega, gh.reshape(-1, 1) * omega
    emb = torch.cat([ow.sin(), ow.cos(), oh.sin(), oh.cos()], dim=1)  # (w*h, dim)
    return emb.view(h, w, dim).permute(2, 0, 1).unsqueeze(0)


class PosEmb(nn.Module):
    """``posembs``: 'sincos' (1, D, g, g) (stored, not trained), 'learnable_sum' (n_axes, 1, D, max) summed over
    axes; cropped to the input grid ('absolute' scaling) and added channels-last."""

    def __init__(self, kind: str, dim: int, sizes: Sequence[int]):
        super().__init__()
        self.kind, self.n_axes = kind, len(sizes)
        if kind == "sincos":
            if len(sizes) != 2:
                raise ValueError("sincos position embeddings are 2D")
            self.posembs = nn.Parameter(sincos_2d(sizes[0], sizes[1], dim), requires_grad=False)
        elif kind == "learnable_sum":
            if len(set(sizes)) != 1:
                raise ValueError(f"learnable_sum position embeddings need equal sizes, got {sizes}")
            self.posembs = nn.Parameter(0.02 * torch.randn(len(sizes), 1, dim, sizes[0]))
        else:
            raise ValueError(f"position embedding type {kind!r} is not implemented (sincos, learnable_sum)")

    def table(self, shape: Sequence[int]) -> torch.Tensor:  # -> (1, *shape, D)
        p = self.posembs
        if self.kind == "learnable_sum":
            p = p[0] if self.n_axes == 1 else p[0].unsqueeze(-1) + p[1].unsqueeze(-2)
        p = p[(slice(None), slice(None), *(slice(None, n) for n in shape))]
        return p.movedim(1, -1)


class Named(nn.Module):
    """A holder whose only purpose is the official parameter name (``patch_proj``, ``proj``, ``registers`` ...)."""


class VAEHolder(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae


class ModuleDictHolder(nn.Module):
    def __init__(self, modules: Mapping[str, nn.Module]):
        super().__init__()
        self.module_dict = nn.ModuleDict(modules)


class FSQ:
    """Finite scalar quantisation with the official rounding (bound with tanh, round, renormalise) and index
    order (first level varies fastest); no parameters."""

    def __init__(self, levels: Sequence[int]):
        self.levels = torch.tensor(list(levels), dtype=torch.int32)
        self.basis = torch.cumprod(torch.tensor([1] + list(levels[:-1])), dim=0, dtype=torch.int32)
        self.codebook_size = int(math.prod(levels))

    def indices(self, z: torch.Tensor) -> torch.Tensor:  # (..., d) float -> (...) int64
        lv, basis = self.levels.to(z.device), self.basis.to(z.device)
        half_l = (lv - 1) * (1 + 1e-3) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        quant = ((z.float() + shift).tanh() * half_l - offset).round() / (lv // 2)
        return ((quant * (lv // 2) + lv // 2) * basis).sum(dim=-1).to(torch.int32).long()

    def values(self, idx: torch.Tensor) -> torch.Tensor:  # (...) int -> (..., d) in [-1, 1]
        lv, basis = self.levels.to(idx.device), self.basis.to(idx.device)
        digits = (idx.unsqueeze(-1) // basis) % lv
        return (digits - lv // 2) / (lv // 2)


# -- the model ------------------------------------------------------------------------------------------------
def _linear(name: str, fan_in: int, fan_out: int, bias: bool = True) -> Named:
    m = Named()
    setattr(m, name, nn.Linear(fan_in, fan_out, bias=bias))
    return m


def _param(name: str, *shape: int) -> Named:
    m = Named()
    setattr(m, name, nn.Parameter(0.02 * torch.randn(*shape)))
    return m


class FlexTokModel(nn.Module):
    """``vae`` (diffusers AutoencoderKL under ``vae.vae``), ``encoder.module_dict`` and ``decoder.module_dict``
    with the official module names; the FSQ regulariser has no parameters."""

    def __init__(self, params: Mapping[str, Any]):
        super().__init__()
        from vtbench.tokenizers.diffusers_vae import import_autoencoder_kl
        blocks = [int(c) for c in setting(params, "vae_block_out_channels")]
        c = int(setting(params, "vae_latent_channels"))
        self.vae = VAEHolder(import_autoencoder_kl()(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(blocks),
            up_block_types=("UpDecoderBlock2D",) * len(blocks), block_out_channels=tuple(blocks),
            layers_per_block=int(setting(params, "vae_layers_per_block")), act_fn="silu", latent_channels=c,
            norm_num_groups=int(setting(params, "vae_norm_num_groups")),
            sample_size=int(setting(params, "image_size"))))
        self.latent_channels, self.vae_factor = c, 2 ** (len(blocks) - 1)
        self.patch = int(setting(params, "patch_size"))
        g = int(setting(params, "posemb_grid"))
        self.num_registers = n_reg = int(setting(params, "num_registers"))
        self.fsq = FSQ([int(v) for v in setting(params, "fsq_levels")])
        nlev = len(self.fsq.levels)
        de, dd = int(setting(params, "enc_dim")), int(setting(params, "dec_dim"))
        hd, ratio = int(setting(params, "head_dim")), float(setting(params, "mlp_ratio"))
        self.adaln = int(setting(params, "adaln_expansion"))
        self.freq = int(setting(params, "time_freq_size"))
        self.max_timestep = float(setting(params, "max_timestep"))
        self.null_cond, self.null_single = str(setting(params, "null_cond")), bool(setting(params, "null_single_token"))
        patch_in = c * self.patch * self.patch
        enc_head = _linear("proj", de, nlev)
        self.encoder = ModuleDictHolder({
            "enc_patch_emb": _linear("patch_proj", patch_in, de),
            "enc_posemb_module": PosEmb(str(setting(params, "enc_posemb")), de, [g, g]),
            "enc_register_module": _param("registers", n_reg, de),
            "enc_transformer": Trunk(de, int(setting(params, "enc_depth")), hd, ratio),
            "enc_to_latents": enc_head,
        })
        dec_head = _linear("proj", dd, patch_in)
        dec_head.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dd, 2 * dd))
        dec: dict[str, nn.Module] = {
            "dec_from_latents": _linear("proj", nlev, dd),
            "dec_registers_posemb_module": PosEmb(str(setting(params, "dec_register_posemb")), dd, [n_reg]),
            "dec_nested_dropout": _param("dropout_mask_token", dd),
        }
        if self.null_cond == "learned":
            dec["dec_latent_dropout"] = _param("nullcond", dd)
        time = Named()
        time.mlp = nn.Sequential(nn.Linear(self.freq, dd), nn.SiLU(), nn.Linear(dd, dd))
        dec.update({
            "dec_noise_patch_emb": _linear("patch_proj", patch_in, dd),
            "dec_patches_posemb_module": PosEmb(str(setting(params, "dec_posemb")), dd, [g, g]),
            "dec_time_embedder": time,
            "dec_transformer": Trunk(dd, int(setting(params, "dec_depth")), hd, ratio, adaln=self.adaln),
            "dec_to_patches": dec_head,
        })
        self.decoder = ModuleDictHolder(dec)

    # -- patches ------------------------------------------------------------------------------------------------
    def patchify(self, lat: torch.Tensor) -> torch.Tensor:  # (N, C, h, w) -> (N, h/p, w/p, p*p*C), (p0 p1 c) order
        n, c, h, w = lat.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"a {h}x{w} latent is not divisible into {p}x{p} patches")
        x = lat.permute(0, 2, 3, 1).reshape(n, h // p, p, w // p, p, c)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(n, h // p, w // p, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:  # (N, gh, gw, p*p*C) -> (N, C, gh*p, gw*p)
        n, gh, gw, _ = x.shape
        p, c = self.patch, self.latent_channels
        x = x.reshape(n, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, gh * p, gw * p)

    def embed_patches(self, lat: torch.Tensor, emb: nn.Module, pos: PosEmb) -> tuple[torch.Tensor, int, int]:
        x = emb.patch_proj(self.patchify(lat))
        gh, gw = x.shape[1:3]
        x = x + pos.table([gh, gw]).to(x.dtype)
        return x.flatten(1, 2), gh, gw

    # -- encoder ------------------------------------------------------------------------------------------------
    def encode_latent(self, x: torch.Tensor, scaling_factor: float) -> torch.Tensor:
        """[-1, 1] images -> scaled VAE posterior mode (N, C, H/f, W/f)."""
        return self.vae.vae.encode(x).latent_dist.mode() * scaling_factor

    def encode_registers(self, lat: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents -> pre-quantisation register values (N, num_registers, len(levels))."""
        md = self.encoder.module_dict
        patches, _, _ = self.embed_patches(lat, md["enc_patch_emb"], md["enc_posemb_module"])
        n, p = patches.shape[:2]
        regs = md["enc_register_module"].registers[: self.num_registers]
        x = torch.cat([patches, regs.unsqueeze(0).expand(n, -1, -1).to(patches.dtype)], dim=1)
        q = torch.arange(x.shape[1], device=x.device)
        mask = (q[None, :] < p) | (q[None, :] <= q[:, None])  # [query, key]: every patch, registers causally
        for blk in md["enc_transformer"].blocks:
            x = blk(x, mask)
        return md["enc_to_latents"].proj(layer_norm(x[:, p:]))

    # -- decoder ------------------------------------------------------------------------------------------------
    def registers_in(self, codes: torch.Tensor, uncond: bool) -> torch.Tensor:
        """Codes (N, k) -> decoder register tokens (N, R, D): FSQ values of the codes padded to R, projected, plus
        position embedding, positions >= k set to the mask token; the unconditional pass replaces them all by the
        null condition (one token when the official config says replace_with_single_token)."""
        md = self.decoder.module_dict
        n, k = codes.shape
        pad = torch.zeros(n, self.num_registers, dtype=torch.long, device=codes.device)
        pad[:, :k] = codes
        proj = md["dec_from_latents"].proj
        x = proj(self.fsq.values(pad).to(proj.weight.dtype))
        x = x + md["dec_registers_posemb_module"].table([self.num_registers])
        x[:, k:] = md["dec_nested_dropout"].dropout_mask_token
        if uncond:
            null = (md["dec_latent_dropout"].nullcond if self.null_cond == "learned"
                    else torch.zeros_like(x[0, 0]))
            x = null.expand(n, 1 if self.null_single else self.num_registers, -1).clone()
        return x

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """DiT sinusoidal embedding of t (max period 256, frequencies x 1000 / max_timestep), then the MLP."""
        half = self.freq // 2
        freqs = (1000.0 / self.max_timestep) * torch.exp(
            -math.log(256) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.freq % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return self.decoder.module_dict["dec_time_embedder"].mlp(emb)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, regs: torch.Tensor) -> torch.Tensor:
        """One decoder pass: noised latents (N, C, h, w) at times t (N,), register tokens (N, R', D) -> v."""
        md = self.decoder.module_dict
        patches, gh, gw = self.embed_patches(x_t, md["dec_noise_patch_emb"], md["dec_patches_posemb_module"])
        n, p, d = patches.shape
        temb = self.time_embedding(t)
        x = torch.cat([patches, regs.to(patches.dtype)], dim=1)
        for blk in md["dec_transformer"].blocks:
            mod = blk.adaLN_modulation(temb).view(n, self.adaln, 6 * d)
            mod = torch.cat([mod[:, :1].expand(n, p, -1), mod[:, -1:].expand(n, regs.shape[1], -1)], dim=1)
            x = blk(x, None, mod)
        head = md["dec_to_patches"]
        shift, scale = head.adaLN_modulation(temb).unsqueeze(1).chunk(2, dim=-1)
        out = head.proj(modulate(layer_norm(x[:, :p]), shift, scale))
        return self.unpatchify(out.view(n, gh, gw, -1))

    def decode_latent(self, lat: torch.Tensor, scaling_factor: float) -> torch.Tensor:
        return self.vae.vae.decode(lat / scaling_factor).sample


def normalized_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float,
                        running: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official normalised guidance per image (dims C, H, W): momentum-averaged difference, clipped to norm
    2.5, its component orthogonal to the conditional prediction (projection in float64) added x (scale - 1).
    Returns (guided prediction, new running average)."""
    diff = cond - uncond
    running = diff if running is None else diff + APG_MOMENTUM * running
    diff = running
    dims = [-1, -2, -3]
    norm = diff.norm(p=2, dim=dims, keepdim=True)
    diff = diff * torch.minimum(torch.ones_like(diff), APG_NORM_THRESHOLD / norm)
    v0, v1 = diff.double(), F.normalize(cond.double(), dim=dims)
    parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
    update = (v0 - parallel).to(diff.dtype) + APG_ETA * parallel.to(diff.dtype)
    return cond + (scale - 1) * update, running


# -- the adapter ----------------------------------------------------------------------------------------------
class FlexTokTokenizer(CheckpointTokenizer):
    """FlexTok: the first ``num_tokens`` (1..256) of 256 ordered FSQ tokens, 64,000 codes (log2 64000 bits each);
    a sampling decoder (seeded per image)."""

    stochastic = True

    def __init__(self, card: Any, model: nn.Module, device: str | torch.device = "cpu"):
        super().__init__(card, model, device=device)
        self.stored_config: dict[str, Any] | None = None

    @classmethod
    def build_model(cls, params: Mapping[str, Any]) -> nn.Module:
        return FlexTokModel(params)

    @classmethod
    def from_card(cls, card: Any, *, weights: str | Path | None = None, trust: bool = False,
                  device: str | torch.device = "cpu") -> "FlexTokTokenizer":
        """Architecture from the file's stored config (read as data) over the card's params, then the normal
        strict load."""
        from vtbench.tokenizers.weights import resolve_weights
        if not card.weights:
            raise ValueError(f"{card.card_path}: {card.name} has no [weights] table")
        path = resolve_weights(card.weights, weights, name=card.name)
        cfg = read_config(path) if Path(path).suffix == ".safetensors" else None
        params = dict(card.params)
        if cfg is not None:
            params.update({k: v for k, v in params_from_config(cfg, str(path)).items() if v is not None})
        if params.get("vae_scaling_factor") is None:
            raise FlexTokConfigError(f"{card.name}: {path} stores no VAE scaling_factor; set params.vae_scaling_factor "
                                     f"in {card.card_path} to the value of the FlexTok VAE's config.json")
        tok = super().from_card(dataclasses.replace(card, params=params), weights=path, trust=trust, device=device)
        tok.stored_config = cfg
        tok.check_settings()
        if cfg is not None:
            vae = cfg.get("vae") or {}
            tok.checkpoint_info["stored_config"] = {
                "read_as": "data (json / ast.literal_eval of the safetensors metadata); nothing imported or run",
                "targets": sorted(set(config_targets(cfg))),
                "vae_sample_posterior": vae.get("sample_posterior", True),
                "vae_dtype_override": vae.get("dtype_override", "fp32"),
                "note": "vtbench encodes the VAE posterior mode and runs in float32",
            }
        return tok

    # -- settings -----------------------------------------------------------------------------------------------
    def check_settings(self) -> None:
        """Raise ``ValueError`` (naming the card file) for a token count, step count or guidance mode out of range."""
        _ = self.num_tokens, self.guidance
        if self.steps < 1:
            raise ValueError(f"{self.card.card_path}: {self.name}: decoder_steps must be >= 1, got {self.steps}")

    @property
    def num_tokens(self) -> int:
        k = int(setting(self.params, "num_tokens"))
        if not 1 <= k <= self.model.num_registers:
            raise ValueError(f"{self.card.card_path}: {self.name}: num_tokens must be in "
                             f"[1, {self.model.num_registers}], got {k}")
        return k

    @property
    def steps(self) -> int:
        return int(setting(self.params, "decoder_steps"))

    @property
    def guidance_scale(self) -> float:
        return float(setting(self.params, "guidance_scale"))

    @property
    def guidance(self) -> str:
        mode = str(setting(self.params, "guidance"))
        if mode not in GUIDANCE_MODES:
            raise ValueError(f"{self.card.card_path}: {self.name}: guidance {mode!r}; expected one of {GUIDANCE_MODES}")
        return mode

    @property
    def scaling_factor(self) -> float:
        return float(self.params["vae_scaling_factor"])

    @property
    def codebook_size(self) -> int:
        return self.model.fsq.codebook_size

    def network_evaluations(self) -> int:
        """Decoder passes per image: steps x 2 with guidance (the official pipeline runs the conditional and the
        unconditional pass separately), steps without (guidance_scale 1.0)."""
        return self.steps * (2 if self.guidance_scale != 1.0 else 1)

    def tokens_per_image(self, height: int, width: int) -> int:
        self.check_size(height, width)
        return self.num_tokens

    # -- contract -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Tokens:
        n, _, h, w = images.shape
        self.check_size(h, w)
        lat = self.model.encode_latent(self.to_model(images), self.scaling_factor)
        z = self.model.encode_registers(lat)
        k = self.num_tokens
        codes = self.model.fsq.indices(z)[:, :k]
        return Tokens(kind=self.card.kind, bits=code_bits(k, self.codebook_size, n), tokens_per_image=k,
                      codes=codes, layout=("token",), codebook_size=self.codebook_size,
                      meta={"latent_hw": [int(lat.shape[-2]), int(lat.shape[-1])]})

    def _latent_hw(self, tokens: Tokens) -> tuple[int, int]:
        hw = tokens.meta.get("latent_hw")
        if hw:
            return int(hw[0]), int(hw[1])
        side = int(setting(self.params, "image_size")) // self.model.vae_factor
        return side, side

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if tokens.codes is None:
            raise ValueError(f"{self.name}: decode needs integer codes")
        codes = tokens.codes.to(self.device).long()
        if tokens.seeds is None:  # no runner seeds: seeds from the codes themselves (batch-independent)
            tokens = dataclasses.replace(tokens, seeds=image_seeds(
                [hashlib.sha256(row.cpu().numpy().tobytes()).hexdigest() for row in tokens.codes], 0))
        h, w = self._latent_hw(tokens)
        dtype = self.model.decoder.module_dict["dec_from_latents"].proj.weight.dtype
        x = per_image_normal(tokens, (self.model.latent_channels, h, w), device=self.device, dtype=dtype)
        lat = self.sample(codes, x)
        return self.from_model(self.model.decode_latent(lat, self.scaling_factor))

    @torch.no_grad()
    def sample(self, codes: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The official Euler sampler from ``noise`` (t = 1) to the scaled VAE latent (t = 0) for ``codes``."""
        steps, scale = self.steps, self.guidance_scale
        guided, mode = scale != 1.0, self.guidance
        cond = self.model.registers_in(codes, uncond=False)
        uncond = self.model.registers_in(codes, uncond=True) if guided else None
        x, running, dt = noise, None, 1.0 / steps
        for i in range(steps, 0, -1):
            t = torch.full((x.shape[0],), i / steps, device=x.device)
            v = self.model.velocity(x, t, cond)
            if guided:
                v_u = self.model.velocity(x, t, uncond)
                if mode == "normalized":
                    v, running = normalized_guidance(v, v_u, scale, running)
                else:
                    v = v_u + scale * (v - v_u)
            x = x - dt * v
        return x

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        out["sampling"] = {"decoder_steps": self.steps, "guidance_scale": self.guidance_scale,
                           "guidance": self.guidance, "num_tokens": self.num_tokens,
                           "network_evaluations": self.network_evaluations(), "noise": "per_image_normal, stream 0"}
        return out


__all__ = ["DEFAULTS", "FSQ", "FlexTokConfigError", "FlexTokModel", "FlexTokTokenizer", "config_metadata",
           "config_targets", "hydra_config", "normalized_guidance", "params_from_config", "read_config"]
