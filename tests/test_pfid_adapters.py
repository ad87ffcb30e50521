"""pFID neighbour sets of the official discrete adapters (``Tokens.quantizer_input``, ``neighbour_rule``,
``neighbours``), on the scaled-down random checkpoints the adapter tests build (their helpers are imported).

For every family: set shapes ``(N, *layout, min(delta, K))``, candidates in ``[0, K)`` (RQ-VAE: never the
checkpoint's padding row), the code itself first, sets equal to a brute-force float64 ``cdist`` + stable argsort on
``tokens.quantizer_input`` (which must be the vector the quantiser compared), perturbed codes decode, and codes
wrapped by ``tokens_from_codes`` decode exactly like the encoded tokens. Then one check per kind whose answer is
known by construction (codebooks on a line or a circle, TokenBridge's 4-bit levels), and the continuous rows.

Parity with ImageFolder's ``latent_perturbation.add_perturbation`` (its top-delta sets on LlamaGen's
normalised vectors) was measured outside the suite; see the adapter report.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import test_adapter_gigatok as G
import test_adapter_llamagen as L
import test_adapter_rqvae as R
import test_adapter_taming as T
import test_adapter_tokenbridge as TB
import test_adapter_var as V
import torch
import torch.nn.functional as F

from vtbench.metrics.base import MetricUnavailable
from vtbench.metrics.pfid import PFID, PerturbationSpec, perturb_codes
from vtbench.tokenizers.base import PerturbationUnsupported
from vtbench.tokenizers.gigatok import GigaTokTokenizer
from vtbench.tokenizers.llamagen import LlamaGenVQ
from vtbench.tokenizers.rqvae import RQVAETokenizer
from vtbench.tokenizers.taming import TamingVQGAN
from vtbench.tokenizers.tokenbridge import TokenBridgeTokenizer
from vtbench.tokenizers.var import VARTokenizer

FAMILIES = ["llamagen", "taming", "gigatok", "rqvae-shared", "rqvae-per-depth", "var", "var-znorm",
            "tokenbridge-4bit", "tokenbridge-8bit"]


def _tokenbridge_ckpt(tmp):
    """As test_adapter_tokenbridge's ``small_ckpt``: random VAE whose latent spans the quantiser's range."""
    torch.manual_seed(0)
    model = TokenBridgeTokenizer.build_model(TB.SMALL)
    with torch.no_grad():
        model.quant_conv.weight[:4] *= 40.0
        model.quant_conv.bias[:4] *= 40.0
    path = tmp / "kl16.ckpt"
    torch.save({"model": model.state_dict()}, path)
    return path


def _build(name: str, tmp):
    """(tokenizer, images, side) for one family, loaded from a checkpoint in the official layout."""
    torch.manual_seed(1)  # the adapter helpers build before they seed: pin the initial weights
    if name == "llamagen":
        path = L.save_training_checkpoint(tmp / "vq_ds16_c2i.pt", L.random_model())
        return LlamaGenVQ.from_card(L.small_card(), weights=path), L.images(2, 32, seed=3), 32
    if name == "taming":
        path = tmp / "last.ckpt"
        torch.save(T.lightning_checkpoint(T.random_model()), path)
        return TamingVQGAN.from_card(T.small_card(), weights=path), T.images(2, 32, seed=3), 32
    if name == "gigatok":
        path, _ = G._official_file(tmp)
        return GigaTokTokenizer.from_card(G._small_card("gigatok.s-s"), weights=path), G._images(seed=3), 32
    if name.startswith("rqvae"):
        card = R.small_card(shared_codebook=name == "rqvae-shared")
        path = R.save_official(tmp / "model.pt", card.params, seed=2)
        return RQVAETokenizer.from_card(card, weights=path), R._images(seed=3), 32
    if name.startswith("var"):
        card = V.small_card(using_znorm=name == "var-znorm")
        path = V.save_official(tmp / "vae.pth", card.params, seed=2)
        return VARTokenizer.from_card(card, weights=path), V._images(seed=3), V.SIZE
    if name.startswith("tokenbridge"):
        bits = name.split("-")[1]
        return (TokenBridgeTokenizer.from_card(TB._card(f"kl16-{bits}"), weights=_tokenbridge_ckpt(tmp)),
                TB._images(seed=3), TB.SIZE)
    raise KeyError(name)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    tok, x, side = _build(request.param, tmp_path_factory.mktemp(request.param))
    with torch.inference_mode():
        t = tok.encode(x)
    return request.param, tok, x, side, t


def _books(name: str, tok) -> list[torch.Tensor]:
    """The codebook(s) each position's set is drawn from, rebuilt from the raw weights (float64): one per depth
    for RQ-VAE, else one."""
    return [b.detach() for b in _raw_books(name, tok)]


def _raw_books(name: str, tok) -> list[torch.Tensor]:
    if name in ("llamagen", "taming"):
        w = tok.model.quantize.embedding.weight
        return [(F.normalize(w, dim=1) if name == "llamagen" else w).double()]
    if name == "gigatok":
        return [F.normalize(tok.model.quantize.embedding.weight, dim=1).double()]
    if name.startswith("rqvae"):
        q = tok.model.quantizer
        return [(q.codebook if q.shared else q.codebook[i]).double() for i in range(q.depth)]
    if name.startswith("var"):
        cb = tok.model.quantize.codebook
        return [(F.normalize(cb, dim=1) if name == "var-znorm" else cb).double()]
    return [tok.quantizer.centres.double().unsqueeze(1)]  # TokenBridge: the 1-D representatives


def _brute(qin: torch.Tensor, book: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, distances) of the k nearest rows, float64 cdist from differences (not the matmul form),
    ordered by (distance, index)."""
    d = torch.cdist(qin.reshape(-1, qin.shape[-1]).double(), book, compute_mode="donot_use_mm_for_euclid_dist")
    order = torch.sort(d, dim=1, stable=True).indices[:, :k]
    return order, d


