import math

import torch

from vtbench.metrics.base import Batch
from vtbench.metrics.compression import Compression, histogram_entropy
from vtbench.tokenizers.base import Tokens, code_bits


def _batch(tokens, n=2, size=32):
    x = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    return Batch(ids=[str(i) for i in range(n)], original=x, reconstruction=x, tokens=tokens)


def test_vq_accounting_and_uniform_entropy():
    k, n = 16, 2
    codes = torch.arange(n * 4 * 4).reshape(n, 4, 4) % k  # every code used equally often
    tok = Tokens(kind="vq", bits=code_bits(16, k, n), tokens_per_image=16, codes=codes, layout=("h", "w"),
                 codebook_size=k)
    m = Compression()
    per = m.update(_batch(tok, n))
    v = {key: mv.value for key, mv in m.compute().items()}
    assert v["tokens_per_image"] == 16 and v["bits_per_token"] == 4.0 and v["bits_per_image"] == 64.0
    assert math.isclose(v["bpp"], 64 / (32 * 32)) and math.isclose(v["compression_ratio"], 24 * 32 * 32 / 64)
    assert math.isclose(v["token_entropy"], 4.0) and v["codebook_usage"] == 1.0
    assert math.isclose(v["codebook_perplexity"], 16.0)
    assert per["bits_per_image"].tolist() == [64.0, 64.0]


def test_rvq_groups_per_depth():
    n, k, depth = 1, 4, 2
    codes = torch.zeros(n, 2, 2, depth, dtype=torch.long)
    codes[..., 1] = torch.tensor([[0, 1], [2, 3]])  # depth 0 uses one code, depth 1 uses all four
    tok = Tokens(kind="rvq", bits=code_bits(4 * depth, k, n), tokens_per_image=4, codes=codes,
                 layout=("h", "w", "depth"), codebook_size=k)
    m = Compression()
    m.update(_batch(tok, n))
    v = m.compute()
    assert v["bits_per_token"].value == 4.0  # depth x log2 K
    assert math.isclose(v["codebook_usage"].value, (0.25 + 1.0) / 2)
    assert math.isclose(v["token_entropy"].value, (0.0 + 2.0) / 2)


def test_codec_has_no_codebook_values_but_real_bits():
    tok = Tokens(kind="codec", bits=torch.tensor([800.0, 1600.0], dtype=torch.float64), tokens_per_image=None,
                 payload=[b"x" * 100, b"x" * 200])
    m = Compression()
    m.update(_batch(tok))
    v = m.compute()
    assert v["bits_per_image"].value == 1200.0
    assert v["tokens_per_image"].value is None and "codec" in v["tokens_per_image"].reason
    assert v["codebook_usage"].value is None and v["codebook_usage"].reason


def test_state_round_trip_and_merge_equals_single_pass():
    k = 8
    gen = torch.Generator().manual_seed(0)
    toks = [Tokens(kind="vq", bits=code_bits(4, k, 2), tokens_per_image=4,
                   codes=torch.randint(0, k, (2, 2, 2), generator=gen), layout=("h", "w"), codebook_size=k)
            for _ in range(3)]
    whole = Compression()
    for t in toks:
        whole.update(_batch(t))
    a, b = Compression(), Compression()
    a.update(_batch(toks[0]))
    for t in toks[1:]:
        b.update(_batch(t))
    a.merge_state(b.state_tensors())
    c = Compression()
    c.load_state_tensors(whole.state_tensors())
    ref = {k: v.value for k, v in whole.compute().items()}
    assert {k: v.value for k, v in a.compute().items()} == ref
    assert {k: v.value for k, v in c.compute().items()} == ref


def test_histogram_entropy_matches_scipy():
    from scipy.stats import entropy
    h = torch.tensor([[5.0, 0.0, 3.0, 2.0]])
    assert math.isclose(histogram_entropy(h).item(), entropy([5, 0, 3, 2], base=2), rel_tol=1e-12)


