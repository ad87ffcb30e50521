"""taming-transformers VQGAN adapter (vtbench/tokenizers/taming.py): Lightning checkpoints read without running
their pickled objects, ``loss.*`` dropped, the token contract, key manifests, actionable errors.

Parity with the official ``VQModel`` (CompVis/taming-transformers ``taming/models/vqgan.py``, built from the
heibox ``model.yaml``) on random weights at the real configs (256x256, 2 images) was measured outside the test
suite: identical codes (0 of 512 differ, f16-1024 and f16-16384), decoded images within 7e-6 on the [0, 1] scale.
In the suite, a scaled configuration run by the official code itself is compared through golden fixtures:
tests/test_parity_official.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from adapter_checks import check_grid_vq_roundtrip, perturbed, scaled_card
from adapter_checks import smooth_images as images

import vtbench.config
from vtbench.config import get_card
from vtbench.paths import CARDS_DIR
from vtbench.tokenizers import UnsupportedResolutionError, build_tokenizer
from vtbench.tokenizers.official import check_manifest, load_manifest, manifest_state
from vtbench.tokenizers.taming import TamingVQGAN
from vtbench.tokenizers.weights import WeightsMismatchError

VARIANTS = ["taming.f16-1024", "taming.f16-16384"]
# scaled-down ddconfig: 2 levels (downsampling 2), attention at side 8 of a 16-pixel training resolution
SMALL = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], resolution=16, z_channels=16,
             embed_dim=4, codebook_size=32)


class FakeModelCheckpoint:
    """Stands for Lightning's ModelCheckpoint callback, pickled (as a dict key and as an object) in .ckpt files."""

    loaded = []

    def __init__(self, monitor):
        self.monitor = monitor

    def __setstate__(self, state):  # would run on unpickling if the loader trusted the file
        FakeModelCheckpoint.loaded.append(state)
        self.__dict__.update(state)


def small_card(name="taming.f16-16384", **params):
    return scaled_card(name, {**SMALL, **params})


def random_model(params=SMALL, seed=0):
    model = perturbed(TamingVQGAN.build_model(params), seed)
    with torch.no_grad():
        model.quantize.embedding.weight.normal_(0, 0.5)
    return model


def lightning_checkpoint(model) -> dict:
    """The layout of taming's Lightning checkpoints: weights plus the training loss under ``state_dict``."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update({
        "loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4),
        "loss.discriminator.main.1.running_mean": torch.zeros(8),
        "loss.discriminator.main.1.num_batches_tracked": torch.tensor(7),
        "loss.perceptual_loss.scaling_layer.shift": torch.zeros(1, 3, 1, 1),
        "loss.perceptual_loss.net.slice1.0.weight": torch.randn(4, 3, 3, 3),
        "loss.perceptual_loss.lin0.model.1.weight": torch.randn(1, 4, 1, 1),
    })
    return {"epoch": 3, "global_step": 12345, "pytorch-lightning_version": "1.0.8",
            "callbacks": {FakeModelCheckpoint: {"monitor": "val/rec_loss", "best_model_score": torch.tensor(0.3)}},
            "checkpoint_callback": FakeModelCheckpoint("val/rec_loss"),
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6}]}] * 2, "lr_schedulers": [],
            "state_dict": state}


@pytest.fixture
def small_tok(tmp_path, monkeypatch):
    model = random_model()
    path = tmp_path / "vqgan_imagenet_f16_16384.ckpt"
    torch.save(lightning_checkpoint(model), path)
    card = small_card()
    monkeypatch.setattr(vtbench.config, "get_card", lambda name: card)  # build_tokenizer reads the patched card
    FakeModelCheckpoint.loaded.clear()
    return build_tokenizer("taming.f16-16384", weights=path), model


def test_lightning_checkpoint_loads_inertly_and_drops_the_loss(small_tok):
    tok, model = small_tok
    assert FakeModelCheckpoint.loaded == []  # nothing pickled in the file ran
    info = tok.provenance()["checkpoint"]
    assert info["load_mode"] == "inert" and info["wrapper"] == "state_dict"
    assert any(g.endswith("FakeModelCheckpoint") for g in info["stubbed_globals"])
    assert info["dropped"] == {"loss.": 6}
    assert info["tensors"] == len(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(tok.model.state_dict()[k], v), k


def test_encode_decode_contract(small_tok):
    tok, _ = small_tok
    x = images(2, 32)
    check_grid_vq_roundtrip(tok, x, codebook_size=32, grid=(16, 16))


def test_codes_are_nearest_unnormalised_codes(small_tok):
    tok, model = small_tok
    x = images(2, 16, seed=5)
    t = tok.encode(x)
    with torch.no_grad():
        z = model.quant_conv(model.encoder(x * 2 - 1)).permute(0, 2, 3, 1).reshape(-1, 4)
        e = model.quantize.embedding.weight
        expected = torch.cdist(z.double(), e.double()).argmin(1).view(2, 8, 8)
        assert torch.equal(t.codes, expected)
        assert expected.unique().numel() > 4  # the check is not vacuous
        dec = model.decoder(model.post_quant_conv(e[expected].permute(0, 3, 1, 2)))
    assert torch.allclose(tok.decode(t), ((dec + 1) / 2).clamp(0, 1), atol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_manifest_matches_full_size_model(name):
    card = get_card(name)
    manifest = load_manifest(CARDS_DIR / "manifests" / f"{name}.json")
    assert manifest["wrapper"] == "state_dict" and manifest["dropped_prefixes"] == ["loss."]
    state = manifest_state(manifest)
    assert any(k.startswith("loss.discriminator.") for k in state)
    assert any(k.startswith("loss.perceptual_loss.") for k in state)
    assert tuple(state["quantize.embedding.weight"].shape) == (card.params["codebook_size"], 256)
    drop = tuple(TamingVQGAN.drop_prefixes) + tuple(manifest["dropped_prefixes"])
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    with torch.device("meta"):
        model = TamingVQGAN.build_model(card.params)
    check_manifest(model, TamingVQGAN.remap_state(state, card.params), source=name)


@pytest.mark.parametrize("name,bits", [("taming.f16-1024", 10), ("taming.f16-16384", 14)])
def test_full_size_geometry(name, bits):
    card = get_card(name)
    with torch.device("meta"):
        tok = TamingVQGAN(card, TamingVQGAN.build_model(card.params), device="meta")
    assert tok.tokens_per_image(256, 256) == 256 and math.log2(tok.codebook_size) == bits
    assert card.native_size == 256 and card.input_range == "[-1,1]" and card.kind == "vq"
    with pytest.raises(UnsupportedResolutionError, match="--preprocess|--resolution"):
        tok.check_size(512, 512)


def test_mismatched_checkpoint_names_the_file(tmp_path):
    ckpt = lightning_checkpoint(random_model())
    del ckpt["state_dict"]["decoder.mid.attn_1.q.weight"]
    p1 = tmp_path / "missing_key.ckpt"
    torch.save(ckpt, p1)
    with pytest.raises(WeightsMismatchError, match=r"missing_key\.ckpt.*missing"):
        TamingVQGAN.from_card(small_card(), weights=p1)
    ckpt = lightning_checkpoint(random_model())
    ckpt["state_dict"]["quantize.embedding.weight"] = torch.zeros(1024, 4)  # the other variant's codebook
    p2 = tmp_path / "wrong_shape.ckpt"
    torch.save(ckpt, p2)
    with pytest.raises(WeightsMismatchError, match=r"wrong_shape\.ckpt.*shape"):
        TamingVQGAN.from_card(small_card(), weights=p2)
