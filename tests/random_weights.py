"""Random weights in the official layout, so that every registered card runs the tokenizer contract without its
real weights (as timm tests every model with ``pretrained=False``).

A card whose weights are absent is scaled down by one generic helper (``scale_card``: the family's ``RECIPES``
entry overrides widths, codebook sizes and token counts, never depth, so the parameter names stay those of the
full-size model), given seeded random weights, written in the official file layout and loaded through the normal
card path (``tokenizer_from_card``: weights resolution, the safe reader, wrapper, dropped training-only tensors,
the family's key remapping, strict loading).

The official layout comes from the key manifest dumped from the official code (``tokenizers/manifests/<card>.json``;
every setting of a rate sweep shares its group's manifest, ``manifest_path``):
the manifest's names are mapped to the module's names by the adapter's own loading path on meta tensors, the
scaled model's tensors are written back under the official names, and the written file must hold exactly the
manifest's names (wrapper key included). ``vae.*`` cards are diffusers folders (``save_pretrained``).
A family with neither a recipe nor a manifest fails the contract test unless ``NO_RANDOM_WEIGHTS`` names it with
a reason.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from adapter_checks import perturbed

from vtbench.paths import CARDS_DIR
from vtbench.registry import load_object
from vtbench.tokenizers import TokenizerCard, tokenizer_from_card
from vtbench.tokenizers.official import load_manifest, manifest_state
from vtbench.tokenizers.weights import MissingWeightsError

#: cards that cannot get random weights, with the reason (shown as the skip reason); keep it empty if possible
NO_RANDOM_WEIGHTS: dict[str, str] = {}


@dataclass(frozen=True)
class Recipe:
    """How a family is scaled down for the contract: ``params`` override the card's (widths, codebook, tokens;
    not depth), ``size`` is the test image side, ``native`` keeps a native size (= ``size``) for models built
    for one size, ``write(card, folder) -> (weights path, state dict written)`` writes the random weights (default:
    ``official_file``)."""

    params: dict[str, Any]
    size: int
    native: bool = False
    write: Callable[[TokenizerCard, Path], tuple[Path, dict]] | None = None


def _diffusers_folder(card: TokenizerCard, folder: Path) -> tuple[Path, dict]:
    """A tiny diffusers AutoencoderKL folder (4 blocks of 32 channels: downsampling 8 as the real VAEs, 2 layers
    per block) with the latent channels of the card (16 without quant_conv for SD3.5 / FLUX, else 4)."""
    diffusers = pytest.importorskip("diffusers", reason="vae.* needs diffusers (pip install 'vtbench[diffusers]')")
    latent = VAE_LATENT_CHANNELS.get(card.variant, 4)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=latent, norm_num_groups=32,
        sample_size=32, use_quant_conv=latent == 4, use_post_quant_conv=latent == 4)
    root = folder / card.weights["file"]  # the repository folder; the card's subfolder (vae/) inside it
    perturbed(vae).save_pretrained(root / card.weights.get("subfolder", ""))
    return root, vae.state_dict()


def _flextok_file(card: TokenizerCard, folder: Path) -> tuple[Path, dict]:
    """FlexTok's release layout: a flat safetensors state dict whose metadata holds the hydra config (the adapter
    reads it as data; the scaling factor is only there, so the config path is exercised)."""
    from safetensors.torch import save_file

    from vtbench.tokenizers.flextok import FlexTokTokenizer, config_metadata, hydra_config
    model = perturbed(FlexTokTokenizer.build_model(dict(card.params)))
    path = folder / card.weights["file"]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata=config_metadata(hydra_config({**card.params, "vae_scaling_factor": 0.5})))
    return path, model.state_dict()


#: latent channels of the real VAEs that differ from SD's 4 (model cards / config.json of the hub folders)
VAE_LATENT_CHANNELS = {"sd35": 16, "flux": 16}

#: Layton scaled down: 32x32 images (the encoder sees 8x8: 2x2 codes), the same diffusers classes with few channels.
#: ControlnetCond feeds zero text inputs of SDXL's sizes, so cross_attention_dim (2048) and the text part of
#: projection_class_embeddings_input_dim (1280 + 6 x addition_time_embed_dim) keep SDXL's values.
LAYTON_TINY: dict[str, Any] = {
    "ch": 32, "ch_mult": [1, 1, 1], "num_res_blocks": 1, "z_channels": 32, "codebook_size": 64, "embed_dim": 4,
    "image_size": 32, "encoder_size": 8, "cond_widths": [4, 8], "lora_rank": 2,
    "unet": {"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": [1, 2],
             "transformer_layers_per_block": [1, 2], "norm_num_groups": 4, "cross_attention_dim": 2048,
             "addition_time_embed_dim": 4, "projection_class_embeddings_input_dim": 1304, "sample_size": 4},
    "vae": {"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 32,
            "scaling_factor": 100.0},  # a large scaling factor keeps random-weight images off the clip limits
}

#: vtbench's encoder names -> LlamaGen's (the official LaCTok file keeps LlamaGen's encoder names)
LLAMAGEN_ENCODER_NAMES = [(r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res."),
                          (r"^encoder\.down\.(\d+)\.", r"encoder.conv_blocks.\1."),
                          (r"^encoder\.mid\.block_1\.", "encoder.mid.0."),
                          (r"^encoder\.mid\.attn_1\.", "encoder.mid.1."),
                          (r"^encoder\.mid\.block_2\.", "encoder.mid.2.")]


def layton_file(card: TokenizerCard, folder: Path, seed: int = 0) -> tuple[Path, dict]:
    """Seeded random weights of a (scaled) Layton card in the release layout: one ``{"model": state_dict}`` .pth
    with the official names (LlamaGen encoder names, peft's LoRA names, diffusers' names)."""
    pytest.importorskip("diffusers", reason="layton.* needs diffusers (pip install 'vtbench[diffusers]')")
    from vtbench.tokenizers.weights import rename_keys
    model = perturbed(load_object(card.entry).build_model(dict(card.params)), seed)
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = folder / Path(card.weights["file"]).name
    torch.save({"model": rename_keys(own, LLAMAGEN_ENCODER_NAMES)}, path)
    return path, own

_ENC = dict(ch=32, z_channels=32)  # the conv nets' width (GroupNorm with 32 groups needs multiples of 32)
RECIPES: dict[str, Recipe] = {
    "llamagen": Recipe({**_ENC, "codebook_size": 64, "embed_dim": 4}, 32),
    "taming": Recipe({**_ENC, "codebook_size": 64, "embed_dim": 8}, 32),
    "rqvae": Recipe({**_ENC, "n_embed": 64, "embed_dim": 8, "latent_shape": [8, 8, 8]}, 64),
    "var": Recipe({"ch": 32, "z_channels": 8, "vocab_size": 64, "v_patch_nums": [1, 2, 3, 4]}, 64),
    "tokenbridge": Recipe({"ch": 32}, 32),
    "gigatok": Recipe({**_ENC, "image_size": 64, "num_tokens": 16, "codebook_size": 64, "encoder_width": 32,
                       "encoder_heads": 4, "decoder_width": 32, "decoder_heads": 4}, 64, native=True),
    # 128x128 keeps an 8x8 token grid, the narrowest that survives ResTok's three merges (64 -> 32 -> 16 -> 8)
    "restok": Recipe({"pixel_ch": 32, "pixel_z_channels": 32, "codebook_size": 64, "image_size": 128,
                      "enc_width": 32, "enc_heads": 2, "dec_width": 32, "dec_heads": 2}, 128, native=True),
    "vae": Recipe({}, 32, write=_diffusers_folder),
    "layton": Recipe(LAYTON_TINY, 32, native=True, write=layton_file),
    "flextok": Recipe({"image_size": 32, "vae_block_out_channels": [32, 32, 32, 32], "enc_dim": 32, "dec_dim": 32,
                       "head_dim": 16, "decoder_steps": 1}, 32, native=True, write=_flextok_file),
}


def scale_card(card: TokenizerCard, recipe: Recipe) -> TokenizerCard:
    """``card`` with the recipe's parameter overrides; native size ``recipe.size`` or none (same size multiple)."""
    return dataclasses.replace(card, params={**card.params, **recipe.params},
                               native_size=recipe.size if recipe.native else None)