def _per_book(name: str, t, cand: torch.Tensor, tok):
    """Yield (quantizer inputs (M, d), candidates (M, k), codes (M,), book) per codebook."""
    books = _books(name, tok)
    if name.startswith("rqvae"):
        for i, book in enumerate(books):
            yield (t.quantizer_input[..., i, :].reshape(-1, t.quantizer_input.shape[-1]),
                   cand[..., i, :].reshape(-1, cand.shape[-1]), t.codes[..., i].reshape(-1), book)
    else:
        yield (t.quantizer_input.reshape(-1, t.quantizer_input.shape[-1]), cand.reshape(-1, cand.shape[-1]),
               t.codes.reshape(-1), books[0])


def test_rule_is_one_line(family):
    name, tok, *_ = family
    rule = tok.perturbation_support()
    assert rule == tok.neighbour_rule and "\n" not in rule and "delta" in rule
    assert ("l2-normalised" in rule) == (name in ("llamagen", "gigatok", "var-znorm"))
    assert ("padding row is never a candidate" in rule) == name.startswith("rqvae")
    assert ("cosine" in rule) == (name in ("llamagen", "gigatok", "var-znorm"))


def test_quantizer_input_layout(family):
    name, tok, x, _, t = family
    qin = t.quantizer_input
    assert qin is not None and qin.dtype == torch.float32 and qin.shape[:-1] == t.codes.shape
    dim = {"llamagen": 4, "taming": 4, "gigatok": 8, "rqvae-shared": 16, "rqvae-per-depth": 16, "var": 8,
           "var-znorm": 8}.get(name, 1)  # RQ-VAE stacks 2x2 latent vectors of 4 channels per code position
    assert qin.shape[-1] == dim
    if name in ("llamagen", "gigatok", "var-znorm"):
        assert torch.allclose(qin.norm(dim=-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("delta", [1, 7, 100])
def test_sets_shape_range_and_code_first(family, delta):
    name, tok, _, _, t = family
    cand = tok.neighbours(t, delta)
    k = min(delta, t.codebook_size)
    assert cand.dtype == torch.int64 and cand.shape == (*t.codes.shape, k)
    assert int(cand.min()) >= 0 and int(cand.max()) < t.codebook_size
    flat = cand.reshape(-1, k)
    assert all(len(set(row)) == k for row in flat.tolist())  # no repeated candidate
    first_is_code = (cand[..., 0] == t.codes).double().mean().item()
    assert first_is_code == 1.0, f"{name}: first candidate is the code at {first_is_code:.4%} of positions"
    if delta >= t.codebook_size:  # the whole codebook, reordered (RQ-VAE: the padding row index K never appears)
        assert torch.equal(flat.sort(dim=1).values, torch.arange(k).expand_as(flat))


@pytest.mark.parametrize("delta", [7, 100])
def test_sets_equal_brute_force(family, delta):
    name, tok, _, _, t = family
    cand = tok.neighbours(t, delta)
    k = cand.shape[-1]
    for qin, c, codes, book in _per_book(name, t, cand, tok):
        ref, d = _brute(qin, book, k)
        # the quantiser input is the vector the quantiser compared: its brute-force nearest entry is the code
        assert torch.equal(ref[:, 0], codes)
        if name.startswith("tokenbridge"):  # exact |u - c| ordering on both sides
            assert torch.equal(c, ref)
            continue
        same_order = (c == ref).all(1).double().mean().item()
        same_set = (c.sort(1).values == ref.sort(1).values).all(1).double().mean().item()
        assert same_set >= 0.99 and same_order >= 0.99, (name, same_set, same_order)
        # wherever they differ it is a float32 near-tie: candidate distances equal the k smallest within 1e-5
        assert torch.allclose(d.gather(1, c), d.gather(1, ref), rtol=0, atol=1e-5 * float(d.max()))


def test_perturbed_codes_decode(family):
    name, tok, x, _, t = family
    cand = tok.neighbours(t, 7)
    ids = [f"img{i}" for i in range(len(t))]
    codes, perturbed, changed = perturb_codes(t.codes, cand, ids, PerturbationSpec(alpha=1.0, delta=7, beta=1.0))
    assert perturbed.all() and int(changed.sum()) > 0
    assert (codes.unsqueeze(-1) == cand).any(-1).all()  # every token drawn from its own set
    with torch.inference_mode():
        clean = tok.decode(t)
        y = tok.decode(dataclasses.replace(t, codes=codes))
        same = tok.decode(dataclasses.replace(t, codes=perturb_codes(
            t.codes, cand, ids, PerturbationSpec(alpha=0.0, delta=7, beta=1.0))[0]))
    assert y.shape == x.shape and torch.isfinite(y).all() and 0 <= float(y.min()) and float(y.max()) <= 1
    assert not torch.equal(y, clean) and torch.equal(same, clean)


def test_tokens_from_codes_decode_identically(family):
    name, tok, _, side, t = family
    wrapped = tok.tokens_from_codes(t.codes, side, side)
    with torch.inference_mode():
        assert torch.equal(tok.decode(wrapped), tok.decode(t))
    assert wrapped.quantizer_input is None
    with pytest.raises(ValueError, match="quantizer_input"):
        tok.neighbours(wrapped, 5)


def test_quantizer_input_is_what_the_quantiser_compared(family):
    """Each family's stored vectors against an independent computation from the model's parts."""
    name, tok, x, _, t = family
    qin = t.quantizer_input
    with torch.inference_mode():
        xm = tok.to_model(x)
        if name in ("llamagen", "taming"):
            z = tok.model.quant_conv(tok.model.encoder(xm))
            z = F.normalize(z, dim=1) if name == "llamagen" else z
            assert torch.equal(qin, z.permute(0, 2, 3, 1))
        elif name == "gigatok":
            assert torch.equal(qin, F.normalize(tok.model.encode_latents(xm), dim=-1))
        elif name.startswith("rqvae"):
            q = tok.model.quantizer
            assert torch.equal(qin[..., 0, :], q.group(tok.model.latent(xm)))
            for i in range(q.depth - 1):  # each depth quantises what the previous one left over
                assert torch.equal(qin[..., i + 1, :], qin[..., i, :] - q.book(i)[t.codes[..., i]])
        elif name.startswith("var"):
            f = tok.model.latent(xm)
            first = f.mean(dim=(2, 3))  # scale 1: the area mean of the whole latent
            first = F.normalize(first, dim=-1) if name == "var-znorm" else first
            assert torch.allclose(qin[:, 0], first, atol=1e-6)
            assert qin.shape[1] == sum(p * p for p in V.SMALL["v_patch_nums"])
        else:
            z, _ = tok.model.moments(xm)
            u = tok.quantizer.normalise(z).permute(0, 2, 3, 1).unsqueeze(-1)
            assert torch.equal(qin, u) and float(qin.abs().max()) <= tok.quantizer.std_range


# -- answers known by construction ----------------------------------------------------------------------------
def _line_order(pos: float, n: int) -> list[int]:
    """Integer points 0..n-1 by distance to ``pos`` (ties to the lower point)."""
    return sorted(range(n), key=lambda j: (abs(j - pos), j))


def test_vq_plain_codebook_on_a_line(tmp_path):
    """taming (plain L2): entry perm[j] = j * e0; a query at 10.3 e0 ranks 10, 11, 9, 12, ...; at 10.5 the
    equidistant pairs come out lower index first."""
    tok, x, _ = _build("taming", tmp_path)
    K = tok.codebook_size
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        w = tok.model.quantize.embedding.weight
        w.zero_()
        w[perm, 0] = torch.arange(K, dtype=w.dtype)
    t = tok.encode(x)
    for pos in (10.3, 10.5, -4.0, 40.0):
        z = torch.zeros(1, 4, 2, 3)
        z[:, 0] = pos
        qin = tok.model.quantize.quantizer_input(z)
        cand = tok.neighbours(dataclasses.replace(t, quantizer_input=qin), 9)
        value = torch.empty(K, dtype=torch.long)
        value[perm] = torch.arange(K)  # code m sits at value[m] * e0
        expected = sorted(range(K), key=lambda m: (abs(int(value[m]) - pos), m))[:9]
        if pos == 10.5:  # ties (10, 11), (9, 12), ...: the lower code index first within each pair
            assert expected[:2] == sorted((int(perm[10]), int(perm[11])))
        assert cand.shape == (1, 2, 3, 9) and (cand == torch.tensor(expected)).all()
        assert (cand[..., 0] == tok.model.quantize.encode(z)).all()


@pytest.mark.parametrize("name", ["llamagen", "gigatok"])
def test_l2_normalised_codebook_on_a_circle(name, tmp_path):
    """Entries j at angle 2 pi j / K with random lengths: after normalisation the ranking is by angle only."""
    tok, x, _ = _build(name, tmp_path)
    quant = tok.model.quantize
    K, d = quant.embedding.weight.shape
    g = torch.Generator().manual_seed(0)
    theta = 2 * math.pi * torch.arange(K) / K
    radius = 0.5 + 4.5 * torch.rand(K, generator=g)
    with torch.no_grad():
        quant.embedding.weight.zero_()
        quant.embedding.weight[:, 0] = radius * torch.cos(theta)
        quant.embedding.weight[:, 1] = radius * torch.sin(theta)
    t = tok.encode(x)
    phi = 2 * math.pi * 5.3 / K
    vec = torch.zeros(d)
    vec[0], vec[1] = 7 * math.cos(phi), 7 * math.sin(phi)  # the length must not matter either
    expected = torch.tensor(_line_order(5.3, K)[:9])  # 5, 6, 4, 7, 3, ... (angle decides)
    if name == "llamagen":
        z = vec.view(1, d, 1, 1).expand(1, d, 2, 2)
    else:
        z = vec.view(1, 1, d).expand(1, t.codes.shape[1], d)
    qin = quant.quantizer_input(z)
    assert torch.allclose(qin.norm(dim=-1), torch.ones(()))
    cand = tok.neighbours(dataclasses.replace(t, quantizer_input=qin), 9)
    assert (cand == expected).all()
    plain = torch.cdist(vec.view(1, d), quant.embedding.weight).argsort(1)[0, :9]
    assert not torch.equal(plain, expected)  # without the normalisation the answer would differ


def test_rvq_each_depth_uses_its_residual_and_codebook(tmp_path):
    """Shared codebook on a line: a latent at 10.3 e0 is coded 10, then the residual 0.3 twice; per-depth
    codebooks scaled differently rank each depth's query on its own codebook."""
    tok, _, _ = _build("rqvae-shared", tmp_path)
    q = tok.model.quantizer
    K = q.n_embed
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q.codebook.zero_()
        q.codebook[perm, 0] = torch.arange(K, dtype=q.codebook.dtype)
    v = torch.zeros(1, 2, 2, q.dim)
    v[..., 0] = 10.3
    codes, qin = q.encode_with_inputs(q.ungroup(v))
    assert (codes == torch.stack([perm[10], perm[0], perm[0]])).all()
    assert torch.allclose(qin[..., 0], torch.tensor([10.3, 0.3, 0.3]).expand(1, 2, 2, 3), atol=1e-5)
    cand = q.neighbours(qin, 4)
    assert (cand[..., 0, :] == perm[[10, 11, 9, 12]]).all()
    assert (cand[..., 1, :] == perm[[0, 1, 2, 3]]).all() and (cand[..., 2, :] == perm[[0, 1, 2, 3]]).all()

    tok, _, _ = _build("rqvae-per-depth", tmp_path)
    q = tok.model.quantizer
    with torch.no_grad():
        q.codebook.zero_()
        for i in range(q.depth):  # depth i: entry j at (j * (i + 1)) e0 in reversed index order
            q.codebook[i, :, 0] = torch.arange(K - 1, -1, -1, dtype=q.codebook.dtype) * (i + 1)
    qin = torch.zeros(1, 1, 1, q.depth, q.dim)
    qin[..., 0] = 6.2
    cand = q.neighbours(qin, 3)
    for i, pos in enumerate((6.2, 3.1, 6.2 / 3)):  # the same query, each depth's own spacing
        assert cand[0, 0, 0, i].tolist() == [K - 1 - j for j in _line_order(pos, K)[:3]]


@pytest.mark.parametrize("name", ["var", "var-znorm"])
def test_multiscale_first_scale(name, tmp_path):
    """A constant latent: scale 1 quantises its value; the set is ranked on the shared codebook (a line for
    L2, a circle for cosine)."""
    tok, _, _ = _build(name, tmp_path)
    q = tok.model.quantize
    K = q.vocab_size
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q.codebook.zero_()
        if name == "var":
            q.codebook[perm, 0] = torch.arange(K, dtype=q.codebook.dtype)
        else:
            theta = 2 * math.pi * torch.arange(K) / K
            q.codebook[perm, 0], q.codebook[perm, 1] = 3 * torch.cos(theta), 3 * torch.sin(theta)
    side = q.patch_nums[-1]
    f = torch.zeros(1, q.channels, side, side)
    if name == "var":
        f[:, 0] = 10.3
    else:
        f[:, 0], f[:, 1] = 2 * math.cos(2 * math.pi * 10.3 / K), 2 * math.sin(2 * math.pi * 10.3 / K)
    codes, qin = q.encode_with_inputs(f)
    cand = q.neighbours(qin, 5)
    assert cand.shape == (1, q.tokens, 5) and int(cand[0, 0, 0]) == int(codes[0, 0]) == int(perm[10])
    assert cand[0, 0].tolist() == [int(perm[j]) for j in _line_order(10.3, K)[:5]]


def test_scalar_levels_at_4_bits(tmp_path):
    """A value between representatives j and j+1 has {j, j+1} first, nearer one first; beyond the clamp the
    outermost levels come first; delta >= 16 reorders all 16 levels."""
    tok, x, _ = _build("tokenbridge-4bit", tmp_path)
    q = tok.quantizer
    c = q.centres
    assert q.levels == 16 and bool((c[1:] > c[:-1]).all())
    t = tok.encode(x)
    j = torch.arange(15)
    u = torch.stack([c[j] + 0.3 * (c[j + 1] - c[j]), c[j] + 0.7 * (c[j + 1] - c[j])], dim=1)  # (15, 2)
    qin = u.reshape(1, 15, 2, 1, 1)  # (N, h, w, channel, 1)
    cand = tok.neighbours(dataclasses.replace(t, codes=t.codes[:1, :15, :2, :1], quantizer_input=qin), 3)
    assert cand.shape == (1, 15, 2, 1, 3)
    cand = cand[0, :, :, 0]
    assert torch.equal(cand[:, 0, :2], torch.stack([j, j + 1], 1))  # nearer to j
    assert torch.equal(cand[:, 1, :2], torch.stack([j + 1, j], 1))  # nearer to j + 1
    # the same through the encoder's path: latents that map to u are coded as the first candidate
    s, lo, hi = q.std_range, q.lo, q.hi
    z = ((u + s) / (2 * s) * (hi - lo) + lo) / q.scale
    assert torch.allclose(q.normalise(z), u, atol=1e-5)
    assert torch.equal(q.encode(z), cand[..., 0])
    far = q.normalise(torch.tensor([[1e3], [-1e3]]))  # clamped to +-std_range
    order = q.neighbours(far.unsqueeze(-1), 16)[:, 0]
    assert order[0].tolist() == list(range(15, -1, -1)) and order[1].tolist() == list(range(16))


# -- continuous rows: pFID undefined ------------------------------------------------------------------------
def _assert_undefined(tok):
    with pytest.raises(PerturbationUnsupported, match="continuous latents") as exc:
        tok.perturbation_support()
    assert tok.name in exc.value.reason and tok.neighbour_rule is None
    with pytest.raises(PerturbationUnsupported):
        tok.neighbours(None, 5)
    with pytest.raises(MetricUnavailable, match="continuous"):
        PFID(tokenizer=tok)


def test_tokenbridge_continuous_is_undefined(tmp_path):
    tok = TokenBridgeTokenizer.from_card(TB._card("kl16-continuous"), weights=_tokenbridge_ckpt(tmp_path))
    assert tok.encode(TB._images(1)).quantizer_input is None
    _assert_undefined(tok)


def test_diffusers_vae_is_undefined():
    pytest.importorskip("diffusers")
    from test_adapter_diffusers_vae import _tiny_vae

    from vtbench.config import get_card
    from vtbench.tokenizers.diffusers_vae import DiffusersVAETokenizer
    tok = DiffusersVAETokenizer(get_card("vae.sd-ft-ema"), _tiny_vae())
    assert tok.encode(TB._images(1)).quantizer_input is None
    _assert_undefined(tok)

