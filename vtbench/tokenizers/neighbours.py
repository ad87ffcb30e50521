"""Neighbour sets for pFID: for each token, the ``delta`` codes nearest the vector its quantiser saw.

pFID ("Robust Latent Matters", ImageFolder's ``latent_perturbation.py``) is defined for a VQ codebook: the
``delta`` codebook entries nearest (L2, after the tokenizer's own l2-normalisation) to the encoder vector.
vtbench extends it to every discrete kind with one idea, "the ``delta`` codes whose quantised value is nearest
the quantiser's input", written per kind in ``metrics/pfid.toml``:

- VQ: ``nearest_entries`` on the codebook (normalised when the tokenizer normalises).
- RVQ / multi-scale: the same at every depth / scale, on the residual that depth or scale quantised.
- FSQ: the nearest points of the lattice (``nearest_lattice_points``), in the quantised latent's units.
- LFQ / BSQ: the nearest hypercube corners (``nearest_corners``): Hamming neighbours of the code, ordered by
  the summed magnitude of the flipped coordinates.
- Scalar levels (TokenBridge): the nearest representative levels of each scalar (``nearest_entries`` in 1-D).

Every function returns candidates nearest first, ties broken towards the lower index, so a seeded draw from a
set is reproducible on any device. Work is chunked so memory stays bounded whatever the number of tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

_CHUNK_ELEMENTS = 1 << 24  # distances per chunk (64 MB fp32)


def _ordered_topk(dist: torch.Tensor, k: int, keys: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest entries of each row of ``dist`` (M, K), ordered by (value, key); ``keys`` (M, K)
    int64 defaults to the column index. Returns ``(values, positions)``. Exact with ties: equal values that
    straddle the k-th place are settled by the key, as a full stable sort would."""
    if keys is None:
        keys = torch.arange(dist.shape[1], device=dist.device).expand_as(dist)
    vals, pos = torch.topk(dist, k, dim=1, largest=False, sorted=True)
    kth = vals[:, -1:]
    straddle = ((dist == kth).sum(1) > (vals == kth).sum(1)).nonzero().flatten()
    if straddle.numel():  # rare: redo these rows with a full sort by (value, key)
        d, kk = dist[straddle], keys[straddle]
        order = torch.argsort(kk, dim=1, stable=True)
        order = order.gather(1, torch.argsort(d.gather(1, order), dim=1, stable=True))
        pos[straddle] = order[:, :k]
        vals[straddle] = d.gather(1, pos[straddle])
    # topk's order among equal values is unspecified: order the kept entries by key, then stably by value
    order = torch.argsort(keys.gather(1, pos), dim=1, stable=True)
    vals, pos = vals.gather(1, order), pos.gather(1, order)
    order = torch.argsort(vals, dim=1, stable=True)
    return vals.gather(1, order), pos.gather(1, order)


def nearest_entries(x: torch.Tensor, codebook: torch.Tensor, delta: int,
                    chunk_elements: int = _CHUNK_ELEMENTS) -> torch.Tensor:
    """Indices of the ``min(delta, K)`` codebook rows nearest (squared L2) to each row of ``x``.

    ``x``: (M, d); ``codebook``: (K, d). Returns int64 (M, k), nearest first. Computed in float32 with the full
    ``||x||^2 + ||e||^2 - 2 x.e`` form; pass normalised ``x`` and ``codebook`` for cosine codebooks.
    """
    if x.ndim != 2 or codebook.ndim != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"expected x (M, d) and codebook (K, d), got {tuple(x.shape)} and {tuple(codebook.shape)}")
    if delta < 1:
        raise ValueError(f"delta must be >= 1, got {delta}")
    x = x.float()
    codebook = codebook.float().to(x.device)
    k = min(int(delta), codebook.shape[0])
    e_sq = codebook.pow(2).sum(1)
    rows = max(1, chunk_elements // max(1, codebook.shape[0]))
    out = torch.empty(x.shape[0], k, dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], rows):
        xc = x[start:start + rows]
        dist = torch.addmm(xc.pow(2).sum(1, keepdim=True) + e_sq, xc, codebook.t(), alpha=-2.0)
        out[start:start + rows] = _ordered_topk(dist, k)[1]
    return out


