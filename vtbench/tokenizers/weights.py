"""Weights resolution and safe checkpoint loading, in one place.

Order: explicit path (``--weights``), the weights directory (``$VTBENCH_WEIGHTS``), the Hugging Face hub
(only when online and ``HF_HUB_OFFLINE`` is not set), else ``MissingWeightsError`` naming the file, its
source, its sha256 and how to place it. Checkpoints load from safetensors or with ``torch.load(...,
weights_only=True)``; anything that needs arbitrary unpickling is refused unless trusted explicitly.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from vtbench.paths import downloads_allowed

if TYPE_CHECKING:  # torch loads with the first checkpoint: resolving and listing weights stays torch-free
    import torch


class MissingWeightsError(FileNotFoundError):
    """No weights file could be found; the message says where to get it and where to put it."""


class UntrustedCheckpointError(RuntimeError):
    """The checkpoint needs arbitrary unpickling; refused unless the user trusts the file."""


class WeightsMismatchError(RuntimeError):
    """The file's state dict does not fit the architecture (missing/unexpected keys or shapes)."""


def resolve_weights(spec: Mapping[str, Any], explicit: str | Path | None = None, *, name: str = "",
                    allow_hub: bool = True) -> Path:
    """Find the weights file described by ``spec`` (a card's ``weights`` table).

    ``spec`` keys: ``file`` (file name), ``sha256`` (optional), ``url`` (where it is published),
    ``hub_repo`` / ``hub_filename`` (optional Hugging Face location), ``bundled`` (path relative to the
    declarations root, ``tokenizers/weights/...``, for weights that ship with vtbench). With ``directory = true``
    the weights are a directory (e.g. a diffusers model folder), see ``_resolve_directory``.
    """
    if spec.get("directory"):
        return _resolve_directory(spec, explicit, name=name, allow_hub=allow_hub)
    file_name = spec.get("file") or Path(spec.get("hub_filename", "")).name
    if explicit is not None:
        p = Path(explicit).expanduser()
        if p.is_dir():
            p = converted_copy(p / file_name) or p / file_name
        if not p.is_file():
            raise MissingWeightsError(f"{name}: --weights {explicit} does not exist (expected the file {file_name})")
        return p
    if spec.get("bundled"):
        from vtbench.paths import DECLARATIONS_ROOT
        p = DECLARATIONS_ROOT / spec["bundled"]
        if p.is_file():
            return p
    wdir = os.environ.get("VTBENCH_WEIGHTS")
    if wdir:
        for cand in (Path(wdir) / file_name, Path(wdir) / (spec.get("hub_filename") or file_name)):
            found = converted_copy(cand) or (cand if cand.is_file() else None)
            if found:
                return found
    if spec.get("hub_repo") and allow_hub and downloads_allowed():
        try:
            from huggingface_hub import hf_hub_download
            return Path(hf_hub_download(spec["hub_repo"], spec.get("hub_filename", file_name)))
        except Exception as exc:  # offline, gated, missing: fall through to the actionable error
            hub_error = f" (hub download failed: {type(exc).__name__}: {exc})"
        else:  # pragma: no cover
            hub_error = ""
    else:
        hub_error = ""
    where = spec.get("url") or (f"https://huggingface.co/{spec['hub_repo']}" if spec.get("hub_repo")
                                else "its official release")
    sha = spec.get("sha256") or "unknown (not published; recorded when first used)"
    target = (f"$VTBENCH_WEIGHTS/{file_name}" if wdir
              else f"~/vtbench-weights/{file_name} and export VTBENCH_WEIGHTS=~/vtbench-weights")
    raise MissingWeightsError(
        f"{name}: weights file {file_name!r} not found{hub_error}.\n"
        f"  source: {where}\n  sha256: {sha}\n"
        f"  fix: download it and place it at {target}, or pass --weights /path/to/{file_name}"
    )


def converted_copy(path: Path) -> Path | None:
    """``<stem>.safetensors`` beside ``path`` (what ``vtbench weights convert`` writes), preferred to the pickle."""
    if path.suffix == ".safetensors":
        return None
    cand = path.with_name(path.stem + ".safetensors")
    return cand if cand.is_file() else None


