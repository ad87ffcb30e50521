"""ResTok adapter (vtbench/tokenizers/restok.py): both official file layouts (the hub folder with config.json read as
data, the EMA state dict with or without torch.compile's ``_orig_mod.`` prefix) load random weights through the card
path; training-only heads are dropped and counted; a config asking for the DINOv3 alignment model downloads and builds
nothing; every prefix length of the card's sweep encodes and decodes; determinism and batch independence; the key
manifest at full size on the meta device.

Parity with the official code: tests/test_parity_official.py (golden fixture made by the official code on a scaled
configuration: identical codes, decoded images bitwise equal). The full-size official model (inference config,
random weights, one 256x256 image) was also compared outside the suite: 128 identical codes, decoded images for
k = 4, 16, 128 bitwise equal (max abs diff 0)."""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import sys

import pytest
import torch
from adapter_checks import perturbed
from adapter_checks import smooth_images as _images
from safetensors.torch import save_file

from vtbench.config import get_card
from vtbench.paths import CARDS_DIR
from vtbench.tokenizers import UnsupportedResolutionError
from vtbench.tokenizers.maskgit import ResBlock
from vtbench.tokenizers.official import check_manifest, load_manifest, manifest_checkpoint
from vtbench.tokenizers.restok import ResTokTokenizer
from vtbench.tokenizers.restok_nets import ResTokModel, hierarchical_mask, latent_levels, merge_layers, pooling_cells
from vtbench.tokenizers.weights import MissingWeightsError, WeightsMismatchError

NAME = "restok.l-128"
KS = [4, 8, 16, 32, 64, 128]
# scaled configuration: 32x32 images, a 2-level CNN (2x), a 16x16 token grid (256 -> 128 -> 64 -> 32 image tokens),
# ViTs of width 16 / 2 heads / 4 layers (merges in layers 1, 2, 3), all 128 latent tokens, 64 codes
SMALL = {"image_size": 32, "patch_size": 2, "codebook_size": 64, "enc_width": 16, "enc_layers": 4, "enc_heads": 2,
         "dec_width": 16, "dec_layers": 4, "dec_heads": 2, "pixel_ch": 32, "pixel_ch_mult": [1, 1],
         "pixel_num_res_blocks": 1, "pixel_z_channels": 32}
# training-only tensors of an official file made with the training config (use_vf: dinov3): names as the manifest's
TRAINING_ONLY = {"foundation_model.model.cls_token": (1, 1, 8), "foundation_model.model.norm.weight": (8,),
                 "vf_proj.weight": (8, 16, 1, 1), "vf_proj_dec.weight": (8, 16, 1, 1),
                 "decoder.feat_mask_token": (1, 1, 16)}


def _card(name: str = NAME, **extra):
    card = get_card(name)
    return dataclasses.replace(card, params={**card.params, **SMALL, **extra}, native_size=32, size_multiple=1)


def _official_config(use_vf: str | None = "dinov3", **vq_extra) -> dict:
    """config.json as the official code writes it (OmegaConf container of the training yaml), scaled to SMALL."""
    vq = {"codebook_size": 64, "token_size": 8, "use_l2_norm": True, "commitment_cost": 0.25,
          "vit_enc_model_size": "large", "vit_dec_model_size": "large", "vit_enc_patch_size": 2,
          "vit_dec_patch_size": 2, "rope_base_len": 10000, "num_latent_tokens": 128, "num_min_tokens": 4,
          "test_num_latent_tokens": 128, "merge_tokens": True, "hierarchy_stages": 4, "reduction_ratio": 0.5,
          "residual_image_tokens": True, "residual_latent_tokens": True, "learnable_latent_tokens": False,
          "learnable_dec_image_tokens": True, "multi_quant": True, "vae_encoder": True, "drop_latent_tokens": True,
          "drop_prob": 0.2, "latent_hierarchy": True, "encoder_feature_supervision": True,
          "decoder_feature_supervision": True, "learnable_dec_feat_tokens": True, "reverse_proj": True, **vq_extra}
    if use_vf:
        vq["use_vf"] = use_vf
    return {"experiment": {"project": "restok_l_128"}, "model": {"vq_model": vq},
            "losses": {"dino_disc": True}, "dataset": {"preprocessing": {"crop_size": 32, "resize_shorter_edge": 32}}}


