"""Discrete bottlenecks for the tiny tokenizers: vector quantisation (VQ), residual VQ (RVQ) and finite
scalar quantisation (FSQ).

All three take a channels-first latent ``z`` of shape ``(N, d, h, w)`` and share one interface:

- ``forward(z) -> (z_q, codes, loss)``: quantised latent with a straight-through gradient, integer codes,
  and the quantiser's training loss (a scalar; zero for FSQ).
- ``encode(z) -> codes``: int64, ``(N, h, w)`` (VQ, FSQ) or ``(N, h, w, D)`` (RVQ).
- ``lookup(codes) -> z_q``: float ``(N, d, h, w)``; the exact inverse of the code assignment.

VQ training uses the VQ-VAE losses (codebook ``||sg(z) - e||^2`` plus ``beta`` x commitment
``||z - sg(e)||^2``) rather than EMA updates, so the codebook is an ordinary parameter and nothing in the
module changes state outside the optimiser. Dead codes are re-seeded by the training loop through
``restart_codes``; eval-mode calls never modify a codebook, so encoding is deterministic.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vtbench.tokenizers.neighbours import nearest_entries, nearest_lattice_points

# Rows per distance chunk scale with the codebook so one chunk holds about 4M distances (16 MB fp32).
_CHUNK_ELEMENTS = 1 << 22


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, chunk_elements: int = _CHUNK_ELEMENTS) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2) for each row of ``x``.

    ``x``: (M, d); ``codebook``: (K, d). Returns int64 (M,). Work is split into row chunks so memory stays
    at ``chunk_elements`` distances whatever M is; ties go to the lowest index (``argmin``).
    """
    rows = max(1, chunk_elements // max(1, codebook.shape[0]))
    e_sq = codebook.pow(2).sum(1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], rows):
        xc = x[start:start + rows]
        # ||x||^2 is constant per row and does not change the argmin.
        dist = e_sq.unsqueeze(0) - 2.0 * (xc @ codebook.t())
        out[start:start + rows] = dist.argmin(1)
    return out


def nearest_code_full(x: torch.Tensor, codebook: torch.Tensor, chunk_elements: int = 1 << 26) -> torch.Tensor:
    """Like ``nearest_code`` but with the full distance ``||x||^2 + ||e||^2 - 2 x.e`` in one ``addmm``.

    This is the form the RQ-VAE and VAR quantisers write; keeping it keeps float rounding, and so the rare
    near-ties, identical to theirs (the code-identity parity checks rely on it). Ties go to the lowest index.
    """
    e_sq = codebook.pow(2).sum(dim=1)
    rows = max(1, chunk_elements // max(1, codebook.shape[0]))
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], rows):
        xc = x[start:start + rows]
        dist = torch.addmm(xc.pow(2).sum(dim=1, keepdim=True) + e_sq, xc, codebook.t(), alpha=-2.0)
        out[start:start + rows] = dist.argmin(dim=1)
    return out


def _to_rows(z: torch.Tensor) -> torch.Tensor:
    """(N, d, h, w) -> (N*h*w, d)."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser with a ``K x d`` codebook.

    With ``l2_norm=True`` both the latents and the codes are projected onto the unit sphere before the
    nearest-neighbour search (cosine similarity), as LlamaGen's VQ tokenizer does; ``lookup`` then returns
    unit-norm vectors.
    """

    def __init__(self, codebook_size: int, dim: int, *, l2_norm: bool = False, beta: float = 0.25):
        super().__init__()
        self.codebook_size = int(codebook_size)
        self.dim = int(dim)
        self.l2_norm = bool(l2_norm)
        self.beta = float(beta)
        self.codebook = nn.Parameter(torch.randn(self.codebook_size, self.dim) / math.sqrt(self.dim))

    def _codes_matrix(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=1) if self.l2_norm else self.codebook

    def _prepare(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=1) if self.l2_norm else z

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: float (N, d, h, w) -> int64 codes (N, h, w)."""
        n, _, h, w = z.shape
        z = self._prepare(z.float())
        return nearest_code(_to_rows(z), self._codes_matrix().float()).view(n, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """int codes (N, h, w) -> float (N, d, h, w)."""
        return F.embedding(codes.long(), self._codes_matrix()).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def quantizer_input(self, z: torch.Tensor) -> torch.Tensor:
        """What the nearest-neighbour search sees, channels last: (N, h, w, d) (normalised when ``l2_norm``)."""
        return self._prepare(z.float()).permute(0, 2, 3, 1).contiguous()

    @torch.no_grad()
    def neighbours(self, qin: torch.Tensor, delta: int) -> torch.Tensor:
        """pFID sets: the ``min(delta, K)`` codes nearest each vector of ``qin`` (..., d) -> (..., k)."""
        rows = nearest_entries(qin.reshape(-1, self.dim), self._codes_matrix().float(), delta)
        return rows.view(*qin.shape[:-1], rows.shape[1])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self._prepare(z)
        codes = self.encode(z)
        z_q = self.lookup(codes)
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        z_st = z + (z_q - z).detach()  # straight-through: decoder gradient flows into the encoder
        return z_st, codes, loss

    @torch.no_grad()
    def restart_codes(self, dead: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator) -> int:
        """Re-seed the codes flagged in ``dead`` (bool (K,)) with random rows of ``candidates`` (M, d),
        typically this batch's encoder outputs. Returns how many codes were restarted. Training only."""
        idx = dead.nonzero().flatten()
        if idx.numel() == 0 or candidates.shape[0] == 0:
            return 0
        pick = torch.randint(0, candidates.shape[0], (idx.numel(),), generator=generator)
        self.codebook[idx] = candidates[pick].to(self.codebook.dtype)
        return int(idx.numel())


