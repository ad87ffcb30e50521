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
Python ``str`` of a dict). It is parsed here as DATA (json, else ``ast.literal_eval``: literals only); its
``_target_`` strings are compared with the expected class names and nothing is imported or instantiated. The
architecture is taken from it; anything this implementation does not cover is an error naming the file and key.
The VAE posterior is always taken at its mode (deterministic tokens); the file's ``sample_posterior`` is recorded.

Attention is torch's ``scaled_dot_product_attention`` with boolean masks (no flex_attention, flash-attn or
xformers): runs on CPU. The official code packs images into one 128-padded sequence with block masks; padding is
never attended by real tokens, so per-image batches give the same values.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vtbench.tokenizers.base import Tokens, code_bits, image_seeds, per_image_normal
from vtbench.tokenizers.official import CheckpointTokenizer
from vtbench.tokenizers.weights import WeightsMismatchError

#: architecture and sampling defaults; an architecture key present in the file's config wins
DEFAULTS: dict[str, Any] = {
    "image_size": 256,
    # VAE: the official vae_wrapper.VAE_BASE_CFG (SD-style AutoencoderKL) with 16 latent channels
    "vae_latent_channels": 16, "vae_block_out_channels": [128, 256, 512, 512], "vae_layers_per_block": 2,
    "vae_norm_num_groups": 32, "vae_scaling_factor": None,
    "patch_size": 2, "posemb_grid": 16, "num_registers": 256, "fsq_levels": [8, 8, 8, 5, 5, 5],
    "enc_dim": 1152, "enc_depth": 18, "dec_dim": 1152, "dec_depth": 18, "head_dim": 64, "mlp_ratio": 4.0,
    "enc_posemb": "sincos", "dec_posemb": "sincos", "dec_register_posemb": "learnable_sum",
    "adaln_expansion": 2, "time_freq_size": 256, "max_timestep": 1000.0,
    "null_cond": "learned", "null_single_token": False,
    # sampling settings (recorded card params)
    "num_tokens": 256, "decoder_steps": 20, "guidance_scale": 7.5, "guidance": "normalized",
}
GUIDANCE_MODES = ("normalized", "cfg")
# constants of the official pipeline's normalised guidance (pipelines.py: MomentumBuffer(-0.5), eta=0.0,
# norm_threshold=2.5)
APG_MOMENTUM, APG_ETA, APG_NORM_THRESHOLD = -0.5, 0.0, 2.5


def _p(params: Mapping[str, Any], key: str) -> Any:
    return params[key] if params.get(key) is not None else DEFAULTS[key]


# -- the hydra config in the file's metadata, read as data ------------------------------------------------------
class FlexTokConfigError(WeightsMismatchError):
    """The file's stored configuration describes something this implementation does not cover."""


