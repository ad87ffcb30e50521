"""The tokenizer contract: the ``Tokens`` value, and the ``Tokenizer`` base class.

Every adapter takes float NCHW RGB images in [0, 1] and returns [0, 1] images from ``decode``; range
conversion to the model's own convention is the adapter's job. ``Tokens`` carries the codes with their
layout (or continuous latents, or a codec's bytes) and the exact number of bits each image costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vtbench.cards import KINDS, TokenizerCard  # noqa: F401 (the card record lives in cards.py, torch-free)


class UnsupportedResolutionError(ValueError):
    """The tokenizer cannot take images of this size under the chosen preprocessing policy."""


class PerturbationUnsupported(ValueError):
    """The tokenizer has no discrete neighbour sets, so pFID is not defined for it (``reason`` says why)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Tokens:
    """What ``encode`` returns.

    ``bits`` holds the exact cost of each image (float64, shape ``(N,)``): codes x log2(K) for discrete
    tokens, the encoded size for codecs, elements x 16 for fp16 continuous latents.
    """

    kind: str
    bits: torch.Tensor
    tokens_per_image: int | None
    codes: torch.Tensor | None = None  # int64, (N, *layout)
    layout: tuple[str, ...] = ()  # names of the axes after N, e.g. ("h", "w") or ("h", "w", "depth")
    codebook_size: int | None = None  # each code is in [0, codebook_size)
    latents: torch.Tensor | None = None
    payload: list[bytes] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # The vectors the quantiser saw, in its own space (after any l2-normalisation), one per code position:
    # (N, *layout, C). Kept so pFID can build each token's neighbour set; None for codecs and continuous kinds.
    quantizer_input: torch.Tensor | None = None
    # One seed per image for decoders that sample (flow / diffusion decoders): set by the runner from the run's
    # seed and each image's id (``image_seeds``), so a sampled reconstruction depends on neither batch size nor
    # order. None: ``per_image_normal`` seeds each image from its own codes (from its batch position without codes).
    seeds: list[int] | None = None

    def __len__(self) -> int:
        return int(self.bits.shape[0])

    @property
    def bits_per_token(self) -> torch.Tensor | None:
        if not self.tokens_per_image:
            return None
        return self.bits / self.tokens_per_image


def image_seeds(ids: list[str], seed: int) -> list[int]:
    """One 63-bit seed per image id, from sha256 of ``"<seed>:<id>"``: the same image gets the same noise at any
    batch size, position or process count."""
    import hashlib
    return [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode("utf-8", "surrogatepass")).digest()[:8], "big") >> 1
            for i in ids]


def per_image_normal(tokens: "Tokens", shape: tuple[int, ...], *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32, stream: int = 0) -> torch.Tensor:
    """Standard normal noise ``(N, *shape)`` for a sampling decoder: row ``i`` comes from a CPU generator seeded
    with ``tokens.seeds[i]`` (+ ``stream`` for a second, independent draw such as a re-noising step), then moved to
    ``device``. CPU generators make the draws identical on every device."""
    n = len(tokens)
    seeds = tokens.seeds
    if seeds is None:  # no runner seeds: each image's own codes seed it (still batch-independent), else its position
        if tokens.codes is not None:
            import hashlib
            seeds = [int.from_bytes(hashlib.sha256(c.cpu().numpy().tobytes()).digest()[:8], "big") >> 1
                     for c in tokens.codes]
        else:
            seeds = image_seeds([str(i) for i in range(n)], 0)
    if len(seeds) != n:
        raise ValueError(f"Tokens.seeds has {len(seeds)} entries for {n} images")
    rows = []
    for s in seeds:
        g = torch.Generator().manual_seed((int(s) + 1_000_003 * stream) % (2 ** 63))
        rows.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(rows).to(device=device, dtype=dtype)


def code_bits(n_codes: int, codebook_size: int, batch: int) -> torch.Tensor:
    """Bits for ``batch`` images of ``n_codes`` codes each from a codebook of ``codebook_size`` entries."""
    return torch.full((batch,), n_codes * math.log2(codebook_size), dtype=torch.float64)


