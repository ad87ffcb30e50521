"""LlamaGen VQ adapter (vtbench/tokenizers/llamagen.py): loading from the official file layout, the token
contract, key manifests of the official checkpoints, actionable errors.

Parity with the official ``VQModel`` (FoundationVision/LlamaGen ``tokenizer/tokenizer_image/vq_model.py``) on
random weights at the real configs (256x256, 2 images) was measured outside the test suite: identical codes
(0 of 512 differ for VQ-16, 0 of 2048 for VQ-8), decoded images within 5e-6 on the [0, 1] scale. In the suite, a
scaled configuration run by the official code itself is compared through golden fixtures:
tests/test_parity_official.py.
"""

from __future__ import annotations

import argparse
import re

import pytest
import torch
import torch.nn.functional as F
from adapter_checks import check_grid_vq_roundtrip, perturbed, scaled_card
from adapter_checks import smooth_images as images

import vtbench.config
from vtbench.config import get_card
from vtbench.paths import CARDS_DIR
from vtbench.tokenizers import UnsupportedResolutionError, build_tokenizer
from vtbench.tokenizers.llamagen import LlamaGenVQ
from vtbench.tokenizers.official import check_manifest, load_manifest, manifest_state
from vtbench.tokenizers.weights import WeightsMismatchError

VARIANTS = ["llamagen.vq16", "llamagen.vq8", "llamagen.vq16-t2i"]
# a scaled-down config: 2 levels (downsampling 2), attention at level 1 and in the middle
SMALL = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=16, codebook_size=64, embed_dim=4,
             l2_norm=True, usage_buffer=128)


