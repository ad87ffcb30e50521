"""The tiny tokenizer family: quantisers, the adapter on the bundled checkpoints, and the training command."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vtbench.config import get_card
from vtbench.hashing import sha256sum
from vtbench.tokenizers.quantizers import FSQ, ResidualVQ, VectorQuantizer, nearest_code
from vtbench.tokenizers.tiny import TinyAutoencoder, TinyTokenizer
from vtbench.tokenizers.tiny_train import read_metadata
from vtbench.tokenizers.weights import WeightsMismatchError

VARIANTS = ("vq", "rvq", "fsq")


# -- quantisers ------------------------------------------------------------------------------------------

def test_nearest_code_matches_brute_force_in_chunks():
    g = torch.Generator().manual_seed(0)
    x, cb = torch.randn(1000, 8, generator=g), torch.randn(300, 8, generator=g)
    expected = torch.cdist(x.double(), cb.double()).argmin(1)
    for chunk in (300, 1 << 12, 1 << 22):  # 1 row per chunk, a few rows, everything at once
        assert torch.equal(nearest_code(x, cb, chunk_elements=chunk), expected)


def test_vq_picks_the_true_nearest_code_on_a_hand_made_codebook():
    q = VectorQuantizer(4, 2)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    pts = torch.tensor([[0.1, 0.1], [0.9, -0.2], [0.2, 0.7], [-0.6, -0.5], [0.45, 0.0], [0.6, 0.0]])
    z = pts.t().reshape(1, 2, 2, 3)  # (N, d, h, w)
    codes = q.encode(z)
    assert codes.shape == (1, 2, 3) and codes.dtype == torch.long
    assert codes.flatten().tolist() == [0, 1, 2, 3, 0, 1]
    assert torch.equal(q.lookup(codes), q.codebook[codes].permute(0, 3, 1, 2))


def test_vq_l2_norm_uses_cosine_and_returns_unit_codes():
    q = VectorQuantizer(3, 2, l2_norm=True)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[10.0, 0.0], [0.0, 0.1], [-1.0, 0.0]]))
    z = torch.tensor([[0.05, 3.0], [2.0, 0.1], [-0.3, 0.01]]).t().reshape(1, 2, 1, 3)
    codes = q.encode(z)
    assert codes.flatten().tolist() == [1, 0, 2]  # plain L2 would pick code 2 or 0 for the first point
    assert torch.allclose(q.lookup(codes).norm(dim=1), torch.ones(1, 1, 3))


def test_vq_forward_straight_through_and_eval_does_not_touch_the_codebook():
    q = VectorQuantizer(16, 4).eval()
    before = q.codebook.detach().clone()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, codes, loss = q(z)
    assert torch.allclose(z_q, q.lookup(codes)) and loss.ndim == 0 and loss > 0
    z_q.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # identity gradient through the quantiser
    assert torch.equal(q.codebook.detach(), before)


def test_rvq_codes_are_the_per_depth_nearest_codes_of_the_residuals():
    torch.manual_seed(0)
    q = ResidualVQ(depth=3, codebook_size=5, dim=2)
    z = torch.randn(2, 2, 3, 4)
    codes = q.encode(z)
    assert codes.shape == (2, 3, 4, 3)
    # by hand: brute-force nearest code at each depth on the running residual
    rows = z.permute(0, 2, 3, 1).reshape(-1, 2)
    residual, total, hand = rows.clone(), torch.zeros_like(rows), []
    for level in q.levels:
        cb = level.codebook.detach()
        idx = torch.cdist(residual, cb).argmin(1)
        hand.append(idx)
        residual = residual - cb[idx]
        total = total + cb[idx]
    assert torch.equal(codes.reshape(-1, 3), torch.stack(hand, 1))
    assert torch.allclose(q.lookup(codes).permute(0, 2, 3, 1).reshape(-1, 2), total, atol=1e-6)


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [2, 3, 4], [7, 6]])
def test_fsq_mixed_radix_round_trip_and_range(levels):
    q = FSQ(levels)
    n = math.prod(levels)
    assert q.codebook_size == n
    codes = torch.arange(n).view(1, 1, n)
    digits = q.codes_to_digits(codes)
    assert all(int(digits[0, i].min()) == 0 and int(digits[0, i].max()) == L - 1 for i, L in enumerate(levels))
    assert torch.equal(q.digits_to_codes(digits), codes)
    # by hand: code = sum_i digit_i * prod(L_<i) (the first channel varies fastest), a bijection onto [0, n)
    tuples = list(itertools.product(*[range(L) for L in levels]))
    hand = [sum(d * math.prod(levels[:i]) for i, d in enumerate(ds)) for ds in tuples]
    assert sorted(hand) == list(range(n))
    as_digits = torch.tensor(tuples).t().reshape(1, len(levels), 1, n)
    assert q.digits_to_codes(as_digits).flatten().tolist() == hand
    assert torch.unique(q.lookup(codes).view(len(levels), -1), dim=1).shape[1] == n  # all codes distinct


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [2, 3, 4, 6]])
def test_fsq_bounds_hit_exactly_the_levels_even_and_odd(levels):
    q = FSQ(levels)
    z = torch.linspace(-20, 20, 4001).view(1, 1, 1, -1).expand(1, len(levels), 1, -1)
    codes = q.encode(z)
    assert int(codes.min()) == 0 and int(codes.max()) == math.prod(levels) - 1
    digits = q.codes_to_digits(codes)
    for i, L in enumerate(levels):
        assert torch.equal(torch.unique(digits[0, i]), torch.arange(L))  # all L values, none else
        vals = torch.unique(q.lookup(codes)[0, i])
        half = L // 2
        assert torch.allclose(vals, (torch.arange(L) - half) / half)  # even: -1 .. 1 - 1/half; odd: -1 .. 1
    # z = 0 is the centre digit (even levels: the half offset puts it at L/2, i.e. value 0)
    zero_digits = q.codes_to_digits(q.encode(torch.zeros(1, len(levels), 1, 1)))
    assert zero_digits.flatten().tolist() == [L // 2 for L in levels]


def test_fsq_lookup_inverts_encode_on_lattice_points():
    levels = [8, 5, 5, 5]
    q = FSQ(levels)
    codes = torch.arange(q.codebook_size).view(1, 1, -1)
    lattice = q.lookup(codes)  # (1, d, 1, n): every lattice point
    # the pre-image of each lattice point under the tanh bound, then encode: must give the same code back
    hw = torch.tensor([L // 2 for L in levels], dtype=torch.float64).view(1, -1, 1, 1)
    b = lattice.double() * hw
    pre = torch.atanh((b + q._c(q._offset).double()) / q._c(q._half_l).double()) - q._c(q._shift).double()
    assert torch.equal(q.encode(pre.float()), codes)
    assert torch.equal(q.lookup(q.encode(pre.float())), lattice)
    # forward's straight-through value equals lookup of its codes
    z_q, c, loss = q(pre.float())
    assert torch.equal(c, codes) and torch.allclose(z_q, lattice) and float(loss) == 0.0


# -- the adapter on the bundled checkpoints ------------------------------------------------------------

@pytest.fixture(scope="module", params=VARIANTS)
def tok(request) -> TinyTokenizer:
    return TinyTokenizer.from_card(get_card(f"tiny.{request.param}"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 3, 32, 32, generator=g)  # smooth-ish images: upsampled noise
    return torch.nn.functional.interpolate(base, size=(256, 256), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_card_declares_the_bundled_file_and_its_sha256(variant):
    card = get_card(f"tiny.{variant}")
    assert card.family == "tiny" and card.kind == variant and card.default_run and card.size_multiple == 8
    tok = TinyTokenizer.from_card(card)
    assert tok.weights_path.name == card.weights["file"]
    assert tok.weights_sha256 == card.weights["sha256"] == sha256sum(tok.weights_path)
    assert tok.weights_path.stat().st_size < 5 * 2**20
    meta = read_metadata(tok.weights_path)  # the training record agrees with the card's architecture
    assert meta["kind"] == variant and meta["params"] == {"kind": variant, **card.params}
    assert not tok.model.training


def test_encode_decode_shapes_ranges_and_bits(tok, images):
    tokens = tok.encode(images)
    kind = tok.card.kind
    assert tokens.kind == kind and tokens.codes.dtype == torch.int64
    assert tokens.tokens_per_image == tok.tokens_per_image(256, 256) == 32 * 32
    if kind == "rvq":
        assert tokens.codes.shape == (2, 32, 32, 4) and tokens.layout == ("h", "w", "depth")
        assert tokens.codebook_size == 256
        assert torch.equal(tokens.bits, torch.full((2,), 32 * 32 * 4 * 8.0, dtype=torch.float64))
    else:
        assert tokens.codes.shape == (2, 32, 32) and tokens.layout == ("h", "w")
        k = 1024 if kind == "vq" else 8 * 5 * 5 * 5
        assert tokens.codebook_size == k
        assert torch.allclose(tokens.bits, torch.full((2,), 32 * 32 * math.log2(k), dtype=torch.float64))
    assert int(tokens.codes.min()) >= 0 and int(tokens.codes.max()) < tokens.codebook_size
    rec = tok.decode(tokens)
    assert rec.shape == images.shape and rec.dtype == torch.float32
    assert float(rec.min()) >= 0.0 and float(rec.max()) <= 1.0
    assert float((rec - images).abs().mean()) < 0.25  # a trained model, not noise


def test_deterministic_and_batch_independent(tok, images):
    a, b = tok.encode(images), tok.encode(images)
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(tok.decode(a), tok.decode(b))
    single = tok.encode(images[1:2])
    assert torch.equal(single.codes[0], a.codes[1])


def test_non_multiple_of_8_is_refused(tok):
    from vtbench.tokenizers.base import UnsupportedResolutionError

    with pytest.raises(UnsupportedResolutionError):
        tok.encode(torch.rand(1, 3, 60, 64))


def test_strict_loading_names_the_file(tmp_path):
    from safetensors.torch import load_file, save_file

    card = get_card("tiny.vq")
    state = load_file(str(TinyTokenizer.from_card(card).weights_path))
    key = next(k for k in state if k.startswith("decoder."))
    state["decoder.renamed_" + key.split(".", 1)[1]] = state.pop(key)
    bad = tmp_path / "renamed.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightsMismatchError, match="renamed.safetensors") as info:
        TinyTokenizer.from_card(card, weights=bad)
    assert "missing" in str(info.value) and "unexpected" in str(info.value)


# -- training ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["vq", "rvq", "fsq"])
def test_training_smoke_writes_a_loadable_checkpoint(tmp_path, variant):
    from vtbench.tokenizers.tiny_train import train

    card = get_card(f"tiny.{variant}")
    out = tmp_path / f"tiny_{variant}.safetensors"
    data = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    summary = train(variant, out=out, steps=3, seed=0, images=data, batch_size=2, patch=32, log_every=0)
    assert summary["steps"] == 3 and math.isfinite(summary["final_rec_mse"])
    meta = read_metadata(out)
    assert meta["kind"] == variant and meta["steps"] == 3 and meta["seed"] == 0
    assert meta["params"] == {"kind": variant, **card.params}
    tok = TinyTokenizer.from_card(card, weights=out)
    assert tok.weights_path == out
    assert tok.encode(torch.rand(1, 3, 16, 24)).codes.shape[:3] == (1, 2, 3)


def test_training_is_reproducible(tmp_path):
    from vtbench.tokenizers.tiny_train import train

    data = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    kw = dict(steps=2, seed=3, images=data, batch_size=2, patch=16, log_every=0)
    train("vq", out=tmp_path / "a.safetensors", **kw)
    train("vq", out=tmp_path / "b.safetensors", **kw)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_model_param_count_is_small():
    for variant in VARIANTS:
        card = get_card(f"tiny.{variant}")
        model = TinyAutoencoder({"kind": card.kind, **card.params})
        assert 150_000 < sum(p.numel() for p in model.parameters()) < 500_000
