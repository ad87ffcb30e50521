"""ResTok (Zhang et al. 2026, Kwai-Kolors/ResTok): a 1D tokenizer with hierarchical residuals, 128 tokens from one
8192 x 8 l2-normalised codebook, and any prefix of 4..128 tokens decodable.

vtbench's own implementation of the released ``modeling/restok.py:ResTok`` inference path (networks in
``vtbench.tokenizers.restok_nets`` and ``vtbench.tokenizers.maskgit``). Parameter names and shapes are those of the
official state dict (``tokenizers/manifests/restok.l-128.json``), so official files load strictly without remapping.

Pipeline (images in [0, 1], normalised inside the model with the ImageNet mean and std; 256x256; ``L`` = 128
latent tokens in ``log2(L) + 1`` levels of sizes 1, 1, 2, 4, ..., L/2)::

    encode: MaskGIT-VQGAN CNN ``pixel_encoder`` (no attention, average-pool downsampling, 16x) -> (N, 256, 16, 16)
            -> 1x1 conv ``encoder.patch_embed`` -> W; image tokens (row-major) + ``level_embedding[0]``
            -> latent tokens initialised by residual area pooling of that map: level sizes n = 2**k pooled to
               2**floor(k/2) x 2**ceil(k/2) cells, each level pooling what the previous levels left
               (+ ``latent_token_level_embedding[level]``)
            -> ``ln_pre``; ViT blocks (pre-norm, q/k LayerNorm per head, 2D RoPE, layer scale ``gamma_1/2``) under a
               hierarchical mask: a group attends to groups of lower or equal level (image levels first, coarsest
               level 0, then the latent levels in order). After the attention of layers
               ``int(s / S * depth) - 1`` (s = 1 .. S-1, S = ``hierarchy_stages``) the newest image level is merged
               into a coarser one (1D nearest resampling to half the tokens, i.e. every other column), the finer
               level keeps only its residual, the coarse level is prepended (and gets the next ``level_embedding``
               after the MLP), and the RoPE grids and the mask grow by that level
            -> ``ln_post`` on the latent tokens; (N, L, W) memory read as (N, W, L) (the official ``is_legacy``
               reshape, not a transpose); per-level 1x1 ``conv_out`` W -> 8
            -> l2-normalised nearest code (squared L2 on unit vectors) in the l2-normalised codebook
    decode: the first k codes (l2-normalised rows) followed by L - k copies of ``decoder.latent_mask_token``
            -> per-level ``decoder_embed`` 8 -> W (+ ``latent_token_level_embedding``), then 16 x 16 copies of
               ``decoder.mask_token`` -> ``ln_pre``; ViT blocks without mask (1D RoPE positions of the latent
               tokens, then the grid offset by L) -> ``ln_post`` on the grid queries -> 1x1 ``ffn`` W -> 256
            -> MaskGIT-VQGAN CNN ``pixel_decoder`` (nearest x2 + 3x3 conv upsampling) -> RGB in [0, 1] (clamped)

The token count is a setting (``params.num_tokens``, card sweep ``restok.l-128-k{4..128}``): encoding keeps the
first k codes, decoding fills the rest with the mask token, as the official ``decode(num_latent_tokens=k)``.
Training used nested dropout over the powers of two from ``num_min_tokens`` (4) to L.

Quirks of the official code kept here: the MaskGIT residual block's 1x1 ``nin_shortcut`` (where channels change)
is applied to the block's OUTPUT, not to its input, and the residual is that projection; the encoder's latent
read-out reshapes (N, L, W) memory to (N, W, L, 1) (``is_legacy``) so every output token mixes all latent tokens.
The paper describes average-pool merging; the code merges by 1D nearest resampling, as here.

Training-only tensors are dropped and counted (``provenance()["checkpoint"]["dropped"]``): the DINOv3 alignment
model ``foundation_model.*``, its projections ``vf_proj`` / ``vf_proj_dec`` (or ``mlp_proj``) and the decoder's
feature-supervision query ``decoder.feat_mask_token``. A ``config.json`` asking for the alignment model
(``use_vf: dinov3``) is read as data: nothing is downloaded or built for it.

pFID: the official quantiser l2-normalises latents and codebook before its squared-L2 argmin, so each token's
neighbour set is the ``delta`` entries of the normalised codebook nearest its normalised latent
(``Tokens.quantizer_input``, (N, k, 8)), as for LlamaGen and GigaTok.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from vtbench.hashing import sha256sum
from vtbench.tokenizers.base import TokenizerCard, Tokens, code_bits
from vtbench.tokenizers.official import CheckpointTokenizer
from vtbench.tokenizers.quantizers import CodebookNeighbours
from vtbench.tokenizers.restok_nets import ResTokModel, param
from vtbench.tokenizers.weights import MissingWeightsError, WeightsMismatchError, load_strict, resolve_weights

#: official ``model.vq_model`` keys that configure the architecture -> vtbench params
CONFIG_KEYS = {k: k for k in ("codebook_size", "token_size", "use_l2_norm", "vit_enc_model_size",
                              "vit_dec_model_size", "num_latent_tokens", "num_min_tokens", "merge_tokens",
                              "hierarchy_stages", "reduction_ratio", "residual_image_tokens",
                              "residual_latent_tokens", "rope_base_len")}
CONFIG_KEYS.update({"vit_enc_patch_size": "patch_size", "vit_dec_patch_size": "patch_size"})
#: official switches this implementation supports only at the released value (official default when absent)
CONFIG_FIXED = {"vae_encoder": (True, False), "multi_quant": (True, True), "latent_hierarchy": (True, True),
                "learnable_latent_tokens": (False, False), "learnable_dec_image_tokens": (True, True),
                "is_legacy": (True, True)}
#: weights file names looked for in a folder: the hub's (PyTorchModelHubMixin), then an EMA folder's
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _read_config(path: Path) -> dict[str, Any]:
    """The official ``config.json`` (OmegaConf container of the training or inference yaml), read as JSON data."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsMismatchError(f"{path}: not a readable JSON config ({exc}); re-download the hub folder") from None
    if isinstance(cfg, dict) and "model" not in cfg and isinstance(cfg.get("config"), dict):
        cfg = cfg["config"]  # PyTorchModelHubMixin's init-kwargs layout
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model", {}).get("vq_model"), dict):
        raise WeightsMismatchError(f"{path}: no model.vq_model table; is this a ResTok config.json?")
    return cfg


