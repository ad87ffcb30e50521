"""TokenBridge: post-training scalar quantisation of MAR's continuous KL-16 VAE latent.

TokenBridge (Wang et al., 2025, github.com/YuqingWang1029/TokenBridge, MIT) takes the KL-regularised VAE that
MAR released (LTH14/mar ``models/vae.py``, ``kl16.ckpt``; TokenBridge loads the same file) and discretises its
latent after training, one scalar per latent channel and position. vtbench's own implementation:

VAE (``KLAutoencoder``): the LDM conv encoder/decoder of ``vtbench.tokenizers.ldm`` with MAR's settings
(ch 128, ch_mult 1,1,2,2,4, two res blocks per level, self-attention at the 16x16 level of the encoder and in both
middle blocks, none in the decoder's levels, ``double_z``), a 1x1 ``quant_conv`` (2*16 -> 2*16 moments) and a
1x1 ``post_quant_conv`` (16 -> 16). Images in [-1, 1]; the latent is (N, 16, H/16, W/16). Parameter names are
the official ones (``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``).

Latent: the posterior mode (its mean), deterministic, by default. The official reconstruction script samples
the posterior (``mean + exp(logvar/2) * N(0, 1)``); ``params.latent = "sample"`` does that with one fixed
seeded N(0, 1) draw shared by every image (``params.seed``), so results do not depend on batch size or order.

Quantiser (``GaussianScalarQuantizer``), as TokenBridge's code defines it, for ``b`` bits (``n = 2**b`` levels):

- the latent is multiplied by MAR's scale 0.2325, then mapped linearly from ``[-r, r]`` (``quant_range`` r = 5)
  onto ``[-s, s]`` (``std_range`` s = 3) and clamped there: ``u = clamp((0.2325 z + r) / 2r * 2s - s, -s, s)``.
  One global map for every channel (no per-channel statistics);
- bin edges are the standard normal quantiles at ``k / n`` (equal-probability bins), with the two infinite outer
  edges moved to -s and +s;
- each bin is represented by the mean of the standard normal truncated to it,
  ``(phi(a) - phi(b)) / (Phi(b) - Phi(a))``, computed in float32 as the official code does so codes match bit
  for bit;
- a value's code is the nearest representative (ties to the lower code), which is not the same as the bin it
  falls in: the decision thresholds are the midpoints between representatives;
- decoding maps the representative back, ``((c + s) / 2s * 2r - r) / 0.2325``, and runs ``post_quant_conv`` and
  the decoder.

Tokens: ``codes`` int64 (N, H/16, W/16, 16) with layout ("h", "w", "channel") and ``codebook_size = 2**b``; a
256x256 image is 4096 scalar tokens of ``b`` bits (``tokens_per_image``), or 256 positions of 16*b bits
(``meta["token_views"]["positions"]``). The ``continuous`` variant keeps the unquantised latent as float16
(16 bits per element, 65,536 bits per 256x256 image) and decodes it directly.

pFID: each scalar token's neighbour set is the ``min(delta, 2**b)`` representatives nearest its clamped
standard-normal coordinate ``u`` (``Tokens.quantizer_input``, (N, h, w, channel, 1)), ordered by ``|u - c|``
computed exactly (float64 differences of the float32 values) with ties to the lower code, so the first candidate is
the code itself. (``nearest_entries``' float32 ``u^2 + c^2 - 2uc`` form misses the nearest level for about 1 scalar
in 10^4 at 8 bits, where neighbouring representatives are ~0.01 apart.) The continuous variant has no codes: pFID
is undefined there (``neighbour_rule = None``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from scipy.special import ndtri
from torch import nn

from vtbench.tokenizers.base import TokenizerCard, Tokens, code_bits
from vtbench.tokenizers.ldm import Decoder, Encoder
from vtbench.tokenizers.official import CheckpointTokenizer

MAR_SCALE = 0.2325  # MAR's latent scale factor (engine_mar.py / engine_tokenbridge.py: posterior * 0.2325)
DOWNSAMPLE_DEFAULT = 16


class KLAutoencoder(nn.Module):
    """MAR's KL-16 VAE in the LDM layout (see the module docstring). ``forward`` is not used; call the parts."""

    def __init__(self, *, ch: int = 128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2, embed_dim: int = 16,
                 enc_attn_levels=(4,), dec_attn_levels=()):
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.encoder = Encoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_levels=enc_attn_levels,
                               z_channels=embed_dim, double_z=True, mid_attn=True)
        self.decoder = Decoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_levels=dec_attn_levels,
                               z_channels=embed_dim, mid_attn=True)
        self.quant_conv = nn.Conv2d(2 * embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] -> (mean, logvar) of the diagonal Gaussian posterior, each (N, embed_dim, h, w).
        ``logvar`` is clamped to [-30, 20] as in LDM."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


