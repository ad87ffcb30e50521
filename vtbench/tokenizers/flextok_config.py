"""FlexTok's stored configuration and settings: defaults, the hydra config in a release file's safetensors metadata
read as DATA (json, else ``ast.literal_eval``: literals only; ``_target_`` strings are compared with the expected
class names, never imported or instantiated), and the same layout written for tests (``hydra_config``).

Used by vtbench/tokenizers/flextok.py; no torch here.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from vtbench.tokenizers.weights import WeightsMismatchError

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


def setting(params: Mapping[str, Any], key: str) -> Any:
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
    reg = enc["enc_register_module"]
    if reg.get("n_eval") not in (None, reg.get("n_max")):
        raise fail("encoder.module_dict.enc_register_module.n_eval", f"{reg['n_eval']} (implemented: n_max)")
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
    vae = cfg.get("vae") or {}  # dtype_override and sample_posterior are recorded in provenance (from_card)
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


def hydra_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration layout the release files store (hydra ``_target_`` dicts), for ``params``: what tests
    write into random-weight files so the loading path reads a stored config as the real files do."""
    def v(key: str) -> Any:
        return setting(params, key)

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


__all__ = ["APG_ETA", "APG_MOMENTUM", "APG_NORM_THRESHOLD", "DEFAULTS", "DECODER_MODULES", "ENCODER_MODULES",
           "FlexTokConfigError", "GUIDANCE_MODES", "config_metadata", "config_targets", "hydra_config",
           "params_from_config", "read_config", "setting"]
