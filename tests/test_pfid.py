"""pFID: neighbour sets on hand-made codebooks, the seeded perturbation, and the metric through the runner."""

import itertools

import numpy as np
import pytest
import torch

from vtbench.config import load_protocol
from vtbench.metrics.pfid import PerturbationSpec, perturb_codes
from vtbench.runner import RunConfig, run, selected_metrics
from vtbench.tokenizers import PerturbationUnsupported, build_tokenizer
from vtbench.tokenizers.neighbours import (
    digits_to_codes,
    k_smallest_sums,
    nearest_corners,
    nearest_entries,
    nearest_lattice_points,
)


# -- neighbour sets ---------------------------------------------------------------------------------------
def test_nearest_entries_on_a_line_orders_by_distance_then_index():
    codebook = torch.arange(10, dtype=torch.float32).unsqueeze(1)  # entries 0..9 on a line
    x = torch.tensor([[3.2], [4.5], [-7.0], [9.0]])
    got = nearest_entries(x, codebook, 4)
    assert got.tolist() == [[3, 4, 2, 5], [4, 5, 3, 6], [0, 1, 2, 3], [9, 8, 7, 6]]  # 4.5: tie 4/5 -> 4 first
    assert nearest_entries(x, codebook, 100).shape == (4, 10)  # sets are capped at K
    with pytest.raises(ValueError, match="delta"):
        nearest_entries(x, codebook, 0)


def test_ties_at_the_boundary_keep_the_lower_indices():
    codebook = torch.tensor([[5.0], [1.0], [3.0], [1.0], [3.0], [1.0], [3.0]])
    x = torch.zeros(1, 1)
    # three entries at distance 1, three at 9: k=4 keeps all the 1s and the lowest-index 3 (index 2)
    assert nearest_entries(x, codebook, 4).tolist() == [[1, 3, 5, 2]]
    g = torch.Generator().manual_seed(0)
    costs = [torch.randint(0, 3, (50, 6), generator=g).float() for _ in range(3)]  # integer costs: many ties
    for row, ch in zip(range(50), k_smallest_sums(costs, 7)[1]):
        brute = sorted(itertools.product(range(6), repeat=3),
                       key=lambda c: (sum(float(costs[i][row, c[i]]) for i in range(3)), c))[:7]
        assert [tuple(c) for c in ch.tolist()] == brute


def test_nearest_entries_matches_brute_force_and_chunking():
    g = torch.Generator().manual_seed(0)
    x, cb = torch.randn(300, 8, generator=g), torch.randn(512, 8, generator=g)
    ref = np.argsort(((x[:, None, :].double() - cb[None].double()) ** 2).sum(-1).numpy(), axis=1, kind="stable")[:, :20]
    got = nearest_entries(x, cb, 20)
    assert (got.numpy() == ref).mean() > 0.999  # float32 vs float64 may swap a near-tie
    assert torch.equal(got[:, 0], torch.from_numpy(ref[:, 0]))
    assert torch.equal(nearest_entries(x, cb, 20, chunk_elements=1000), got)  # chunking changes nothing


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_smallest_sums_is_exact(seed):
    g = torch.Generator().manual_seed(seed)
    costs = [torch.rand(5, n, generator=g) for n in (3, 4, 2, 5)]
    total, choice = k_smallest_sums(costs, 17)
    for row in range(5):
        brute = sorted((sum(float(costs[i][row, c]) for i, c in enumerate(combo)), combo)
                       for combo in itertools.product(*(range(c.shape[1]) for c in costs)))[:17]
        assert [tuple(c) for c in choice[row].tolist()] == [b[1] for b in brute]
        assert np.allclose(total[row].numpy(), [b[0] for b in brute])
    assert k_smallest_sums(costs, 1000)[1].shape == (5, 3 * 4 * 2 * 5, 4)


