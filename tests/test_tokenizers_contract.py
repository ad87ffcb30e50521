"""The tokenizer contract, checked for every registered tokenizer."""

import math

import pytest
import torch

from vtbench.config import get_card
from vtbench.tokenizers import UnsupportedResolutionError, build_tokenizer, list_tokenizers
from vtbench.tokenizers.weights import MissingWeightsError

ALL = list_tokenizers()


def _images(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


def _size(card):
    return card.native_size or max(64, card.size_multiple * 8)


@pytest.mark.parametrize("name", ALL)
def test_contract(name):
    card = get_card(name)
    try:
        tok = build_tokenizer(name)
    except MissingWeightsError as exc:  # official checkpoints are not on this machine
        pytest.skip(f"weights absent: {str(exc).splitlines()[0]}")
    size = _size(card)
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
    # deterministic
    with torch.inference_mode():
        t2 = tok.encode(x)
        y2 = tok.decode(t2)
    assert torch.equal(y, y2) and torch.equal(t.bits, t2.bits)
    if t.codes is not None:
        assert torch.equal(t.codes, t2.codes)


@pytest.mark.parametrize("name", [n for n in ALL if get_card(n).native_size or get_card(n).size_multiple > 1])
def test_unsupported_resolution_is_a_clear_error(name):
    card = get_card(name)
    bad = (card.native_size or 64) + 1
    try:
        tok = build_tokenizer(name)
    except MissingWeightsError as exc:
        pytest.skip(str(exc).splitlines()[0])
    with pytest.raises(UnsupportedResolutionError, match="--preprocess|--resolution"):
        tok.check_size(bad, bad)


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
    err = lambda tok, t: (tok.decode(t) - x).abs().mean()
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