@pytest.fixture(scope="module")
def reference():
    """Seeded random weights of the scaled model in the official names (= the module's), plus training-only heads."""
    model = perturbed(ResTokModel({**get_card(NAME).params, **SMALL}).eval(), seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    extra = {k: torch.randn(s, generator=g) for k, s in TRAINING_ONLY.items()}
    return model, state, extra


def _hub_folder(path, state, extra, config=None):
    path.mkdir(parents=True, exist_ok=True)
    save_file({**state, **extra}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config or _official_config()))
    return path


def _ema_file(path, state, extra, compiled=True):
    prefix = "_orig_mod." if compiled else ""
    torch.save({prefix + k: v for k, v in {**state, **extra}.items()}, path)
    return path


@pytest.fixture(scope="module")
def hub_tok(reference, tmp_path_factory):
    _, state, extra = reference
    folder = _hub_folder(tmp_path_factory.mktemp("hub") / "restok_l_128.r256_in1k", state, extra)
    return ResTokTokenizer.from_card(_card(), weights=folder)


def test_hub_folder_loads_and_counts_dropped_heads(reference, hub_tok):
    model, state, _ = reference
    info = hub_tok.provenance()["checkpoint"]
    assert info["layout"].startswith("hub folder") and info["load_mode"] == "safetensors"
    assert info["dropped"] == {"foundation_model.": 2, "vf_proj.": 1, "vf_proj_dec.": 1, "decoder.feat_mask_token": 1}
    assert info["official_config"]["use_vf"] == "dinov3" and "not built" in info["official_config"]["alignment_model"]
    loaded = hub_tok.model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
    assert hub_tok.weights_path.name == "model.safetensors"


@pytest.mark.parametrize("compiled", [True, False], ids=["orig-mod-prefix", "plain"])
def test_ema_state_dict_loads_like_the_hub_folder(reference, hub_tok, tmp_path, compiled):
    _, state, extra = reference
    path = _ema_file(tmp_path / "pytorch_model.bin", state, extra, compiled=compiled)
    tok = ResTokTokenizer.from_card(_card(), weights=path)
    info = tok.provenance()["checkpoint"]
    prefix = "_orig_mod." if compiled else ""
    assert info["layout"] == "state dict file" and info["load_mode"] == "weights_only" and info["wrapper"] is None
    assert info["dropped"] == {prefix + "foundation_model.": 2, prefix + "vf_proj.": 1, prefix + "vf_proj_dec.": 1,
                               prefix + "decoder.feat_mask_token": 1}
    x = _images(2, 32)
    with torch.inference_mode():
        assert torch.equal(tok.encode(x).codes, hub_tok.encode(x).codes)


def test_folder_from_the_weights_directory(reference, tmp_path, monkeypatch):
    """No --weights: the card's folder name in $VTBENCH_WEIGHTS (an EMA folder with only pytorch_model.bin works)."""
    _, state, extra = reference
    folder = tmp_path / "restok_l_128.r256_in1k"
    folder.mkdir()
    _ema_file(folder / "pytorch_model.bin", state, extra)
    monkeypatch.setenv("VTBENCH_WEIGHTS", str(tmp_path))
    tok = ResTokTokenizer.from_card(_card())
    assert tok.weights_path == folder / "pytorch_model.bin" and "official_config" not in tok.checkpoint_info


def test_dinov3_config_builds_and_downloads_nothing(reference, tmp_path, monkeypatch):
    """config.json asks for the DINOv3 alignment model (use_vf: dinov3): it is read as data only."""
    _, state, extra = reference
    folder = _hub_folder(tmp_path / "restok_l_128.r256_in1k", state, extra)

    def refuse(*args, **kwargs):
        raise AssertionError("network or hub access while loading ResTok")

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setitem(sys.modules, "timm", None)  # building the alignment model would import timm
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    tok = ResTokTokenizer.from_card(_card(), weights=folder)
    assert not any("foundation" in n for n, _ in tok.model.named_modules())
    assert tok.checkpoint_info["official_config"]["use_vf"] == "dinov3"


