"""GigaTok adapter (vtbench/tokenizers/gigatok.py): loading from the official file layout, the token contract on a
scaled-down random configuration (every variant, XL-XXL included, runs through the same code path), the key
manifests at full size on the meta device, and the error paths.

Parity with the official code (same random weights, S-S full size and a scaled config) was also measured outside
the test suite, where the official repository can be imported. In the suite, a scaled configuration run by the
official code itself is compared through golden fixtures: tests/test_parity_official.py."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re

import pytest
import torch
from adapter_checks import smooth_images as _images

from vtbench.config import get_card
from vtbench.paths import CARDS_DIR
from vtbench.tokenizers import UnsupportedResolutionError
from vtbench.tokenizers.gigatok import (
    DepthToSpaceUp,
    GigaTokModel,
    GigaTokTokenizer,
    multilevel_cells,
    multilevel_queries,
)
from vtbench.tokenizers.official import check_manifest, load_manifest, manifest_checkpoint
from vtbench.tokenizers.weights import WeightsMismatchError

VARIANTS = ["s-s", "s-b", "b-l", "b-l-dino", "xl-xxl"]
# parameter counts in the README table (tokenizer, including the training-only distillation head)
README_PARAMS_M = {"s-s": 136, "s-b": 232, "b-l": 622, "b-l-dino": 622, "xl-xxl": 2900}

# scaled-down configuration: 32x32 images, 3 CNN levels (grid 8), 16 tokens, 64 codes
SMALL = {"image_size": 32, "ch": 32, "ch_mult": [1, 2, 4], "num_res_blocks": 1, "z_channels": 32, "num_tokens": 16,
         "codebook_size": 64, "codebook_dim": 8, "encoder_width": 64, "encoder_layers": 2, "encoder_heads": 4,
         "decoder_width": 64, "decoder_layers": 2, "decoder_heads": 4}


def _small_card(name: str, **extra):
    card = get_card(name)
    return dataclasses.replace(card, params={**card.params, **SMALL, **extra}, native_size=SMALL["image_size"],
                               size_multiple=1)


def _to_official(state: dict, n_levels: int) -> dict:
    """vtbench names -> the official VQVitModelPlus names (inverse of GigaTokTokenizer.remap_state)."""
    rules = [(r"^encoder\.down\.(\d+)\.block\.", lambda m: f"encoder.conv_blocks.{m[1]}.res."),
             (r"^encoder\.down\.(\d+)\.downsample\.", lambda m: f"encoder.conv_blocks.{m[1]}.downsample."),
             (r"^(encoder|decoder)\.mid\.block_1\.", lambda m: f"{m[1]}.mid.0."),
             (r"^(encoder|decoder)\.mid\.block_2\.", lambda m: f"{m[1]}.mid.1."),
             (r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.conv_blocks.{n_levels - 1 - int(m[1])}.res."),
             (r"^decoder\.up\.(\d+)\.upsample\.conv\.",
              lambda m: f"decoder.conv_blocks.{n_levels - 1 - int(m[1])}.upsample.conv1."),
             (r"^decoder\.up\.(\d+)\.adagn\.", lambda m: f"decoder.adaptive.{n_levels - 1 - int(m[1])}.")]
    out = {}
    for k, v in state.items():
        for pat, rep in rules:
            if re.match(pat, k):
                k = re.sub(pat, rep, k, count=1)
                break
        out[k] = v.clone()
    return out


def _official_file(tmp_path, params=SMALL, seed=0, name="VQ_small.pt", mutate=None):
    """A random-weight checkpoint in the release layout; returns (path, reference model built from "ema")."""
    torch.manual_seed(seed)
    ref = GigaTokModel(params).eval()
    with torch.no_grad():  # non-trivial biases / norms so the loaded weights matter everywhere
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ema = _to_official(ref.state_dict(), len(params["ch_mult"]))
    w = params["decoder_width"]
    ema["quantize.codebook_used"] = torch.zeros(65536)
    for i, (o, n) in enumerate([(4 * w, w), (4 * w, 4 * w), (768, 4 * w)]):
        ema[f"s1to2decoder.distill_mlp.{2 * i}.weight"] = torch.randn(o, n)
        ema[f"s1to2decoder.distill_mlp.{2 * i}.bias"] = torch.randn(o)
    model = {k: v + 0.5 * torch.randn_like(v) for k, v in ema.items()}  # raw weights differ: "ema" must win
    if mutate:
        mutate(ema)
    ckpt = {"model": model, "ema": ema, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
            "discriminator": {"main.0.weight": torch.randn(8, 3, 4, 4)},
            "optimizer_disc": {"state": {}, "param_groups": []}, "steps": 100,
            "args": argparse.Namespace(vq_ckpt=None, ema=True, image_size=256, model_config="configs/vq/VQ_SS256.yaml")}
    path = tmp_path / name
    torch.save(ckpt, path)
    return path, ref


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    return _official_file(tmp_path_factory.mktemp("gigatok"))


@pytest.mark.parametrize("variant", ["s-s", "xl-xxl"])  # the other variants differ only in transformer sizes
def test_scaled_model_from_official_layout(variant, small_file):
    path, ref = small_file
    tok = GigaTokTokenizer.from_card(_small_card(f"gigatok.{variant}"), weights=path)
    info = tok.provenance()["checkpoint"]
    assert info["wrapper"] == "ema" and info["load_mode"] == "weights_only"
    assert info["dropped"] == {"s1to2decoder.distill_mlp.": 6, "quantize.codebook_used": 1}
    for k, v in ref.state_dict().items():  # the "ema" weights were loaded, not "model"
        assert torch.equal(tok.model.state_dict()[k], v), k

    x = _images()
    with torch.inference_mode():
        t = tok.encode(x)
        y = tok.decode(t)
        t2 = tok.encode(x)
    assert t.kind == "vq" and t.layout == ("token",) and t.codes.dtype == torch.int64
    assert t.codes.shape == (2, 16) and 0 <= int(t.codes.min()) and int(t.codes.max()) < 64
    assert t.codebook_size == 64 and t.tokens_per_image == 16 == tok.tokens_per_image(32, 32)
    assert t.bits.dtype == torch.float64 and t.bits.tolist() == [16 * 6.0] * 2
    assert torch.equal(t.codes, t2.codes)
    assert y.shape == x.shape and torch.isfinite(y).all() and 0 <= float(y.min()) and float(y.max()) <= 1
    assert len(set(t.codes.flatten().tolist())) > 1
    with pytest.raises(UnsupportedResolutionError):
        tok.check_size(64, 64)


def test_bits_at_full_configuration():
    card = get_card("gigatok.s-s")
    p = card.params
    assert (p["num_tokens"], p["codebook_size"], p["codebook_dim"]) == (256, 16384, 8)
    assert p["num_tokens"] * math.log2(p["codebook_size"]) == 256 * 14
    assert card.native_size == 256 and card.input_range == "[-1,1]"


def test_multilevel_query_layout():
    cells = multilevel_cells(256)
    assert sum(r * c for r, c in cells) == 256 and cells[:4] == [(1, 1), (1, 1), (1, 2), (2, 2)]
    assert cells[-1] == (8, 16)
    fmap = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    q = multilevel_queries(fmap, 256)
    assert q.shape == (2, 256, 3)
    assert torch.allclose(q[:, 0], fmap.mean((2, 3))) and torch.allclose(q[:, 1], fmap.mean((2, 3)))
    assert torch.allclose(q[:, 2], fmap[..., :8].mean((2, 3)))  # level 1: left half, then right half
    assert torch.allclose(q[:, -1], fmap[..., 14:, 15:].mean((2, 3)))  # last cell of the 8x16 level, 2x1 pixels
    with pytest.raises(ValueError, match="power of two"):
        multilevel_cells(100)


def test_depth_to_space_order():
    up = DepthToSpaceUp(1)
    with torch.no_grad():
        up.conv.weight.zero_()
        up.conv.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # channel (i*2 + j) * C + c -> pixel (2h+i, 2w+j)
    y = up(torch.zeros(1, 1, 1, 1))
    assert y.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifest_full_size_on_meta(variant):
    name = f"gigatok.{variant}"
    card = get_card(name)
    manifest = load_manifest(CARDS_DIR / "manifests" / f"{name}.json")
    total = sum(math.prod(s) for s in manifest["keys"].values())
    assert round(total / 1e6, -2 if variant == "xl-xxl" else 0) == README_PARAMS_M[variant]
    with torch.device("meta"):
        model = GigaTokTokenizer.build_model(dict(card.params))
    state, ext = GigaTokTokenizer.state_from_object(manifest_checkpoint(manifest), dict(card.params), source=name)
    check_manifest(model, state, source=name)
    assert sorted(ext.dropped) == sorted(manifest["dropped_prefixes"])
    assert ext.wrapper == "ema"


def test_wrong_checkpoint_names_the_file(tmp_path):
    path, _ = _official_file(tmp_path, name="VQ_missing.pt", mutate=lambda sd: sd.pop("quant_conv.weight"))
    with pytest.raises(WeightsMismatchError, match="VQ_missing.pt.*quant_conv.weight"):
        GigaTokTokenizer.from_card(_small_card("gigatok.s-s"), weights=path)

    def widen(sd):
        sd["quantize.embedding.weight"] = torch.randn(128, 8)
    path, _ = _official_file(tmp_path, name="VQ_shape.pt", mutate=widen)
    with pytest.raises(WeightsMismatchError, match="VQ_shape.pt.*quantize.embedding.weight"):
        GigaTokTokenizer.from_card(_small_card("gigatok.s-s"), weights=path)


def test_pixel_decoder_input_is_contiguous():
    """The 1D->2D Q-Former's map enters the pixel decoder contiguous, as in the official code: a channels-last view
    would stay channels-last through the decoder's convolutions, and torch's CPU group norm on channels-last input
    rounds differently (8e-4 on the parity fixture's output; tests/test_parity_official.py)."""
    torch.manual_seed(0)
    model = GigaTokModel(SMALL).eval()
    with torch.no_grad():
        z = model.s1to2decoder(torch.randn(2, SMALL["z_channels"], SMALL["num_tokens"]))
    assert z.shape == (2, SMALL["z_channels"], 8, 8) and z.is_contiguous()
