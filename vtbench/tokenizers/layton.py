"""Layton / LaCTok (Xie et al. 2025, "Layton: Latent Consistency Tokenizer for 1024-pixel Image Reconstruction and
Generation by 256 Tokens", arXiv:2503.08377; code Alpha-X-95/LaCToK ``tokenizer.py``, ``model.py``,
``diffusion_pipeline_tlcm.py``): 256 discrete tokens for a 1024x1024 image, decoded by a latent consistency decoder.

vtbench's own implementation, state-dict compatible with the official ``VQControlNet``:

- **encoder** (``encoder``, ``quant_conv``, ``quantize``): LlamaGen's VQ-16 encoder and l2-normalised 16384 x 8
  codebook (``vtbench.tokenizers.llamagen``), run on the image resized to ``encoder_size`` (256): 16x16 codes.
  ``post_quant_conv`` is in the file but unused (the decoder is conditioned on the code vectors themselves).
- **decoder** (``decoder.unet.base_model.model``, ``decoder.controlnet``): the SDXL UNet (diffusers
  ``UNet2DConditionModel``) with LoRA (rank 64, alpha 8: scaling 1/8) on the layers ``LORA_TARGETS`` names, in peft's
  parameter layout (``<layer>.base_layer.*``, ``<layer>.lora_A.default.weight``, ``<layer>.lora_B.default.weight``;
  the official code wraps the UNet with ``peft.get_peft_model``), plus a ControlNet (``ControlNetModel.from_unet``)
  whose conditioning embedding takes the l2-normalised code vectors (8 channels), nearest-upsampled to the latent
  grid (128x128), through 3x3 convolutions of stride 1 (the official replacement of diffusers' strided embedding).
  Text conditioning is zero: ``encoder_hidden_states`` zeros (N, 77, 2048), ``text_embeds`` zeros (N, 1280),
  ``time_ids`` = (1024, 1024, 0, 0, 1024, 1024).
- **sampler**: the official 3-evaluation consistency sampler. Start from Gaussian noise at t = 999; at each t in
  (999, 499, 124) predict the noise, take x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t) (a = SDXL's DDPM
  ``alphas_cumprod``, scaled-linear betas 0.00085..0.012) and re-noise x0 to the next t with fresh noise; the last
  x0 is the latent. The official pipeline draws its noise unseeded; here every draw is
  ``per_image_normal(tokens, ..., stream=k)`` (k = 0: the start, k = 1, 2: the re-noising), so a reconstruction
  depends only on the image's seed (``Tokens.seeds``; without seeds, one derived from the image's codes).
- **VAE** (``vae``): SDXL's ``AutoencoderKL`` (always float32), decoding latent / 0.13025, clipped to [-1, 1].

Sizes: the adapter takes ``image_size`` (1024) images, resizes them to ``encoder_size`` (256) for the encoder
(``encoder_resize``: antialiased bicubic by default, on [0, 1] then clamped; the released code has no
reconstruction script, so this policy is vtbench's and is recorded in ``Tokens.meta``) and decodes at
``image_size``, so originals and reconstructions are compared at 1024.

The released ``LaCTok-T.pth`` holds every weight (about 4.13 billion parameters, the SDXL ones included): the model
is built on the meta device from the configs below (``SDXL_UNET``, ``SDXL_VAE``; no hub access) and the file's
tensors are assigned to it in one strict pass. ``params.load_decoder = false`` builds only the encoder (tokens on a
CPU machine; ``decode`` then raises). ``params.dtype`` sets the UNet and ControlNet dtype (float32 as the official
code; bfloat16 / float16 to save memory); the encoder and the VAE stay float32. diffusers is an optional
dependency: the ``diffusers`` extra.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vtbench.tokenizers.base import Tokens, UnsupportedResolutionError, code_bits, per_image_normal
from vtbench.tokenizers.ldm import Encoder
from vtbench.tokenizers.llamagen import LlamaGenVQ
from vtbench.tokenizers.official import CheckpointTokenizer, from_model_range
from vtbench.tokenizers.taming import EmbeddingQuantizer, VQGANTokenizer

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json and vae/config.json (the official code loads them with
# from_pretrained from a local SDXL folder; here they are data). Card params ``unet`` / ``vae`` override entries.
SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
    "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False,
    "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False, "resnet_time_scale_shift": "default", "sample_size": 128,
    "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}
SDXL_VAE: dict[str, Any] = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.13025, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# SDXL scheduler/scheduler_config.json: DDPM training schedule ("scaled_linear" betas)
SDXL_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
# tokenizer.py: LoraConfig(r=64, target_modules=[...]) with peft's defaults (lora_alpha 8, no dropout, no bias)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
TEXT_TOKENS = 77  # zero prompt embeddings (N, 77, cross_attention_dim), as the official ControlnetCond
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RESIZE_MODES = ("bicubic", "bilinear", "area")


def import_diffusers() -> Any:
    """The diffusers module, or an ImportError that names the extra to install."""
    from vtbench.extras import require

    return require("diffusers", "diffusers", "layton.* (its KL decoder)")


# -- LoRA in peft's parameter layout ------------------------------------------------------------------------------
class LoraLinear(nn.Module):
    """``base_layer(x) + lora_B(lora_A(x)) * scaling``; parameters named as peft's ``lora.Linear`` (adapter
    ``default``)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, rank, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(rank, base.out_features, bias=False)})
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x)) * self.scaling