def test_config_that_differs_from_the_card_names_the_key(reference, tmp_path):
    _, state, extra = reference
    folder = _hub_folder(tmp_path / "a", state, extra, _official_config(codebook_size=128))
    with pytest.raises(WeightsMismatchError, match=r"config.json.*model.vq_model.codebook_size = 128.*codebook_size"):
        ResTokTokenizer.from_card(_card(), weights=folder)
    folder = _hub_folder(tmp_path / "b", state, extra, _official_config(learnable_latent_tokens=True))
    with pytest.raises(WeightsMismatchError, match="learnable_latent_tokens.*released architecture"):
        ResTokTokenizer.from_card(_card(), weights=folder)


def test_wrong_file_names_the_file(reference, tmp_path):
    _, state, extra = reference
    path = _ema_file(tmp_path / "broken.bin", {k: v for k, v in state.items() if k != "quantize.embedding.weight"},
                     extra)
    with pytest.raises(WeightsMismatchError, match="broken.bin.*quantize.embedding.weight"):
        ResTokTokenizer.from_card(_card(), weights=path)
    with pytest.raises(MissingWeightsError, match="does-not-exist.*pytorch_model.bin"):
        ResTokTokenizer.from_card(_card(), weights=tmp_path / "does-not-exist")


def test_missing_weights_name_both_layouts(monkeypatch, tmp_path):
    monkeypatch.setenv("VTBENCH_WEIGHTS", str(tmp_path))
    with pytest.raises(MissingWeightsError) as exc:
        ResTokTokenizer.from_card(get_card(NAME))
    msg = str(exc.value)
    assert "huggingface-cli download xushu-me/restok_l_128.r256_in1k" in msg and "ema_model/pytorch_model.bin" in msg


@pytest.fixture(scope="module")
def prefix_toks(reference, tmp_path_factory):
    """One adapter per sweep setting (restok.l-128-k{k}), all from the same EMA file."""
    _, state, extra = reference
    path = _ema_file(tmp_path_factory.mktemp("ema") / "pytorch_model.bin", state, extra)
    return {k: ResTokTokenizer.from_card(_card(f"{NAME}-k{k}"), weights=path) for k in KS}


def test_every_prefix_encodes_and_decodes(reference, prefix_toks):
    model = reference[0]
    x = _images(2, 32)
    with torch.inference_mode():
        full = model.quantize.encode(model.encode_latents(x))  # all 128 codes of the reference model
        outputs = {}
        for k, tok in prefix_toks.items():
            t = tok.encode(x)
            assert t.kind == "vq" and t.layout == ("token",) and t.codebook_size == 64
            assert t.codes.dtype == torch.int64 and torch.equal(t.codes, full[:, :k])  # the first k tokens
            assert t.tokens_per_image == k == tok.tokens_per_image(32, 32)
            assert t.bits.dtype == torch.float64 and t.bits.tolist() == [k * 6.0] * 2
            assert t.quantizer_input.shape == (2, k, 8)
            y = tok.decode(t)
            assert y.shape == x.shape and torch.isfinite(y).all() and 0 <= float(y.min()) and float(y.max()) <= 1
            assert torch.equal(y, model.decode_codes(full[:, :k]).clamp(0, 1))
            assert torch.equal(tok.decode(tok.tokens_from_codes(t.codes)), y)  # codes from elsewhere (an AR prior)
            outputs[k] = y
    for a, b in zip(KS, KS[1:]):  # more tokens, another reconstruction (the mask token stands for the rest)
        assert not torch.equal(outputs[a], outputs[b])


def test_deterministic_and_batch_independent(prefix_toks):
    tok = prefix_toks[16]
    x = _images(3, 32, seed=1)
    with torch.inference_mode():
        t, t2 = tok.encode(x), tok.encode(x)
        y, y2 = tok.decode(t), tok.decode(t2)
        assert torch.equal(t.codes, t2.codes) and torch.equal(y, y2)
        t1 = tok.encode(x[1:2])
        assert torch.equal(t1.codes, t.codes[1:2]) and torch.equal(t1.bits, t.bits[1:2])
        assert torch.allclose(tok.decode(t1), y[1:2], atol=1e-5)