def _codebooks_with_padding(own: dict[str, torch.Tensor], params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """RQ-VAE: the official ``quantizer.codebooks.{i}.weight`` hold one padding row after the entries; a shared
    codebook is one tensor at every depth (torch.save stores it once)."""
    cb = own["quantizer.codebook"]
    depth = int(params["code_shape"][2])

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, torch.zeros(1, t.shape[-1])])

    if params.get("shared_codebook"):
        shared = pad(cb)
        return {f"quantizer.codebooks.{i}.weight": shared for i in range(depth)}
    return {f"quantizer.codebooks.{i}.weight": pad(cb[i]) for i in range(depth)}


#: families whose remapping is more than a renaming: module names -> official entries for what is left over
INVERSE_HOOKS: dict[str, Callable[[dict, dict], dict]] = {"rqvae": _codebooks_with_padding}


def manifest_path(card: TokenizerCard) -> Path:
    """The key manifest of ``card``: ``tokenizers/manifests/<name>.json``, for a rate sweep's setting its group's
    (``restok.l-128-k16`` -> ``restok.l-128.json``: the token count does not change the checkpoint)."""
    return CARDS_DIR / "manifests" / f"{card.sweep_group or card.name}.json"


def official_state(card: TokenizerCard, model: torch.nn.Module) -> tuple[Any, dict[str, Any]]:
    """``model``'s weights under the official names of ``card``'s key manifest, in its wrapper; returns the
    checkpoint object and the manifest. Training-only tensors the adapter drops are written too (small tensors:
    they are dropped by name, their shapes are never read)."""
    manifest = load_manifest(manifest_path(card))
    cls = load_object(card.entry)
    probe = manifest_state(manifest)  # official names -> meta tensors
    wrapped = {manifest["wrapper"]: probe} if manifest.get("wrapper") else probe
    renamed, _ = cls.state_from_object(wrapped, card.params, source=f"{card.name} manifest")
    own = model.state_dict()
    assert set(renamed) == set(own), (f"{card.name}: the scaled configuration changed the parameter names: "
                                      f"{sorted(set(renamed) ^ set(own))[:5]}")
    official_of = {id(t): k for k, t in probe.items()}
    out: dict[str, torch.Tensor] = {}
    leftover = {}
    for mk, t in renamed.items():
        if id(t) in official_of:  # a plain renaming: the same tensor object came through
            out[official_of[id(t)]] = own[mk].detach().clone()
        else:
            leftover[mk] = t
    if leftover:
        hook = INVERSE_HOOKS.get(card.family)
        assert hook, f"{card.name}: remap_state builds {sorted(leftover)[:3]}; add an INVERSE_HOOKS entry"
        out.update(hook({k: own[k].detach().clone() for k in leftover}, card.params))
    dropped = tuple(manifest.get("dropped_prefixes", ()))
    g = torch.Generator().manual_seed(1)
    for k, t in probe.items():
        if k.startswith(dropped):
            shape = t.shape if math.prod(t.shape) <= 65536 else (1,) * t.ndim
            out[k] = torch.randn(shape, generator=g) if t.dtype.is_floating_point else torch.zeros(shape, dtype=t.dtype)
    assert set(out) == set(probe), (f"{card.name}: written names differ from the manifest's: "
                                    f"{sorted(set(out) ^ set(probe))[:5]}")
    return ({manifest["wrapper"]: out} if manifest.get("wrapper") else out), manifest


