"""Benchmark: the probe's KV-cache sampling, preallocated cache (vtbench) against a cache grown by ``torch.cat``
at every step (the usual first implementation, and vtbench's before 2026-11-23), in the same process.

Growing by concatenation copies the whole prefix of every layer at every step (O(T^2) copying over a sequence of
T tokens); the preallocated cache writes one position in place. Both produce identical codes (checked here).
Reported as ratios; absolute times depend on the machine. Usage::

    python benchmarks/bench_probe_sampling.py [--lengths 256 1024 4096] [--batch 8] [--device cpu]

(the README's figures: ``--lengths 256 1024 2048 --batch 4`` and ``--lengths 256 1024 --batch 8``)
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import torch

from vtbench.probe import ClassConditionalGPT, GPTConfig, SamplingSettings
from vtbench.probe import sample as sample_mod
from vtbench.probe.model import KVCache
from vtbench.probe.sample import generate, sample_uniforms


class ConcatKVCache(KVCache):
    """The baseline: every append concatenates onto the previous keys and values."""

    def __init__(self, n_layer: int, capacity: int):
        super().__init__(n_layer, capacity)

    def append(self, layer, k, v):
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = torch.cat((self.k[layer], k), dim=2)
            self.v[layer] = torch.cat((self.v[layer], v), dim=2)
        return self.k[layer], self.v[layer]


def timed(model, labels, uniforms, settings, cache_cls, device) -> tuple[float, torch.Tensor]:
    with mock.patch.object(sample_mod, "KVCache", cache_cls):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        codes = generate(model, labels, uniforms, settings)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - t0, codes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--cfg-scale", type=float, default=2.0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for length in args.lengths:
        torch.manual_seed(0)
        cfg = GPTConfig(vocab_size=4096, block_size=length, num_classes=10, dim=args.dim, n_layer=args.layers,
                        n_head=args.heads, multiple_of=64)
        model = ClassConditionalGPT(cfg).to(device).eval()
        torch.nn.init.normal_(model.output.weight, std=0.02)
        labels = torch.arange(args.batch, device=device) % 10
        uniforms = sample_uniforms(list(range(args.batch)), length, seed=0).to(device)
        settings = SamplingSettings(cfg_scale=args.cfg_scale)
        timed(model, labels[:1], uniforms[:1, :], settings, KVCache, device)  # warm-up
        # alternate the two, twice each, and keep each one's best
        best = {"prealloc": float("inf"), "concat": float("inf")}
        codes = {}
        for _ in range(2):
            for name, cls in (("concat", ConcatKVCache), ("prealloc", KVCache)):
                t, c = timed(model, labels, uniforms, settings, cls, device)
                best[name] = min(best[name], t)
                codes[name] = c
        same = torch.equal(codes["concat"], codes["prealloc"])
        rows.append({"tokens": length, "batch": args.batch, "cfg_scale": args.cfg_scale,
                     "concat_s": round(best["concat"], 3), "prealloc_s": round(best["prealloc"], 3),
                     "concat_over_prealloc": round(best["concat"] / best["prealloc"], 2), "identical_codes": same})
        print(json.dumps(rows[-1]), flush=True)
    print("| tokens | batch | concat s | preallocated s | concat / preallocated | identical codes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']} | {r['batch']} | {r['concat_s']} | {r['prealloc_s']} | {r['concat_over_prealloc']}x | "
              f"{r['identical_codes']} |")


if __name__ == "__main__":
    main()