class ResidualVQ(nn.Module):
    """Residual VQ: ``depth`` quantisers with separate ``K x d`` codebooks, each coding what the previous
    depths left over. Codes are (N, h, w, depth); ``lookup`` sums the per-depth codes."""

    def __init__(self, depth: int, codebook_size: int, dim: int, *, l2_norm: bool = False, beta: float = 0.25):
        super().__init__()
        self.depth = int(depth)
        self.codebook_size = int(codebook_size)
        self.dim = int(dim)
        self.levels = nn.ModuleList(
            VectorQuantizer(codebook_size, dim, l2_norm=l2_norm, beta=beta) for _ in range(self.depth)
        )

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: float (N, d, h, w) -> int64 codes (N, h, w, depth)."""
        residual = z.float()
        codes = []
        for q in self.levels:
            c = q.encode(residual)
            residual = residual - q.lookup(c)
            codes.append(c)
        return torch.stack(codes, dim=-1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """int codes (N, h, w, depth) -> float (N, d, h, w)."""
        return sum(q.lookup(codes[..., i]) for i, q in enumerate(self.levels))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        residual = z
        z_q = torch.zeros_like(z)
        codes, loss = [], z.new_zeros(())
        for q in self.levels:
            c = q.encode(residual)
            e = q.lookup(c)
            loss = loss + F.mse_loss(e, residual.detach()) + q.beta * F.mse_loss(residual, e.detach())
            residual = residual - e.detach()
            z_q = z_q + e
            codes.append(c)
        z_st = z + (z_q - z).detach()
        return z_st, torch.stack(codes, dim=-1), loss

    @torch.no_grad()
    def quantizer_input(self, z: torch.Tensor) -> torch.Tensor:
        """The residual each depth quantised (as that depth's search sees it): (N, h, w, depth, d)."""
        residual, out = z.float(), []
        for q in self.levels:
            out.append(q.quantizer_input(residual))
            residual = residual - q.lookup(q.encode(residual))
        return torch.stack(out, dim=3)

    @torch.no_grad()
    def neighbours(self, qin: torch.Tensor, delta: int) -> torch.Tensor:
        """pFID sets per depth, on that depth's codebook: (N, h, w, depth, d) -> (N, h, w, depth, k)."""
        return torch.stack([q.neighbours(qin[..., i, :], delta) for i, q in enumerate(self.levels)], dim=3)

    @torch.no_grad()
    def residuals(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The input each depth sees, as rows (M, d): candidates for restarting that depth's dead codes."""
        out, residual = [], z.float()
        for q in self.levels:
            out.append(_to_rows(residual))
            residual = residual - q.lookup(q.encode(residual))
        return out


class FSQ(nn.Module):
    """Finite scalar quantisation (Mentzer et al., 2023) with per-channel ``levels`` (e.g. [8, 5, 5, 5]).

    Channel i is bounded to ``L_i`` integer values by ``tanh``: ``b = tanh(z + s) * h - o`` with
    ``h = (L - 1)(1 + eps) / 2``; odd ``L`` uses ``o = 0, s = 0`` (values -(L-1)/2 .. (L-1)/2), even ``L``
    the half offset ``o = 1/2, s = atanh(o / h)`` (values -L/2 .. L/2 - 1), so ``round(b)`` hits exactly
    ``L`` integers. The quantised latent is ``round(b) / (L // 2)`` (straight-through round). A code is the
    mixed-radix number of the per-channel digits ``round(b) + L // 2``: ``sum_i digit_i * prod(L_<i)``, in
    ``[0, prod(levels))``. No parameters, no loss.
    """

    def __init__(self, levels: Sequence[int], eps: float = 1e-3):
        super().__init__()
        levels = [int(v) for v in levels]
        if any(v < 2 for v in levels):
            raise ValueError(f"FSQ levels must be >= 2, got {levels}")
        self.levels = levels
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        self.eps = float(eps)
        lv = torch.tensor(levels, dtype=torch.float64)
        half_l = (lv - 1) * (1 + self.eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.long), 0)
        # Constants, not state: kept out of the state dict so checkpoints hold only learned weights.
        self.register_buffer("_half_l", half_l.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_l).float(), persistent=False)
        self.register_buffer("_half_width", (lv // 2).float(), persistent=False)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    def _c(self, t: torch.Tensor) -> torch.Tensor:  # per-channel constant broadcast over (N, d, h, w)
        return t.view(1, -1, 1, 1)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash z (N, d, h, w) so that rounding yields exactly ``L_i`` integer values per channel."""
        return torch.tanh(z + self._c(self._shift)) * self._c(self._half_l) - self._c(self._offset)

    def _digits(self, z: torch.Tensor) -> torch.Tensor:
        """Per-channel digits in [0, L_i), int64 (N, d, h, w)."""
        return torch.round(self.bound(z.float())).long() + self._c(self._half_width).long()

    def digits_to_codes(self, digits: torch.Tensor) -> torch.Tensor:
        """(N, d, h, w) digits -> (N, h, w) mixed-radix codes."""
        return (digits * self._c(self._basis)).sum(1)

    def codes_to_digits(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, h, w) codes -> (N, d, h, w) digits (exact inverse of ``digits_to_codes``)."""
        return (codes.long().unsqueeze(1) // self._c(self._basis)) % self._c(self._levels)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: float (N, d, h, w) -> int64 codes (N, h, w) in [0, prod(levels))."""
        return self.digits_to_codes(self._digits(z))

    @torch.no_grad()
    def quantizer_input(self, z: torch.Tensor) -> torch.Tensor:
        """The bounded latent in integer level units, channels last: (N, h, w, d); ``round`` gives the code."""
        return self.bound(z.float()).permute(0, 2, 3, 1).contiguous()

    @torch.no_grad()
    def neighbours(self, qin: torch.Tensor, delta: int) -> torch.Tensor:
        """pFID sets: the ``min(delta, prod(levels))`` lattice points nearest each bounded latent, distances
        in the quantised latent's units (level / (L // 2)): (N, h, w, d) -> (N, h, w, k) codes."""
        digits = nearest_lattice_points(qin.reshape(-1, self.dim), self.levels, delta,
                                        scale=[1.0 / (v // 2) for v in self.levels])
        codes = (digits * self._basis.to(digits.device)).sum(-1)
        return codes.view(*qin.shape[:-1], codes.shape[1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """int codes (N, h, w) -> float (N, d, h, w), values ``(digit - L//2) / (L//2)``."""
        hw = self._c(self._half_width)
        return (self.codes_to_digits(codes).float() - hw) / hw

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = self.bound(z)
        q = b + (torch.round(b) - b).detach()  # straight-through round
        z_q = q / self._c(self._half_width)
        codes = self.digits_to_codes(torch.round(b.detach()).long() + self._c(self._half_width).long())
        return z_q, codes, z.new_zeros(())


class EmbeddingCodebook(nn.Module):
    """A ``K x d`` codebook held as ``embedding`` (the official parameter name of GigaTok's and ResTok's
    quantisers); with ``l2_norm`` latents and rows are unit vectors for the search and the decoder receives unit
    rows. Subclasses supply ``encode`` (each family's own order of operations, so codes match its official code);
    the lookup, the search space and pFID's neighbour sets are shared here."""

    def __init__(self, codebook_size: int, dim: int, l2_norm: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)
        self.l2_norm = bool(l2_norm)

    def table(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    @torch.no_grad()
    def quantizer_input(self, z: torch.Tensor) -> torch.Tensor:  # (N, T, d) -> (N, T, d), as the search sees it
        z = z.float()
        return F.normalize(z, dim=-1) if self.l2_norm else z

    @torch.no_grad()
    def neighbours(self, qin: torch.Tensor, delta: int) -> torch.Tensor:  # (N, T, d) -> (N, T, k), nearest first
        rows = nearest_entries(qin.reshape(-1, qin.shape[-1]), self.table().float(), delta)
        return rows.view(*qin.shape[:-1], rows.shape[1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:  # (N, T) -> (N, T, d)
        return F.embedding(codes.long(), self.table())


class CodebookNeighbours:
    """Tokenizer mixin: pFID's neighbour rule for a 1D tokenizer whose ``model.quantize`` is an
    ``EmbeddingCodebook``; ``NEIGHBOUR_TOKENS`` and ``NEIGHBOUR_INPUT`` name what is perturbed and searched."""

    NEIGHBOUR_TOKENS = "per 1D token"
    NEIGHBOUR_INPUT = "encoder output"

    @property
    def neighbour_rule(self) -> str:
        if self.model.quantize.l2_norm:
            return (f"vq, l2-normalised codebook: {self.NEIGHBOUR_TOKENS}, the delta entries of the l2-normalised "
                    f"codebook nearest (squared L2 on unit vectors, i.e. largest cosine) the l2-normalised "
                    f"{self.NEIGHBOUR_INPUT}, nearest first, ties to the lower index (ImageFolder's "
                    "latent_perturbation)")
        return (f"vq: {self.NEIGHBOUR_TOKENS}, the delta codebook entries nearest (squared L2) the "
                f"{self.NEIGHBOUR_INPUT}, nearest first, ties to the lower index")

    def neighbour_quantizer(self):
        return self.model.quantize