def check_config(cfg: Mapping[str, Any], params: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Compare an official config (data only: nothing is built from it) with the card's architecture; raise
    ``WeightsMismatchError`` naming the key on a difference. Returns the facts recorded in provenance."""
    vq = cfg["model"]["vq_model"]
    crop = ((cfg.get("dataset") or {}).get("preprocessing") or {}).get("crop_size")
    pairs = [(f"model.vq_model.{k}", vq[k], p) for k, p in CONFIG_KEYS.items() if k in vq]
    if crop is not None:
        pairs.append(("dataset.preprocessing.crop_size", crop, "image_size"))
    for key, value, name in pairs:
        mine = param(params, name)
        if value != mine:
            raise WeightsMismatchError(f"{source}: {key} = {value!r} but the card has {name} = {mine!r}: the folder "
                                       f"holds another ResTok model; use a card whose params match it")
    for key, (released, default) in CONFIG_FIXED.items():
        if vq.get(key, default) != released:
            raise WeightsMismatchError(f"{source}: model.vq_model.{key} = {vq.get(key, default)!r}; vtbench's ResTok "
                                       f"implements the released architecture ({key} = {released!r}) only")
    use_vf = vq.get("use_vf")
    return {"file": "config.json", "use_vf": use_vf,
            "alignment_model": (f"{use_vf} (training only): not built, nothing downloaded; its tensors are dropped"
                                if use_vf else None)}


class ResTokTokenizer(CodebookNeighbours, CheckpointTokenizer):
    """ResTok adapter: the first ``num_tokens`` (k) of 128 1D tokens per 256x256 image, 13 bits each."""

    drop_prefixes = tuple(p + q for p in ("", "_orig_mod.") for q in (
        "foundation_model.", "vf_proj.", "vf_proj_dec.", "mlp_proj.", "decoder.feat_mask_token"))

    @classmethod
    def build_model(cls, params: Mapping[str, Any]) -> nn.Module:
        return ResTokModel(params)

    @classmethod
    def state_from_object(cls, obj: Any, params: Mapping[str, Any], *, source: str = "checkpoint"):
        # torch.compile'd training wraps the model: EMA files may prefix every key with "_orig_mod."
        strip = tuple(params.get("strip_prefixes", ())) + ("_orig_mod.",)
        return super().state_from_object(obj, {**params, "strip_prefixes": strip}, source=source)

    @classmethod
    def locate_weights(cls, card: TokenizerCard, weights: str | Path | None) -> tuple[Path, Path | None]:
        """(weights file, config.json or None). ``weights`` may be a state-dict file (the EMA
        ``pytorch_model.bin``, or a safetensors file) or a hub folder; else the card's folder is resolved."""
        if weights is not None:
            given = Path(weights).expanduser()
            if given.is_file():
                return given, None
            if not given.exists():
                raise MissingWeightsError(f"{card.name}: --weights {weights} does not exist (expected the hub folder "
                                          f"{(card.weights or {}).get('file', '')} with config.json + "
                                          f"model.safetensors, or a state dict file such as "
                                          f"ema_model/pytorch_model.bin)")
        try:
            folder = resolve_weights(card.weights or {}, weights, name=card.name)
        except MissingWeightsError as exc:
            raise MissingWeightsError(f"{exc}\n  or pass --weights /path/to/ema_model/pytorch_model.bin (the EMA state "
                                      f"dict of an official training checkpoint)") from None
        found = next((folder / f for f in HUB_WEIGHTS if (folder / f).is_file()), None)
        if found is None:
            raise MissingWeightsError(f"{card.name}: {folder} holds none of {', '.join(HUB_WEIGHTS)}; expected the hub "
                                      f"folder {(card.weights or {}).get('hub_repo', '')} (config.json + "
                                      f"model.safetensors) or pass --weights FILE")
        cfg = folder / "config.json"
        return found, (cfg if cfg.is_file() else None)

    @classmethod
    def from_card(cls, card: TokenizerCard, *, weights: str | Path | None = None, trust: bool = False,
                  device: str | torch.device = "cpu") -> "ResTokTokenizer":
        if not card.weights:
            raise ValueError(f"{card.card_path}: {card.name} has no [weights] table")
        path, config = cls.locate_weights(card, weights)
        params = dict(card.params)
        official = check_config(_read_config(config), params, source=str(config)) if config else None
        model = cls.build_model(params)
        state, info = cls.read_state(path, params, trust=trust, source=f"{card.name}: {path}")
        load_strict(model, state, source=f"{card.name}: {path}")
        tok = cls(card, model, device=device)
        tok.weights_path, tok.weights_sha256 = path, sha256sum(path)
        expected = card.weights.get("sha256")
        origin = (info.get("converted_from") or {}).get("sha256")
        info["sha256_matches_card"] = None if not expected else (expected in (tok.weights_sha256, origin))
        info["layout"] = "hub folder (config.json read as data)" if config else "state dict file"
        if official:
            info["official_config"] = official
        tok.checkpoint_info = info
        return tok

    def __init__(self, card: TokenizerCard, model: nn.Module, device: str | torch.device = "cpu"):
        super().__init__(card, model, device=device)
        self.num_latent_tokens = model.encoder.num_latent_tokens
        self.num_tokens = int(param(self.params, "num_tokens"))
        if not 1 <= self.num_tokens <= self.num_latent_tokens:
            raise ValueError(f"{card.card_path}: {card.name}: num_tokens must lie in 1..{self.num_latent_tokens}, "
                             f"got {self.num_tokens}")

    @property
    def codebook_size(self) -> int:
        return int(param(self.params, "codebook_size"))

    def tokens_per_image(self, height: int, width: int) -> int:
        self.check_size(height, width)
        return self.num_tokens

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Tokens:
        n, _, h, w = images.shape
        self.check_size(h, w)
        size = self.model.image_size
        if (h, w) != (size, size):
            raise ValueError(f"{self.name}: the model is built for {size}x{size} images, got {h}x{w}")
        z = self.model.encode_latents(images.to(self.device, torch.float32))[:, :self.num_tokens]
        codes = self.model.quantize.encode(z)
        k = self.num_tokens
        return Tokens(kind=self.card.kind, bits=code_bits(k, self.codebook_size, n), tokens_per_image=k,
                      codes=codes, layout=("token",), codebook_size=self.codebook_size,
                      quantizer_input=self.model.quantize.quantizer_input(z),
                      meta={"prefix": k, "num_latent_tokens": self.num_latent_tokens})

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if tokens.codes is None:
            raise ValueError(f"{self.name}: decode needs integer codes")
        return self.from_model(self.model.decode_codes(tokens.codes.to(self.device)))

    NEIGHBOUR_TOKENS = "per 1D token of the prefix"

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        out["restok"] = {"num_tokens": self.num_tokens, "num_latent_tokens": self.num_latent_tokens,
                         "masked_positions": "decoder.latent_mask_token"}
        return out


__all__ = ["ResTokModel", "ResTokTokenizer", "check_config"]