def k_smallest_sums(costs: Sequence[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` cheapest choices of one option per coordinate, exactly, for each row.

    ``costs[i]``: (M, L_i), the cost of option j at coordinate i; a choice costs the sum over coordinates.
    Returns ``(total (M, k'), choice (M, k', D))`` with ``k' = min(k, prod L_i)``, cheapest first, ties in
    lexicographic order of the choice. Exact because any of the ``k`` cheapest full choices has a prefix among
    the ``k`` cheapest prefixes (swap a worse prefix for each of ``k`` better ones and the full cost drops).
    """
    if not costs:
        raise ValueError("k_smallest_sums needs at least one coordinate")
    m = costs[0].shape[0]
    if math.prod(c.shape[1] for c in costs) >= 1 << 62:
        raise ValueError("k_smallest_sums: more than 2^62 combinations (tie-break keys would overflow int64)")
    total = torch.zeros(m, 1, dtype=torch.float64, device=costs[0].device)
    choice = torch.zeros(m, 1, 0, dtype=torch.long, device=costs[0].device)
    lex = torch.zeros(m, 1, dtype=torch.long, device=costs[0].device)  # the prefix as a mixed-radix number
    for c in costs:
        c = c.to(torch.float64)
        n_prev, n_opt = total.shape[1], c.shape[1]
        sums = (total.unsqueeze(2) + c.unsqueeze(1)).reshape(m, n_prev * n_opt)
        keys = (lex.unsqueeze(2) * n_opt + torch.arange(n_opt, device=c.device)).reshape(m, n_prev * n_opt)
        keep = min(k, sums.shape[1])
        vals, flat = _ordered_topk(sums, keep, keys)  # ties in lexicographic order of the choice
        prev, opt = flat // n_opt, flat % n_opt
        choice = torch.cat([choice.gather(1, prev.unsqueeze(2).expand(-1, -1, choice.shape[2])),
                            opt.unsqueeze(2)], dim=2)
        lex = keys.gather(1, flat)
        total = vals
    return total, choice


def nearest_lattice_points(b: torch.Tensor, levels: Sequence[int], delta: int,
                           scale: Sequence[float] | None = None) -> torch.Tensor:
    """FSQ: the ``min(delta, prod(levels))`` lattice points nearest to each bounded latent.

    ``b``: (M, d), each coordinate in the quantiser's integer units, centred as the quantiser centres it
    (the lattice values of coordinate i are ``-(L_i // 2) + j`` for odd and even ``L_i`` alike, ``j`` in
    ``[0, L_i)``, i.e. the digit is ``j``). ``scale``: per-coordinate factor of the quantised latent
    (``1 / (L_i // 2)`` in FSQ), so distances are measured where the decoder sees them. Returns digits
    ``(M, k, d)`` int64, nearest first.
    """
    if b.ndim != 2 or b.shape[1] != len(levels):
        raise ValueError(f"expected (M, {len(levels)}) latents, got {tuple(b.shape)}")
    scale = [1.0] * len(levels) if scale is None else list(scale)
    costs = []
    for i, L in enumerate(levels):
        values = torch.arange(L, dtype=torch.float64, device=b.device) - (L // 2)
        costs.append(((b[:, i:i + 1].double() - values.unsqueeze(0)) * scale[i]).pow(2))
    return k_smallest_sums(costs, delta)[1]


def nearest_corners(z: torch.Tensor, delta: int) -> torch.Tensor:
    """LFQ / BSQ: the ``min(delta, 2^d)`` corners of ``{-1, 1}^d`` nearest to each row of ``z`` (M, d).

    Flipping bit i away from ``sign(z_i)`` adds ``4 |z_i|`` to the squared distance, so the set is the code's
    Hamming neighbourhood ordered by the summed ``|z_i|`` of the flipped bits. Returns bits (M, k, d) int64,
    1 for a positive coordinate (``z_i > 0``; zero counts as negative, as ``z > 0`` quantisers do).
    """
    if z.ndim != 2:
        raise ValueError(f"expected (M, d), got {tuple(z.shape)}")
    own = (z > 0).long()
    flip_cost = 4.0 * z.abs().double()
    costs = [torch.stack([torch.zeros_like(flip_cost[:, i]), flip_cost[:, i]], dim=1) for i in range(z.shape[1])]
    flips = k_smallest_sums(costs, delta)[1]  # 0 keep, 1 flip
    return own.unsqueeze(1) ^ flips


def digits_to_codes(digits: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Mixed-radix codes ``sum_i digit_i * prod(levels[:i])`` of digits (..., d)."""
    basis = torch.cumprod(torch.tensor([1] + list(levels[:-1]), dtype=torch.long, device=digits.device), 0)
    return (digits * basis).sum(-1)


__all__ = ["digits_to_codes", "k_smallest_sums", "nearest_corners", "nearest_entries", "nearest_lattice_points"]
