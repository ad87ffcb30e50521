"""The tokenizer contract, checked for every registered tokenizer.

Cards whose real weights are on this machine run at full size; the others run on seeded random weights of a
scaled-down configuration of the same card, written in the official file layout and loaded through the card
path (tests/random_weights.py). A card with no way to get random weights fails here."""

import dataclasses
import math

import pytest
import torch
from random_weights import RECIPES, Recipe, Subject, contract_tokenizer, official_file, scale_card

from vtbench.config import get_card
from vtbench.tokenizers import UnsupportedResolutionError, build_tokenizer, list_tokenizers

def _fast_and_slow(names: list[str]) -> tuple[list[str], list[str]]:
    """Every card runs the contract. A rate sweep's settings share the group's weights and code path and differ in
    one parameter: the default suite runs the group and its smallest setting (the most mask/prefix work), the other
    settings run under ``-m slow`` (FlexTok alone has 36)."""
    fast, slow = [], []
    for n in names:
        card = get_card(n)
        group = card.sweep.get("group") if card.sweep else None
        if group is None:
            fast.append(n)
        else:
            first = get_card(group).sweep_settings[0]
            (fast if n == first else slow).append(n)
    return fast, slow


ALL_CARDS = list_tokenizers(modality="image")  # shape cards: tests/test_three_d_*.py
ALL, SWEEP_SETTINGS = _fast_and_slow(ALL_CARDS)
_BUILT: dict[str, Subject] = {}


@pytest.fixture
def contract_tok(tmp_path_factory):
    """The contract's subject for a card (random_weights.Subject), built once per session."""
    def get(name):
        if name not in _BUILT:
            _BUILT[name] = contract_tokenizer(get_card(name), tmp_path_factory.mktemp(name.replace(".", "-")))
        return _BUILT[name]
    return get


def _images(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", ALL + [pytest.param(n, marks=pytest.mark.slow) for n in SWEEP_SETTINGS])
def test_contract(name, contract_tok):
    card = get_card(name)
    subject = contract_tok(name)
    tok, size = subject.tok, subject.size
    if subject.written is not None:  # random weights: what the card path loaded is what was written
        loaded = (tok.vae if card.family == "vae" else tok.model).state_dict()
        assert loaded.keys() == subject.written.keys()
        assert all(torch.equal(loaded[k], v) for k, v in subject.written.items())
    x = _images(2, size)
    tok.check_size(size, size)
    with torch.inference_mode():
        t = tok.encode(x)
        y = tok.decode(t)
    assert y.shape == x.shape and y.dtype.is_floating_point
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    assert t.bits.shape == (2,) and t.bits.dtype == torch.float64 and (t.bits > 0).all()
    assert t.kind == card.kind
    tpi = tok.tokens_per_image(size, size)
    assert t.tokens_per_image == tpi
    if t.codes is not None:
        assert t.codes.dtype == torch.int64 and t.codes.shape[0] == 2
        assert len(t.layout) == t.codes.ndim - 1
        assert 0 <= int(t.codes.min()) and int(t.codes.max()) < t.codebook_size
        per_image = t.codes[0].numel()
        assert torch.allclose(t.bits, torch.full((2,), per_image * math.log2(t.codebook_size), dtype=torch.float64))
    if t.latents is not None:
        assert t.latents.shape[0] == 2 and torch.isfinite(t.latents).all()
    # deterministic
    with torch.inference_mode():
        t2 = tok.encode(x)
        y2 = tok.decode(t2)
    assert torch.equal(y, y2) and torch.equal(t.bits, t2.bits)
    if t.codes is not None:
        assert torch.equal(t.codes, t2.codes)
    # batch independence: the second image alone gives its codes / latents and reconstruction of the pair
    with torch.inference_mode():
        t1 = tok.encode(x[1:])
        y1 = tok.decode(t1)
    assert torch.equal(t1.bits, t.bits[1:]) and t1.tokens_per_image == t.tokens_per_image
    if t.codes is not None:
        assert torch.equal(t1.codes, t.codes[1:])
    if t.latents is not None:
        assert torch.allclose(t1.latents.float(), t.latents[1:].float(), atol=1e-3, rtol=1e-3)
    assert torch.allclose(y1, y[1:], atol=1e-4)


@pytest.mark.parametrize("name", [n for n in ALL if get_card(n).native_size or get_card(n).size_multiple > 1])
def test_unsupported_resolution_is_a_clear_error(name, contract_tok):
    tok, size = contract_tok(name).tok, contract_tok(name).size
    with pytest.raises(UnsupportedResolutionError, match="--preprocess|--resolution"):
        tok.check_size(size + 1, size + 1)


def test_no_stale_recipe():
    """Every recipe belongs to a registered family whose cards name weights (a family without one fails
    test_contract as soon as its weights are absent)."""
    needs = {c.family for c in map(get_card, ALL) if c.weights and not c.weights.get("bundled")}
    assert set(RECIPES) <= needs


def test_official_layout_is_checked_against_the_manifest(tmp_path):
    """A scaled configuration that changes the parameter names (here: fewer res blocks) is refused."""
    card = scale_card(get_card("llamagen.vq16"), Recipe({**RECIPES["llamagen"].params, "num_res_blocks": 1}, 32))
    with pytest.raises(AssertionError, match="changed the parameter names"):
        official_file(card, tmp_path)


def test_a_card_without_random_weights_fails_not_skips(tmp_path):
    card = dataclasses.replace(get_card("llamagen.vq16"), name="newfamily.x", family="newfamily", variant="x")
    with pytest.raises(pytest.fail.Exception, match="no way to build random weights.*newfamily"):
        contract_tokenizer(card, tmp_path)


def test_identity_is_exact_and_raw_bits():
    tok = build_tokenizer("identity.none")
    x = _images(2, 32)
    t = tok.encode(x)
    assert torch.equal(tok.decode(t), x) and t.bits.tolist() == [24.0 * 32 * 32] * 2


def test_codec_bits_are_real_encoded_sizes_and_quality_orders_them():
    x = _images(2, 64)
    lo, hi = build_tokenizer("jpeg.q10"), build_tokenizer("jpeg.q90")
    tlo, thi = lo.encode(x), hi.encode(x)
    assert tlo.bits.tolist() == [8.0 * len(p) for p in tlo.payload]
    assert (tlo.bits < thi.bits).all()

    def err(tok, t):
        return (tok.decode(t) - x).abs().mean()

    assert err(lo, tlo) > err(hi, thi)
    w = build_tokenizer("webp.q50")
    tw = w.encode(x)
    assert tw.payload[0][:4] == b"RIFF" and tw.bits[0] == 8 * len(tw.payload[0])


def test_resize_bound_bits_and_blur():
    tok = build_tokenizer("resize.x4")
    x = _images(1, 64)
    t = tok.encode(x)
    assert t.bits.item() == 24.0 * 16 * 16
    assert tok.decode(t).shape == x.shape