def test_pfid_neighbours_are_cosine_nearest_codes(prefix_toks):
    """Sets equal a brute-force float64 search on the unit vectors the quantiser compared (nearest first)."""
    tok = prefix_toks[8]
    with torch.inference_mode():
        t = tok.encode(_images(2, 32))
        nb = tok.neighbours(t, 5)
    assert nb.shape == (2, 8, 5) and torch.equal(nb[..., 0], t.codes)
    qin = t.quantizer_input.reshape(-1, 8).double()
    assert torch.allclose(qin.norm(dim=1), torch.ones(16, dtype=torch.float64), atol=1e-6)
    book = torch.nn.functional.normalize(tok.model.quantize.embedding.weight.detach().double(), dim=1)
    d = torch.cdist(qin, book, compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.equal(nb.reshape(-1, 5), torch.sort(d, dim=1, stable=True).indices[:, :5])
    assert "l2-normalised" in tok.perturbation_support()


def test_sizes_and_prefix_bounds(reference, tmp_path):
    _, state, extra = reference
    tok = ResTokTokenizer.from_card(_card(), weights=_ema_file(tmp_path / "m.bin", state, extra))
    with pytest.raises(UnsupportedResolutionError):
        tok.check_size(64, 64)
    with pytest.raises(ValueError, match="num_tokens must lie in 1..128"):
        ResTokTokenizer.from_card(_card(num_tokens=129), weights=tmp_path / "m.bin")
    with pytest.raises(ValueError, match="too narrow"):  # an 8x2 grid cannot be halved three times
        ResTokModel({**get_card(NAME).params, **SMALL, "image_size": 4}).encode_latents(torch.zeros(1, 3, 4, 4))


def test_structure_helpers():
    assert latent_levels(128) == [1, 1, 2, 4, 8, 16, 32, 64] and sum(latent_levels(128)) == 128
    assert [pooling_cells(n) for n in (1, 2, 4, 8, 16, 32, 64)] == [(1, 1), (1, 2), (2, 2), (2, 4), (4, 4), (4, 8),
                                                                    (8, 8)]
    assert merge_layers(24, 4) == [5, 11, 17] and merge_layers(4, 4) == [0, 1, 2] and merge_layers(24, 4, False) == []
    m = hierarchical_mask([2, 1, 1])[0, 0]
    allowed = (m == 0).int().tolist()
    assert allowed == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]] and m.dtype == torch.float32
    with pytest.raises(ValueError, match="power of two"):
        latent_levels(96)


def test_resblock_projects_its_output_where_channels_change():
    """The official MaskGIT block adds nin_shortcut(h) (h = the block's own output), not a projection of x."""
    block = perturbed(ResBlock(32, 64), seed=1).eval()
    x = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        h = block.conv2(torch.nn.functional.silu(block.norm2(block.conv1(torch.nn.functional.silu(block.norm1(x))))))
        assert torch.allclose(block(x), h + block.nin_shortcut(h))
        assert block.nin_shortcut.weight.shape == (64, 64, 1, 1)


def test_card_declares_the_sweep_and_bits():
    card = get_card(NAME)
    p = card.params
    assert (p["num_latent_tokens"], p["codebook_size"], p["token_size"], p["num_tokens"]) == (128, 8192, 8, 128)
    assert card.native_size == 256 and card.input_range == "[0,1]" and card.kind == "vq"
    assert card.sweep_settings == [f"{NAME}-k{k}" for k in KS]
    for k in KS:
        setting = get_card(f"{NAME}-k{k}")
        assert setting.params["num_tokens"] == k and setting.sweep_group == NAME
        assert k * math.log2(setting.params["codebook_size"]) == k * 13
    assert [e["value"] for e in get_card(f"{NAME}-k128").published] == [1.28]
    assert get_card(f"{NAME}-k16").published == []


def test_manifest_full_size_on_meta():
    card = get_card(NAME)
    manifest = load_manifest(CARDS_DIR / "manifests" / f"{NAME}.json")
    with torch.device("meta"):
        model = ResTokTokenizer.build_model(dict(card.params))
    state, ext = ResTokTokenizer.state_from_object(manifest_checkpoint(manifest), dict(card.params), source=NAME)
    check_manifest(model, state, source=NAME)
    assert sorted(ext.dropped) == sorted(manifest["dropped_prefixes"]) and ext.wrapper is None
    total = sum(math.prod(s) for k, s in manifest["keys"].items() if not k.startswith("foundation_model."))
    assert round(total / 1e6) == 662  # the README's "#Param. 662M" (the frozen DINOv3 model not counted)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 659.7  # at inference
