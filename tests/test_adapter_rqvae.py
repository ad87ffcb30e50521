"""RQ-VAE adapter: official checkpoint layout, loading, token contract, key manifest, errors.

Parity with the official code (kakaobrain/rq-vae-transformer) is checked outside the test suite, on random
weights at the real configuration: identical codes, decoded images within 1e-5 (see the adapter's report). In
the suite, a scaled configuration run by the official code itself is compared through golden fixtures:
tests/test_parity_official.py.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from adapter_checks import smooth_images as _images

from vtbench.config import get_card
from vtbench.paths import CARDS_DIR
from vtbench.tokenizers.official import check_manifest, load_manifest, manifest_state
from vtbench.tokenizers.quantizers import nearest_code_full
from vtbench.tokenizers.rqvae import RQVAETokenizer
from vtbench.tokenizers.weights import WeightsMismatchError

NAME = "rqvae.in-8x8x4"
SMALL = dict(ch=32, ch_mult=[1, 1, 2], num_res_blocks=1, attn_resolutions=[8], resolution=32, in_channels=3, out_ch=3,
             z_channels=8, double_z=False, embed_dim=4, n_embed=32, latent_shape=[8, 8, 4], code_shape=[4, 4, 3],
             shared_codebook=True, wrapper_keys=["state_dict"])


def small_card(**over):
    card = get_card(NAME)
    return dataclasses.replace(card, params={**SMALL, **over}, native_size=32)


def official_state(model: torch.nn.Module, params: dict) -> dict[str, torch.Tensor]:
    """vtbench's state dict -> the official RQVAE.state_dict() layout (codebooks with a padding row, EMA stats)."""
    sd = {k: v.clone() for k, v in model.state_dict().items() if k != "quantizer.codebook"}
    cb = model.state_dict()["quantizer.codebook"]
    depth = params["code_shape"][2]
    shared_w = torch.cat([cb, torch.zeros(1, cb.shape[-1])]) if params["shared_codebook"] else None
    for i in range(depth):
        w = shared_w if shared_w is not None else torch.cat([cb[i], torch.zeros(1, cb.shape[-1])])
        sd[f"quantizer.codebooks.{i}.weight"] = w  # shared: the same tensor at every depth, as torch.save stores it
        sd[f"quantizer.codebooks.{i}.cluster_size_ema"] = torch.ones(w.shape[0] - 1)
        sd[f"quantizer.codebooks.{i}.embed_ema"] = w[:-1].clone()
    return sd


def save_official(path: Path, params: dict, seed: int = 0, state_edit=None) -> Path:
    torch.manual_seed(seed)
    model = RQVAETokenizer.build_model(params)
    sd = official_state(model, params)
    if state_edit:
        state_edit(sd)
    ckpt = {"epoch": 10, "state_dict": sd,
            "discriminator": {"main.0.weight": torch.randn(8, 3, 4, 4), "main.0.bias": torch.zeros(8)},
            "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                          "param_groups": [{"lr": 4e-5, "betas": (0.5, 0.9), "weight_decay": 0.0, "params": [0]}]},
            "scheduler": {"warmup": {"last_epoch": 3, "steps": 100, "base_lrs": [4e-5]},
                          "after": {"T_max": 1000, "eta_min": 4e-5, "last_epoch": 0}}}
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("shared", [True, False])
def test_scaled_checkpoint_roundtrip(tmp_path, shared):
    card = small_card(shared_codebook=shared)
    path = save_official(tmp_path / "model.pt", card.params)
    tok = RQVAETokenizer.from_card(card, weights=path)
    x = _images()
    with torch.inference_mode():
        t = tok.encode(x)
        y = tok.decode(t)
        t2 = tok.encode(x)
    assert t.kind == "rvq" and t.layout == ("h", "w", "depth")
    assert t.codes.shape == (2, 4, 4, 3) and t.codes.dtype == torch.int64
    assert 0 <= int(t.codes.min()) and int(t.codes.max()) < 32 and t.codebook_size == 32
    assert t.tokens_per_image == 16 == tok.tokens_per_image(32, 32)
    assert t.bits.dtype == torch.float64 and t.bits.tolist() == [16 * 3 * math.log2(32)] * 2
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(t.codes, t2.codes)
    info = tok.provenance()["checkpoint"]
    assert info["wrapper"] == "state_dict" and info["load_mode"] == "weights_only"
    assert info["dropped"] == {f"quantizer.codebooks.{i}.{b}": 1
                               for i in range(3) for b in ("cluster_size_ema", "embed_ema")}
    assert tok.provenance()["weights_sha256"]


def test_residual_codes_are_nearest_entries_of_the_residual(tmp_path):
    """Depth by depth, each code is the nearest entry to what the previous depths left over; decode sums them."""
    card = small_card()
    tok = RQVAETokenizer.from_card(card, weights=save_official(tmp_path / "model.pt", card.params, seed=3))
    q = tok.model.quantizer
    with torch.inference_mode():
        z = tok.model.latent(tok.to_model(_images(1)))
        codes = q.encode(z)
        v = q.group(z).reshape(-1, q.dim)
        residual = v.clone()
        for i in range(q.depth):
            brute = torch.cdist(residual, q.codebook).argmin(1)
            assert torch.equal(brute, codes.reshape(-1, q.depth)[:, i])
            residual = residual - q.codebook[brute]
        assert torch.allclose(q.group(q.lookup(codes)).reshape(-1, q.dim), v - residual, atol=1e-6)
        assert torch.equal(q.ungroup(q.group(z)), z)


def test_nearest_code_full_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x, cb = torch.randn(300, 6, generator=g), torch.randn(50, 6, generator=g)
    assert torch.equal(nearest_code_full(x, cb), torch.cdist(x, cb).argmin(1))


def test_manifest_matches_full_size_model():
    card = get_card(NAME)
    man = load_manifest(CARDS_DIR / "manifests" / f"{NAME}.json")
    assert man["wrapper"] == card.params["wrapper_keys"][0]
    assert sorted(man["dropped_prefixes"]) == sorted(RQVAETokenizer._ema_prefixes(card.params))
    with torch.device("meta"):
        model = RQVAETokenizer.build_model(card.params)
    state = {k: v for k, v in manifest_state(man).items() if not k.startswith(tuple(man["dropped_prefixes"]))}
    check_manifest(model, RQVAETokenizer.remap_state(state, card.params), source=NAME)
    assert tuple(model.quantizer.codebook.shape) == (16384, 256)
    assert sum(p.numel() for p in model.parameters()) > 50_000_000


def test_missing_key_is_a_mismatch_naming_the_file(tmp_path):
    card = small_card()
    path = save_official(tmp_path / "broken.pt", card.params, state_edit=lambda sd: sd.pop("decoder.conv_out.bias"))
    with pytest.raises(WeightsMismatchError, match="broken.pt.*decoder.conv_out.bias"):
        RQVAETokenizer.from_card(card, weights=path)


def test_wrong_shape_is_a_mismatch(tmp_path):
    card = small_card()
    path = save_official(tmp_path / "other.pt", card.params)
    with pytest.raises(WeightsMismatchError, match="other.pt"):
        RQVAETokenizer.from_card(small_card(n_embed=64), weights=path)


def test_shared_codebook_must_be_shared(tmp_path):
    card = small_card()

    def unshare(sd):
        sd["quantizer.codebooks.2.weight"] = sd["quantizer.codebooks.2.weight"] + 1.0
    path = save_official(tmp_path / "unshared.pt", card.params, state_edit=unshare)
    with pytest.raises(WeightsMismatchError, match="codebooks.2"):
        RQVAETokenizer.from_card(card, weights=path)