def official_file(card: TokenizerCard, folder: Path, seed: int = 0) -> tuple[Path, dict]:
    """Seeded random weights of ``card``'s architecture saved with torch.save in the official layout, under the
    card's file name; returns the path and the weights in the module's names."""
    model = perturbed(load_object(card.entry).build_model(dict(card.params)), seed)
    obj, _ = official_state(card, model)
    path = folder / Path(card.weights["file"]).name
    torch.save(obj, path)
    return path, model.state_dict()


def contract_size(card: TokenizerCard) -> int:
    """Image side for the contract on the real card: its native size, else a small multiple of its size step."""
    return card.native_size or max(64, card.size_multiple * 8)


@dataclass
class Subject:
    """What the contract runs on: the tokenizer, the image side, and for random weights the weights written (in
    the module's names; None for real weights)."""

    tok: Any
    size: int
    written: dict[str, torch.Tensor] | None = None


def contract_tokenizer(card: TokenizerCard, folder: Path) -> Subject:
    """The contract's subject: the real weights when they resolve, else seeded random weights of the scaled card
    in the official layout, loaded through the card path. Fails for a card without a recipe."""
    try:
        return Subject(tokenizer_from_card(card), contract_size(card))
    except MissingWeightsError as exc:
        absent = str(exc).splitlines()[0]
    if card.name in NO_RANDOM_WEIGHTS:
        pytest.skip(f"{absent}; no random weights: {NO_RANDOM_WEIGHTS[card.name]}")
    recipe = RECIPES.get(card.family)
    has_manifest = manifest_path(card).is_file()
    if recipe is None or (recipe.write is None and not has_manifest):
        pytest.fail(f"{absent}, and there is no way to build random weights for it: add a RECIPES entry for "
                    f"family {card.family!r} (and a key manifest tokenizers/manifests/{manifest_path(card).name}) in "
                    f"tests/random_weights.py, or list it in NO_RANDOM_WEIGHTS with a reason")
    scaled = scale_card(card, recipe)
    path, written = (recipe.write or official_file)(scaled, folder)
    return Subject(tokenizer_from_card(scaled, weights=path), recipe.size, written)


__all__ = ["LAYTON_TINY", "NO_RANDOM_WEIGHTS", "RECIPES", "Recipe", "Subject", "contract_size", "contract_tokenizer",
           "layton_file", "manifest_path", "official_file", "official_state", "scale_card"]