class GaussianScalarQuantizer(nn.Module):
    """TokenBridge's per-element quantiser with ``2**bits`` levels (see the module docstring).

    ``encode(z)`` takes the VAE latent (unscaled) and returns int64 codes of the same shape; ``decode(codes)``
    returns the reconstructed latent (unscaled). No learned state: the tables are non-persistent buffers.
    """

    def __init__(self, bits: int, *, scale: float = MAR_SCALE, quant_range: float = 5.0, std_range: float = 3.0):
        super().__init__()
        if not 1 <= int(bits) <= 16:
            raise ValueError(f"TokenBridge bits must be in [1, 16], got {bits}")
        self.bits = int(bits)
        self.levels = 2 ** self.bits
        self.scale = float(scale)
        self.lo, self.hi = -float(quant_range), float(quant_range)
        self.std_range = float(std_range)
        centres = self.gaussian_centres(self.levels, self.std_range)
        s = self.std_range
        # nearest-representative thresholds; a value equal to a threshold goes to the lower code
        self.register_buffer("centres", centres, persistent=False)
        self.register_buffer("thresholds", (centres[:-1] + centres[1:]) / 2, persistent=False)
        self.register_buffer("values", (centres + s) / (2 * s) * (self.hi - self.lo) + self.lo, persistent=False)

    @staticmethod
    def gaussian_edges(levels: int, std_range: float = 3.0) -> torch.Tensor:
        """``levels + 1`` equal-probability bin edges of N(0, 1), outer edges clipped to +-std_range (float32)."""
        p = torch.arange(levels + 1, dtype=torch.float64) / levels  # k / 2**b: exact in float32 as well
        edges = torch.from_numpy(ndtri(p.numpy())).float()
        return edges.clamp(-std_range, std_range)

    @classmethod
    def gaussian_centres(cls, levels: int, std_range: float = 3.0) -> torch.Tensor:
        """Mean of N(0, 1) truncated to each bin, float32 arithmetic: ``(phi(a) - phi(b)) / (Phi(b) - Phi(a))``."""
        e = cls.gaussian_edges(levels, std_range)
        pdf = torch.exp(-0.5 * e ** 2) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(e / math.sqrt(2)))
        mass = cdf[1:] - cdf[:-1]
        mass = torch.where(mass == 0, torch.full_like(mass, 1e-10), mass)
        return (pdf[:-1] - pdf[1:]) / mass

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent -> the clamped standard-normal coordinate that is quantised."""
        s = self.std_range
        x = z.float() * self.scale
        return ((x - self.lo) / (self.hi - self.lo) * (2 * s) - s).clamp(-s, s)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        u = self.normalise(z).contiguous()
        return torch.bucketize(u, self.thresholds.to(u.device), right=False)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.values.to(codes.device)[codes.long()] / self.scale

    @torch.no_grad()
    def neighbours(self, u: torch.Tensor, delta: int, chunk_elements: int = 1 << 24) -> torch.Tensor:
        """pFID sets: for each normalised value ``u`` (..., 1) (``normalise``'s output), the ``min(delta, levels)``
        codes whose representative is nearest, by exact ``|u - c|`` (float64), ties to the lower code -> int64
        (..., k), nearest first."""
        if u.shape[-1] != 1:
            raise ValueError(f"expected scalar inputs (..., 1), got {tuple(u.shape)}")
        if delta < 1:
            raise ValueError(f"delta must be >= 1, got {delta}")
        flat = u.reshape(-1, 1).double()
        centres = self.centres.to(flat.device).double().unsqueeze(0)
        k = min(int(delta), self.levels)
        rows = max(1, chunk_elements // self.levels)
        out = torch.empty(flat.shape[0], k, dtype=torch.long, device=flat.device)
        for start in range(0, flat.shape[0], rows):
            # a full stable sort (not topk): exact ties at the k-th place, which exact 1-D distances do produce
            # (a value exactly midway between two levels), also go to the lower code
            dist = (flat[start:start + rows] - centres).abs()
            out[start:start + rows] = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        return out.view(*u.shape[:-1], k)


class TokenBridgeTokenizer(CheckpointTokenizer):
    """TokenBridge on MAR's KL-16 VAE: ``params.bits`` per latent element, or ``continuous = true``.

    Card params: ``ch``, ``ch_mult``, ``num_res_blocks``, ``embed_dim``, ``enc_attn_levels``, ``dec_attn_levels``
    (the VAE); ``bits`` (quantised variants), ``continuous`` (the unquantised latent), ``scale`` (0.2325),
    ``quant_range`` (5.0), ``std_range`` (3.0), ``latent`` ("mode" | "sample"), ``seed`` (for "sample"),
    ``latent_bits`` (continuous variant: 16 stores float16, 32 float32).
    """

    @classmethod
    def build_model(cls, params: Mapping[str, Any]) -> nn.Module:
        return KLAutoencoder(ch=int(params.get("ch", 128)), ch_mult=tuple(params.get("ch_mult", (1, 1, 2, 2, 4))),
                             num_res_blocks=int(params.get("num_res_blocks", 2)),
                             embed_dim=int(params.get("embed_dim", 16)),
                             enc_attn_levels=tuple(params.get("enc_attn_levels", (4,))),
                             dec_attn_levels=tuple(params.get("dec_attn_levels", ())))

    def __init__(self, card: TokenizerCard, model: nn.Module, device: str | torch.device = "cpu"):
        super().__init__(card, model, device=device)
        p = self.params
        self.continuous = bool(p.get("continuous", False))
        self.latent_mode = str(p.get("latent", "mode"))
        if self.latent_mode not in ("mode", "sample"):
            raise ValueError(f"{card.card_path}: {card.name} params.latent must be 'mode' or 'sample', "
                             f"got {self.latent_mode!r}")
        self.seed = int(p.get("seed", 0))
        self.embed_dim = int(p.get("embed_dim", 16))
        self.downsample = 2 ** (len(tuple(p.get("ch_mult", (1, 1, 2, 2, 4)))) - 1)
        self.latent_bits = int(p.get("latent_bits", 16))
        if self.latent_bits not in (16, 32):
            raise ValueError(f"{card.name}: params.latent_bits must be 16 or 32, got {self.latent_bits}")
        self.quantizer: GaussianScalarQuantizer | None = None
        if not self.continuous:
            if "bits" not in p:
                raise ValueError(f"{card.card_path}: {card.name} needs params.bits (or continuous = true)")
            self.quantizer = GaussianScalarQuantizer(
                int(p["bits"]), scale=float(p.get("scale", MAR_SCALE)), quant_range=float(p.get("quant_range", 5.0)),
                std_range=float(p.get("std_range", 3.0))).to(self.device)

    def to(self, device: str | torch.device) -> "TokenBridgeTokenizer":
        super().to(device)
        if self.quantizer is not None:
            self.quantizer.to(self.device)
        return self

    # -- contract ---------------------------------------------------------------------------------------------
    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        return height // self.downsample, width // self.downsample

    def tokens_per_image(self, height: int, width: int) -> int:
        h, w = self._latent_hw(height, width)
        return h * w if self.continuous else h * w * self.embed_dim

    def _latent(self, x: torch.Tensor) -> torch.Tensor:
        mean, logvar = self.model.moments(x)
        if self.latent_mode == "mode":
            return mean
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(mean.shape[1:], generator=g).to(mean.device)  # one draw, shared by every image
        return mean + torch.exp(0.5 * logvar) * noise

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Tokens:
        n, _, height, width = images.shape
        self.check_size(height, width)
        z = self._latent(self.to_model(images))
        h, w = z.shape[-2:]
        if self.continuous:
            dtype = torch.float16 if self.latent_bits == 16 else torch.float32
            lat = z.to(dtype)
            bits = torch.full((n,), float(lat[0].numel() * self.latent_bits), dtype=torch.float64)
            return Tokens(kind=self.card.kind, bits=bits, tokens_per_image=h * w, latents=lat,
                          meta={"token_views": {"scalars": h * w * self.embed_dim},
                                "latent": self.latent_mode, "latent_dtype": str(dtype).replace("torch.", "")})
        codes = self.quantizer.encode(z).permute(0, 2, 3, 1).contiguous()  # (N, h, w, channel)
        per_image = h * w * self.embed_dim
        qin = self.quantizer.normalise(z).permute(0, 2, 3, 1).unsqueeze(-1).contiguous()  # (N, h, w, channel, 1)
        return Tokens(kind=self.card.kind, bits=code_bits(per_image, self.quantizer.levels, n),
                      tokens_per_image=per_image, codes=codes, layout=("h", "w", "channel"),
                      codebook_size=self.quantizer.levels,
                      meta={"token_views": {"positions": h * w}, "latent": self.latent_mode}, quantizer_input=qin)

    RULE_SCALAR = ("scalar: per latent scalar, the min(delta, 2^bits) codes whose Gaussian representative level is "
                   "nearest (exact |u - c|) the scalar's value u after TokenBridge's affine map and clamp to "
                   "[-std_range, std_range], nearest first, ties to the lower code")

    @property
    def neighbour_rule(self) -> str | None:  # type: ignore[override]
        return None if self.continuous else self.RULE_SCALAR

    def neighbour_quantizer(self) -> Any:  # sets (N, h, w, channel, k), k = min(delta, 2**bits)
        return self.quantizer

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if self.continuous:
            if tokens.latents is None:
                raise ValueError(f"{self.name}: decode needs Tokens.latents (continuous latent)")
            z = tokens.latents.to(self.device, torch.float32)
        else:
            if tokens.codes is None:
                raise ValueError(f"{self.name}: decode needs Tokens.codes")
            # contiguous NCHW, as the official decoder input: the permuted (channels-last) latent would stay
            # channels-last through the VAE decoder, where torch's CPU group norm is far less precise
            z = self.quantizer.decode(tokens.codes.to(self.device).permute(0, 3, 1, 2)).contiguous()
        return self.from_model(self.model.decode(z.float()))

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        out["latent"] = self.latent_mode if self.latent_mode == "mode" else f"sample (seed {self.seed})"
        if self.quantizer is not None:
            q = self.quantizer
            out["quantizer"] = {"bits": q.bits, "scale": q.scale, "range": [q.lo, q.hi], "std_range": q.std_range}
        return out


__all__ = ["GaussianScalarQuantizer", "KLAutoencoder", "MAR_SCALE", "TokenBridgeTokenizer"]