class LoraConv2d(nn.Module):
    """As ``LoraLinear`` for convolutions: ``lora_A`` has the base layer's kernel, stride and padding, ``lora_B`` is
    1x1 (peft's ``lora.Conv2d``)."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({"default": nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride,
                                                          base.padding, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Conv2d(rank, base.out_channels, 1, 1, groups=base.groups,
                                                          bias=False)})
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x)) * self.scaling


def inject_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: float) -> int:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` whose name is a target or ends with ``.<target>``
    (peft's matching rule) by its LoRA wrapper; returns the number of layers wrapped."""
    hits = [(name, m) for name, m in model.named_modules()
            if any(name == t or name.endswith("." + t) for t in targets) and isinstance(m, (nn.Linear, nn.Conv2d))]
    for name, m in hits:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = LoraLinear(m, rank, alpha) if isinstance(m, nn.Linear) else LoraConv2d(m, rank, alpha)
        setattr(parent, child, wrapper)
    return len(hits)


class PeftWrapped(nn.Module):
    """``peft.get_peft_model(unet)``'s module path: ``base_model.model`` is the UNet."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.base_model = nn.Module()
        self.base_model.model = model

    @property
    def model(self) -> nn.Module:
        return self.base_model.model


# -- decoder -------------------------------------------------------------------------------------------------------
class CondEmbedding(nn.Module):
    """The ControlNet conditioning embedding on the latent grid: conv 3x3, SiLU, then per width step a 3x3 conv
    and a widening 3x3 conv (stride 1, each followed by SiLU), and a 3x3 ``conv_out`` to the UNet's first width."""

    def __init__(self, in_channels: int, widths: Sequence[int], out_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(x))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


class ControlNetDecoder(nn.Module):
    """The noise predictor: ControlNet residuals from the code vectors added into the LoRA-adapted UNet, with zero
    text conditioning (the official ``ControlnetCond``)."""

    def __init__(self, unet_config: Mapping[str, Any], *, cond_channels: int, cond_widths: Sequence[int],
                 lora_rank: int, lora_alpha: float, lora_targets: Sequence[str], image_size: int):
        super().__init__()
        diffusers = import_diffusers()
        unet = diffusers.UNet2DConditionModel(**unet_config)
        self.controlnet = diffusers.ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=tuple(cond_widths), conditioning_channels=cond_channels,
            load_weights_from_unet=False)
        self.controlnet.controlnet_cond_embedding = CondEmbedding(cond_channels, cond_widths,
                                                                  int(unet_config["block_out_channels"][0]))
        self.lora_layers = inject_lora(unet, lora_targets, lora_rank, lora_alpha)
        self.unet = PeftWrapped(unet)
        cfg = unet.config
        self.cross_attention_dim = int(cfg.cross_attention_dim)
        self.text_embed_dim = int(cfg.projection_class_embeddings_input_dim) - 6 * int(cfg.addition_time_embed_dim)
        self.image_size = int(image_size)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor,
                conditioning_scale: float) -> torch.Tensor:
        """sample: (N, 4, s, s) latent at ``timestep`` (0-dim int tensor); cond: (N, d, s, s) -> noise prediction."""
        n, dtype, dev = sample.shape[0], sample.dtype, sample.device
        text = torch.zeros(n, TEXT_TOKENS, self.cross_attention_dim, device=dev, dtype=dtype)
        s = float(self.image_size)
        added = {"text_embeds": torch.zeros(n, self.text_embed_dim, device=dev, dtype=dtype),
                 "time_ids": torch.tensor([[s, s, 0.0, 0.0, s, s]], device=dev, dtype=dtype).repeat(n, 1)}
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states=text, added_cond_kwargs=added,
                                    controlnet_cond=cond, conditioning_scale=conditioning_scale, return_dict=False)
        return self.unet.model(sample, timestep, encoder_hidden_states=text, added_cond_kwargs=added,
                               down_block_additional_residuals=down, mid_block_additional_residual=mid,
                               return_dict=False)[0]