def to_official(state: dict[str, torch.Tensor], n_levels: int) -> dict[str, torch.Tensor]:
    """vtbench names -> the official VQModel names (encoder/decoder ``conv_blocks``, ``mid.{0,1,2}``)."""
    mid = {"block_1": "0", "attn_1": "1", "block_2": "2"}
    out = {}
    for k, v in state.items():
        k = re.sub(r"^(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.", lambda m: f"{m[1]}.mid.{mid[m[2]]}.", k)
        k = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res.", k)
        k = re.sub(r"^encoder\.down\.(\d+)\.", r"encoder.conv_blocks.\1.", k)
        k = re.sub(r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.conv_blocks.{n_levels - 1 - int(m[1])}.res.", k)
        k = re.sub(r"^decoder\.up\.(\d+)\.", lambda m: f"decoder.conv_blocks.{n_levels - 1 - int(m[1])}.", k)
        out[k] = v.clone()
    return out


def small_card(name="llamagen.vq16", **params):
    return scaled_card(name, {**SMALL, **params})


def random_model(params=SMALL, seed=0):
    model = perturbed(LlamaGenVQ.build_model(params), seed)
    with torch.no_grad():
        model.quantize.codebook_used.copy_(torch.arange(model.quantize.codebook_used.numel()) % 7)
    return model


def save_training_checkpoint(path, model, *, ema=None):
    """The layout of LlamaGen's vq_train.py checkpoints (released files keep at least ``model``)."""
    n_levels = len(SMALL["ch_mult"])
    ckpt = {"model": to_official(model.state_dict(), n_levels),
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
            "discriminator": {"conv.weight": torch.randn(4, 3, 4, 4)},
            "optimizer_disc": {"state": {}, "param_groups": []},
            "steps": 400000, "args": argparse.Namespace(vq_model="VQ-16", codebook_size=16384)}
    if ema is not None:
        ckpt["ema"] = to_official(ema.state_dict(), n_levels)
    torch.save(ckpt, path)
    return path


@pytest.fixture
def small_tok(tmp_path, monkeypatch):
    model = random_model()
    path = save_training_checkpoint(tmp_path / "vq_ds16_c2i.pt", model)
    card = small_card()
    monkeypatch.setattr(vtbench.config, "get_card", lambda name: card)  # build_tokenizer reads the patched card
    return build_tokenizer("llamagen.vq16", weights=path), model


def test_encode_decode_contract(small_tok):
    tok, _ = small_tok
    x = images(2, 32)
    check_grid_vq_roundtrip(tok, x, codebook_size=64, grid=(16, 16))
    assert tok.encode(images(1, 48)).codes.shape == (1, 24, 24)  # any even size for this scaled config


def test_codes_are_nearest_normalised_codes_and_decode_uses_normalised_vectors(small_tok):
    tok, model = small_tok
    x = images(2, 32, seed=3)
    t = tok.encode(x)
    with torch.no_grad():
        z = model.quant_conv(model.encoder(x * 2 - 1))
        zn = F.normalize(z, dim=1).permute(0, 2, 3, 1).reshape(-1, 4)
        en = F.normalize(model.quantize.embedding.weight, dim=1)
        expected = (zn @ en.t()).argmax(1).view(2, 16, 16)  # cosine similarity = nearest unit vector
        assert torch.equal(t.codes, expected)
        dec = model.decoder(model.post_quant_conv(en[expected].view(2, 16, 16, 4).permute(0, 3, 1, 2)))
    assert torch.allclose(tok.decode(t), ((dec + 1) / 2).clamp(0, 1), atol=1e-5)


def test_provenance_and_codebook_used_buffer(small_tok):
    tok, model = small_tok
    info = tok.provenance()["checkpoint"]
    assert info["load_mode"] == "weights_only" and info["wrapper"] == "model" and info["stubbed_globals"] == []
    assert info["dropped"] == {}  # the discriminator sits beside "model", not inside it
    assert torch.equal(tok.model.quantize.codebook_used, model.quantize.codebook_used)  # loaded, not ignored


def test_ema_is_preferred(tmp_path):
    model, ema = random_model(seed=0), random_model(seed=1)
    path = save_training_checkpoint(tmp_path / "ckpt.pt", model, ema=ema)
    tok = LlamaGenVQ.from_card(small_card(), weights=path)
    assert tok.checkpoint_info["wrapper"] == "ema"
    assert torch.equal(tok.model.quant_conv.weight, ema.quant_conv.weight)


@pytest.mark.parametrize("name", VARIANTS)
def test_manifest_matches_full_size_model(name):
    card = get_card(name)
    manifest = load_manifest(CARDS_DIR / "manifests" / f"{name}.json")
    assert manifest["wrapper"] == "model" and "LlamaGen" in manifest["source"]
    with torch.device("meta"):
        model = LlamaGenVQ.build_model(card.params)
    state = manifest_state(manifest)
    assert "quantize.codebook_used" in state and tuple(state["quantize.embedding.weight"].shape) == (16384, 8)
    state = {k: v for k, v in state.items() if not k.startswith(tuple(manifest["dropped_prefixes"]))}
    check_manifest(model, LlamaGenVQ.remap_state(state, card.params), source=name)


@pytest.mark.parametrize("name,tokens", [("llamagen.vq16", 256), ("llamagen.vq8", 1024), ("llamagen.vq16-t2i", 256)])
def test_full_size_geometry(name, tokens):
    card = get_card(name)
    with torch.device("meta"):
        tok = LlamaGenVQ(card, LlamaGenVQ.build_model(card.params), device="meta")
    assert tok.tokens_per_image(256, 256) == tokens and tok.codebook_size == 16384
    assert card.native_size == 256 and card.input_range == "[-1,1]" and card.kind == "vq"
    tok.check_size(256, 256)
    with pytest.raises(UnsupportedResolutionError, match="--preprocess|--resolution"):
        tok.check_size(384, 384)


def test_mismatched_checkpoint_names_the_file(tmp_path):
    model = random_model()
    good = to_official(model.state_dict(), 2)
    missing = dict(good)
    del missing["decoder.conv_blocks.0.attn.0.q.weight"]
    p1 = tmp_path / "missing_key.pt"
    torch.save({"model": missing}, p1)
    with pytest.raises(WeightsMismatchError, match=r"missing_key\.pt.*missing"):
        LlamaGenVQ.from_card(small_card(), weights=p1)
    wrong = dict(good)
    wrong["quantize.embedding.weight"] = torch.zeros(64, 8)
    p2 = tmp_path / "wrong_shape.pt"
    torch.save({"model": wrong}, p2)
    with pytest.raises(WeightsMismatchError, match=r"wrong_shape\.pt.*shape"):
        LlamaGenVQ.from_card(small_card(), weights=p2)
