"""Tokenizer adapters. Variants are declared by cards (``tokenizers/*.toml``, ``vtbench.cards``) and addressed as
``family.variant``; listing them imports no model code and no torch (the contract classes below load on first
use)."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from vtbench.cards import TokenizerCard
    from vtbench.tokenizers.base import Tokenizer

_BASE_NAMES = ("PerturbationUnsupported", "Tokenizer", "TokenizerCard", "Tokens", "UnsupportedResolutionError")


def __getattr__(name: str) -> Any:  # PEP 562: ``from vtbench.tokenizers import Tokenizer`` imports torch only then
    if name in _BASE_NAMES:
        from vtbench.tokenizers import base
        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_tokenizers(pattern: str | None = None, *, default_run: bool | None = None,
                    modality: str | None = None) -> list[str]:
    """Names of all declared variants, optionally filtered by a wildcard pattern, default-run membership or
    modality (``image``, ``shape``)."""
    from vtbench.config import all_cards  # (config re-exports vtbench.cards; tests patch it there)
    names = []
    for name, card in sorted(all_cards().items()):
        if pattern and not fnmatch.fnmatch(name, pattern) and not fnmatch.fnmatch(card.family, pattern):
            continue
        if default_run is not None and card.default_run != default_run:
            continue
        if modality is not None and card.modality != modality:
            continue
        names.append(name)
    return names


def build_tokenizer(name: str, *, weights: str | Path | None = None, trust: bool = False,
                    device: str | torch.device = "cpu") -> Tokenizer:
    """Construct the adapter for ``name`` (``family.variant``); weights resolve as ``vtbench.tokenizers.weights``
    says."""
    from vtbench.config import get_card
    return tokenizer_from_card(get_card(name), weights=weights, trust=trust, device=device)


def tokenizer_from_card(card: TokenizerCard, *, weights: str | Path | None = None, trust: bool = False,
                        device: str | torch.device = "cpu") -> Tokenizer:
    """Construct the adapter a card's ``entry`` names (the path ``build_tokenizer`` takes; tests pass scaled cards)."""
    from vtbench.cards import load_entry
    from vtbench.tokenizers.base import Tokenizer
    if card.modality != "image":
        raise TypeError(f"{card.card_path}: {card.name} is a {card.modality} tokenizer (modality = "
                        f"{card.modality!r}), not an image tokenizer: build it with its entry's from_card "
                        f"({card.entry}) and evaluate it on shapes (vtbench.three_d), not in an image run")
    cls = load_entry(card)
    if not (isinstance(cls, type) and issubclass(cls, Tokenizer)):
        raise TypeError(f"{card.card_path}: entry {card.entry!r} is not a vtbench Tokenizer subclass")
    tok = cls.from_card(card, weights=weights, trust=trust, device=device)
    return tok.to(device)


__all__ = [*_BASE_NAMES, "build_tokenizer", "list_tokenizers", "tokenizer_from_card"]
