"""FlexTok adapter (vtbench/tokenizers/flextok.py): the release layout (a flat safetensors state dict whose metadata
holds a hydra config with ``_target_`` entries) loaded through the card path with the config read as data and
nothing instantiated; token prefixes; the seeded sampling decoder (determinism, batch independence, every draw
from ``per_image_normal``); FSQ conventions; the card's sweeps and the manifests' sizes.

Parity with the official code (tokens identical, decoded images within 1e-4 given the same initial noise) is
checked on golden fixtures in tests/test_parity_official.py."""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch
from adapter_checks import perturbed
from adapter_checks import smooth_images as _images
from safetensors.torch import save_file

from vtbench.config import get_card
from vtbench.paths import CARDS_DIR
from vtbench.tokenizers import list_tokenizers
from vtbench.tokenizers.base import Tokens, per_image_normal
from vtbench.tokenizers.flextok import (
    FSQ,
    FlexTokConfigError,
    FlexTokTokenizer,
    config_metadata,
    hydra_config,
)
from vtbench.tokenizers.official import load_manifest

VARIANTS = ["d12-d12-in1k", "d18-d18-in1k", "d18-d28-in1k", "d18-d28-dfn"]
# scaled configuration: 32x32 images, VAE f2 with 4 channels, 8x8 patches, 16 registers, 2+2 blocks of width 32
SMALL = {"image_size": 32, "vae_latent_channels": 4, "vae_block_out_channels": [16, 16], "vae_layers_per_block": 1,
         "vae_norm_num_groups": 8, "posemb_grid": 8, "num_registers": 16, "enc_dim": 32, "enc_depth": 2,
         "dec_dim": 32, "dec_depth": 2, "head_dim": 16, "time_freq_size": 32, "decoder_steps": 3}
SCALING = 0.7


def _card(num_tokens=16, **over):
    card = get_card("flextok.d12-d12-in1k")
    return dataclasses.replace(card, params={**card.params, **SMALL, "num_tokens": num_tokens, **over},
                               native_size=32)


def _write(path, params=SMALL, cfg=None, seed=0):
    """Random weights of the scaled model in the release layout; ``cfg`` replaces the stored config."""
    torch.manual_seed(seed)
    model = perturbed(FlexTokTokenizer.build_model({**get_card("flextok.d12-d12-in1k").params, **params}), seed)
    with torch.no_grad():  # spread the register values over the FSQ grid
        model.encoder.module_dict["enc_to_latents"].proj.weight.mul_(40.0)
    cfg = cfg if cfg is not None else hydra_config({**params, "vae_scaling_factor": SCALING})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=config_metadata(cfg))
    return path


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("flextok") / "flextok_d12_d12_in1k.safetensors")


@pytest.fixture(scope="module")
def tok(small_file):
    return FlexTokTokenizer.from_card(_card(), weights=small_file)


