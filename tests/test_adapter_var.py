"""VAR multi-scale VQVAE adapter: official checkpoint layout, loading, token contract, key manifest, errors.

Parity with the official code (FoundationVision/VAR models/vqvae.py) is checked outside the test suite, on
random weights at the real configuration: identical 680 codes per image, decoded images within 1e-5. In the
suite, a scaled configuration run by the official code itself is compared through golden fixtures:
tests/test_parity_official.py.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from vtbench.config import get_card
from vtbench.paths import CARDS_DIR
from vtbench.tokenizers.official import check_manifest, load_manifest, manifest_state
from vtbench.tokenizers.var import VARTokenizer, phi_schedule
from vtbench.tokenizers.weights import WeightsMismatchError

NAME = "var.ch160v4096z32"
SMALL = dict(vocab_size=32, z_channels=8, ch=32, ch_mult=[1, 2], num_res_blocks=1, using_sa=True, using_mid_sa=True,
             quant_conv_ks=3, quant_resi=0.5, share_quant_resi=4, default_qresi_counts=0,
             v_patch_nums=[1, 2, 3, 4, 6, 8], using_znorm=False)
SIZE = 16  # f = 2, last patch number 8


def small_card(**over):
    return dataclasses.replace(get_card(NAME), params={**SMALL, **over}, native_size=SIZE)


def official_state(model: torch.nn.Module, params: dict) -> dict[str, torch.Tensor]:
    """vtbench's names -> VAR's VQVAE.state_dict() names (phi containers per sharing scheme, usage buffer)."""
    share = params["share_quant_resi"]
    out = {}
    for k, v in model.state_dict().items():
        if k == "quantize.codebook":
            k = "quantize.embedding.weight"
        elif k.startswith("quantize.phi."):
            rest = k[len("quantize.phi."):]
            idx, tail = rest.split(".", 1)
            k = {0: f"quantize.quant_resi.{idx}.{tail}", 1: f"quantize.quant_resi.qresi.{tail}"}.get(
                share, f"quantize.quant_resi.qresi_ls.{idx}.{tail}")
        out[k] = v.clone()
    out["quantize.ema_vocab_hit_SV"] = torch.rand(len(params["v_patch_nums"]), params["vocab_size"])
    return out


def save_official(path: Path, params: dict, seed: int = 0, state_edit=None) -> Path:
    torch.manual_seed(seed)
    sd = official_state(VARTokenizer.build_model(params), params)
    if state_edit:
        state_edit(sd)
    torch.save(sd, path)  # the release is a raw state dict
    return path


def _images(n=2, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=g), size=(size, size),
                                           mode="bilinear", align_corners=False)


@pytest.mark.parametrize("share", [4, 1, 0])
def test_scaled_checkpoint_roundtrip(tmp_path, share):
    card = small_card(share_quant_resi=share)
    tok = VARTokenizer.from_card(card, weights=save_official(tmp_path / "vae.pth", card.params))
    n_tokens = sum(p * p for p in SMALL["v_patch_nums"])
    x = _images()
    with torch.inference_mode():
        t = tok.encode(x)
        y = tok.decode(t)
        t2 = tok.encode(x)
    assert t.kind == "multiscale" and t.layout == ("token",) and t.meta["scales"] == SMALL["v_patch_nums"]
    assert t.codes.shape == (2, n_tokens) and t.codes.dtype == torch.int64
    assert 0 <= int(t.codes.min()) and int(t.codes.max()) < 32 and t.codebook_size == 32
    assert t.tokens_per_image == n_tokens == tok.tokens_per_image(SIZE, SIZE)
    assert t.bits.dtype == torch.float64 and t.bits.tolist() == [n_tokens * math.log2(32)] * 2
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(t.codes, t2.codes)
    info = tok.provenance()["checkpoint"]
    assert info["wrapper"] is None and info["dropped"] == {"quantize.ema_vocab_hit_SV": 1}
    assert len(tok.model.quantize.phi) == {4: 4, 1: 1, 0: len(SMALL["v_patch_nums"])}[share]


def test_quantiser_semantics(tmp_path):
    """Scale 1 codes the mean latent; the decoder's f_hat from codes equals the encoder's running f_hat."""
    card = small_card()
    tok = VARTokenizer.from_card(card, weights=save_official(tmp_path / "vae.pth", card.params, seed=2))
    q = tok.model.quantize
    with torch.inference_mode():
        f = tok.model.latent(tok.to_model(_images()))
        codes = q.encode(f)
        mean = f.mean(dim=(2, 3))
        assert torch.equal(codes[:, 0], torch.cdist(mean, q.codebook).argmin(1))
        # the last scale (8x8, not resampled) codes what the earlier scales left over
        last = codes[:, -64:]
        last_part = q.refine(len(q.patch_nums) - 1, q.codebook[last.view(2, 8, 8)].permute(0, 3, 1, 2))
        rest = (f - (q.f_hat(codes) - last_part)).permute(0, 2, 3, 1).reshape(-1, 8)
        assert (torch.cdist(rest, q.codebook).argmin(1) == last.reshape(-1)).float().mean() > 0.95


def test_phi_schedule_of_the_release():
    assert phi_schedule(10, 4, 4) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert phi_schedule(10, 1, 1) == [0] * 10
    assert phi_schedule(10, 10, 0) == list(range(10))


def test_zero_quant_resi_has_no_phi(tmp_path):
    card = small_card(quant_resi=0.0)
    tok = VARTokenizer.from_card(card, weights=save_official(tmp_path / "vae.pth", card.params))
    assert len(tok.model.quantize.phi) == 0
    with torch.inference_mode():
        assert tok.decode(tok.encode(_images())).shape == (2, 3, SIZE, SIZE)


def test_manifest_matches_full_size_model():
    card = get_card(NAME)
    man = load_manifest(CARDS_DIR / "manifests" / f"{NAME}.json")
    assert man["wrapper"] is None and man["dropped_prefixes"] == list(VARTokenizer.drop_prefixes)
    with torch.device("meta"):
        model = VARTokenizer.build_model(card.params)
    state = {k: v for k, v in manifest_state(man).items() if not k.startswith(tuple(man["dropped_prefixes"]))}
    check_manifest(model, VARTokenizer.remap_state(state, card.params), source=NAME)
    assert model.quantize.tokens == 680 and model.quantize.schedule == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert tuple(model.quantize.codebook.shape) == (4096, 32)


def test_missing_key_is_a_mismatch_naming_the_file(tmp_path):
    card = small_card()
    path = save_official(tmp_path / "broken.pth", card.params,
                         state_edit=lambda sd: sd.pop("quantize.quant_resi.qresi_ls.3.weight"))
    with pytest.raises(WeightsMismatchError, match="broken.pth.*quantize.phi.3.weight"):
        VARTokenizer.from_card(card, weights=path)


def test_wrong_shape_is_a_mismatch(tmp_path):
    path = save_official(tmp_path / "other.pth", SMALL)
    with pytest.raises(WeightsMismatchError, match="other.pth"):
        VARTokenizer.from_card(small_card(vocab_size=64), weights=path)