def alphas_cumprod(beta_start: float, beta_end: float, num_train_timesteps: int) -> torch.Tensor:
    """DDPM's cumulative alpha products for "scaled_linear" betas (float32, as diffusers' schedulers)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def check_params(params: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the card parameter to fix for a value the adapter cannot use."""
    if str(params.get("dtype", "float32")) not in DTYPES:
        raise ValueError(f"layton: params.dtype must be one of {sorted(DTYPES)}, got {params.get('dtype')!r}; fix "
                         f"the card's [params]")
    if str(params.get("encoder_resize", "bicubic")) not in RESIZE_MODES:
        raise ValueError(f"layton: params.encoder_resize must be one of {list(RESIZE_MODES)}, got "
                         f"{params.get('encoder_resize')!r}; fix the card's [params]")
    if any(int(t) < 0 or int(t) >= SDXL_BETAS["num_train_timesteps"] for t in params["timesteps"]):
        raise ValueError(f"layton: params.timesteps must lie in [0, {SDXL_BETAS['num_train_timesteps']}), got "
                         f"{params['timesteps']}; fix the card's [params]")


class LaytonModel(nn.Module):
    """The official ``VQControlNet`` module tree: ``encoder``, ``quantize``, ``quant_conv``, ``post_quant_conv``,
    ``decoder`` (``ControlNetDecoder``) and ``vae`` (``AutoencoderKL``); the last two only with ``load_decoder``."""

    def __init__(self, params: Mapping[str, Any]):
        super().__init__()
        ch_mult = [int(m) for m in params["ch_mult"]]
        z = int(params["z_channels"])
        dim = int(params["embed_dim"])
        self.encoder = Encoder(ch=int(params["ch"]), ch_mult=ch_mult, num_res_blocks=int(params["num_res_blocks"]),
                               attn_levels=(len(ch_mult) - 1,), z_channels=z, double_z=False)
        self.quantize = EmbeddingQuantizer(int(params["codebook_size"]), dim, l2_norm=bool(params["l2_norm"]),
                                           usage_buffer=int(params["usage_buffer"]))
        self.quant_conv = nn.Conv2d(z, dim, 1)
        self.post_quant_conv = nn.Conv2d(dim, z, 1)
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.has_decoder = bool(params.get("load_decoder", True))
        if self.has_decoder:
            unet_config = {**SDXL_UNET, **dict(params.get("unet") or {})}
            self.decoder = ControlNetDecoder(
                unet_config, cond_channels=dim, cond_widths=[int(c) for c in params["cond_widths"]],
                lora_rank=int(params["lora_rank"]), lora_alpha=float(params["lora_alpha"]),
                lora_targets=tuple(params.get("lora_targets") or LORA_TARGETS), image_size=int(params["image_size"]))
            self.vae = import_diffusers().AutoencoderKL(**{**SDXL_VAE, **dict(params.get("vae") or {})})
            self.vae_downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)


