"""Weights resolution and safe checkpoint loading, in one place.

Order: explicit path (``--weights``), the weights directory (``$VTBENCH_WEIGHTS``), the Hugging Face hub
(only when online and ``HF_HUB_OFFLINE`` is not set), else ``MissingWeightsError`` naming the file, its
source, its sha256 and how to place it. Checkpoints load from safetensors or with ``torch.load(...,
weights_only=True)``; anything that needs arbitrary unpickling is refused unless trusted explicitly.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch



class MissingWeightsError(FileNotFoundError):
    """No weights file could be found; the message says where to get it and where to put it."""


class UntrustedCheckpointError(RuntimeError):
    """The checkpoint needs arbitrary unpickling; refused unless the user trusts the file."""


class WeightsMismatchError(RuntimeError):
    """The file's state dict does not fit the architecture (missing/unexpected keys or shapes)."""


def _hub_allowed() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes") and \
        os.environ.get("VTBENCH_OFFLINE", "0").lower() not in ("1", "true", "yes")


def resolve_weights(spec: Mapping[str, Any], explicit: str | Path | None = None, *, name: str = "") -> Path:
    """Find the weights file described by ``spec`` (a card's ``weights`` table).

    ``spec`` keys: ``file`` (file name), ``sha256`` (optional), ``url`` (where it is published),
    ``hub_repo`` / ``hub_filename`` (optional Hugging Face location), ``bundled`` (path relative to the
    repository, for weights that ship with vtbench).
    """
    file_name = spec.get("file") or Path(spec.get("hub_filename", "")).name
    if explicit is not None:
        p = Path(explicit).expanduser()
        if p.is_dir():
            p = p / file_name
        if not p.is_file():
            raise MissingWeightsError(f"{name}: --weights {explicit} does not exist (expected the file {file_name})")
        return p
    if spec.get("bundled"):
        from vtbench.paths import REPO_ROOT
        p = REPO_ROOT / spec["bundled"]
        if p.is_file():
            return p
    wdir = os.environ.get("VTBENCH_WEIGHTS")
    if wdir:
        for cand in (Path(wdir) / file_name, Path(wdir) / (spec.get("hub_filename") or file_name)):
            if cand.is_file():
                return cand
    if spec.get("hub_repo") and _hub_allowed():
        try:
            from huggingface_hub import hf_hub_download
            return Path(hf_hub_download(spec["hub_repo"], spec.get("hub_filename", file_name)))
        except Exception as exc:  # offline, gated, missing: fall through to the actionable error
            hub_error = f" (hub download failed: {type(exc).__name__}: {exc})"
        else:  # pragma: no cover
            hub_error = ""
    else:
        hub_error = ""
    where = spec.get("url") or (f"https://huggingface.co/{spec['hub_repo']}" if spec.get("hub_repo") else "its official release")
    sha = spec.get("sha256") or "unknown (not published; recorded when first used)"
    target = f"$VTBENCH_WEIGHTS/{file_name}" if wdir else f"~/vtbench-weights/{file_name} and export VTBENCH_WEIGHTS=~/vtbench-weights"
    raise MissingWeightsError(
        f"{name}: weights file {file_name!r} not found{hub_error}.\n"
        f"  source: {where}\n  sha256: {sha}\n"
        f"  fix: download it and place it at {target}, or pass --weights /path/to/{file_name}"
    )


def load_checkpoint(path: str | Path, *, trust: bool = False) -> Any:
    """Load a checkpoint safely: safetensors, or ``torch.load(weights_only=True)``.

    Files that need arbitrary unpickling raise ``UntrustedCheckpointError`` unless ``trust=True``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise UntrustedCheckpointError(
                f"{path}: this checkpoint holds pickled Python objects that weights_only loading refuses "
                f"({str(exc).splitlines()[0][:200]}). Only if you trust the file's origin, pass "
                f"--trust-checkpoint (or trust=True) to unpickle it."
            ) from None
        return torch.load(path, map_location="cpu", weights_only=False)
    except RuntimeError as exc:
        raise WeightsMismatchError(f"{path}: not a readable PyTorch checkpoint ({exc}); re-download it") from None


def unwrap_state_dict(obj: Any, keys: tuple[str, ...] = ("ema", "model", "state_dict", "module")) -> dict[str, torch.Tensor]:
    """Return the tensor dict inside common wrapper dicts (``ema`` preferred, then ``model``, ...)."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for k in keys:
            if k in obj and isinstance(obj[k], Mapping):
                return unwrap_state_dict(obj[k], keys)
    raise WeightsMismatchError(f"no state dict found (top-level keys: {list(obj)[:10] if isinstance(obj, Mapping) else type(obj)})")


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with a readable error naming the file and the first differences."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise WeightsMismatchError(f"{source}: weights do not match the architecture: " + "; ".join(parts) +
                                   ". Check that the file is the checkpoint this card names.")
    module.load_state_dict(state, strict=True)