def test_nearest_lattice_points_brute_force():
    levels = [8, 5, 3]
    scale = [1 / (v // 2) for v in levels]
    b = torch.tensor([[0.3, -1.6, 0.9], [-3.9, 2.0, -0.49]])
    digits = nearest_lattice_points(b, levels, 12, scale=scale)
    lattice = [torch.tensor(p) for p in itertools.product(*(range(v) for v in levels))]
    for row in range(2):
        def cost(p):
            v = torch.tensor([float(p[i]) - levels[i] // 2 for i in range(3)])
            return float((((b[row] - v) * torch.tensor(scale)) ** 2).sum())
        brute = sorted(lattice, key=lambda p: (cost(p), p.tolist()))[:12]
        assert digits[row].tolist() == [p.tolist() for p in brute]
    # the nearest point is the rounded latent
    assert digits[0, 0].tolist() == [0 + 4, -2 + 2, 1 + 1]
    assert digits_to_codes(digits[0, :1], levels).tolist() == [4 + 0 * 8 + 2 * 40]


def test_nearest_corners_are_hamming_neighbours_by_confidence():
    z = torch.tensor([[0.9, -0.1, 0.5, -2.0]])
    bits = nearest_corners(z, 5)[0].tolist()
    own = [1, 0, 1, 0]
    assert bits[0] == own
    assert bits[1] == [1, 1, 1, 0]  # flip the least confident coordinate (|z| = 0.1)
    assert bits[2] == [1, 0, 0, 0]  # then |z| = 0.5
    assert bits[3] == [1, 1, 0, 0]  # 0.1 + 0.5 = 0.6 < 0.9
    assert bits[4] == [0, 0, 1, 0]  # 0.9
    corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)))
    d = ((z - corners) ** 2).sum(1)
    brute = corners[torch.argsort(d, stable=True)[:5]]
    assert torch.equal((brute > 0).long(), torch.tensor(bits))


@pytest.mark.parametrize("name", ["tiny.vq", "tiny.rvq", "tiny.fsq"])
def test_tiny_neighbour_sets(name):
    tok = build_tokenizer(name)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = tok.encode(images)
    sets = tok.neighbours(tokens, 50)
    assert sets.shape == (*tokens.codes.shape, 50)
    assert torch.equal(sets[..., 0], tokens.codes)  # the nearest member is the token's own code
    assert int(sets.min()) >= 0 and int(sets.max()) < tokens.codebook_size
    assert all(len(set(s)) == 50 for s in sets.reshape(-1, 50).tolist())
    q = tok.model.quantizer
    if name == "tiny.fsq":  # brute force over all 1000 lattice points, in quantised-latent units
        every = q.lookup(torch.arange(q.codebook_size).view(1, -1, 1)).squeeze(-1)[0].t()  # (1000, d)
        z = tokens.quantizer_input.reshape(-1, q.dim) / torch.tensor([v // 2 for v in q.levels])
        d = ((z[:, None, :].double() - every[None].double()) ** 2).sum(-1)
        ref = torch.argsort(d, dim=1, stable=True)[:, :50]
        assert (ref == sets.reshape(-1, 50)).float().mean() > 0.999
    assert "nearest" in tok.perturbation_support()


def test_tokens_from_codes_round_trip_and_errors():
    tok = build_tokenizer("tiny.rvq")
    tokens = tok.encode(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    again = tok.tokens_from_codes(tokens.codes, 32, 32)
    assert again.layout == tokens.layout and torch.equal(again.bits, tokens.bits)
    assert torch.equal(tok.decode(again), tok.decode(tokens))
    with pytest.raises(ValueError, match=r"codes of shape \(N, 4, 4, 4\)"):
        tok.tokens_from_codes(tokens.codes[..., :2], 32, 32)
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tok.tokens_from_codes(tokens.codes + 1000, 32, 32)
    with pytest.raises(ValueError, match="integers"):
        tok.tokens_from_codes(tokens.codes.float(), 32, 32)


def test_continuous_and_codec_rows_have_no_pfid():
    with pytest.raises(PerturbationUnsupported, match="codec"):
        build_tokenizer("jpeg.q50").perturbation_support()
    with pytest.raises(PerturbationUnsupported, match="reference"):
        build_tokenizer("identity.none").perturbation_support()


# -- the perturbation -------------------------------------------------------------------------------------
def _sets(n=4, hw=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 50, (n, hw, hw), generator=g)
    others = torch.randint(50, 100, (n, hw, hw, k - 1), generator=g)
    return codes, torch.cat([codes.unsqueeze(-1), others], dim=-1)


def test_perturbation_is_per_image_seeded_and_batch_independent():
    codes, sets = _sets()
    ids = ["a", "b", "c", "d"]
    spec = PerturbationSpec(alpha=0.5, delta=5, beta=1.0, seed=3)
    whole, perturbed, changed = perturb_codes(codes, sets, ids, spec)
    halves = torch.cat([perturb_codes(codes[:2], sets[:2], ids[:2], spec)[0],
                        perturb_codes(codes[2:], sets[2:], ids[2:], spec)[0]])
    assert torch.equal(whole, halves)
    assert torch.equal(perturb_codes(codes, sets, ids, spec)[0], whole)  # same seed, same codes
    assert not torch.equal(perturb_codes(codes, sets, ids, PerturbationSpec(0.5, 5, 1.0, seed=4))[0], whole)
    assert perturbed.all()
    # members 1..4 are never the own code: a token changes with probability alpha * 4/5
    frac = changed.sum().item() / codes.numel()
    assert 0.25 < frac < 0.55
    assert torch.equal(changed, (whole != codes).flatten(1).sum(1))


def test_perturbation_edge_settings():
    codes, sets = _sets()
    ids = list("wxyz")
    assert torch.equal(perturb_codes(codes, sets, ids, PerturbationSpec(alpha=0.0, delta=5))[0], codes)
    out, perturbed, _ = perturb_codes(codes, sets, ids, PerturbationSpec(alpha=1.0, delta=5, beta=0.0))
    assert torch.equal(out, codes) and not perturbed.any()
    out, _, changed = perturb_codes(codes, sets[..., :1], ids, PerturbationSpec(alpha=1.0, delta=1))
    assert torch.equal(out, codes) and changed.sum() == 0  # a set of one is the code itself
    out = perturb_codes(codes, sets, ids, PerturbationSpec(alpha=1.0, delta=5))[0]
    assert bool((out.unsqueeze(-1) == sets).any(-1).all())  # every new code comes from its own set
    with pytest.raises(ValueError, match="do not match"):
        perturb_codes(codes, sets[:, :3], ids, PerturbationSpec())


def test_spec_parsing_and_keys():
    assert PerturbationSpec().key == "a0.5_d100_b1"
    s = PerturbationSpec.parse("a0.25_d20_b0.1", seed=7)
    assert (s.alpha, s.delta, s.beta, s.seed) == (0.25, 20, 0.1, 7) and s.key == "a0.25_d20_b0.1"
    with pytest.raises(ValueError, match="a<alpha>_d<delta>_b<beta>"):
        PerturbationSpec.parse("alpha=0.5")
    with pytest.raises(ValueError, match="alpha"):
        PerturbationSpec(alpha=1.5)
    proto = load_protocol("reconstruction")
    assert selected_metrics(RunConfig(metrics=["rfid", "pfid", "pfid@a0_d100_b1"]), proto) == \
        ["rfid", "pfid", "pfid@a0_d100_b1"]
    # the protocol's default settings under two names: one instance
    assert selected_metrics(RunConfig(metrics=["pfid", "pfid@a0.5_d100_b1", "psnr"]), proto) == ["pfid", "psnr"]
    with pytest.raises(ValueError, match="a<alpha>"):
        selected_metrics(RunConfig(metrics=["pfid@0.5"]), proto)


# -- through the runner -----------------------------------------------------------------------------------
def _run(tokenizers, data, out, metrics, **kw):
    cfg = RunConfig(data=str(data), out=out, metrics=metrics, progress=False, preprocess="native", **kw)
    return {r["tokenizer"]["name"]: r for r in run(tokenizers, cfg)}


def test_pfid_through_the_runner(image_folder, tmp_path):
    metrics = ["rfid", "pfid@a0_d100_b1", "pfid", "pfid@a1_d100_b1"]
    recs = _run(["tiny.vq", "tiny.fsq", "jpeg.q50"], image_folder, tmp_path, metrics, batch_size=3)
    for name in ("tiny.vq", "tiny.fsq"):
        m = recs[name]["metrics"]
        rfid = m["rfid"]["value"]
        assert m["pfid@a0_d100_b1"]["value"] == rfid  # alpha 0: exactly rfid
        assert rfid < m["pfid@a0.5_d100_b1"]["value"] < m["pfid@a1_d100_b1"]["value"], name
        extra = m["pfid@a0.5_d100_b1"]["extra"]
        assert extra["alpha"] == 0.5 and extra["delta"] == 100 and extra["set_size"] == 100
        assert extra["images_perturbed"] == 8 and 0.3 < extra["tokens_changed_fraction"] < 0.5
        assert "nearest" in extra["neighbours"] and extra["extractor"].startswith("inception")
        assert m["pfid@a0_d100_b1"]["extra"]["tokens_changed_fraction"] == 0.0
    jpeg = recs["jpeg.q50"]["metrics"]
    assert jpeg["rfid"]["value"] is not None
    for key in ("pfid@a0_d100_b1", "pfid@a0.5_d100_b1", "pfid@a1_d100_b1"):
        assert jpeg[key]["value"] is None and "codec" in jpeg[key]["reason"]
    from vtbench.leaderboard import build_site
    page = build_site([tmp_path], tmp_path / "site").read_text()
    assert "pFID a0.5_d100_b1" in page and "pFID a1_d100_b1" in page
    # same seed, different batch size: the same perturbation (float32 conv rounding aside)
    again = _run(["tiny.vq"], image_folder, tmp_path / "b", ["pfid"], batch_size=8)["tiny.vq"]["metrics"]
    assert again["pfid@a0.5_d100_b1"]["value"] == pytest.approx(
        recs["tiny.vq"]["metrics"]["pfid@a0.5_d100_b1"]["value"], rel=1e-3)
    assert again["pfid@a0.5_d100_b1"]["extra"]["tokens_changed_fraction"] == \
        recs["tiny.vq"]["metrics"]["pfid@a0.5_d100_b1"]["extra"]["tokens_changed_fraction"]
