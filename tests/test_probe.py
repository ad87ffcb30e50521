"""The AR probe (vtbench/probe): model invariants, sampling, training, resume, DDP sharding, end to end."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vtbench.cli import app
from vtbench.probe import (
    CheckpointMismatch,
    ClassConditionalGPT,
    GPTConfig,
    SamplingSettings,
    TokenStream,
    TrainSettings,
    cfg_logits,
    filter_logits,
    generate,
    search_cfg,
    shard_slice,
    split_by_id,
    train_prior,
    validation_ce,
)
from vtbench.probe.sample import sample_batches, sample_uniforms, shard
from vtbench.probe.train import shard_loss

CPU = torch.device("cpu")


def tiny_model(seed: int = 0, *, vocab: int = 32, block: int = 12, classes: int = 3, dropout: float = 0.1,
               random_head: bool = True, dtype=torch.float32) -> ClassConditionalGPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, block_size=block, num_classes=classes, dim=32, n_layer=2, n_head=4,
                    multiple_of=16, token_dropout=dropout, resid_dropout=dropout, ffn_dropout=dropout,
                    class_dropout=dropout)
    m = ClassConditionalGPT(cfg)
    if random_head:  # LlamaGen zero-initialises the output layer: every logit would be 0
        torch.nn.init.normal_(m.output.weight, std=0.5)
    return m.to(dtype).eval()


def synthetic_codes(n: int, block: int = 12, vocab: int = 32, classes: int = 3, seed: int = 0):
    """A learnable token set: code t of an image of class c is (c * 5 + start + t) mod vocab, start random."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    start = torch.randint(0, 4, (n, 1), generator=g)
    codes = (labels[:, None] * 5 + start + torch.arange(block)[None]) % vocab
    return codes.to(torch.int32), labels


# -- the model ---------------------------------------------------------------------------------------------------
def test_model_is_causal():
    m = tiny_model()
    codes = torch.randint(0, 32, (2, 11))
    labels = torch.tensor([0, 2])
    base = m(codes, labels)
    assert base.shape == (2, 12, 32)
    k = 6
    changed = codes.clone()
    changed[:, k] = (changed[:, k] + 1) % 32
    other = m(changed, labels)
    assert torch.equal(base[:, :k + 1], other[:, :k + 1])  # logits[:, i] (code i) sees only codes < i
    assert not torch.allclose(base[:, k + 1:], other[:, k + 1:])
    other_class = m(codes, torch.tensor([1, 2]))
    assert not torch.allclose(base[0], other_class[0]) and torch.equal(base[1], other_class[1])


def test_llamagen_init_and_size_b():
    m = ClassConditionalGPT(GPTConfig(vocab_size=16384, block_size=256, num_classes=1000))
    assert 110e6 < m.n_params() < 112e6  # LlamaGen GPT-B: 111M
    assert torch.count_nonzero(m.output.weight) == 0  # uniform first logits: CE = ln(V)
    codes, labels = synthetic_codes(4, block=12, vocab=32)
    ce, n = validation_ce(tiny_model(random_head=False), codes, labels, CPU)
    assert n == 4 * 12 and ce == pytest.approx(math.log(32), abs=1e-6)


@pytest.mark.parametrize("scale,top_k,top_p", [(1.0, 0, 1.0), (2.0, 0, 1.0), (1.5, 5, 0.9)])
def test_kv_cache_sampling_equals_recomputation(scale, top_k, top_p):
    m = tiny_model(dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    u = sample_uniforms([0, 1, 2, 3], 12, seed=3)
    s = SamplingSettings(cfg_scale=scale, top_k=top_k, top_p=top_p, temperature=0.9)
    fast = generate(m, labels, u, s, use_cache=True)
    slow = generate(m, labels, u, s, use_cache=False)
    assert fast.shape == (4, 12) and torch.equal(fast, slow)


def test_kv_cache_fills_in_place_and_refuses_overflow():
    from vtbench.probe.model import KVCache

    cache = KVCache(n_layer=2, capacity=5)
    k0, v0 = torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4)
    k, v = cache.append(0, k0, v0)
    assert torch.equal(k, k0) and torch.equal(v, v0)
    k1 = torch.randn(2, 3, 1, 4)
    k, v = cache.append(0, k1, k1)
    assert k.shape[2] == 4 and torch.equal(k[:, :, :3], k0) and torch.equal(k[:, :, 3:], k1)
    buffer = cache.k[0]
    cache.append(0, k1, k1)
    assert cache.k[0] is buffer  # no reallocation while filling
    assert cache.filled == [5, 0]
    with pytest.raises(ValueError, match="5 positions"):
        cache.append(0, k1, k1)
    m = tiny_model().eval()
    full = KVCache(m.cfg.n_layer, m.cfg.block_size)
    with torch.no_grad():  # class token + block_size - 1 codes fill the cache
        m(torch.zeros(1, m.cfg.block_size - 1, dtype=torch.long), torch.tensor([0]), cache=full)
        assert full.length == m.cfg.block_size
        with pytest.raises(ValueError, match="block_size"):
            m.step(torch.tensor([1]), full)