def read_config(path: str | Path) -> dict[str, Any] | None:
    """The hydra config stored in a release file's safetensors metadata, parsed as data (never instantiated);
    None when the file carries none."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "encoder" not in meta:
        return None
    out: dict[str, Any] = {}
    for k, v in meta.items():
        out[k] = _parse_value(v)
    return out


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        pass
    try:  # the official writer stores str(dict): Python literals (quotes, True, None), parsed without evaluation
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def config_targets(cfg: Any) -> list[str]:
    """Every ``_target_`` string in a parsed config (recorded; never imported)."""
    found: list[str] = []
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            if k == "_target_" and isinstance(v, str):
                found.append(v)
            else:
                found += config_targets(v)
    elif isinstance(cfg, (list, tuple)):
        for v in cfg:
            found += config_targets(v)
    return found


# (module name in the config, class name its _target_ must end with)
ENCODER_MODULES = (("enc_channels_to_last", "PerSampleOp"), ("enc_patch_emb", "PatchEmbedder"),
                   ("enc_posemb_module", "PositionalEmbeddingAdder"), ("enc_register_module", "Registers1D"),
                   ("enc_seq_packer", "BlockWiseSequencePacker"), ("enc_transformer", "FlexTransformer"),
                   ("enc_unpacker", "SequenceUnpacker"), ("enc_to_latents", "LinearHead"))
DECODER_MODULES = (("dec_from_latents", "LinearLayer"), ("dec_registers_posemb_module", "PositionalEmbeddingAdder"),
                   ("dec_nested_dropout", "MaskedNestedDropout"), ("dec_latent_dropout", "NullCond"),
                   ("dec_noise_channels_to_last", "PerSampleOp"), ("dec_noise_patch_emb", "PatchEmbedder"),
                   ("dec_patches_posemb_module", "PositionalEmbeddingAdder"),
                   ("dec_seq_packer", "BlockWiseSequencePacker"), ("dec_time_embedder", "TimestepEmbedder"),
                   ("dec_transformer", "FlexTransformer"), ("dec_unpacker", "SequenceUnpacker"),
                   ("dec_to_patches", "ToPatchesLinearHead"))
# FlexTransformer / block options this implementation covers, with the official defaults
_TRUNK_FIXED = {"qkv_bias": False, "proj_bias": False, "mlp_bias": False, "gated_mlp": True, "qk_norm": True,
                "intermediate_layers": []}


def params_from_config(cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Architecture params (``DEFAULTS`` names) from a parsed release config; ``FlexTokConfigError`` names the file
    and the key for anything this implementation does not cover. Keys the config omits take the official class
    defaults."""
    def fail(where: str, what: str) -> FlexTokConfigError:
        return FlexTokConfigError(f"{source}: stored config {where}: {what}; vtbench's FlexTok implementation "
                                  "(vtbench/tokenizers/flextok.py) covers the released architecture only")

    def modules(part: str, expected: Sequence[tuple[str, str]]) -> dict[str, Mapping[str, Any]]:
        md = (cfg.get(part) or {}).get("module_dict") if isinstance(cfg.get(part), Mapping) else None
        if not isinstance(md, Mapping):
            raise fail(part, "no module_dict")
        for name, cls in expected:
            target = (md.get(name) or {}).get("_target_", "")
            if not str(target).endswith(cls):
                raise fail(f"{part}.module_dict.{name}", f"expected a {cls}, found {target or 'nothing'!r}")
        return md

    enc = modules("encoder", ENCODER_MODULES)
    dec = modules("decoder", DECODER_MODULES)
    for part, name in (("encoder", "enc_transformer"), ("decoder", "dec_transformer")):
        trunk = (enc if part == "encoder" else dec)[name]
        for k, v in _TRUNK_FIXED.items():
            if k in trunk and trunk[k] != v:
                raise fail(f"{part}.module_dict.{name}.{k}", f"{trunk[k]!r} (implemented: {v!r})")
        for k in ("act_layer", "norm_layer"):
            if k in trunk:
                raise fail(f"{part}.module_dict.{name}.{k}", "a non-default layer class")
    if enc["enc_register_module"].get("ordering_mode", "nested") != "nested":
        raise fail("encoder.module_dict.enc_register_module.ordering_mode", "only 'nested' registers are implemented")
    if enc["enc_seq_packer"].get("mask_mode", "full") != "causal_last":
        raise fail("encoder.module_dict.enc_seq_packer.mask_mode", "expected 'causal_last'")
    if dec["dec_seq_packer"].get("mask_mode", "full") != "full":
        raise fail("decoder.module_dict.dec_seq_packer.mask_mode", "expected 'full'")
    for where, m in (("encoder.module_dict.enc_patch_emb", enc["enc_patch_emb"]),
                     ("decoder.module_dict.dec_noise_patch_emb", dec["dec_noise_patch_emb"])):
        ps = list(m.get("patch_sizes") or [])
        if len(ps) != 2 or ps[0] != ps[1] or m.get("flatten_patches", True):
            raise fail(where, f"square 2D patches kept as a grid are implemented, got patch_sizes={ps}, "
                              f"flatten_patches={m.get('flatten_patches', True)}")
    for where, m in (("encoder.module_dict.enc_posemb_module", enc["enc_posemb_module"]),
                     ("decoder.module_dict.dec_patches_posemb_module", dec["dec_patches_posemb_module"]),
                     ("decoder.module_dict.dec_registers_posemb_module", dec["dec_registers_posemb_module"])):
        if m.get("posemb_scaling", "absolute") != "absolute":
            raise fail(where + ".posemb_scaling", "only 'absolute' (cropped) position embeddings are implemented")
    trunk_e, trunk_d = enc["enc_transformer"], dec["dec_transformer"]
    if trunk_e.get("adaLN_emb_read_key") is not None or trunk_d.get("adaLN_emb_read_key") is None:
        raise fail("decoder.module_dict.dec_transformer", "expected adaLN time conditioning in the decoder only")
    expansion = int(trunk_d.get("adaLN_expansion", 1))
    if (expansion == 2) != bool(dec["dec_seq_packer"].get("per_subseq_embs", False)) or expansion not in (1, 2):
        raise fail("decoder.module_dict.dec_transformer.adaLN_expansion",
                   f"{expansion} with per_subseq_embs={dec['dec_seq_packer'].get('per_subseq_embs', False)}")
    if dec["dec_to_patches"].get("adaLN_emb_read_key") is None:
        raise fail("decoder.module_dict.dec_to_patches", "expected an adaLN head")
    null = dec["dec_latent_dropout"]
    vae = cfg.get("vae") or {}
    if vae.get("dtype_override") not in (None, "fp32", "float32"):
        pass  # recorded in provenance: vtbench runs the VAE in float32
    levels = list((cfg.get("regularizer") or {}).get("levels") or [])
    if not levels:
        raise fail("regularizer.levels", "missing")
    head_dims = {int(trunk_e.get("head_dim", 64)), int(trunk_d.get("head_dim", 64))}
    ratios = {float(trunk_e.get("mlp_ratio", 4.0)), float(trunk_d.get("mlp_ratio", 4.0))}
    if len(head_dims) != 1 or len(ratios) != 1:
        raise fail("encoder/decoder transformers", f"different head_dim {head_dims} or mlp_ratio {ratios}")
    ps = int(enc["enc_patch_emb"]["patch_sizes"][0])
    grid = list(enc["enc_posemb_module"].get("max_sizes") or [])
    return {
        "vae_latent_channels": int(vae.get("latent_channels", 16)),
        "vae_scaling_factor": vae.get("scaling_factor"),
        "patch_size": ps, "posemb_grid": int(grid[0]) if grid else DEFAULTS["posemb_grid"],
        "num_registers": int(enc["enc_register_module"]["n_max"]), "fsq_levels": [int(v) for v in levels],
        "enc_dim": int(trunk_e["dim"]), "enc_depth": int(trunk_e["depth"]),
        "dec_dim": int(trunk_d["dim"]), "dec_depth": int(trunk_d["depth"]),
        "head_dim": head_dims.pop(), "mlp_ratio": ratios.pop(),
        "enc_posemb": enc["enc_posemb_module"].get("posemb_type", "sincos"),
        "dec_posemb": dec["dec_patches_posemb_module"].get("posemb_type", "sincos"),
        "dec_register_posemb": dec["dec_registers_posemb_module"].get("posemb_type", "sincos"),
        "adaln_expansion": expansion,
        "time_freq_size": int(dec["dec_time_embedder"].get("frequency_embedding_size", 256)),
        "max_timestep": float(dec["dec_time_embedder"].get("max_timestep", 1000.0)),
        "null_cond": "learned" if str(null["_target_"]).endswith("LearnedNullCond") else "zero",
        "null_single_token": bool(null.get("replace_with_single_token", False)),
    }


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
        blocks = [int(c) for c in _p(params, "vae_block_out_channels")]
        c = int(_p(params, "vae_latent_channels"))
        self.vae = VAEHolder(import_autoencoder_kl()(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(blocks),
            up_block_types=("UpDecoderBlock2D",) * len(blocks), block_out_channels=tuple(blocks),
            layers_per_block=int(_p(params, "vae_layers_per_block")), act_fn="silu", latent_channels=c,
            norm_num_groups=int(_p(params, "vae_norm_num_groups")), sample_size=int(_p(params, "image_size"))))
        self.latent_channels, self.vae_factor = c, 2 ** (len(blocks) - 1)
        self.patch = int(_p(params, "patch_size"))
        g = int(_p(params, "posemb_grid"))
        self.num_registers = n_reg = int(_p(params, "num_registers"))
        self.fsq = FSQ([int(v) for v in _p(params, "fsq_levels")])
        nlev = len(self.fsq.levels)
        de, dd = int(_p(params, "enc_dim")), int(_p(params, "dec_dim"))
        hd, ratio = int(_p(params, "head_dim")), float(_p(params, "mlp_ratio"))
        self.adaln = int(_p(params, "adaln_expansion"))
        self.freq = int(_p(params, "time_freq_size"))
        self.max_timestep = float(_p(params, "max_timestep"))
        self.null_cond, self.null_single = str(_p(params, "null_cond")), bool(_p(params, "null_single_token"))
        patch_in = c * self.patch * self.patch
        enc_head = _linear("proj", de, nlev)
        self.encoder = ModuleDictHolder({
            "enc_patch_emb": _linear("patch_proj", patch_in, de),
            "enc_posemb_module": PosEmb(str(_p(params, "enc_posemb")), de, [g, g]),
            "enc_register_module": _param("registers", n_reg, de),
            "enc_transformer": Trunk(de, int(_p(params, "enc_depth")), hd, ratio),
            "enc_to_latents": enc_head,
        })
        dec_head = _linear("proj", dd, patch_in)
        dec_head.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dd, 2 * dd))
        dec: dict[str, nn.Module] = {
            "dec_from_latents": _linear("proj", nlev, dd),
            "dec_registers_posemb_module": PosEmb(str(_p(params, "dec_register_posemb")), dd, [n_reg]),
            "dec_nested_dropout": _param("dropout_mask_token", dd),
        }
        if self.null_cond == "learned":
            dec["dec_latent_dropout"] = _param("nullcond", dd)
        time = Named()
        time.mlp = nn.Sequential(nn.Linear(self.freq, dd), nn.SiLU(), nn.Linear(dd, dd))
        dec.update({
            "dec_noise_patch_emb": _linear("patch_proj", patch_in, dd),
            "dec_patches_posemb_module": PosEmb(str(_p(params, "dec_posemb")), dd, [g, g]),
            "dec_time_embedder": time,
            "dec_transformer": Trunk(dd, int(_p(params, "dec_depth")), hd, ratio, adaln=self.adaln),
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
        k = int(_p(self.params, "num_tokens"))
        if not 1 <= k <= self.model.num_registers:
            raise ValueError(f"{self.card.card_path}: {self.name}: num_tokens must be in "
                             f"[1, {self.model.num_registers}], got {k}")
        return k

    @property
    def steps(self) -> int:
        return int(_p(self.params, "decoder_steps"))

    @property
    def guidance_scale(self) -> float:
        return float(_p(self.params, "guidance_scale"))

    @property
    def guidance(self) -> str:
        mode = str(_p(self.params, "guidance"))
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
        side = int(_p(self.params, "image_size")) // self.model.vae_factor
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


def hydra_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration layout the release files store (hydra ``_target_`` dicts), for ``params``: what tests
    write into random-weight files so the loading path reads a stored config as the real files do."""
    def v(key: str) -> Any:
        return _p(params, key)

    t = "flextok."
    de, dd, c, p, g = v("enc_dim"), v("dec_dim"), v("vae_latent_channels"), v("patch_size"), v("posemb_grid")
    n_reg, nlev = v("num_registers"), len(v("fsq_levels"))
    null = ({"_target_": t + "model.preprocessors.nullcond.LearnedNullCond", "dim": dd,
             "replace_with_single_token": bool(v("null_single_token"))} if v("null_cond") == "learned"
            else {"_target_": t + "model.preprocessors.nullcond.ZeroNullCond"})
    trunk = {"_target_": t + "model.trunks.transformers.FlexTransformer", "head_dim": v("head_dim"),
             "mlp_ratio": v("mlp_ratio")}
    enc = {
        "enc_channels_to_last": {"_target_": t + "model.utils.dict_ops.PerSampleOp"},
        "enc_patch_emb": {"_target_": t + "model.preprocessors.patching.PatchEmbedder", "channels_in": c, "dim": de,
                          "patch_sizes": [p, p], "flatten_patches": False},
        "enc_posemb_module": {"_target_": t + "model.utils.posembs.PositionalEmbeddingAdder", "dim": de,
                              "max_sizes": [g, g], "posemb_type": v("enc_posemb"), "posemb_scaling": "absolute"},
        "enc_register_module": {"_target_": t + "model.preprocessors.registers.Registers1D", "dim": de,
                                "n_min": n_reg, "n_max": n_reg, "ordering_mode": "nested"},
        "enc_seq_packer": {"_target_": t + "model.preprocessors.flex_seq_packing.BlockWiseSequencePacker",
                           "mask_mode": "causal_last", "pad_to_multiple": 128},
        "enc_transformer": {**trunk, "dim": de, "depth": v("enc_depth")},
        "enc_unpacker": {"_target_": t + "model.postprocessors.seq_unpacking.SequenceUnpacker"},
        "enc_to_latents": {"_target_": t + "model.postprocessors.heads.LinearHead", "dim": de, "dim_out": nlev},
    }
    dec = {
        "dec_from_latents": {"_target_": t + "model.preprocessors.linear.LinearLayer", "dim_in": nlev, "dim": dd},
        "dec_registers_posemb_module": {"_target_": t + "model.utils.posembs.PositionalEmbeddingAdder", "dim": dd,
                                        "max_sizes": [n_reg], "posemb_type": v("dec_register_posemb")},
        "dec_nested_dropout": {"_target_": t + "model.preprocessors.token_dropout.MaskedNestedDropout", "dim": dd},
        "dec_latent_dropout": null,
        "dec_noise_channels_to_last": {"_target_": t + "model.utils.dict_ops.PerSampleOp"},
        "dec_noise_patch_emb": {"_target_": t + "model.preprocessors.patching.PatchEmbedder", "channels_in": c,
                                "dim": dd, "patch_sizes": [p, p], "flatten_patches": False},
        "dec_patches_posemb_module": {"_target_": t + "model.utils.posembs.PositionalEmbeddingAdder", "dim": dd,
                                      "max_sizes": [g, g], "posemb_type": v("dec_posemb")},
        "dec_seq_packer": {"_target_": t + "model.preprocessors.flex_seq_packing.BlockWiseSequencePacker",
                           "mask_mode": "full", "per_subseq_embs": v("adaln_expansion") == 2},
        "dec_time_embedder": {"_target_": t + "model.preprocessors.time_embedding.TimestepEmbedder", "dim": dd,
                              "frequency_embedding_size": v("time_freq_size"), "max_timestep": v("max_timestep")},
        "dec_transformer": {**trunk, "dim": dd, "depth": v("dec_depth"), "adaLN_emb_read_key": "dec_temb",
                            "adaLN_expansion": v("adaln_expansion")},
        "dec_unpacker": {"_target_": t + "model.postprocessors.seq_unpacking.SequenceUnpacker"},
        "dec_to_patches": {"_target_": t + "model.postprocessors.heads.ToPatchesLinearHead", "dim": dd,
                           "channels_out": c, "patch_sizes": [p, p], "adaLN_emb_read_key": "dec_temb"},
    }
    return {"_target_": t + "flextok_wrapper.FlexTok",
            "vae": {"_target_": t + "vae_wrapper.StableDiffusionVAE", "latent_channels": c,
                    "scaling_factor": v("vae_scaling_factor"), "sample_posterior": False},
            "encoder": {"_target_": t + "model.utils.wrappers.SequentialModuleDictWrapper", "module_dict": enc},
            "regularizer": {"_target_": t + "regularizers.quantize_fsq.FSQ", "levels": list(v("fsq_levels"))},
            "decoder": {"_target_": t + "model.utils.wrappers.SequentialModuleDictWrapper", "module_dict": dec}}


def config_metadata(cfg: Mapping[str, Any]) -> dict[str, str]:
    """Safetensors metadata as the official ``save_safetensors`` writes it: ``str`` of each top-level value."""
    return {k: str(v) for k, v in cfg.items()}


__all__ = ["DEFAULTS", "FSQ", "FlexTokConfigError", "FlexTokModel", "FlexTokTokenizer", "config_metadata",
           "config_targets", "hydra_config", "normalized_guidance", "params_from_config", "read_config"]