class Tokenizer:
    """Base class of all adapters. Subclasses implement ``encode``, ``decode`` and ``tokens_per_image``."""

    # True for decoders that sample (rectified flow, diffusion): the runner gives every image its seed
    # (``Tokens.seeds``) and records the seed and ``network_evaluations()``; ``--seeds 0,1,2`` repeats the run
    stochastic: bool = False

    def network_evaluations(self) -> int | None:
        """Decoder network evaluations per image (a flow decoder's steps x guidance passes); None: one forward
        pass (no sampling)."""
        return None

    def __init__(self, card: TokenizerCard, device: str | torch.device = "cpu"):
        self.card = card
        self.device = torch.device(device)
        self.weights_path: Path | None = None
        self.weights_sha256: str | None = None

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_card(cls, card: TokenizerCard, *, weights: str | Path | None = None, trust: bool = False,
                  device: str | torch.device = "cpu") -> "Tokenizer":
        """Build the adapter for ``card``; adapters with weights resolve them through ``vtbench.tokenizers.weights``."""
        return cls(card, device=device)

    # -- contract -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.card.name

    def check_size(self, height: int, width: int) -> None:
        """Raise ``UnsupportedResolutionError`` when this tokenizer cannot take ``height x width`` images."""
        native = self.card.native_size
        if native is not None and (height, width) != (native, native):
            raise UnsupportedResolutionError(
                f"{self.name} takes {native}x{native} images, got {height}x{width}; use a preprocessing policy "
                f"that produces {native}x{native} (--preprocess adm-center-crop --resolution {native}, or pad-restore)"
            )
        m = self.card.size_multiple
        if m > 1 and (height % m or width % m):
            raise UnsupportedResolutionError(
                f"{self.name} needs sides divisible by {m}, got {height}x{width}; choose --resolution as a "
                f"multiple of {m} or use --preprocess pad-restore"
            )

    def encode(self, images: torch.Tensor) -> Tokens:  # images: float (N,3,H,W) in [0,1]
        raise NotImplementedError

    def decode(self, tokens: Tokens) -> torch.Tensor:  # -> float (N,3,H,W) in [0,1]
        raise NotImplementedError

    def tokens_per_image(self, height: int, width: int) -> int | None:
        raise NotImplementedError

    # -- codes from elsewhere (AR samples, token files) ------------------------------------------------
    def tokens_from_codes(self, codes: torch.Tensor, height: int | None = None, width: int | None = None) -> Tokens:
        """Wrap integer ``codes`` (from an AR prior, a token file) into ``Tokens`` that ``decode`` accepts.

        The layout, bits and per-shape ``meta`` (scales, views, image size) come from encoding one mid-grey
        ``height x width`` image (default: the card's native size), so codes must have exactly the shape this
        tokenizer produces at that size. Raises ``ValueError`` naming the expected shape or code range.
        """
        if height is None or width is None:
            if self.card.native_size is None:
                raise ValueError(f"{self.name} has no native size: give height and width of the images the "
                                 "codes were made from")
            height = width = self.card.native_size
        template = self.template_tokens(int(height), int(width))
        if template.codes is None or not template.codebook_size:
            raise ValueError(f"{self.name} ({self.card.kind}) has no integer codes to decode")
        codes = torch.as_tensor(codes)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        expected = tuple(template.codes.shape[1:])
        if codes.ndim != len(expected) + 1 or tuple(codes.shape[1:]) != expected:
            raise ValueError(f"{self.name} at {height}x{width} makes codes of shape "
                             f"(N, {', '.join(map(str, expected))})"
                             f" with layout {template.layout}; got {tuple(codes.shape)}")
        k = int(template.codebook_size)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise ValueError(f"codes must lie in [0, {k}) for {self.name}; "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        n = codes.shape[0]
        return Tokens(kind=template.kind, bits=template.bits[:1].expand(n).clone(),
                      tokens_per_image=template.tokens_per_image, codes=codes.long().to(template.codes.device),
                      layout=template.layout, codebook_size=k, meta=dict(template.meta))

    def template_tokens(self, height: int, width: int) -> Tokens:
        """The ``Tokens`` of one mid-grey ``height x width`` image (cached per size)."""
        cache = self.__dict__.setdefault("_templates", {})
        if (height, width) not in cache:
            self.check_size(height, width)
            with torch.inference_mode():
                cache[(height, width)] = self.encode(torch.full((1, 3, height, width), 0.5, device=self.device))
        return cache[(height, width)]

    # -- pFID ---------------------------------------------------------------------------------------
    # One line saying how neighbour sets are built, recorded with every pFID value; None: pFID not defined.
    neighbour_rule: str | None = None

    def perturbation_support(self) -> str:
        """The neighbour rule, or raise ``PerturbationUnsupported`` with the reason pFID is not defined here."""
        if self.neighbour_rule:
            return self.neighbour_rule
        kind = self.card.kind
        if kind in ("continuous",):
            raise PerturbationUnsupported(f"{self.name} has continuous latents: pFID perturbs discrete tokens "
                                          "within their codebook neighbourhoods and is not defined here")
        if kind in ("codec", "reference"):
            raise PerturbationUnsupported(f"{self.name} is a {kind} row (no token codebook): pFID is not defined")
        raise PerturbationUnsupported(f"{self.name}: the adapter does not define neighbour sets for pFID yet")

    def neighbours(self, tokens: Tokens, delta: int) -> torch.Tensor:
        """pFID neighbour sets: int64 ``(N, *layout, k)``, for every code position the ``k = min(delta, ...)``
        codes nearest its quantiser input (nearest first; the code itself normally first). Delegates to the
        ``neighbours(quantizer_input, delta)`` of ``neighbour_quantizer()``."""
        self.perturbation_support()
        if tokens.quantizer_input is None:
            raise ValueError(f"{self.name}: these Tokens carry no quantizer_input (made by tokens_from_codes?); "
                             "pFID needs tokens from encode")
        return self.neighbour_quantizer().neighbours(tokens.quantizer_input.to(self.device), delta)

    def neighbour_quantizer(self) -> Any:
        """The quantiser whose ``neighbours(quantizer_input, delta)`` builds the sets (adapters with a rule)."""
        raise PerturbationUnsupported(f"{self.name}: neighbour_rule is set but neighbour_quantizer() is not "
                                      "implemented")

    def to(self, device: str | torch.device) -> "Tokenizer":
        self.device = torch.device(device)
        return self

    def provenance(self) -> dict[str, Any]:
        return {"weights_path": str(self.weights_path) if self.weights_path else None,
                "weights_sha256": self.weights_sha256}
