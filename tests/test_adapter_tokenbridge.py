"""TokenBridge adapter: MAR's KL-16 VAE + TokenBridge's post-training Gaussian scalar quantiser.

A scaled-down VAE (ch 32, two levels) with random weights is saved in the official file layout ({"model": ...})
and loaded through the card path; the full-size architecture is checked against the key manifests dumped from
the official code (on the meta device). Parity with the official code on a scaled configuration run by the
official code itself is checked through golden fixtures in tests/test_parity_official.py."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
import torch
from scipy.stats import norm

from vtbench.config import get_card
from vtbench.paths import CARDS_DIR
from vtbench.tokenizers import list_tokenizers
from vtbench.tokenizers.official import check_manifest, load_manifest, manifest_checkpoint
from vtbench.tokenizers.tokenbridge import GaussianScalarQuantizer, TokenBridgeTokenizer
from vtbench.tokenizers.weights import WeightsMismatchError

VARIANTS = ["kl16-4bit", "kl16-5bit", "kl16-6bit", "kl16-7bit", "kl16-8bit", "kl16-continuous"]
SMALL = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "embed_dim": 4, "enc_attn_levels": [1],
         "dec_attn_levels": []}  # downsampling 2, 4 latent channels
SIZE = 32


def _card(variant, **over):
    card = get_card(f"tokenbridge.{variant}")
    return dataclasses.replace(card, params={**card.params, **SMALL, **over})


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """Random scaled-down VAE in the official file layout, latents stretched to span the quantiser's range."""
    torch.manual_seed(0)
    model = TokenBridgeTokenizer.build_model(SMALL)
    with torch.no_grad():  # random init gives tiny latents; make latent * 0.2325 about N(0, 2)
        model.quant_conv.weight[:4] *= 40.0
        model.quant_conv.bias[:4] *= 40.0
    path = tmp_path_factory.mktemp("tb") / "kl16.ckpt"
    torch.save({"model": model.state_dict(), "epoch": 3, "args": argparse.Namespace(embed_dim=4)}, path)
    return path


