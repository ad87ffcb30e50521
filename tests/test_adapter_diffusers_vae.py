"""Continuous VAE references (vae.*) through diffusers' AutoencoderKL.

Tiny random AutoencoderKL models saved with ``save_pretrained`` stand in for the real folders; the adapter must
give exactly what a direct diffusers call gives (posterior mode, decode). Tests that need diffusers skip without
it (install ``vtbench[diffusers]``, part of the ``test`` extra); weights resolution and the error messages are
tested either way."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from adapter_checks import smooth_images as _images

from vtbench.config import get_card
from vtbench.tokenizers import build_tokenizer, list_tokenizers
from vtbench.tokenizers.diffusers_vae import DiffusersVAETokenizer, import_autoencoder_kl
from vtbench.tokenizers.weights import MissingWeightsError, resolve_weights

VARIANTS = ["flux", "sd-ft-ema", "sd35", "sdxl"]
SIZE = 32


def _tiny_vae(latent_channels=4, quant_conv=True, seed=0):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=32, sample_size=SIZE, use_quant_conv=quant_conv, use_post_quant_conv=quant_conv).eval()


def test_cards():
    assert list_tokenizers("vae.*") == [f"vae.{v}" for v in VARIANTS]
    for v in VARIANTS:
        card = get_card(f"vae.{v}")
        assert card.family == "vae" and card.kind == "continuous" and card.input_range == "[-1,1]"
        assert card.weights["directory"] is True and card.weights["hub_repo"] and card.params["latent_bits"] == 16
        assert card.size_multiple == 8 and card.native_size is None
        for entry in card.published:
            assert entry["source"] and entry["tolerance"] > 0 and entry["calibrate"] is False
    assert get_card("vae.sd35").weights["subfolder"] == "vae" and get_card("vae.flux").weights["subfolder"] == "vae"


def test_adapter_equals_direct_diffusers_call(tmp_path):
    vae = _tiny_vae()
    folder = tmp_path / "sd-vae-ft-ema"
    vae.save_pretrained(folder)
    card = get_card("vae.sd-ft-ema")
    x = _images()
    with torch.no_grad():
        ref_z = vae.encode(x * 2 - 1).latent_dist.mode()
        ref_y = ((vae.decode(ref_z).sample + 1) / 2).clamp(0, 1)
    # float32 latents: bit-identical to diffusers
    tok32 = DiffusersVAETokenizer.from_card(dataclasses.replace(card, params={"latent_bits": 32}), weights=folder)
    t32 = tok32.encode(x)
    assert torch.equal(t32.latents, ref_z) and torch.equal(tok32.decode(t32), ref_y)
    # the card's default: float16 latents, 16 bits per element
    tok = DiffusersVAETokenizer.from_card(card, weights=folder)
    t = tok.encode(x)
    h = w = SIZE // 2
    assert t.kind == "continuous" and t.codes is None and t.latents.dtype == torch.float16
    assert t.latents.shape == (2, 4, h, w) and torch.equal(t.latents, ref_z.half())
    assert t.bits.dtype == torch.float64 and t.bits.tolist() == [4 * h * w * 16.0] * 2
    assert t.tokens_per_image == h * w == tok.tokens_per_image(SIZE, SIZE)
    assert t.meta["token_views"] == {"scalars": 4 * h * w}
    y = tok.decode(t)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    assert (y - ref_y).abs().max() < 1e-2
    assert torch.equal(tok.decode(tok.encode(x)), y)  # deterministic (posterior mode)
    prov = tok.provenance()
    assert prov["weights_path"] == str(folder) and len(prov["weights_sha256"]) == 64
    assert prov["diffusers"]["weights_file"] == "diffusion_pytorch_model.safetensors"
    assert prov["diffusers"]["latent"] == "mode" and prov["diffusers"]["latent_bits"] == 16


def test_subfolder_from_weights_dir_16_channels_no_quant_conv(tmp_path, monkeypatch):
    """FLUX / SD3.5 layout: $VTBENCH_WEIGHTS/FLUX.1-dev/vae, 16 latent channels, no (post_)quant_conv."""
    vae = _tiny_vae(latent_channels=16, quant_conv=False, seed=1)
    vae.save_pretrained(tmp_path / "FLUX.1-dev" / "vae")
    monkeypatch.setenv("VTBENCH_WEIGHTS", str(tmp_path))
    tok = build_tokenizer("vae.flux")
    assert tok.weights_path == tmp_path / "FLUX.1-dev" / "vae"
    x = _images(1, 48)
    t = tok.encode(x)
    assert t.latents.shape == (1, 16, 24, 24) and t.bits.item() == 16 * 24 * 24 * 16
    with torch.no_grad():
        ref = vae.encode(x * 2 - 1).latent_dist.mode()
    assert torch.equal(t.latents, ref.half())
    assert tok.decode(t).shape == x.shape


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[diffusers\]"'):
        import_autoencoder_kl()


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "sd-vae-ft-ema").mkdir()
    with pytest.raises(MissingWeightsError, match="config.json"):
        DiffusersVAETokenizer.from_card(get_card("vae.sd-ft-ema"), weights=tmp_path / "sd-vae-ft-ema")


def test_resolve_directory_order(tmp_path, monkeypatch):
    spec = {"directory": True, "file": "repo", "subfolder": "vae", "hub_repo": "org/repo"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "w" / "repo"
    (root / "vae").mkdir(parents=True)
    monkeypatch.setenv("VTBENCH_WEIGHTS", str(tmp_path / "w"))
    assert resolve_weights(spec) == root / "vae"
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert resolve_weights(spec, other) == other  # an explicit folder without the subfolder: the model folder
    assert resolve_weights(spec, root) == root / "vae"  # an explicit repository root: its subfolder
    with pytest.raises(MissingWeightsError, match="not a directory"):
        resolve_weights(spec, tmp_path / "nope")
    monkeypatch.setenv("VTBENCH_WEIGHTS", str(tmp_path / "empty"))
    with pytest.raises(MissingWeightsError, match="'repo'"):
        resolve_weights(spec, name="vae.x")
    # file specs are unchanged
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "m.pt").write_bytes(b"x")
    assert resolve_weights({"file": "m.pt"}) == tmp_path / "empty" / "m.pt"
