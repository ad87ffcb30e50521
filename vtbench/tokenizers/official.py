"""Shared loading path for adapters of official checkpoints.

A family adapter subclasses ``CheckpointTokenizer`` and provides:

- ``build_model(params) -> nn.Module``: vtbench's own implementation, configured from the card's ``params``;
- ``remap_state(state, params) -> state`` (optional): official parameter names -> the module's names;
- ``encode`` / ``decode`` / ``tokens_per_image``.

``from_card`` then does the same for every family: resolve the weights (``--weights``, ``$VTBENCH_WEIGHTS``,
the hub when online), read the file without running pickled code (``load_official_checkpoint``), take the
state dict out of its wrapper (``params.wrapper_keys``, default ``ema`` > ``model`` > ``state_dict`` > ``module``),
drop training-only tensors (``params.drop_prefixes``, e.g. Lightning's ``loss.`` discriminator and LPIPS),
remap, and load strictly. What was dropped, which wrapper was used and which pickled globals were replaced
by inert placeholders go into ``provenance()`` and so into every result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from vtbench.hashing import sha256sum
from vtbench.tokenizers.base import Tokenizer, TokenizerCard
from vtbench.tokenizers.weights import (
    ExtractedState,
    MissingWeightsError,
    WeightsMismatchError,
    extract_state_dict,
    load_official_checkpoint,
    load_strict,
    resolve_weights,
)

DEFAULT_WRAPPERS = ("ema", "model", "state_dict", "module")


def to_model_range(images: torch.Tensor, value_range: str) -> torch.Tensor:
    """[0, 1] images -> the model's convention ("[-1,1]" or "[0,1]")."""
    if value_range == "[-1,1]":
        return images * 2.0 - 1.0
    if value_range == "[0,1]":
        return images
    raise ValueError(f"unknown input range {value_range!r}")


def from_model_range(x: torch.Tensor, value_range: str) -> torch.Tensor:
    """Model output -> [0, 1], clamped (official decoders do not always clamp)."""
    if value_range == "[-1,1]":
        x = (x.float() + 1.0) / 2.0
    return x.float().clamp_(0.0, 1.0)


class CheckpointTokenizer(Tokenizer):
    """Adapter base for tokenizers loaded from official checkpoints through vtbench's own architectures."""

    #: training-only prefixes dropped from every checkpoint of the family (cards may add more)
    drop_prefixes: tuple[str, ...] = ()
    #: build the module on the meta device and load the file's tensors into it by assignment: no random
    #: initialisation and no second copy of the weights in memory (for multi-billion-parameter models). The
    #: module then holds the file's dtypes; ``__init__`` may cast them.
    build_on_meta: bool = False

    def __init__(self, card: TokenizerCard, model: nn.Module, device: str | torch.device = "cpu"):
        super().__init__(card, device=device)
        self.params: dict[str, Any] = dict(card.params)
        self.model = model.to(self.device).eval()
        self.checkpoint_info: dict[str, Any] = {}

    # -- family hooks --------------------------------------------------------------------------------
    @classmethod
    def build_model(cls, params: Mapping[str, Any]) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def remap_state(cls, state: dict[str, torch.Tensor], params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return state

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def state_from_object(cls, obj: Any, params: Mapping[str, Any], *,
                          source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], ExtractedState]:
        """The module's state dict from a loaded checkpoint object: unwrap, drop training-only parts, remap."""
        ext: ExtractedState = extract_state_dict(
            obj, prefer=tuple(params.get("wrapper_keys", DEFAULT_WRAPPERS)),
            drop_prefixes=tuple(cls.drop_prefixes) + tuple(params.get("drop_prefixes", ())),
            strip_prefixes=tuple(params.get("strip_prefixes", ())), source=source)
        return cls.remap_state(ext.state, params), ext

    @classmethod
    def read_state(cls, path: str | Path, params: Mapping[str, Any], *, trust: bool = False,
                   source: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Read ``path`` the family's way; returns (state dict in the module's names, checkpoint info)."""
        source = source or str(path)
        loaded = load_official_checkpoint(path, trust=trust, inert=True)
        state, ext = cls.state_from_object(loaded.obj, params, source=source)
        info = {**loaded.info(), **ext.summary()}
        return state, info

    @classmethod
    def from_card(cls, card: TokenizerCard, *, weights: str | Path | None = None, trust: bool = False,
                  device: str | torch.device = "cpu") -> "CheckpointTokenizer":
        if not card.weights:
            raise ValueError(f"{card.card_path}: {card.name} has no [weights] table")
        path = resolve_weights(card.weights, weights, name=card.name)
        params = dict(card.params)
        if cls.build_on_meta:
            with torch.device("meta"):
                model = cls.build_model(params)
        else:
            model = cls.build_model(params)
        state, info = cls.read_state(path, params, trust=trust, source=f"{card.name}: {path}")
        load_strict(model, state, source=f"{card.name}: {path}", assign=cls.build_on_meta)
        if cls.build_on_meta:
            left = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
            if left:  # a non-persistent buffer is not in any file: the family must create it after loading
                raise WeightsMismatchError(f"{card.name}: {path}: {len(left)} tensors were not in the file and have "
                                           f"no value (e.g. {left[:3]}); this is a bug in {cls.__name__}")
        tok = cls(card, model, device=device)
        tok.weights_path = Path(path)
        tok.weights_sha256 = sha256sum(path)
        expected = (card.weights or {}).get("sha256")
        # a `vtbench weights convert` copy is checked through the sha256 of the file it was converted from
        origin = (info.get("converted_from") or {}).get("sha256")
        info["sha256_matches_card"] = None if not expected else (expected in (tok.weights_sha256, origin))
        tok.checkpoint_info = info
        return tok

    def to(self, device: str | torch.device) -> "CheckpointTokenizer":
        super().to(device)
        self.model.to(self.device)
        return self

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        out["checkpoint"] = self.checkpoint_info
        return out

    # -- helpers for subclasses ----------------------------------------------------------------------
    @property
    def value_range(self) -> str:
        return self.card.input_range

    def to_model(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_range(images.to(self.device, torch.float32), self.value_range)

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        return from_model_range(x, self.value_range)


# -- key manifests -----------------------------------------------------------------------------------------
def load_manifest(path: str | Path) -> dict[str, Any]:
    """A committed key manifest: ``{"source": ..., "wrapper": ..., "keys": {name: [shape...]}}``."""
    with open(path) as f:
        return json.load(f)


def manifest_state(manifest: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Shape-only (meta) tensors for a manifest's keys: remap and compare without allocating memory."""
    return {k: torch.empty(tuple(shape), device="meta") for k, shape in manifest["keys"].items()}


def manifest_checkpoint(manifest: Mapping[str, Any]) -> Any:
    """A meta-tensor stand-in for the official file: the manifest's keys under its wrapper key (if any)."""
    state = manifest_state(manifest)
    return {manifest["wrapper"]: state} if manifest.get("wrapper") else state


def check_manifest(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise ``WeightsMismatchError`` unless ``state`` (already remapped) has exactly the model's keys and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise WeightsMismatchError(f"{source}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                                   f"shape mismatches {shapes[:5]}")


__all__ = ["CheckpointTokenizer", "MissingWeightsError", "check_manifest", "from_model_range", "load_manifest",
           "manifest_checkpoint", "manifest_state", "to_model_range"]
