"""The tiny tokenizer family: small convolutional autoencoders, trained by vtbench itself, with a VQ, RVQ or
FSQ bottleneck (``vtbench.tokenizers.quantizers``).

They exist so the default run and CI exercise real discrete tokens (codebook usage, entropy, bits) without
downloading anything; they are not competitive tokenizers. The checkpoints ship in ``tokenizers/weights/`` and
are reproduced by ``python -m vtbench.tokenizers.tiny_train`` (see the ``tokenizers/tiny.toml`` card).

Architecture (downsampling 8, ``channels = (c1, c2, c3)``)::

    encoder: conv4x4/2 3->c1 | res(c1) | conv3x3/2 c1->c2 | res(c2) | conv3x3/2 c2->c3 | res(c3) x n_res
             | GN, SiLU, conv1x1 c3->dim
    decoder: conv3x3 dim->c3 | res(c3) x n_res | up2, conv3x3 c3->c2 | res(c2) | up2, conv3x3 c2->c1
             | res(c1) | GN, SiLU, convT4x4/2 c1->3

``up2`` is nearest-neighbour upsampling; the first and last layers work at stride 2 so no convolution runs at
full resolution (cheap on CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from vtbench.hashing import sha256sum
from vtbench.tokenizers.base import Tokenizer, TokenizerCard, Tokens, code_bits
from vtbench.tokenizers.quantizers import FSQ, ResidualVQ, VectorQuantizer
from vtbench.tokenizers.weights import load_checkpoint, load_strict, resolve_weights

DOWNSAMPLE = 8
BOTTLENECKS = ("vq", "rvq", "fsq")


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GN, SiLU, conv3x3) x 2 plus identity."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  _norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def build_quantizer(kind: str, dim: int, params: Mapping[str, Any]) -> nn.Module:
    """The bottleneck named by ``kind`` with its settings from a card's ``params``."""
    if kind == "vq":
        return VectorQuantizer(params["codebook_size"], dim, l2_norm=params.get("l2_norm", False),
                               beta=params.get("beta", 0.25))
    if kind == "rvq":
        return ResidualVQ(params["depth"], params["codebook_size"], dim, l2_norm=params.get("l2_norm", False),
                          beta=params.get("beta", 0.25))
    if kind == "fsq":
        return FSQ(params["levels"])
    raise ValueError(f"unknown tiny bottleneck {kind!r}; expected one of {BOTTLENECKS}")


class TinyAutoencoder(nn.Module):
    """Conv autoencoder (downsampling 8) with a discrete bottleneck; images in [-1, 1].

    ``params`` (a card's ``params`` table): ``kind`` ("vq" | "rvq" | "fsq"), ``channels`` (3 ints),
    ``n_res`` (residual blocks at the lowest resolution, per side), ``dim`` (latent channels; FSQ: must equal
    ``len(levels)``), and the quantiser's own keys (``codebook_size``, ``l2_norm``, ``beta``, ``depth``,
    ``levels``).
    """

    def __init__(self, params: Mapping[str, Any]):
        super().__init__()
        self.params = dict(params)
        self.kind = params["kind"]
        c1, c2, c3 = (int(c) for c in params.get("channels", (32, 48, 64)))
        n_res = int(params.get("n_res", 1))
        dim = len(params["levels"]) if self.kind == "fsq" else int(params["dim"])
        if self.kind == "fsq" and int(params.get("dim", dim)) != dim:
            raise ValueError(f"FSQ dim must equal len(levels) = {dim}, got {params['dim']}")
        self.dim = dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c1, 4, stride=2, padding=1), ResBlock(c1),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), ResBlock(c2),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), *[ResBlock(c3) for _ in range(n_res)],
            _norm(c3), nn.SiLU(), nn.Conv2d(c3, dim, 1),
        )
        self.quantizer = build_quantizer(self.kind, dim, params)
        self.decoder = nn.Sequential(
            nn.Conv2d(dim, c3, 3, padding=1), *[ResBlock(c3) for _ in range(n_res)],
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c3, c2, 3, padding=1), ResBlock(c2),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2, c1, 3, padding=1), ResBlock(c1),
            _norm(c1), nn.SiLU(), nn.ConvTranspose2d(c1, 3, 4, stride=2, padding=1),
        )

    @property
    def codebook_size(self) -> int:
        return int(self.quantizer.codebook_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, 3, H, W) in [-1, 1] -> (reconstruction, quantiser loss, codes)."""
        z_q, codes, qloss = self.quantizer(self.encoder(x))
        return self.decoder(z_q), qloss, codes

    @torch.no_grad()
    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self.encoder(x))

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(codes))


class TinyTokenizer(Tokenizer):
    """Adapter for the tiny autoencoders: [0, 1] images (sides multiples of 8) <-> discrete codes."""

    def __init__(self, card: TokenizerCard, model: TinyAutoencoder, device: str | torch.device = "cpu"):
        super().__init__(card, device=device)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_card(cls, card: TokenizerCard, *, weights: str | Path | None = None, trust: bool = False,
                  device: str | torch.device = "cpu") -> "TinyTokenizer":
        params = dict(card.params)
        params.setdefault("kind", card.kind)
        model = TinyAutoencoder(params)
        if not card.weights:
            raise ValueError(f"{card.name}: the card has no [weights] table")
        path = resolve_weights(card.weights, weights, name=card.name)
        load_strict(model, load_checkpoint(path, trust=trust), source=str(path))
        tok = cls(card, model, device=device)
        tok.weights_path = Path(path)
        tok.weights_sha256 = sha256sum(path)
        return tok

    def to(self, device: str | torch.device) -> "TinyTokenizer":
        super().to(device)
        self.model.to(self.device)
        return self

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    def tokens_per_image(self, height: int, width: int) -> int:
        return (height // DOWNSAMPLE) * (width // DOWNSAMPLE)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> Tokens:
        """images: float (N, 3, H, W) in [0, 1], H and W multiples of 8."""
        n, _, h, w = images.shape
        self.check_size(h, w)
        x = images.to(self.device, torch.float32) * 2.0 - 1.0
        z = self.model.encoder(x)
        q = self.model.quantizer
        codes = q.encode(z).long()
        kind = self.model.kind
        per_image = codes[0].numel()  # h*w, or h*w*depth for RVQ
        layout = ("h", "w", "depth") if kind == "rvq" else ("h", "w")
        return Tokens(kind=kind, bits=code_bits(per_image, self.codebook_size, n),
                      tokens_per_image=self.tokens_per_image(h, w), codes=codes, layout=layout,
                      codebook_size=self.codebook_size, meta={"image_size": (h, w)},
                      quantizer_input=q.quantizer_input(z))

    _RULES = {
        "vq": "vq: the delta codebook entries nearest the encoder vector (L2; l2-normalised vectors and codes "
              "when the codebook is cosine)",
        "rvq": "rvq: at every depth, the delta entries of that depth's codebook nearest the residual it quantised",
        "fsq": "fsq: the delta lattice points nearest the bounded latent, distances in quantised-latent units",
    }

    @property
    def neighbour_rule(self) -> str | None:  # type: ignore[override]
        return self._RULES.get(self.model.kind)

    def neighbour_quantizer(self) -> Any:
        return self.model.quantizer

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        """Tokens from ``encode`` -> float (N, 3, H, W) in [0, 1]."""
        if tokens.codes is None:
            raise ValueError(f"{self.name}: decode needs discrete codes, got Tokens without codes")
        x = self.model.decode_codes(tokens.codes.to(self.device).long())
        return ((x.float() + 1.0) / 2.0).clamp_(0.0, 1.0)
