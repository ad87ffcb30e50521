"""Sampling from the AR probe: classifier-free guidance, temperature, top-k / top-p, seeded per sample.

Every sample ``i`` draws its ``T`` uniforms from its own generator seeded by ``(seed, i)`` and picks each code by
inverse-CDF lookup, so a sample does not depend on the batch size, the number of processes or the device's RNG
(only on float rounding of the logits). Guidance follows LlamaGen ``autoregressive/models/generate.py``: the
conditional and null-class sequences run as one doubled batch, ``logits = uncond + s * (cond - uncond)``, the
sampled code is fed to both halves, and ``s == 1`` skips the unconditional half altogether.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from vtbench.core import quantise_uint8
from vtbench.probe.model import ClassConditionalGPT, KVCache


@dataclass(frozen=True)
class SamplingSettings:
    cfg_scale: float = 2.0
    temperature: float = 1.0
    top_k: int = 0           # 0: off
    top_p: float = 1.0       # 1.0: off
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` (``scale == 1`` returns ``cond``)."""
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then nucleus filtering of ``(B, V)`` logits (removed entries become -inf; the best one always stays)."""
    logits = logits.clone()
    if top_k and top_k > 0:
        k = min(int(top_k), logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the first entry that crosses top_p
        remove[..., 0] = False
        logits[remove.scatter(-1, order, remove)] = float("-inf")
    return logits


def pick(logits: torch.Tensor, u: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Codes ``(B,)`` from logits ``(B, V)`` and uniforms ``u`` ``(B,)`` in [0, 1) (inverse CDF)."""
    logits = filter_logits(logits.double() / max(settings.temperature, 1e-5), settings.top_k, settings.top_p)
    cdf = torch.softmax(logits, dim=-1).cumsum(-1)
    idx = torch.searchsorted(cdf, (u.to(cdf) * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


def sample_uniforms(sample_ids: list[int], length: int, seed: int) -> torch.Tensor:
    """``(len(sample_ids), length)`` uniforms, row ``j`` from a CPU generator seeded by ``(seed, sample_ids[j])``."""
    rows = []
    for i in sample_ids:
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha1(f"{seed}:{i}".encode()).digest()[:8], "little")
                                          & ((1 << 63) - 1))
        rows.append(torch.rand(length, generator=g, dtype=torch.float64))
    return torch.stack(rows) if rows else torch.zeros(0, length, dtype=torch.float64)


@torch.no_grad()
def generate(model: ClassConditionalGPT, labels: torch.Tensor, uniforms: torch.Tensor, settings: SamplingSettings,
             use_cache: bool = True) -> torch.Tensor:
    """Sample ``(B, T)`` codes for class ``labels`` ``(B,)`` with per-sample ``uniforms`` ``(B, T)``.

    ``use_cache=False`` recomputes the whole prefix at every step (O(T^2), for checking the cache)."""
    was_training = model.training
    model.eval()
    t = model.cfg.block_size
    b = labels.shape[0]
    guided = settings.cfg_scale != 1.0
    lab = torch.cat((labels, torch.full_like(labels, model.null_class))) if guided else labels
    codes = torch.zeros(b, 0, dtype=torch.long, device=labels.device)
    cache = KVCache(model.cfg.n_layer, model.cfg.block_size) if use_cache else None

    def next_logits(logits: torch.Tensor) -> torch.Tensor:
        return cfg_logits(logits[:b], logits[b:], settings.cfg_scale) if guided else logits

    try:
        logits = model(codes, lab, cache=cache)[:, -1]
        for i in range(t):
            c = pick(next_logits(logits), uniforms[:, i], settings)
            codes = torch.cat((codes, c.unsqueeze(1)), dim=1)
            if i == t - 1:
                break
            if use_cache:
                logits = model.step(torch.cat((c, c)) if guided else c, cache)
            else:
                prefix = torch.cat((codes, codes)) if guided else codes
                logits = model(prefix, lab)[:, -1]
    finally:
        model.train(was_training)
    return codes


def sample_plan(num_classes: int, samples_per_class: int) -> list[int]:
    """The class of every sample: ``samples_per_class`` rounds through every class (0, 1, ..., C-1, 0, 1, ...),
    as GigaTok's sampler orders them. Class-blocked order would put only 5000 / spc classes in each 5000-sample
    Inception Score split and cap the score far below the published values."""
    return [i % num_classes for i in range(num_classes * samples_per_class)]


def shard(n: int, rank: int, world: int) -> range:
    """This rank's contiguous share of ``n`` items (the shares partition ``range(n)`` in order)."""
    lo, hi = (n * rank) // world, (n * (rank + 1)) // world
    return range(lo, hi)


def sample_batches(model: ClassConditionalGPT, plan: list[int], indices: range, settings: SamplingSettings,
                   batch_size: int, device: torch.device,
                   decode: Callable[[torch.Tensor], torch.Tensor],
                   on_batch: Callable[[int], None] | None = None) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Yield ``(codes (n, T) int64 cpu, images uint8 (n, H, W, 3))`` for the samples ``indices`` of ``plan``.

    ``decode`` maps codes on ``device`` to float images ``(n, 3, H, W)`` in [0, 1]."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    idx = list(indices)
    for s in range(0, len(idx), batch_size):
        chunk = idx[s:s + batch_size]
        labels = torch.tensor([plan[i] for i in chunk], dtype=torch.long, device=device)
        u = sample_uniforms(chunk, model.cfg.block_size, settings.seed).to(device)
        with autocast:
            codes = generate(model, labels, u, settings)
        with torch.inference_mode():
            imgs = decode(codes)
        imgs = quantise_uint8(imgs.float()).permute(0, 2, 3, 1).cpu().numpy()
        if on_batch:
            on_batch(len(chunk))
        yield codes.cpu(), imgs


def search_cfg(evaluate: Callable[[float], float], start: float, step: float = 0.25, min_scale: float = 1.0,
               max_scale: float | None = None, increase_first: bool = True) -> tuple[float, dict[float, float]]:
    """GigaTok's CFG search (``sample_c2i_cfg_search.py``, ``get_next_search_state_cfg``): evaluate ``start``; then
    repeatedly try the untried neighbour (``+step`` first, then ``-step``) of the best scale so far, within
    ``[min_scale, max_scale]``, until both neighbours of the best are tried. Returns (best scale, {scale: fid})."""
    tried: dict[float, float] = {}
    nxt: float | None = round(start, 6)
    while nxt is not None:
        tried[nxt] = evaluate(nxt)
        best = min(tried, key=lambda s: (tried[s], s))
        order = (best + step, best - step) if increase_first else (best - step, best + step)
        nxt = None
        for s in (round(x, 6) for x in order):
            if s < min_scale - 1e-9 or (max_scale is not None and s > max_scale + 1e-9) or s in tried:
                continue
            nxt = s
            break
    best = min(tried, key=lambda s: (tried[s], s))
    return best, tried