def test_cfg_scale_one_is_conditional_and_zero_unconditional():
    c, u = torch.randn(3, 10), torch.randn(3, 10)
    assert cfg_logits(c, u, 1.0) is c
    assert torch.allclose(cfg_logits(c, u, 3.0), u + 3.0 * (c - u))
    m = tiny_model(dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    uni = sample_uniforms([0, 1, 2], 12, seed=0)
    # scale 1: codes picked from the conditional logits alone (manual loop, no cache)
    s1 = SamplingSettings(cfg_scale=1.0)
    got = generate(m, labels, uni, s1)
    from vtbench.probe.sample import pick
    codes = torch.zeros(3, 0, dtype=torch.long)
    for i in range(12):
        codes = torch.cat((codes, pick(m(codes, labels)[:, -1], uni[:, i], s1)[:, None]), 1)
    assert torch.equal(got, codes)
    # scale 0 through the doubled batch == sampling the null class without guidance
    zero = generate(m, labels, uni, SamplingSettings(cfg_scale=0.0))
    null = generate(m, torch.full_like(labels, m.null_class), uni, s1)
    assert torch.equal(zero, null)


def test_sampling_is_seeded_per_sample():
    m = tiny_model(dtype=torch.float64)
    s = SamplingSettings(cfg_scale=2.0, seed=7)
    u1 = sample_uniforms([0, 1, 2, 3], 12, seed=7)
    assert torch.equal(u1[2:3], sample_uniforms([2], 12, seed=7))  # a sample's randomness is its own
    assert not torch.equal(u1, sample_uniforms([0, 1, 2, 3], 12, seed=8))
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.equal(generate(m, labels, u1, s), generate(m, labels, u1, s))
    plan = [0, 0, 1, 1, 2, 2]
    decode = lambda c: torch.rand(c.shape[0], 3, 4, 4)  # noqa: E731 - codes are what is compared
    by1 = torch.cat([c for c, _ in sample_batches(m, plan, range(6), s, 1, CPU, decode)])
    by4 = torch.cat([c for c, _ in sample_batches(m, plan, range(6), s, 4, CPU, decode)])
    assert torch.equal(by1, by4)  # independent of the batch size


def test_filter_logits():
    x = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert (torch.isinf(filter_logits(x, top_k=2)[0, 2:]).all()
            and torch.isfinite(filter_logits(x, top_k=2)[0, :2]).all())
    p = torch.softmax(x, -1)[0]  # 0.64, 0.24, 0.09, 0.03
    kept = torch.isfinite(filter_logits(x, top_p=float(p[0] + 0.01)))[0]
    assert kept.tolist() == [True, True, False, False]  # the entry crossing top_p stays
    assert torch.isfinite(filter_logits(x, top_p=0.01))[0].tolist() == [True, False, False, False]


def test_cfg_search_follows_gigatok():
    calls = []

    def fid(s):
        calls.append(s)
        return (s - 2.5) ** 2

    best, tried = search_cfg(fid, 2.0, 0.25, 1.0)
    assert best == 2.5 and calls == [2.0, 2.25, 2.5, 2.75]
    best, tried = search_cfg(lambda s: s, 1.25, 0.25, 1.0)  # lower is better down to the bound
    assert best == 1.0 and set(tried) == {1.0, 1.25, 1.5}


# -- data, training, resume --------------------------------------------------------------------------------------
def test_split_by_id_is_seeded_and_order_free():
    ids = [f"img{i:03d}" for i in range(50)]
    tr, va = split_by_id(ids, 0.1, 0)
    assert len(va) == 5 and sorted(tr + va) == list(range(50))
    rev = ids[::-1]
    tr2, va2 = split_by_id(rev, 0.1, 0)
    assert {rev[i] for i in va2} == {ids[i] for i in va}
    assert {ids[i] for i in split_by_id(ids, 0.1, 1)[1]} != {ids[i] for i in va}
    assert len(split_by_id(ids[:3], 0.1, 0)[1]) == 1 and len(split_by_id(ids[:2], 0.9, 0)[1]) == 1


@pytest.mark.parametrize("n", [0, 1, 7, 16, 23])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_partition_the_global_batch(n, world):
    parts = [list(range(n))[shard_slice(n, r, world)] for r in range(world)]
    assert sum(parts, []) == list(range(n))
    assert sum((list(shard(n, r, world)) for r in range(world)), []) == list(range(n))


def test_token_stream_covers_each_epoch():
    st = TokenStream(10, 5, seed=0, hflip=True)
    first = torch.cat([st.batch(0)[0], st.batch(1)[0]])
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(TokenStream(10, 5, 0, True).batch(3)[0], st.batch(3)[0])  # a pure function of (seed, step)
    wide = TokenStream(4, 6, seed=0, hflip=False)  # a batch larger than the data spans epochs
    idx, flip = wide.batch(0)
    assert len(idx) == 6 and sorted(idx[:4].tolist()) == [0, 1, 2, 3] and not flip.any()


def test_ddp_loss_scaling_gives_the_global_gradient():
    m = tiny_model(dropout=0.0)
    codes, labels = synthetic_codes(7)
    x = codes.long()

    def grads(loss):
        m.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    full = grads(shard_loss(m, x, labels, 1, x.numel())[0])
    world = 3
    avg = sum(grads(shard_loss(m, x[shard_slice(7, r, world)], labels[shard_slice(7, r, world)], world,
                               x.numel())[0]) for r in range(world)) / world
    assert torch.allclose(full, avg, atol=1e-6)


def test_training_lowers_validation_ce(tmp_path):
    codes, labels = synthetic_codes(64)
    val_codes, val_labels = synthetic_codes(16, seed=1)
    m = tiny_model(random_head=False).train()
    before, _ = validation_ce(m, val_codes, val_labels, CPU)
    s = TrainSettings(steps=60, batch_size=16, lr=3e-3, checkpoint_every=1000)
    out = train_prior(m, codes, labels, s, tmp_path, {"test": "lowers"}, CPU)
    after, _ = validation_ce(m, val_codes, val_labels, CPU)
    assert out["step"] == 60 and before == pytest.approx(math.log(32), abs=1e-5)
    assert after < 0.5 * before, (before, after)
    assert (tmp_path / "checkpoint.pt").is_file()


def test_resume_is_bit_identical_and_refuses_other_settings(tmp_path):
    codes, labels = synthetic_codes(20)
    flipped = (codes + 1) % 32
    s = TrainSettings(steps=9, batch_size=6, lr=1e-3, checkpoint_every=4, hflip=True)
    settings = {"model": "tiny", "train": s.fingerprint_dict()}

    whole = tiny_model(0, random_head=False).train()
    train_prior(whole, codes, labels, s, tmp_path / "a", settings, CPU, flipped=flipped)

    first = tiny_model(0, random_head=False).train()
    out = train_prior(first, codes, labels, s, tmp_path / "b", settings, CPU, flipped=flipped, stop_after=5)
    assert out["step"] == 5
    resumed = tiny_model(123, random_head=False).train()  # another init: everything must come from the checkpoint
    torch.rand(17)  # and another RNG state
    assert train_prior(resumed, codes, labels, s, tmp_path / "b", settings, CPU, flipped=flipped)["step"] == 9
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    other = {"model": "tiny", "train": {**s.fingerprint_dict(), "lr": 2e-3}}
    with pytest.raises(CheckpointMismatch, match=r"train\.lr: checkpoint 0\.001, now 0\.002"):
        train_prior(tiny_model(random_head=False), codes, labels, s, tmp_path / "b", other, CPU, flipped=flipped)


def test_tokenise_caches_by_key_and_mirrors(tmp_path, image_folder):
    from vtbench.data.datasets import open_dataset
    from vtbench.data.policies import get_policy
    from vtbench.probe import tokenise
    from vtbench.tokenizers import build_tokenizer
    tok = build_tokenizer("tiny.rvq")
    ds = open_dataset(str(image_folder), get_policy("adm-center-crop", 32), limit=4)
    ts = tokenise(tok, ds, tmp_path, CPU, batch_size=3, hflip=True)
    assert ts.codes.shape == (4, 4 * 4 * 4) and ts.shape == (4, 4, 4) and ts.layout == ("h", "w", "depth")
    assert ts.codebook_size == 256 and ts.flipped.shape == ts.codes.shape and not torch.equal(ts.flipped, ts.codes)
    assert sorted(set(ts.labels.tolist())) == [0, 1] and ts.num_classes == 2  # class subfolders
    with torch.inference_mode():  # flattened in layout order: what tokens_from_codes gets back
        x = torch.stack([ds.policy.to_model(ds[i]["image"])[0] for i in range(4)])
        assert torch.equal(tok.encode(x).codes.flatten(1).to(torch.int32), ts.codes)
    files = list(tmp_path.glob("tokens-*.pt"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = tokenise(tok, ds, tmp_path, CPU, hflip=True)
    assert files[0].stat().st_mtime_ns == stamp and torch.equal(again.codes, ts.codes)
    tokenise(tok, ds, tmp_path, CPU, hflip=False)  # another setting, another file
    assert len(list(tmp_path.glob("tokens-*.pt"))) == 2


# -- end to end ----------------------------------------------------------------------------------------------
runner = CliRunner()


def test_probe_cli_end_to_end(tmp_path):
    args = ["probe", "tiny.vq", "--size", "tiny", "--limit", "10", "--steps", "30", "--samples-per-class", "4",
            "--device", "cpu", "--out", str(tmp_path), "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["protocol"] == "probe@1.0" and obj["size"] == "tiny" and obj["steps"] == 30 and obj["n_samples"] == 4
    assert obj["cfg_scale"] == 2.0 and obj["n"] == 10
    m = obj["metrics"]
    assert math.isfinite(m["val_ce"]) and m["val_perplexity"] == pytest.approx(math.exp(m["val_ce"]))
    assert m["gfid"] is not None and m["gfid"] > 0 and m["sfid"] is not None
    assert {"gfid", "sfid", "inception_score", "precision", "recall"} <= set(m)
    run_dir = tmp_path / "embedded-photos" / "tiny.vq" / "probe-tiny"
    assert obj["result"] == str(run_dir / "result.json")
    rec = json.loads((run_dir / "result.json").read_text())
    assert ({k: rec["protocol"][k] for k in ("name", "version", "task")}
            == {"name": "probe", "version": "1.0", "task": "generation"} and rec["protocol"]["settings_sha256"])
    assert rec["tokenizer"]["name"] == "tiny.vq" and rec["tokenizer"]["weights_sha256"]
    assert rec["metrics"]["gfid"]["extra"]["size"] == "tiny" and rec["metrics"]["val_ce"]["unit"] == "nats/token"
    assert rec["dataset"]["n_train"] + rec["dataset"]["n_val"] == 10
    assert rec["probe"]["sequence"]["code_shape"] == [8, 8] and rec["probe"]["model"]["n_layer"] == 2
    with np.load(run_dir / "samples.npz") as z:
        assert z["arr_0"].shape == (4, 64, 64, 3) and z["arr_0"].dtype == np.uint8 and z["arr_1"].tolist() == [0] * 4
    from vtbench.gfid import read_token_file
    tf = read_token_file(run_dir / "tokens.npz")
    assert tf.codes.shape == (4, 8, 8) and tf.tokenizer == "tiny.vq" and tf.height == 64

    from vtbench.results import load
    df = load(tmp_path)  # the leaderboard's reader finds the record
    assert {"gfid", "val_ce"} <= set(df["metric"]) and set(df["protocol"]) == {"probe"}
    from vtbench.leaderboard import build_site
    page = build_site([tmp_path], tmp_path / "site").read_text()
    assert "<h2>Generation</h2>" in page and "protocol probe v1.0" in page and "gFID" in page and "Val. CE" in page

    again = runner.invoke(app, args)  # complete: reused, not recomputed
    assert again.exit_code == 0 and json.loads(again.stdout)["metrics"] == m
    assert "pil-bicubic" in rec["metrics"]["gfid"]["extra"]["extractor"]
    adm = runner.invoke(app, args + ["--resize", "adm"])  # the same trained prior, scored with ADM's resize
    assert adm.exit_code == 0, adm.output
    adm_obj = json.loads(adm.stdout)
    assert adm_obj["result"] == str(run_dir / "resize-adm" / "result.json") and adm_obj["n_samples"] == 4
    rec_adm = json.loads((run_dir / "resize-adm" / "result.json").read_text())
    assert "tf1-legacy-bilinear" in rec_adm["metrics"]["gfid@adm"]["extra"]["extractor"]
    assert rec_adm["run"]["fingerprint"] != rec["run"]["fingerprint"] and rec_adm["run"]["resize"] == "tf-bilinear"
    assert rec_adm["run"]["train_fingerprint"] == rec["run"]["train_fingerprint"]
    assert adm_obj["metrics"]["val_ce"] == m["val_ce"] and adm_obj["metrics"]["gfid@adm"] != m["gfid"]
    assert json.loads((run_dir / "result.json").read_text()) == rec  # the clean record is kept
    assert (run_dir / "resize-adm" / "samples.npz").is_file()
    refused = runner.invoke(app, [a if a != "30" else "31" for a in args])
    assert refused.exit_code == 1 and "steps: checkpoint 30, now 31" in refused.output and "--force" in refused.output


def test_probe_refuses_tokenizers_without_codes(tmp_path):
    r = runner.invoke(app, ["probe", "jpeg.q50", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "no integer codes" in r.output
    r = runner.invoke(app, ["probe", "tiny.vq", "--size", "XL", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "probe size" in r.output


def _torchrun() -> str:
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("torchrun not installed")
    return exe


_DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_probe import synthetic_codes, tiny_model
from vtbench.probe import TrainSettings, train_prior
dist.init_process_group("gloo")
codes, labels = synthetic_codes(21)
m = tiny_model(0, dropout=0.0, random_head=False).train()
s = TrainSettings(steps=5, batch_size=7, lr=1e-3, checkpoint_every=2)
train_prior(m, codes, labels, s, {out!r}, {{"ddp": True}}, torch.device("cpu"))
if dist.get_rank() == 0:
    torch.save(m.state_dict(), {out!r} + "/final.pt")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_training_matches_one_process(tmp_path):
    """Two gloo processes with uneven shares (batch 7) train the same weights as one process (no dropout)."""
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path / "ddp")))
    r = subprocess.run([_torchrun(), "--standalone", "--nproc_per_node=2", str(script)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    codes, labels = synthetic_codes(21)
    m = tiny_model(0, dropout=0.0, random_head=False).train()
    train_prior(m, codes, labels, TrainSettings(steps=5, batch_size=7, lr=1e-3, checkpoint_every=2),
                tmp_path / "one", {"ddp": True}, CPU)
    ddp = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    one = m.state_dict()
    assert all(torch.allclose(one[k], ddp[k], atol=1e-5) for k in one)
    assert not torch.equal(one["output.weight"], torch.zeros_like(one["output.weight"]))


@pytest.mark.slow
def test_probe_torchrun_two_processes(tmp_path):
    torchrun = _torchrun()
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "vtbench.cli", "probe", "tiny.vq", "--size", "tiny",
           "--limit", "8", "--steps", "6", "--samples-per-class", "3", "--device", "cpu", "--out", str(tmp_path),
           "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    obj = json.loads(r.stdout)  # only rank 0 prints
    assert obj["n_samples"] == 3 and math.isfinite(obj["metrics"]["val_ce"])
    rec = json.loads((tmp_path / "embedded-photos" / "tiny.vq" / "probe-tiny" / "result.json").read_text())
    assert rec["run"]["world_size"] == 2 and rec["probe"]["train"]["steps"] == 6
    with np.load(tmp_path / "embedded-photos" / "tiny.vq" / "probe-tiny" / "samples.npz") as z:
        assert z["arr_0"].shape[0] == 3  # shares of both ranks, gathered once


def test_sample_plan_balances_every_inception_score_split():
    from vtbench.probe.sample import sample_plan
    plan = sample_plan(1000, 50)
    assert len(plan) == 50_000 and np.bincount(plan).tolist() == [50] * 1000
    for start in range(0, 50_000, 5000):  # ADM's IS splits: each holds every class 5 times
        assert np.bincount(plan[start:start + 5000], minlength=1000).tolist() == [5] * 1000
    assert sample_plan(1, 4) == [0, 0, 0, 0]


def test_probe_validation_data_checks(image_folder, tmp_path):
    r = runner.invoke(app, ["probe", "tiny.vq", "--size", "B", "--data", "embedded/photos", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "--val-data" in r.output
    r = runner.invoke(app, ["probe", "tiny.vq", "--data", str(image_folder), "--val-data", "embedded/photos",
                            "--steps", "1", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "classes" in r.output and "differ" in r.output