def local_weights(spec: Mapping[str, Any] | None) -> Path | None:
    """Where the weights are on this machine without any download (bundled or ``$VTBENCH_WEIGHTS``), or None."""
    if not spec:
        return None
    try:
        return resolve_weights(spec, None, allow_hub=False)
    except MissingWeightsError:
        return None


def weights_search(spec: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Where ``resolve_weights`` looks for the weights a card's ``weights`` table names, in its order, without
    downloading: ``[{"place", "path", "found"}]`` (``path`` None where a place is not set up, e.g. no
    ``$VTBENCH_WEIGHTS``). For ``vtbench info``."""
    if not spec:
        return []
    out: list[dict[str, Any]] = [{"place": "--weights PATH", "path": None, "found": None}]
    if spec.get("directory"):
        dir_name = spec.get("file") or str(spec.get("hub_repo", "")).split("/")[-1]
        wdir = os.environ.get("VTBENCH_WEIGHTS")
        p = Path(wdir) / dir_name if wdir else None
        out.append({"place": "$VTBENCH_WEIGHTS", "path": str(p) if p else "(unset)",
                    "found": bool(p and _model_dir(p, spec.get("subfolder")))})
    else:
        file_name = spec.get("file") or Path(spec.get("hub_filename", "")).name
        if spec.get("bundled"):
            from vtbench.paths import DECLARATIONS_ROOT
            p = DECLARATIONS_ROOT / spec["bundled"]
            out.append({"place": "bundled with vtbench", "path": str(p), "found": p.is_file()})
        wdir = os.environ.get("VTBENCH_WEIGHTS")
        names = dict.fromkeys([file_name, spec.get("hub_filename") or file_name])
        for n in names:
            p = Path(wdir) / n if wdir else None
            conv = converted_copy(p) if p else None
            out.append({"place": "$VTBENCH_WEIGHTS", "path": str(conv or p) if p else f"(unset) .../{n}",
                        "found": bool(conv or (p and p.is_file()))})
    if spec.get("hub_repo"):
        allowed = downloads_allowed()
        inner = spec.get("subfolder") if spec.get("directory") else (spec.get("hub_filename") or spec.get("file"))
        out.append({"place": "Hugging Face hub" + ("" if allowed else " (offline: not tried)"),
                    "path": f"{spec['hub_repo']}/{inner or ''}".rstrip("/"), "found": None})
    return out


def _model_dir(root: Path, subfolder: str | None) -> Path | None:
    """``root/subfolder`` if that is a directory, else ``root`` itself if it is one (already the model folder)."""
    if subfolder and (root / subfolder).is_dir():
        return root / subfolder
    return root if root.is_dir() else None


def _resolve_directory(spec: Mapping[str, Any], explicit: str | Path | None, *, name: str,
                       allow_hub: bool = True) -> Path:
    """A weights *directory*: ``file`` names the folder (in ``$VTBENCH_WEIGHTS``), ``subfolder`` the model's folder
    inside it or inside the hub repository (``hub_repo``), e.g. ``vae``. Same order as files: explicit path, the
    weights directory, the hub (``snapshot_download`` of ``hub_files`` in the subfolder, by default a diffusers
    model's ``config.json`` and ``diffusion_pytorch_model.safetensors``; only when online), else
    ``MissingWeightsError``."""
    dir_name = spec.get("file") or str(spec.get("hub_repo", "")).split("/")[-1]
    sub = spec.get("subfolder")
    inner = f"{sub}/" if sub else ""
    files = [f"{inner}{f}" for f in (spec.get("hub_files") or ("config.json", "diffusion_pytorch_model.safetensors"))]
    if explicit is not None:
        p = _model_dir(Path(explicit).expanduser(), sub)
        if p is None:
            raise MissingWeightsError(f"{name}: --weights {explicit} is not a directory (expected the model folder "
                                      f"{dir_name}{'/' + sub if sub else ''})")
        return p
    wdir = os.environ.get("VTBENCH_WEIGHTS")
    if wdir:
        p = _model_dir(Path(wdir) / dir_name, sub)
        if p is not None:
            return p
    hub_error = ""
    if spec.get("hub_repo") and allow_hub and downloads_allowed():
        try:
            from huggingface_hub import snapshot_download
            p = _model_dir(Path(snapshot_download(spec["hub_repo"], allow_patterns=files)), sub)
            if p is not None:
                return p
            hub_error = f" (hub snapshot has no {sub!r} folder)"
        except Exception as exc:  # offline, gated, missing: fall through to the actionable error
            hub_error = f" (hub download failed: {type(exc).__name__}: {exc})"
    where = spec.get("url") or (f"https://huggingface.co/{spec['hub_repo']}" if spec.get("hub_repo")
                                else "its official release")
    local = f"$VTBENCH_WEIGHTS/{dir_name}" if wdir else f"~/vtbench-weights/{dir_name}"
    target = local if wdir else f"{local} and export VTBENCH_WEIGHTS=~/vtbench-weights"
    if spec.get("hub_repo"):
        how = (f"huggingface-cli download {spec['hub_repo']} " + " ".join(f"'{f}'" for f in files)
               + f" --local-dir {local}")
        if spec.get("gated"):
            how += " (gated: accept the licence on the hub and `huggingface-cli login` first)"
    else:
        how = "download it"
    raise MissingWeightsError(
        f"{name}: weights directory {dir_name!r}{f' (subfolder {sub!r})' if sub else ''} not found{hub_error}.\n"
        f"  source: {where}\n"
        f"  fix: {how}, placing it at {target}, or pass --weights /path/to/{dir_name}"
    )

log = logging.getLogger(__name__)

# Plain-data classes that official checkpoints pickle next to their weights (training arguments); building
# them runs no user code, so weights-only loading accepts them.
SAFE_EXTRA_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)

TRUST_WARNING = ("--trust-checkpoint runs arbitrary code from the file (pickle executes what it names): use it only "
                 "for a file whose origin you trust, then `vtbench weights convert FILE --trust-checkpoint` once "
                 "and load the safetensors copy safely from then on")


@dataclass
class LoadedCheckpoint:
    """What ``load_official_checkpoint`` found: the raw object plus how it was read (recorded in provenance)."""

    obj: Any
    mode: str  # "safetensors" | "weights_only" | "inert" | "trusted"
    stubbed_globals: list[str] = field(default_factory=list)  # every placeholder of an inert read
    converted_from: dict[str, str] | None = None  # a `vtbench weights convert` copy: the original's sha256 etc.

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"load_mode": self.mode, "stubbed_globals": list(self.stubbed_globals)}
        if self.mode == "inert":
            out["reader"] = "vtbench inert zip reader (exact allowlist; placeholders never imported or run)"
        if self.mode == "trusted":
            out["warning"] = "unpickled with --trust-checkpoint: the file's pickled code was allowed to run"
        if self.converted_from:
            out["converted_from"] = dict(self.converted_from)
        return out


def load_checkpoint(path: str | Path, *, trust: bool = False, inert: bool = False) -> Any:
    """Load a checkpoint safely: safetensors, or ``torch.load(weights_only=True)``.

    Files that need arbitrary unpickling raise ``UntrustedCheckpointError`` unless ``trust=True``, or, with
    ``inert=True``, load with every non-allow-listed object replaced by an inert placeholder (see
    ``load_official_checkpoint``).
    """
    return load_official_checkpoint(path, trust=trust, inert=inert).obj


def _refused(path: Path, rule: str, detail: str) -> UntrustedCheckpointError:
    err = UntrustedCheckpointError(f"{path}: refused by rule '{rule}': {detail}. Nothing from the file was run. "
                                   f"{TRUST_WARNING}.")
    err.rule = rule  # type: ignore[attr-defined]
    return err


def load_official_checkpoint(path: str | Path, *, trust: bool = False, inert: bool = True) -> LoadedCheckpoint:
    """Read an official checkpoint without running code from it.

    Order:

    1. ``.safetensors``: tensors only by construction (a ``vtbench weights convert`` copy is un-flattened back
       into its wrapper dicts and says which file it came from).
    2. ``torch.load(weights_only=True)`` with ``SAFE_EXTRA_GLOBALS`` (argparse training arguments): torch's own
       restricted unpickler, for zip and legacy files alike.
    3. Zip files that also pickle objects of their training framework (Lightning callbacks, loss modules,
       configs), when ``inert``: vtbench's inert reader (``safe_pickle.read_zip_inert``), which never resolves a
       name outside its exact allowlist; every placeholder is listed in ``stubbed_globals``. Legacy (non-zip)
       files that need more than weights-only loading are refused: torch's legacy loader unpickles its
       headers through the pickle module it is given, and no reader of ours parses that format.
    4. ``trust=True`` is the only way to run the file's own unpickling.

    Refusals raise ``UntrustedCheckpointError`` whose ``rule`` names the check that refused the file.
    """
    import torch

    from vtbench.tokenizers.safe_pickle import RefusedCheckpoint, read_zip_inert

    path = Path(path)
    _check_not_empty(path)
    if path.suffix == ".safetensors":
        try:
            return _load_safetensors(path)
        except Exception as exc:  # noqa: BLE001 - a torn or mislabelled file
            raise WeightsMismatchError(f"{path}: not a readable safetensors file ({type(exc).__name__}: "
                                       f"{str(exc)[:200]}); re-download or re-convert it") from None
    if not zipfile.is_zipfile(path) and not _legacy_header(path):
        # neither of torch's two formats: no unpickling, trusted or not, could read it (a partial download, random
        # bytes, a plain pickle); telling the user to trust it would be wrong
        raise WeightsMismatchError(_corrupt(path, "neither a PyTorch zip archive nor a legacy torch file (no magic "
                                                  "number)"))
    try:
        with torch.serialization.safe_globals(list(SAFE_EXTRA_GLOBALS)):
            return LoadedCheckpoint(torch.load(path, map_location="cpu", weights_only=True), "weights_only")
    except pickle.UnpicklingError as exc:
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
        reason = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
    except Exception as exc:  # noqa: BLE001 - torn, truncated or foreign files
        what = "the file ends early (truncated)" if isinstance(exc, EOFError) else \
            f"{type(exc).__name__}: {str(exc)[:300]}"
        raise WeightsMismatchError(f"{path}: not a readable PyTorch checkpoint ({what}). Fix: re-download it and "
                                   f"check its sha256 against the card's (`vtbench info TOKENIZER`)") from None
    if trust:
        log.warning("%s: unpickling with --trust-checkpoint; the file's pickled code may run", path)
        return LoadedCheckpoint(torch.load(path, map_location="cpu", weights_only=False), "trusted")
    if not inert:
        raise _refused(path, "weights-only", f"the file pickles Python objects that weights-only loading refuses "
                                             f"({reason[:200]})")
    if not zipfile.is_zipfile(path):
        raise _refused(path, "legacy-format", f"a legacy (non-zip) pickle that needs more than weights-only loading "
                                              f"({reason[:200]}); legacy files are never read inertly")
    try:
        res = read_zip_inert(str(path))
    except RefusedCheckpoint as exc:
        if exc.rule == "malformed" and "Unsupported operand" in reason:
            # torch's own reader met an opcode no checkpoint writer emits and ours could not parse the stream:
            # the pickle is damaged, not merely untrusted
            raise WeightsMismatchError(_corrupt(path, f"its data.pkl is not a valid pickle stream ({exc.detail}). "
                                                      f"Nothing from the file was run")) from None
        raise _refused(path, exc.rule, exc.detail) from None
    if res.stubbed:
        log.info("%s: read without running pickled code; inert placeholders for %s", path.name, ", ".join(res.stubbed))
    return LoadedCheckpoint(res.obj, "inert", res.stubbed)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the first object of a legacy file


def _corrupt(path: Path, what: str) -> str:
    size = path.stat().st_size
    return (f"{path} ({size:,} bytes): not a PyTorch checkpoint: {what}. The file is damaged or is something else "
            f"(an interrupted download, an HTML error page, a Git LFS pointer). Fix: re-download it and check its "
            f"sha256 against the card's (`vtbench info TOKENIZER`); --trust-checkpoint cannot help")


def _check_not_empty(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise WeightsMismatchError(f"{path}: cannot read the weights file ({exc.strerror or exc}); check the path "
                                   f"and its permissions") from None
    if size == 0:
        raise WeightsMismatchError(f"{path}: the weights file is empty (0 bytes): an interrupted download or copy. "
                                   f"Fix: re-download it and check its sha256 against the card's "
                                   f"(`vtbench info TOKENIZER`)")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(64)
        if head.startswith(b"version https://git-lfs"):
            raise WeightsMismatchError(f"{path}: a Git LFS pointer ({size} bytes of text), not the weights. Fix: "
                                       f"`git lfs pull` in the repository it came from, or download the file itself")
        if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
            raise WeightsMismatchError(f"{path}: an HTML page ({size} bytes), not the weights: the download saved "
                                       f"an error or login page. Fix: re-download it (gated files need a login "
                                       f"first) and check its sha256 against the card's (`vtbench info TOKENIZER`)")


def _legacy_header(path: Path) -> bool:
    """Whether ``path`` starts as torch's legacy format does: a pickled ``MAGIC_NUMBER``. The opcodes are only
    parsed (``pickletools.genops``), never executed."""
    import io
    import pickletools

    with open(path, "rb") as f:
        head = f.read(64)
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(head)):
            if op.name in ("PROTO", "FRAME"):
                continue
            return op.name in ("LONG1", "LONG4", "INT", "LONG") and arg == _LEGACY_MAGIC
    except Exception:  # noqa: BLE001 - not a pickle stream at all
        return False
    return False


# `vtbench weights convert` stores wrapper dicts as "/"-joined key paths and marks the file with this metadata.
CONVERT_FORMAT = "vtbench-convert-1"


def _load_safetensors(path: Path) -> LoadedCheckpoint:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    flat = load_file(str(path))
    if meta.get("format") != CONVERT_FORMAT:
        return LoadedCheckpoint(flat, "safetensors")
    nested: dict[str, Any] = {}
    for key, t in flat.items():
        *wrappers, name = key.split("/")
        cur = nested
        for w in wrappers:
            cur = cur.setdefault(w, {})
        cur[name] = t
    origin = {k[len("source_"):]: v for k, v in meta.items() if k.startswith("source_")}
    return LoadedCheckpoint(nested, "safetensors", converted_from=origin or None)


def convert_to_safetensors(src: str | Path, dst: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """Write every tensor of checkpoint ``src`` to ``dst`` (safetensors), keeping its wrapper dicts as ``/`` key
    paths, so a file trusted once (``trust=True`` unpickles it) loads without unpickling from then on.

    Non-tensor entries (optimiser counters, configs, placeholders) are not carried and are counted. Returns a
    summary (tensors, skipped, load mode, source sha256).
    """
    import torch
    from safetensors.torch import save_file

    from vtbench.hashing import sha256sum

    src, dst = Path(src), Path(dst)
    loaded = load_official_checkpoint(src, trust=trust, inert=True)
    flat: dict[str, torch.Tensor] = {}
    skipped = 0
    seen: set[int] = set()

    def walk(obj: Any, keys: tuple[str, ...]) -> None:
        nonlocal skipped
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta" and keys:
            t = obj.detach().cpu()
            if t.untyped_storage().data_ptr() in seen or not t.is_contiguous():  # shared or strided: own copy
                t = t.clone(memory_format=torch.contiguous_format)
            seen.add(t.untyped_storage().data_ptr())
            flat["/".join(keys)] = t
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                if isinstance(k, str) and k and "/" not in k:
                    walk(v, keys + (k,))
                else:
                    skipped += 1
        else:
            skipped += 1

    walk(loaded.obj, ())
    if not flat:
        raise WeightsMismatchError(f"{src}: no tensors found to convert")
    meta = {"format": CONVERT_FORMAT, "source_file": src.name, "source_sha256": sha256sum(src),
            "source_load_mode": loaded.mode}
    if loaded.stubbed_globals:
        meta["source_stubbed_globals"] = ",".join(loaded.stubbed_globals)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        save_file(flat, str(tmp), metadata=meta)
        tmp.replace(dst)
    finally:  # a full disk leaves no partial file behind
        tmp.unlink(missing_ok=True)
    return {"tensors": len(flat), "skipped_non_tensor": skipped, "load_mode": loaded.mode,
            "source_sha256": meta["source_sha256"], "output": str(dst)}


def unwrap_state_dict(obj: Any, keys: tuple[str, ...] = ("ema", "model", "state_dict", "module")
                      ) -> dict[str, torch.Tensor]:
    """The tensor dict inside common wrapper dicts (``ema`` preferred, then ``model``, ...); see
    ``extract_state_dict`` for the details and for drop/strip options."""
    return extract_state_dict(obj, prefer=keys).state


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str,
                assign: bool = False) -> None:
    """``load_state_dict(strict=True)`` with a readable error naming the file and the first differences.

    ``assign=True`` puts the file's tensors into the module instead of copying them (a module built on the meta
    device gets real tensors, with the file's dtypes, and no second copy is made)."""
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
    module.load_state_dict(state, strict=True, assign=assign)



@dataclass
class ExtractedState:
    """A state dict taken out of a checkpoint, with what was done to get it (recorded in provenance)."""

    state: dict[str, torch.Tensor]
    wrapper: str | None  # the wrapper key used ("ema", "model", "state_dict", ...), None for a raw dict
    dropped: dict[str, int] = field(default_factory=dict)  # dropped prefix -> number of tensors

    def summary(self) -> dict[str, Any]:
        return {"wrapper": self.wrapper, "dropped": dict(self.dropped), "tensors": len(self.state)}


def extract_state_dict(obj: Any, *, prefer: Iterable[str] = ("ema", "model", "state_dict", "module"),
                       drop_prefixes: Iterable[str] = (), strip_prefixes: Iterable[str] = (),
                       source: str = "checkpoint") -> ExtractedState:
    """Take the weights out of an official checkpoint object.

    ``prefer``: wrapper keys tried in order (nested wrappers are followed); ``drop_prefixes``: training-only
    parts (discriminators, perceptual losses) removed and counted; ``strip_prefixes``: prefixes removed from the
    remaining names (``module.`` from DDP, ``model.`` from wrappers). Non-tensor entries of the chosen dict
    (counters, configs) are dropped and counted under ``<non-tensor>``.
    """
    import torch

    prefer = tuple(prefer)
    wrapper = None
    cur = obj
    while isinstance(cur, Mapping):
        tensors = [v for v in cur.values() if isinstance(v, torch.Tensor)]
        if tensors and len(tensors) * 2 >= len(cur):
            break
        for k in prefer:
            if k in cur and isinstance(cur[k], Mapping):
                wrapper = k if wrapper is None else f"{wrapper}/{k}"
                cur = cur[k]
                break
        else:
            keys = list(cur)[:12]
            raise WeightsMismatchError(f"{source}: no state dict found under {prefer} (keys: {keys}); "
                                       f"is this the checkpoint the card names?")
    if not isinstance(cur, Mapping):
        raise WeightsMismatchError(f"{source}: expected a dict of tensors, found {type(cur).__name__}")
    state: dict[str, torch.Tensor] = {}
    dropped: dict[str, int] = {}
    drop = tuple(drop_prefixes)
    strip = tuple(strip_prefixes)
    for k, v in cur.items():
        if not isinstance(v, torch.Tensor):
            dropped["<non-tensor>"] = dropped.get("<non-tensor>", 0) + 1
            continue
        hit = next((p for p in drop if k.startswith(p)), None)
        if hit is not None:
            dropped[hit] = dropped.get(hit, 0) + 1
            continue
        for p in strip:
            if k.startswith(p):
                k = k[len(p):]
                break
        state[k] = v
    if dropped:
        log.info("%s: dropped training-only tensors %s", source, dropped)
    return ExtractedState(state, wrapper, dropped)


def rename_keys(state: Mapping[str, torch.Tensor],
                rules: Iterable[tuple[str, str | Callable[[re.Match], str]]]) -> dict[str, torch.Tensor]:
    """Apply regex substitution ``rules`` (first match wins, anchored at the start) to every key."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        nk = k
        for pat, rep in compiled:
            if pat.match(k):
                nk = pat.sub(rep, k, count=1)
                break
        if nk in out:
            raise WeightsMismatchError(f"key remapping collision: {k!r} -> {nk!r}")
        out[nk] = v
    return out
