"""VAR's multi-scale VQVAE (Tian et al., NeurIPS 2024; FoundationVision/VAR ``models/vqvae.py``,
``models/quant.py``, ``models/basic_vae.py``): one image becomes token maps of growing side
(1, 2, 3, 4, 5, 6, 8, 10, 13, 16 for the released 256-px model: 680 tokens, 12 bits each).

vtbench's own implementation; only parameter names and shapes follow the official checkpoint
(``vae_ch160v4096z32.pth``, a raw state dict). What the official model computes (and this module reproduces):

- encoder / decoder: the LDM conv encoder/decoder (``vtbench.tokenizers.ldm``, same parameter names) with
  one fused ``qkv`` 1x1 convolution per attention block (channels ordered q, k, v; scale ``C ** -0.5``),
  attention in every block of the deepest level (``using_sa``) and in the middle (``using_mid_sa``), no
  shortcut convolution where channels do not change. ``quant_conv`` / ``post_quant_conv`` are
  ``z_channels -> z_channels`` convolutions of kernel ``quant_conv_ks`` (3).
- quantiser (``f`` = ``quant_conv(encoder(x))``, side ``H = W = v_patch_nums[-1]``): ``f_rest = f``,
  ``f_hat = 0``; for each scale ``k`` with side ``p_k``, from small to large: take ``f_rest`` area-downsampled
  to ``p_k x p_k`` (the last scale is not resampled), pick for every vector the codebook entry with the
  smallest squared L2 distance written ``||z||^2 + ||e||^2 - 2 z.e`` (or, with ``using_znorm``, the largest
  cosine similarity), upsample the chosen entries bicubically back to ``H x W`` (not the last scale), apply
  ``phi_k(h) = (1 - r) h + r conv3x3(h)`` with ``r = |quant_resi|`` (0.5), then ``f_hat += h`` and
  ``f_rest -= h``. Codes are each scale's indices in row-major order, concatenated.
- ``phi``: ``share_quant_resi`` convolutions (4 for the release; 1: one shared; 0: one per scale). Scale
  ``k`` of ``K`` uses the convolution whose tick is nearest to ``k / (K - 1)``, ticks being
  ``linspace(1/(3n), 1 - 1/(3n), n)`` for ``n = 4`` convolutions and ``linspace(1/(2n), 1 - 1/(2n), n)``
  otherwise (float64, first index on ties): for 10 scales and 4 convolutions, 0,0,1,1,1,2,2,3,3,3.
- decoding from codes (the official ``idxBl_to_img(..., same_shape=True, last_one=True)``): every scale's
  entries are upsampled bicubically to ``H x W`` (not the last), passed through its ``phi`` and summed;
  ``decoder(post_quant_conv(f_hat))`` is clamped to [-1, 1]. Images are in [-1, 1].

The checkpoint's ``quantize.ema_vocab_hit_SV`` (codebook-usage statistics of training) is dropped.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vtbench.tokenizers.base import Tokens, code_bits
from vtbench.tokenizers.ldm import Decoder, Encoder
from vtbench.tokenizers.neighbours import nearest_entries
from vtbench.tokenizers.official import CheckpointTokenizer
from vtbench.tokenizers.quantizers import nearest_code_full
from vtbench.tokenizers.weights import rename_keys


def _nearest_cosine(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return (F.normalize(z, dim=-1) @ F.normalize(codebook.t(), dim=0)).argmax(dim=1)


def phi_schedule(n_scales: int, n_phi: int, share_quant_resi: int) -> list[int]:
    """Which ``phi`` convolution each scale uses (see the module docstring)."""
    if share_quant_resi == 1 or n_phi == 1:
        return [0] * n_scales
    if n_phi == 4:
        ticks = np.linspace(1 / 3 / n_phi, 1 - 1 / 3 / n_phi, n_phi)
    else:
        ticks = np.linspace(1 / 2 / n_phi, 1 - 1 / 2 / n_phi, n_phi)
    return [int(np.argmin(np.abs(ticks - (si / (n_scales - 1) if n_scales > 1 else 0.0)))) for si in range(n_scales)]


class Phi(nn.Conv2d):
    """``(1 - r) h + r conv3x3(h)``."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = abs(float(ratio))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