class LaytonTokenizer(CheckpointTokenizer):
    """Layton / LaCTok-T: 1024x1024 images -> 16x16 VQ codes (of the image at 256) -> consistency-sampled 1024 image.

    Card params: the LlamaGen encoder's (``ch``, ``ch_mult``, ``num_res_blocks``, ``z_channels``, ``codebook_size``,
    ``embed_dim``, ``l2_norm``, ``usage_buffer``); ``image_size`` (decoded side, 1024) and ``encoder_size`` (the side
    the encoder sees, 256); ``encoder_resize`` (bicubic | bilinear, antialiased, or area); ``cond_widths`` (the
    conditioning embedding's widths, [8, 32, 96, 256]); ``lora_rank`` (64), ``lora_alpha`` (8); ``timesteps``
    ((999, 499, 124): one network evaluation each); ``conditioning_scale`` (ControlNet residual scale, 1.0);
    ``dtype`` (UNet + ControlNet); ``load_decoder``; ``unet`` / ``vae`` (overrides of ``SDXL_UNET`` / ``SDXL_VAE``,
    for scaled test configurations); ``wrapper_keys`` (the official loader reads ``model``, else ``state_dict``).
    """

    stochastic = True
    build_on_meta = True
    neighbour_rule = VQGANTokenizer.RULE_L2NORM
    model: LaytonModel

    def __init__(self, card, model: nn.Module, device: str | torch.device = "cpu"):
        params = card.params
        check_params(params)
        dtype = DTYPES[str(params.get("dtype", "float32"))]
        # the file's dtypes were assigned as they are: the encoder and the VAE run in float32, the UNet in ``dtype``
        for part in ("encoder", "quantize", "quant_conv", "post_quant_conv", "vae"):
            if hasattr(model, part):
                getattr(model, part).float()
        if getattr(model, "has_decoder", False):
            model.decoder.to(dtype)
        super().__init__(card, model, device=device)
        self.image_size = int(params["image_size"])
        self.encoder_size = int(params["encoder_size"])
        self.timesteps = [int(t) for t in params["timesteps"]]
        self.unet_dtype = dtype
        if card.native_size not in (None, self.image_size):
            raise ValueError(f"{card.card_path}: {card.name}: native_size {card.native_size} differs from "
                             f"params.image_size {self.image_size}")
        if self.encoder_size % self.model.downsample:
            raise ValueError(f"{card.card_path}: {card.name}: params.encoder_size {self.encoder_size} is not a "
                             f"multiple of the encoder's downsampling {self.model.downsample}")
        self.alphas_cumprod = alphas_cumprod(**SDXL_BETAS)

    # -- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def build_model(cls, params: Mapping[str, Any]) -> nn.Module:
        check_params(params)  # before the (16 GB) file is read
        return LaytonModel(params)

    @classmethod
    def state_from_object(cls, obj: Any, params: Mapping[str, Any], *, source: str = "checkpoint"):
        if not params.get("load_decoder", True):  # encoder only: the decoder's tensors are dropped (and counted)
            params = {**params, "drop_prefixes": [*params.get("drop_prefixes", ()), "decoder.", "vae."]}
        return super().state_from_object(obj, params, source=source)

    @classmethod
    def remap_state(cls, state: dict[str, torch.Tensor], params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """LlamaGen's encoder names -> ``ldm.Encoder``'s; the decoder and VAE keep the official names."""
        ours = ("decoder.", "vae.")
        enc = LlamaGenVQ.remap_state({k: v for k, v in state.items() if not k.startswith(ours)}, params)
        return {**enc, **{k: v for k, v in state.items() if k.startswith(ours)}}

    # -- contract --------------------------------------------------------------------------------------------
    def network_evaluations(self) -> int:
        return len(self.timesteps)

    def neighbour_quantizer(self) -> Any:
        return self.model.quantize

    @property
    def grid(self) -> int:
        return self.encoder_size // self.model.downsample

    def tokens_per_image(self, height: int, width: int) -> int:
        return self.grid * self.grid

    def check_size(self, height: int, width: int) -> None:
        super().check_size(height, width)
        if (height, width) != (self.image_size, self.image_size):
            raise UnsupportedResolutionError(
                f"{self.name} takes {self.image_size}x{self.image_size} images (the encoder sees them at "
                f"{self.encoder_size}, the decoder returns {self.image_size}), got {height}x{width}; use "
                f"--preprocess adm-center-crop --resolution {self.image_size}")

    def encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images at ``image_size`` -> the encoder's input: resized to ``encoder_size``, clamped, in [-1, 1]."""
        x = images.to(self.device, torch.float32)
        if x.shape[-1] != self.encoder_size:
            mode = str(self.params.get("encoder_resize", "bicubic"))
            kw = {} if mode == "area" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=(self.encoder_size, self.encoder_size), mode=mode, **kw).clamp(0.0, 1.0)
        return x * 2.0 - 1.0

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> Tokens:
        """images: float (N, 3, 1024, 1024) in [0, 1] -> codes (N, 16, 16) of the image resized to 256."""
        n, _, h, w = images.shape
        self.check_size(h, w)
        z = self.model.quant_conv(self.model.encoder(self.encoder_input(images)))
        codes = self.model.quantize.encode(z).long()
        meta = {"image_size": (h, w), "encoder_size": self.encoder_size,
                "encoder_resize": str(self.params.get("encoder_resize", "bicubic"))}
        return Tokens(kind=self.card.kind, bits=code_bits(codes[0].numel(), self.model.quantize.codebook_size, n),
                      tokens_per_image=self.tokens_per_image(h, w), codes=codes, layout=("h", "w"),
                      codebook_size=self.model.quantize.codebook_size, meta=meta,
                      quantizer_input=self.model.quantize.quantizer_input(z))

    @staticmethod
    def code_seeds(codes: torch.Tensor) -> list[int]:
        """One 63-bit seed per image from sha256 of its codes: used when ``Tokens.seeds`` is None, so a
        reconstruction still depends on nothing but the image (not on its batch or position)."""
        rows = codes.detach().to("cpu", torch.int64).contiguous()
        return [int.from_bytes(hashlib.sha256(r.numpy().tobytes()).digest()[:8], "big") >> 1 for r in rows]

    @torch.inference_mode()
    def sample_latents(self, tokens: Tokens) -> torch.Tensor:
        """The consistency sampler: codes -> SDXL latents (N, 4, s, s), s = image_size / 8 (float32)."""
        if not self.model.has_decoder:
            raise RuntimeError(f"{self.name} was built with params.load_decoder = false (encoder only): decode needs "
                               f"the decoder; build it with load_decoder = true")
        if tokens.codes is None or tokens.codes.ndim != 3:
            raise ValueError(f"{self.name}: decode needs codes (N, h, w), got "
                             f"{None if tokens.codes is None else tuple(tokens.codes.shape)}")
        if tokens.seeds is None:
            tokens = dataclasses.replace(tokens, seeds=self.code_seeds(tokens.codes))
        dec = self.model.decoder
        side = self.image_size // self.model.vae_downsample
        cond = self.model.quantize.lookup(tokens.codes.to(self.device))  # l2-normalised code vectors (N, d, h, w)
        cond = F.interpolate(cond.float(), size=(side, side), mode="nearest").to(self.unet_dtype)
        channels = int(self.model.vae.config.latent_channels)
        acp = self.alphas_cumprod.to(self.device)
        scale = float(self.params.get("conditioning_scale", 1.0))
        x = per_image_normal(tokens, (channels, side, side), device=self.device, stream=0)
        x0 = x
        for k, t in enumerate(self.timesteps):
            eps = dec(x.to(self.unet_dtype), torch.tensor(t, device=self.device), cond, scale).float()
            x0 = (x - (1.0 - acp[t]).sqrt() * eps) / acp[t].sqrt()
            if k + 1 < len(self.timesteps):  # re-noise to the next timestep (the official last re-noising is unused)
                a = acp[self.timesteps[k + 1]]
                noise = per_image_normal(tokens, (channels, side, side), device=self.device, stream=k + 1)
                x = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
        return x0

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """SDXL latents -> the VAE's images in [-1, 1] (clipped, as the official ``vae_decode``). One image at a
        time: a 1024x1024 float32 VAE decode is several GB of activations per image."""
        vae = self.model.vae
        z = latents.float() / vae.config.scaling_factor
        return torch.cat([vae.decode(z[i:i + 1]).sample for i in range(z.shape[0])]).clamp(-1.0, 1.0)

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        """Codes (N, 16, 16) -> float (N, 3, 1024, 1024) in [0, 1]; seeded by ``tokens.seeds``."""
        return from_model_range(self.decode_latents(self.sample_latents(tokens)), "[-1,1]")

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        out["layton"] = {"diffusers": import_diffusers().__version__ if self.model.has_decoder else None,
                         "load_decoder": self.model.has_decoder, "timesteps": self.timesteps,
                         "conditioning_scale": float(self.params.get("conditioning_scale", 1.0)),
                         "dtype": str(self.unet_dtype).replace("torch.", ""), "image_size": self.image_size,
                         "encoder_size": self.encoder_size,
                         "encoder_resize": str(self.params.get("encoder_resize", "bicubic")),
                         "noise": "per_image_normal streams 0 (start), 1.. (re-noising)"}
        return out


__all__ = ["LORA_TARGETS", "SDXL_UNET", "SDXL_VAE", "ControlNetDecoder", "LaytonModel", "LaytonTokenizer",
           "LoraConv2d", "LoraLinear", "inject_lora"]
