"""Layton / LaCTok adapter (vtbench/tokenizers/layton.py) on a tiny random configuration of the same modules
(tests/random_weights.LAYTON_TINY: the LlamaGen encoder, diffusers' UNet2DConditionModel / ControlNetModel /
AutoencoderKL with few channels), written as one release-layout .pth: the strict one-pass load, the seeded sampler
(determinism, seeds, batch independence), the encoder-only path on CPU, and the full-size facts (timesteps, token
count, LoRA layout). The full-size key manifest is checked in tests/test_manifests.py; parity with the official code
on golden fixtures in tests/test_parity_official.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from adapter_checks import smooth_images
from random_weights import LAYTON_TINY, layton_file

from vtbench.config import get_card
from vtbench.tokenizers import UnsupportedResolutionError
from vtbench.tokenizers.weights import WeightsMismatchError

pytest.importorskip("diffusers", reason="layton.* needs diffusers (pip install 'vtbench[diffusers]')")

from vtbench.tokenizers import official  # noqa: E402
from vtbench.tokenizers.layton import (  # noqa: E402
    LaytonModel,
    LaytonTokenizer,
    LoraConv2d,
    LoraLinear,
    alphas_cumprod,
    inject_lora,
)

SIZE = LAYTON_TINY["image_size"]


def _card(**extra):
    card = get_card("layton.lactok-t")
    return dataclasses.replace(card, params={**card.params, **LAYTON_TINY, **extra}, native_size=SIZE)


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    """(path, weights written in the module's names) of a random tiny checkpoint in the release layout."""
    return layton_file(_card(), tmp_path_factory.mktemp("layton"))


@pytest.fixture(scope="module")
def tok(release_file):
    return LaytonTokenizer.from_card(_card(), weights=release_file[0])


def _with_seeds(tokens, seeds):
    return dataclasses.replace(tokens, seeds=list(seeds))


# -- loading ----------------------------------------------------------------------------------------------------------
def test_one_strict_pass_assigns_the_files_tensors(release_file, monkeypatch):
    """The model is built on the meta device and the file's tensors are assigned, not copied into random weights."""
    path, written = release_file
    seen = {}
    real = official.load_strict

    def spy(module, state, *, source, assign=False):
        seen.update(state=state, assign=assign, meta=all(p.is_meta for p in module.parameters()))
        return real(module, state, source=source, assign=assign)

    monkeypatch.setattr(official, "load_strict", spy)
    t = LaytonTokenizer.from_card(_card(), weights=path)
    assert seen["assign"] and seen["meta"]
    own = t.model.state_dict()
    assert own.keys() == written.keys() and all(torch.equal(own[k], v) for k, v in written.items())
    for key in ("decoder.controlnet.conv_in.weight", "vae.decoder.conv_out.weight"):
        assert own[key].data_ptr() == seen["state"][key].data_ptr()  # the file's tensor itself: no second copy
    assert t.checkpoint_info["wrapper"] == "model" and t.stochastic and t.network_evaluations() == 3


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_a_mismatching_file_is_refused(release_file, tmp_path, damage):
    state = torch.load(release_file[0], weights_only=True)["model"]
    if damage == "missing":
        del state["vae.decoder.conv_out.weight"]
    elif damage == "unexpected":
        state["decoder.unet.base_model.model.conv_extra.weight"] = torch.zeros(1)
    else:
        state["quantize.embedding.weight"] = torch.zeros(3, 3)
    torch.save({"model": state}, tmp_path / "LaCTok-T.pth")
    with pytest.raises(WeightsMismatchError, match=damage if damage != "shape" else "shape mismatch"):
        LaytonTokenizer.from_card(_card(), weights=tmp_path / "LaCTok-T.pth")


def test_lora_layers_follow_peft():
    """peft's rule (a target is the module name or its dotted suffix), its names and base + B(A(x)) * alpha / r."""
    net = torch.nn.Module()
    net.attn = torch.nn.Module()
    net.attn.to_q = torch.nn.Linear(6, 6)
    net.attn.to_out = torch.nn.ModuleList([torch.nn.Linear(6, 6), torch.nn.Dropout(0.0)])
    net.conv1 = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    net.not_to_q = torch.nn.Linear(6, 6)
    assert inject_lora(net, ("to_q", "to_out.0", "conv1"), rank=2, alpha=8) == 3
    assert isinstance(net.attn.to_q, LoraLinear) and isinstance(net.attn.to_out[0], LoraLinear)
    assert isinstance(net.conv1, LoraConv2d) and isinstance(net.not_to_q, torch.nn.Linear)
    assert {k for k in net.state_dict() if k.startswith("attn.to_q.")} == {
        "attn.to_q.base_layer.weight", "attn.to_q.base_layer.bias", "attn.to_q.lora_A.default.weight",
        "attn.to_q.lora_B.default.weight"}
    assert net.conv1.lora_A["default"].stride == (2, 2) and net.conv1.lora_B["default"].kernel_size == (1, 1)
    x = torch.randn(4, 6)
    q = net.attn.to_q
    expected = q.base_layer(x) + x @ q.lora_A["default"].weight.t() @ q.lora_B["default"].weight.t() * 4.0
    assert torch.allclose(q(x), expected, atol=1e-6)


# -- the seeded sampler -----------------------------------------------------------------------------------------------
def test_roundtrip_contract_and_evaluation_count(tok):
    x = smooth_images(2, SIZE)
    calls = []
    hook = tok.model.decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        t = tok.encode(x)
        y = tok.decode(_with_seeds(t, [1, 2]))
    finally:
        hook.remove()
    grid = LAYTON_TINY["encoder_size"] // 4
    assert t.codes.shape == (2, grid, grid) and t.layout == ("h", "w") and t.codebook_size == 64
    assert t.bits.tolist() == [grid * grid * 6.0] * 2 and t.tokens_per_image == grid * grid
    assert t.meta["encoder_size"] == LAYTON_TINY["encoder_size"] and t.meta["encoder_resize"] == "bicubic"
    assert t.quantizer_input.shape == (2, grid, grid, 4)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    assert len(calls) == tok.network_evaluations() == 3


def test_fixed_seeds_are_exact_and_other_seeds_differ(tok):
    t = tok.encode(smooth_images(2, SIZE))
    a = tok.decode(_with_seeds(t, [7, 8]))
    assert torch.equal(a, tok.decode(_with_seeds(t, [7, 8])))
    b = tok.decode(_with_seeds(t, [7, 9]))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def test_batch_independence(tok):
    t = tok.encode(smooth_images(3, SIZE))
    seeds = [11, 12, 13]
    both = tok.decode(_with_seeds(t, seeds))
    for i in range(3):
        one = dataclasses.replace(t, codes=t.codes[i:i + 1], bits=t.bits[i:i + 1], seeds=[seeds[i]])
        assert torch.allclose(tok.decode(one), both[i:i + 1], atol=1e-5)
    # without seeds: each image's seed comes from its codes, so the same holds
    free = tok.decode(t)
    alone = tok.decode(dataclasses.replace(t, codes=t.codes[2:], bits=t.bits[2:]))
    assert torch.allclose(alone, free[2:], atol=1e-5)


def test_sizes_are_checked(tok):
    with pytest.raises(UnsupportedResolutionError, match="--resolution"):
        tok.encode(smooth_images(1, SIZE // 2))


@pytest.mark.parametrize("bad", [{"dtype": "float8"}, {"encoder_resize": "nearest"}, {"timesteps": [1000]}])
def test_bad_params_are_refused_before_the_file_is_read(bad, release_file, monkeypatch):
    monkeypatch.setattr(LaytonTokenizer, "read_state", classmethod(lambda *a, **k: pytest.fail("file was read")))
    with pytest.raises(ValueError, match=f"params.{next(iter(bad))}"):
        LaytonTokenizer.from_card(_card(**bad), weights=release_file[0])


def test_half_precision_decoder_keeps_encoder_and_vae_in_float32(release_file, tmp_path):
    """A float16 file loads by assignment and is cast: UNet + ControlNet in params.dtype, encoder and VAE float32."""
    state = torch.load(release_file[0], weights_only=True)["model"]
    torch.save({"model": {k: v.half() if v.is_floating_point() else v for k, v in state.items()}},
               tmp_path / "LaCTok-T.pth")
    t = LaytonTokenizer.from_card(_card(dtype="bfloat16"), weights=tmp_path / "LaCTok-T.pth")
    m = t.model
    assert m.encoder.conv_in.weight.dtype == m.quantize.embedding.weight.dtype == torch.float32
    assert m.vae.decoder.conv_out.weight.dtype == torch.float32
    assert {p.dtype for p in m.decoder.parameters()} == {torch.bfloat16}
    y = t.decode(_with_seeds(t.encode(smooth_images(1, SIZE)), [5]))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert t.provenance()["layton"]["dtype"] == "bfloat16"


# -- the encoder alone ------------------------------------------------------------------------------------------------
def test_encoder_only_on_cpu(release_file, tok):
    enc = LaytonTokenizer.from_card(_card(load_decoder=False), weights=release_file[0], device="cpu")
    assert not hasattr(enc.model, "decoder") and not hasattr(enc.model, "vae")
    assert {"decoder.", "vae."} <= set(enc.checkpoint_info["dropped"])
    x = smooth_images(2, SIZE)
    t = enc.encode(x)
    assert t.codes.device.type == "cpu" and torch.equal(t.codes, tok.encode(x).codes)
    with pytest.raises(RuntimeError, match="load_decoder"):
        enc.decode(t)


# -- full-size facts --------------------------------------------------------------------------------------------------
def test_full_size_card_matches_the_official_sampler_and_geometry():
    card = get_card("layton.lactok-t")
    # diffusion_pipeline_tlcm.py: ts = linspace(999, 0, 9, dtype=int)[[0, 4, 7, 8]]; the model runs at all but the last
    assert card.params["timesteps"] == torch.linspace(999, 0, 9, dtype=torch.int64)[[0, 4, 7]].tolist()
    with torch.device("meta"):
        model = LaytonModel(card.params)
    grid = card.params["encoder_size"] // model.downsample
    assert grid == 16 and card.native_size == card.params["image_size"] == 1024
    assert model.decoder.lora_layers == 788  # LoRA-wrapped layers of the SDXL UNet (the manifest's lora_A count)
    total = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert 4.12e9 < total < 4.14e9  # "~4.1B parameters"


def test_alphas_cumprod_are_diffusers():
    from diffusers import DDIMScheduler
    ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    assert torch.equal(alphas_cumprod(0.00085, 0.012, 1000), ref)