class MultiScaleQuantizer(nn.Module):
    """Multi-scale residual quantiser with one ``V x C`` codebook and the ``phi`` refinements."""

    def __init__(self, *, vocab_size: int, channels: int, patch_nums: Sequence[int], quant_resi: float = 0.5,
                 share_quant_resi: int = 4, default_qresi_counts: int = 0, using_znorm: bool = False):
        super().__init__()
        self.vocab_size, self.channels = int(vocab_size), int(channels)
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.using_znorm = bool(using_znorm)
        share = int(share_quant_resi)
        n_phi = (int(default_qresi_counts) or len(self.patch_nums)) if share == 0 else (1 if share == 1 else share)
        self.identity_phi = abs(float(quant_resi)) <= 1e-6
        self.phi = nn.ModuleList([] if self.identity_phi else [Phi(self.channels, quant_resi) for _ in range(n_phi)])
        self.schedule = phi_schedule(len(self.patch_nums), n_phi, share)
        self.codebook = nn.Parameter(torch.randn(self.vocab_size, self.channels) / math.sqrt(self.channels))

    def refine(self, si: int, h: torch.Tensor) -> torch.Tensor:
        return h if self.identity_phi else self.phi[self.schedule[si]](h)

    @property
    def tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @torch.no_grad()
    def encode(self, f: torch.Tensor) -> torch.Tensor:
        """f: (N, C, H, W) with ``H = W = patch_nums[-1]`` -> int64 codes (N, sum p^2)."""
        return self.encode_with_inputs(f)[0]

    @torch.no_grad()
    def encode_with_inputs(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f: (N, C, H, W) -> (codes (N, sum p^2), the vectors each scale's search compared (N, sum p^2, C)):
        ``f_rest`` area-downsampled to the scale (the last scale as is), l2-normalised with ``using_znorm``."""
        n, c, hh, ww = f.shape
        if (hh, ww) != (self.patch_nums[-1],) * 2:
            raise ValueError(f"latent side {hh}x{ww} != last patch number {self.patch_nums[-1]}")
        f_rest = f.float().clone()
        f_hat = torch.zeros_like(f_rest)
        last = len(self.patch_nums) - 1
        out, inputs = [], []
        for si, pn in enumerate(self.patch_nums):
            src = f_rest if si == last else F.interpolate(f_rest, size=(pn, pn), mode="area")
            z = src.permute(0, 2, 3, 1).reshape(-1, c)
            inputs.append((F.normalize(z, dim=-1) if self.using_znorm else z.clone()).view(n, pn * pn, c))
            idx = _nearest_cosine(z, self.codebook) if self.using_znorm else nearest_code_full(z, self.codebook)
            h = F.embedding(idx.view(n, pn, pn), self.codebook).permute(0, 3, 1, 2)
            h = (h if si == last else F.interpolate(h, size=(hh, ww), mode="bicubic")).contiguous()
            h = self.refine(si, h)
            f_hat.add_(h)
            f_rest.sub_(h)
            out.append(idx.reshape(n, pn * pn))
        return torch.cat(out, dim=1), torch.cat(inputs, dim=1)

    @torch.no_grad()
    def neighbours(self, qin: torch.Tensor, delta: int) -> torch.Tensor:
        """pFID sets: for every token of every scale, the ``min(delta, V)`` entries of the shared codebook
        (l2-normalised with ``using_znorm``) nearest its quantiser input ``qin`` (N, T, C) -> int64 (N, T, k)."""
        book = F.normalize(self.codebook, dim=-1) if self.using_znorm else self.codebook
        rows = nearest_entries(qin.reshape(-1, self.channels), book.float(), delta)
        return rows.view(*qin.shape[:-1], rows.shape[1])

    def f_hat(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, sum p^2) -> the summed, refined latent (N, C, H, W)."""
        n = codes.shape[0]
        side = self.patch_nums[-1]
        last = len(self.patch_nums) - 1
        f_hat = torch.zeros(n, self.channels, side, side, dtype=torch.float32, device=codes.device)
        start = 0
        for si, pn in enumerate(self.patch_nums):
            idx = codes[:, start:start + pn * pn].long()
            start += pn * pn
            h = F.embedding(idx, self.codebook).transpose(1, 2).view(n, self.channels, pn, pn)
            if si != last:
                h = F.interpolate(h, size=(side, side), mode="bicubic")
            f_hat.add_(self.refine(si, h))
        return f_hat


class VARVQVAEModel(nn.Module):
    def __init__(self, p: Mapping[str, Any]):
        super().__init__()
        ch_mult = tuple(int(m) for m in p.get("ch_mult", (1, 1, 2, 2, 4)))
        cz = int(p["z_channels"])
        arch = dict(ch=int(p["ch"]), ch_mult=ch_mult, num_res_blocks=int(p.get("num_res_blocks", 2)),
                    attn_levels=(len(ch_mult) - 1,) if p.get("using_sa", True) else (), z_channels=cz,
                    mid_attn=bool(p.get("using_mid_sa", True)), fused_qkv=True)
        self.encoder = Encoder(double_z=False, **arch)
        self.decoder = Decoder(**arch)
        ks = int(p.get("quant_conv_ks", 3))
        self.quant_conv = nn.Conv2d(cz, cz, ks, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(cz, cz, ks, padding=ks // 2)
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.quantize = MultiScaleQuantizer(
            vocab_size=int(p["vocab_size"]), channels=cz, patch_nums=p["v_patch_nums"],
            quant_resi=float(p.get("quant_resi", 0.5)), share_quant_resi=int(p.get("share_quant_resi", 4)),
            default_qresi_counts=int(p.get("default_qresi_counts", 0)), using_znorm=bool(p.get("using_znorm", False)))

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize.f_hat(codes))).clamp_(-1, 1)


class VARTokenizer(CheckpointTokenizer):
    """Adapter for VAR's multi-scale VQVAE (``vae_ch160v4096z32.pth``)."""

    drop_prefixes = ("quantize.ema_vocab_hit_SV",)

    @classmethod
    def build_model(cls, params: Mapping[str, Any]) -> nn.Module:
        return VARVQVAEModel(params)

    @classmethod
    def remap_state(cls, state: dict[str, torch.Tensor], params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return rename_keys(state, [
            (r"quantize\.embedding\.weight$", "quantize.codebook"),
            (r"quantize\.quant_resi\.qresi_ls\.", "quantize.phi."),  # partially shared (share_quant_resi >= 2)
            (r"quantize\.quant_resi\.qresi\.", "quantize.phi.0."),  # fully shared (share_quant_resi = 1)
            (r"quantize\.quant_resi\.(\d+)\.", r"quantize.phi.\1."),  # one per scale (share_quant_resi = 0)
        ])

    def tokens_per_image(self, height: int, width: int) -> int:
        return self.model.quantize.tokens

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Tokens:
        self.check_size(images.shape[-2], images.shape[-1])
        q = self.model.quantize
        codes, qin = q.encode_with_inputs(self.model.latent(self.to_model(images)))
        return Tokens(kind=self.card.kind, bits=code_bits(codes.shape[1], q.vocab_size, codes.shape[0]),
                      tokens_per_image=codes.shape[1], codes=codes, layout=("token",), codebook_size=q.vocab_size,
                      meta={"scales": list(q.patch_nums)}, quantizer_input=qin)

    @property
    def neighbour_rule(self) -> str:  # type: ignore[override]
        if self.model.quantize.using_znorm:
            dist = ("nearest (largest cosine: both l2-normalised) the l2-normalised vector that scale quantised")
        else:
            dist = "nearest (squared L2) the vector that scale quantised"
        return (f"multiscale: at every scale, for each of its tokens, the delta entries of the shared codebook {dist} "
                "(the residual f_rest area-downsampled to the scale's side; the last scale not resampled), nearest "
                "first, ties to the lower index")

    def neighbour_quantizer(self) -> Any:
        return self.model.quantize

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        return self.from_model(self.model.decode_codes(tokens.codes.to(self.device)))


__all__ = ["MultiScaleQuantizer", "VARTokenizer", "VARVQVAEModel", "phi_schedule"]