def test_scalar_channels_and_token_views():
    """TokenBridge-style scalar tokens: per-channel quantisers are separate groups; both token views share bits."""
    n, h, c, bits = 2, 4, 3, 6
    k = 2 ** bits
    codes = torch.zeros(n, h, h, c, dtype=torch.long)
    codes[..., 2] = torch.arange(n * h * h).reshape(n, h, h) % k  # channel 2 uses 32 levels, others one
    tok = Tokens(kind="scalar", bits=code_bits(h * h * c, k, n), tokens_per_image=h * h * c, codes=codes,
                 layout=("h", "w", "channel"), codebook_size=k, meta={"token_views": {"positions": h * h}})
    m = Compression()
    m.update(_batch(tok, n))
    v = m.compute()
    assert v["tokens_per_image"].value == 48 and v["bits_per_token"].value == 6.0
    views = v["bits_per_token"].extra["views"]
    assert views == {"positions": {"tokens_per_image": 16, "bits_per_token": 18.0}}
    assert (v["bits_per_image"].value == 48 * 6
            == views["positions"]["tokens_per_image"] * views["positions"]["bits_per_token"])
    assert v["codebook_usage"].extra["codebooks"] == 3
    assert math.isclose(v["codebook_usage"].value, (1 / k + 1 / k + 32 / k) / 3)


def test_non_finite_bits_give_null_with_reason_never_inf_or_zero():
    """A tokenizer reporting NaN / inf bits for an image: every bit-derived value is null with the reason (24 / inf
    was reported as a compression ratio of 0, inf bits as inf); counts that do not read the bits are kept."""
    for bad in (math.nan, math.inf):
        bits = code_bits(16, 16, 2)
        bits[1] = bad
        tok = Tokens(kind="vq", bits=bits, tokens_per_image=16, codes=torch.zeros(2, 4, 4, dtype=torch.long),
                     layout=("h", "w"), codebook_size=16, meta={"token_views": {"scalars": 64}})
        m = Compression()
        m.update(_batch(tok))
        v = m.compute()
        for key in ("bits_per_image", "bpp", "compression_ratio", "bits_per_token"):
            assert v[key].value is None and "non-finite bit count" in v[key].reason, (bad, key)
        assert v["tokens_per_image"].value == 16 and v["codebook_usage"].value == 1 / 16
        assert v["bits_per_token"].extra["views"] == {"scalars": {"tokens_per_image": 64.0, "bits_per_token": None}}


def test_kind_and_token_views_survive_resume_and_merge():
    """An instance that only loads or merges state (a resumed run with nothing left, a rank without data) reports
    what the fed instance reports: the kind comes from the tokenizer, the token views are summed states."""
    from types import SimpleNamespace
    tokenizer = SimpleNamespace(card=SimpleNamespace(kind="codec"))
    codec = Tokens(kind="codec", bits=torch.tensor([800.0, 1600.0], dtype=torch.float64), tokens_per_image=None,
                   payload=[b"x" * 100, b"x" * 200])
    fed = Compression(tokenizer=tokenizer)
    fed.update(_batch(codec))
    resumed = Compression(tokenizer=tokenizer)
    resumed.load_state_tensors(fed.state_tensors())
    merged = Compression(tokenizer=tokenizer)
    merged.merge_state(fed.state_tensors())
    for other in (resumed, merged):
        assert ({k: v.to_dict() for k, v in other.compute().items()}
                == {k: v.to_dict() for k, v in fed.compute().items()})
    assert "a codec has no token positions" in resumed.compute()["tokens_per_image"].reason

    views = [Tokens(kind="scalar", bits=code_bits(16, 16, 2), tokens_per_image=16, meta={"token_views": {"scalars": s}})
             for s in (64, 256)]  # two image sizes: the view is averaged over images like tokens_per_image
    fed = Compression()
    for t in views:
        fed.update(_batch(t))
    resumed = Compression()
    resumed.load_state_tensors(fed.state_tensors())
    want = {"scalars": {"tokens_per_image": 160.0, "bits_per_token": 64 / 160}}
    assert (resumed.compute()["tokens_per_image"].extra["views"] == want
            == fed.compute()["bits_per_token"].extra["views"])