def test_stored_config_is_data_and_nothing_is_instantiated(tmp_path, monkeypatch):
    """The metadata's hydra config names classes (``_target_``), including ones that would run code when imported
    or called; loading parses it as data, takes the architecture from it and imports none of them."""
    canary = tmp_path / "flextok_canary.py"
    fired = tmp_path / "fired"
    canary.write_text(f"open({str(fired)!r}, 'w').write('imported')\nclass Boom:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = hydra_config({**SMALL, "vae_scaling_factor": SCALING})
    cfg["pipeline"] = {"_target_": "flextok_canary.Boom", "_partial_": True, "out_channels": 4}
    cfg["flow_matching_noise_module"] = {"_target_": "os.system", "command": f"touch {fired}"}
    cfg["encoder"]["module_dict"]["enc_channels_to_last"]["per_sample_op"] = {
        "_target_": "flextok_canary.Boom", "_partial_": True}
    path = _write(tmp_path / "flextok_d12_d12_in1k.safetensors", cfg=cfg)
    tok = FlexTokTokenizer.from_card(_card(), weights=path)
    assert "flextok_canary" not in sys.modules and not fired.exists()
    assert "flextok" not in sys.modules and "hydra" not in sys.modules
    info = tok.provenance()["checkpoint"]
    assert info["load_mode"] == "safetensors" and info["wrapper"] is None
    stored = info["stored_config"]
    assert "flextok_canary.Boom" in stored["targets"] and "os.system" in stored["targets"]
    assert "nothing imported" in stored["read_as"]
    assert tok.scaling_factor == SCALING  # only the stored config has it


def test_stored_config_wins_over_card_params(tmp_path):
    path = _write(tmp_path / "f.safetensors", params={**SMALL, "enc_depth": 3, "num_registers": 8})
    tok = FlexTokTokenizer.from_card(_card(num_tokens=8), weights=path)
    assert len(tok.model.encoder.module_dict["enc_transformer"].blocks) == 3
    assert tok.model.num_registers == 8 and tok.params["enc_depth"] == 3


def test_unsupported_config_names_file_and_key(tmp_path):
    cfg = hydra_config({**SMALL, "vae_scaling_factor": SCALING})
    cfg["encoder"]["module_dict"]["enc_register_module"]["ordering_mode"] = "avg_pool"
    path = _write(tmp_path / "odd.safetensors", cfg=cfg)
    with pytest.raises(FlexTokConfigError, match="odd.safetensors.*enc_register_module.ordering_mode"):
        FlexTokTokenizer.from_card(_card(), weights=path)
    cfg = hydra_config({**SMALL, "vae_scaling_factor": None})
    path = _write(tmp_path / "noscale.safetensors", cfg=cfg)
    with pytest.raises(FlexTokConfigError, match="noscale.safetensors.*params.vae_scaling_factor"):
        FlexTokTokenizer.from_card(_card(), weights=path)


def test_prefixes_are_the_full_sequence_truncated(small_file, tok):
    x = _images(2, 32)
    full = tok.encode(x)
    assert full.kind == "fsq" and full.layout == ("token",) and full.codebook_size == 64000
    assert full.codes.shape == (2, 16) and full.codes.dtype == torch.int64
    assert 0 <= int(full.codes.min()) and int(full.codes.max()) < 64000
    assert len(set(full.codes.flatten().tolist())) > 4
    outs = {}
    for k in (1, 5, 16):
        tk = FlexTokTokenizer.from_card(_card(num_tokens=k), weights=small_file)
        t = tk.encode(x)
        assert torch.equal(t.codes, full.codes[:, :k]) and t.tokens_per_image == k == tk.tokens_per_image(32, 32)
        assert t.bits.dtype == torch.float64 and t.bits.tolist() == [k * math.log2(64000)] * 2
        y = tk.decode(t)
        assert y.shape == x.shape and torch.isfinite(y).all() and 0 <= float(y.min()) and float(y.max()) <= 1
        outs[k] = y
    assert not torch.equal(outs[1], outs[16]) and not torch.equal(outs[5], outs[16])


def _seeded(t: Tokens, seeds, rows=slice(None)) -> Tokens:
    return dataclasses.replace(t, codes=t.codes[rows], bits=t.bits[rows], seeds=list(seeds))


def test_decode_is_exact_per_seed_and_batch_independent(tok):
    t = tok.encode(_images(3, 32))
    y = tok.decode(_seeded(t, [11, 22, 33]))
    assert torch.equal(y, tok.decode(_seeded(t, [11, 22, 33])))  # exact for fixed seeds
    alone = tok.decode(_seeded(t, [22], slice(1, 2)))
    assert float((alone - y[1:2]).abs().max()) < 1e-5  # the same image and seed alone in its batch
    other = tok.decode(_seeded(t, [11, 23, 33]))
    assert torch.equal(other[0], y[0]) and not torch.allclose(other[1], y[1])  # only image 1's seed changed
    # no runner seeds: seeds from the codes themselves, still per image
    free = tok.decode(t)
    assert torch.equal(free, tok.decode(t))
    assert float((tok.decode(dataclasses.replace(t, codes=t.codes[2:], bits=t.bits[2:])) - free[2:]).abs().max()) < 1e-5


def test_every_draw_comes_from_per_image_normal(tok):
    """decode = the sampler started from ``per_image_normal`` noise, and the global RNG is never touched."""
    t = _seeded(tok.encode(_images(2, 32)), [5, 6])
    state = torch.get_rng_state()
    y = tok.decode(t)
    assert torch.equal(torch.get_rng_state(), state)
    noise = per_image_normal(t, (4, 16, 16))
    with torch.no_grad():
        expected = tok.from_model(tok.model.decode_latent(tok.sample(t.codes, noise), tok.scaling_factor))
    assert torch.equal(y, expected)


def test_network_evaluations_and_guidance_settings(small_file):
    assert FlexTokTokenizer.stochastic is True
    assert FlexTokTokenizer.from_card(_card(), weights=small_file).network_evaluations() == 3 * 2
    tok = FlexTokTokenizer.from_card(_card(guidance_scale=1.0), weights=small_file)
    assert tok.network_evaluations() == 3
    y_off = tok.decode(_seeded(tok.encode(_images(1, 32)), [1]))
    cfg = FlexTokTokenizer.from_card(_card(guidance="cfg"), weights=small_file)
    y_cfg = cfg.decode(_seeded(cfg.encode(_images(1, 32)), [1]))
    assert not torch.allclose(y_off, y_cfg)
    with pytest.raises(ValueError, match="flextok.toml.*guidance 'apg'"):
        FlexTokTokenizer.from_card(_card(guidance="apg"), weights=small_file)
    with pytest.raises(ValueError, match="num_tokens must be in \\[1, 16\\], got 17"):
        FlexTokTokenizer.from_card(_card(num_tokens=17), weights=small_file)
    card = get_card("flextok.d18-d28-dfn")
    assert (card.params["decoder_steps"], card.params["guidance_scale"], card.params["guidance"]) == (20, 7.5,
                                                                                                      "normalized")


def test_fsq_official_conventions():
    fsq = FSQ([8, 8, 8, 5, 5, 5])
    assert fsq.codebook_size == 64000 and fsq.basis.tolist() == [1, 8, 64, 512, 2560, 12800]
    table = fsq.values(torch.arange(64000))
    assert table.shape == (64000, 6) and float(table.abs().max()) == 1.0
    assert len({tuple(r) for r in table.tolist()}) == 64000
    # z = 0 sits on the centre level of every axis: digits (4, 4, 4, 2, 2, 2)
    assert fsq.indices(torch.zeros(6)).item() == 4 + 4 * 8 + 4 * 64 + 2 * 512 + 2 * 2560 + 2 * 12800
    assert torch.equal(fsq.values(torch.tensor(32036)), torch.zeros(6))
    z = torch.randn(1000, 6) * 3
    idx = fsq.indices(z)
    assert 0 <= int(idx.min()) and int(idx.max()) < 64000


def test_card_sweeps_licence_and_bits():
    names = list_tokenizers("flextok")
    for v in VARIANTS:
        card = get_card(f"flextok.{v}")
        assert card.kind == "fsq" and card.native_size == 256 and card.input_range == "[-1,1]"
        assert "non-commercial" in card.license.lower()
        assert card.weights["hub_repo"] == f"EPFL-VILAB/flextok_{v.replace('-', '_')}"
        for k in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            setting = get_card(f"flextok.{v}-k{k}")
            assert f"flextok.{v}-k{k}" in names and setting.params["num_tokens"] == k
            assert setting.weights == card.weights
    assert len([n for n in names if n.startswith("flextok.")]) == 4 * 10


# the hub's rounded sizes (collection "FlexTok Tokenizers & VAEs"): 0.3B, 0.9B, 3B, 3B
@pytest.mark.parametrize("variant,total_b", [("d12-d12-in1k", 0.342), ("d18-d18-in1k", 0.950),
                                             ("d18-d28-in1k", 2.541), ("d18-d28-dfn", 2.541)])
def test_manifest_sizes(variant, total_b):
    """Parameter totals of the manifests, the VAE (83.8M, under vae.vae.) included."""
    keys = load_manifest(CARDS_DIR / "manifests" / f"flextok.{variant}.json")["keys"]
    assert round(sum(math.prod(s) for s in keys.values()) / 1e9, 3) == total_b
    assert round(sum(math.prod(s) for k, s in keys.items() if k.startswith("vae.vae.")) / 1e6, 1) == 83.8