def _images(n=2, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


def test_card_variants():
    names = list_tokenizers("tokenbridge.*")
    assert names == sorted(f"tokenbridge.{v}" for v in VARIANTS)
    for v in VARIANTS[:-1]:
        card = get_card(f"tokenbridge.{v}")
        assert card.kind == "scalar" and card.input_range == "[-1,1]"
        assert card.params["bits"] == int(v[len("kl16-"):-len("bit")])
        assert card.params["latent"] == "mode" and card.weights["file"] == "kl16.ckpt"
    assert get_card("tokenbridge.kl16-continuous").kind == "continuous"
    pub = get_card("tokenbridge.kl16-6bit").published
    assert pub and pub[0]["metric"] == "rfid" and pub[0]["value"] == 0.53 and pub[0]["calibrate"] is False


@pytest.mark.parametrize("variant", ["kl16-4bit", "kl16-6bit", "kl16-8bit"])
def test_scaled_roundtrip(variant, small_ckpt):
    tok = TokenBridgeTokenizer.from_card(_card(variant), weights=small_ckpt)
    bits = int(tok.card.params["bits"])
    x = _images()
    t = tok.encode(x)
    h = w = SIZE // 2
    assert t.kind == "scalar" and t.layout == ("h", "w", "channel")
    assert t.codes.dtype == torch.int64 and t.codes.shape == (2, h, w, 4)
    assert t.codebook_size == 2 ** bits and 0 <= int(t.codes.min()) and int(t.codes.max()) < 2 ** bits
    assert t.tokens_per_image == h * w * 4 == tok.tokens_per_image(SIZE, SIZE)
    assert t.bits.dtype == torch.float64 and t.bits.tolist() == [h * w * 4 * bits] * 2
    assert t.meta["token_views"] == {"positions": h * w}
    assert t.codes.unique().numel() > 2 ** bits // 4  # the stretched latent uses many levels
    y = tok.decode(t)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all()
    t2 = tok.encode(x)
    assert torch.equal(t.codes, t2.codes) and torch.equal(tok.decode(t2), y)
    prov = tok.provenance()
    assert prov["checkpoint"]["wrapper"] == "model" and prov["checkpoint"]["dropped"] == {}
    assert prov["quantizer"]["bits"] == bits and prov["latent"] == "mode"
    # the codes decode to the representative values of the quantiser: re-encoding the decoded latent is exact
    q = tok.quantizer
    z_hat = q.decode(t.codes.permute(0, 3, 1, 2))
    assert torch.equal(q.encode(z_hat), t.codes.permute(0, 3, 1, 2))


def test_more_bits_reconstruct_the_latent_better(small_ckpt):
    x = _images()
    errs = []
    for variant in VARIANTS[:-1]:
        tok = TokenBridgeTokenizer.from_card(_card(variant), weights=small_ckpt)
        with torch.no_grad():
            mean, _ = tok.model.moments(tok.to_model(x))
        z_hat = tok.quantizer.decode(tok.quantizer.encode(mean))
        inside = (mean * 0.2325).abs() < 5  # outside [-5, 5] the clamp dominates
        errs.append(float((z_hat - mean)[inside].abs().mean()))
    assert errs == sorted(errs, reverse=True)


def test_quantiser_definition():
    # 1 bit: edges (-3, 0, 3), representatives +-E[X | 0 < X < 3] of N(0, 1)
    c1 = GaussianScalarQuantizer(1).centres.double()
    want = (norm.pdf(0) - norm.pdf(3)) / (norm.cdf(3) - norm.cdf(0))
    assert torch.allclose(c1, torch.tensor([-want, want], dtype=torch.float64), atol=1e-6)
    for bits in (4, 6, 8):
        q = GaussianScalarQuantizer(bits)
        n = 2 ** bits
        edges = q.gaussian_edges(n).double()
        inner = torch.tensor(norm.cdf(edges[1:-1].numpy()))
        assert torch.allclose(inner, torch.arange(1, n, dtype=torch.float64) / n, atol=1e-6)  # equal probability
        assert edges[0] == -3 and edges[-1] == 3
        c = q.centres
        assert (c[1:] > c[:-1]).all() and torch.allclose(c, -c.flip(0), atol=1e-4)
        assert ((c > edges[:-1].float()) & (c < edges[1:].float())).all()  # each representative inside its bin
        # global linear map: latent * 0.2325 in [-5, 5] -> [-3, 3], clamped
        z = torch.linspace(-40, 40, 2001)
        u = q.normalise(z)
        assert torch.allclose(u, (z * 0.2325 * 0.6).clamp(-3, 3), atol=1e-5)
        # nearest representative (ties to the lower code) == brute force
        codes = q.encode(z)
        brute = (u.unsqueeze(-1) - c).abs().argmin(-1)
        assert torch.equal(codes, brute)
        assert codes[0] == 0 and codes[-1] == n - 1  # clamped ends
        # decode: representative mapped back, divided by the scale
        vals = q.decode(torch.arange(n))
        assert torch.allclose(vals * 0.2325, (c + 3) / 6 * 10 - 5, atol=1e-6)
        assert torch.equal(q.encode(vals), torch.arange(n))


def test_continuous_variant(small_ckpt):
    tok = TokenBridgeTokenizer.from_card(_card("kl16-continuous"), weights=small_ckpt)
    x = _images()
    t = tok.encode(x)
    h = w = SIZE // 2
    assert t.kind == "continuous" and t.codes is None and t.latents.dtype == torch.float16
    assert t.latents.shape == (2, 4, h, w) and t.bits.tolist() == [4 * h * w * 16.0] * 2
    assert t.tokens_per_image == h * w == tok.tokens_per_image(SIZE, SIZE)
    assert t.meta["token_views"] == {"scalars": 4 * h * w}
    y = tok.decode(t)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    tok32 = TokenBridgeTokenizer.from_card(_card("kl16-continuous", latent_bits=32), weights=small_ckpt)
    t32 = tok32.encode(x)
    assert t32.latents.dtype == torch.float32 and t32.bits.tolist() == [4 * h * w * 32.0] * 2
    assert (tok32.decode(t32) - y).abs().max() < 5e-3  # fp16 storage barely moves the reconstruction


def test_sample_latent_is_seeded_and_batch_independent(small_ckpt):
    mode = TokenBridgeTokenizer.from_card(_card("kl16-8bit"), weights=small_ckpt)
    samp = TokenBridgeTokenizer.from_card(_card("kl16-8bit", latent="sample", seed=1), weights=small_ckpt)
    x = _images(2)
    a, b = samp.encode(x), samp.encode(x)
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(samp.encode(x[:1]).codes, a.codes[:1])  # same draw whatever the batch
    assert not torch.equal(a.codes, mode.encode(x).codes)
    assert samp.provenance()["latent"] == "sample (seed 1)"
    with pytest.raises(ValueError, match="latent"):
        TokenBridgeTokenizer.from_card(_card("kl16-8bit", latent="mean"), weights=small_ckpt)


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifest_matches_full_size_model(variant):
    name = f"tokenbridge.{variant}"
    card = get_card(name)
    path = CARDS_DIR / "manifests" / f"{name}.json"
    manifest = load_manifest(path)
    assert manifest["wrapper"] == "model" and "TokenBridge@" in manifest["source"]
    with torch.device("meta"):
        model = TokenBridgeTokenizer.build_model(card.params)
    state, ext = TokenBridgeTokenizer.state_from_object(manifest_checkpoint(manifest), card.params, source=str(path))
    check_manifest(model, state, source=str(path))
    assert ext.wrapper == "model" and not ext.dropped
    assert sum(math.prod(s) for s in manifest["keys"].values()) == 66_456_019  # kl16.ckpt: ~254 MiB of fp32


def test_mismatched_checkpoint_names_the_file(tmp_path):
    model = TokenBridgeTokenizer.build_model(SMALL)
    sd = model.state_dict()
    missing = dict(sd)
    missing.pop("post_quant_conv.weight")
    bad = tmp_path / "kl16_missing.ckpt"
    torch.save({"model": missing}, bad)
    with pytest.raises(WeightsMismatchError, match="kl16_missing.ckpt"):
        TokenBridgeTokenizer.from_card(_card("kl16-6bit"), weights=bad)
    wrong = dict(sd)
    wrong["quant_conv.weight"] = torch.zeros(8, 4, 1, 1)
    bad2 = tmp_path / "kl16_shape.ckpt"
    torch.save({"model": wrong}, bad2)
    with pytest.raises(WeightsMismatchError, match="kl16_shape.ckpt.*shape"):
        TokenBridgeTokenizer.from_card(_card("kl16-6bit"), weights=bad2)


def test_size_must_be_a_multiple_of_16(small_ckpt):
    from vtbench.tokenizers import UnsupportedResolutionError
    tok = TokenBridgeTokenizer.from_card(_card("kl16-6bit"), weights=small_ckpt)
    with pytest.raises(UnsupportedResolutionError, match="16"):
        tok.encode(torch.rand(1, 3, 40, 40))


def test_decoder_input_is_contiguous(small_ckpt):
    """Decoding from codes feeds the VAE a contiguous NCHW latent, as the official ``values[indices]`` does: the
    permuted (N, h, w, channel) codes would make it channels-last, and torch's CPU group norm on channels-last
    input loses precision when activations have a large mean (error 8.7e-3 vs 6.7e-6 for contiguous input,
    float64 reference, mean 3 and std 0.05)."""
    tok = TokenBridgeTokenizer.from_card(_card("kl16-6bit"), weights=small_ckpt)
    seen = []
    handle = tok.model.post_quant_conv.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    try:
        tok.decode(tok.encode(_images()))
    finally:
        handle.remove()
    assert seen == [True]
