"""Named preprocessing policies: how a dataset image becomes the "original" every metric compares against, how
that original is handed to a tokenizer, and how the reconstruction is brought back to the original's grid.

A policy has three steps:

- ``prepare(img)`` (dataset side, ``HxWx3 uint8 -> HxWx3 uint8``): the original. Metrics always compare against
  this array, never against the raw file.
- ``to_model(x)`` (``uint8 (3,H,W)`` -> ``float32 (3,S',S')`` in [0, 1], plus a context dict): the tokenizer input.
- ``from_model(y, ctx)`` (``float (3,S',S')`` -> ``float32 (3,H,W)`` in [0, 1]): the reconstruction on the
  original's pixel grid. Every policy clamps to [0, 1] here, because not every tokenizer clamps its output.

``to_model``/``from_model`` also accept a batch ``(N,3,H,W)`` of equally sized images, and a floating-point
input to ``to_model`` is taken as already being in [0, 1]. They run on whatever device the tensor is on.

Policies:

``adm-center-crop``
    ADM's ``center_crop_arr`` (guided-diffusion), the rFID protocol of LlamaGen, GigaTok, VAR and others: while
    the short side is >= 2S, halve both sides (``dim // 2``) with PIL BOX; then PIL BICUBIC so that the short side
    is exactly S (``scale = S / short``, ``new = round(dim * scale)``); then the centre SxS crop (offset
    ``(dim - S) // 2``). An image that is already SxS is unchanged. ``to_model``/``from_model``: /255 and clamp.
``resize-cover-crop``
    VTBench's ``pil_to_tensor`` with ``lock_ratio`` and ``center_crop``: ``scale = max(S / w, S / h)``, PIL
    LANCZOS to ``(round(w * scale), round(h * scale))`` (always performed, a no-op for SxS), then the centre crop
    with offset ``(dim - S) // 2``. VTBench converts any non-RGB input with ``convert("RGB")``, which drops
    alpha; vtbench's loader composites transparent images onto white first, so the two differ for those only.
``pad-restore``
    TokBench's protocol (its reconstruction script is unpublished; this follows the paper's description): the
    original is the image at its own resolution, unchanged. ``to_model`` pads it to a square of side
    ``L = max(H, W)`` -- centred, the odd pixel going to the bottom/right (``top = (L - H) // 2``), with the
    constant ``pad_value`` (default 0.0, black) -- then resizes the LxL square to SxS with bicubic,
    antialiased interpolation on float tensors (``torch.nn.functional.interpolate``) and clamps to [0, 1].
    ``from_model`` resizes SxS back to LxL the same way, removes the padding and clamps, so metrics run at the
    original resolution. When L == S no resizing happens.
``torchvision-resize-crop``
    torchvision's ``Resize(round(resize_ratio * S), interpolation)`` (short side; the long side truncated as
    torchvision computes it) then ``CenterCrop(S)`` (offset ``round((dim - S) / 2)``), on the PIL image, by
    torchvision itself. Parameters ``interpolation`` (``bilinear`` default, ``bicubic``, ``lanczos``) and
    ``resize_ratio`` (1.0 default). The official evaluation transforms of RQ-VAE (``Resize(256)`` bilinear,
    ``CenterCrop(256)``) and VAR (``Resize(288, LANCZOS)``, ``CenterCrop(256)``: ratio 1.125); cards state them
    under ``official_preprocessing`` and calibration uses them.
``native``
    No resizing at all: the tokenizer sees the image at its own size (it must accept that size).
    ``to_model``/``from_model``: /255 and clamp.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vtbench.registry import UnknownNameError, did_you_mean

__all__ = ["POLICIES", "Policy", "AdmCenterCrop", "ResizeCoverCrop", "PadRestore", "Native", "NativeOrPad",
           "get_policy"]

POLICIES: tuple[str, ...] = ("adm-center-crop", "resize-cover-crop", "pad-restore", "native", "native-or-pad",
                              "torchvision-resize-crop")


def _check_hwc(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise TypeError(f"expected a uint8 HxWx3 RGB array, got {desc}")
    return img


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4) or x.shape[-3] != 3:
        desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"expected a (3,H,W) or (N,3,H,W) image tensor, got {desc}")
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    if x.is_floating_point():
        return x.to(torch.float32)
    raise TypeError(f"expected a uint8 or floating-point image tensor, got {x.dtype}")


def _check_recon(y: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.ndim not in (3, 4) or y.shape[-3] != 3:
        desc = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise TypeError(f"expected a (3,H,W) or (N,3,H,W) reconstruction, got {desc}")
    return y.to(torch.float32) if y.dtype != torch.float32 else y


def _resize_float(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic, antialiased resize of a float (3,H,W) / (N,3,H,W) tensor to size x size."""
    if x.shape[-2:] == (size, size):
        return x
    batched = x.ndim == 4
    xb = x if batched else x.unsqueeze(0)
    out = F.interpolate(xb, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out if batched else out.squeeze(0)


class Policy:
    """Base class; see the module docstring for the contract."""

    name: str = ""
    version: str = "1"

    def __init__(self, resolution: int | None):
        if self.name != "native":
            if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution <= 0:
                raise ValueError(f"preprocessing policy {self.name!r} needs a positive integer resolution, "
                                 f"got {resolution!r}")
            resolution = int(resolution)
        self.resolution: int | None = resolution

    # dataset side
    def prepare(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # model side
    def to_model(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return _to_unit_float(x).clamp(0.0, 1.0), {"size": tuple(x.shape[-2:])}

    def from_model(self, y: torch.Tensor, ctx: dict) -> torch.Tensor:
        return _check_recon(y).clamp(0.0, 1.0)

    def params(self) -> dict[str, Any]:
        return {}

    def bind(self, accepts: Callable[[int, int], bool]) -> "Policy":
        """This policy for one tokenizer (``accepts(h, w)``: whether it takes that input size). Only
        ``native-or-pad`` depends on the tokenizer; every other policy returns itself."""
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "resolution": self.resolution, **self.params()}

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params().items() if k in ("pad_value",))
        return f"{type(self).__name__}(resolution={self.resolution!r}{extra})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash((self.name, self.resolution))


class AdmCenterCrop(Policy):
    name = "adm-center-crop"

    def prepare(self, img: np.ndarray) -> np.ndarray:
        img = _check_hwc(img)
        size = self.resolution
        pil = Image.fromarray(img)
        while min(pil.size) >= 2 * size:
            pil = pil.resize((pil.width // 2, pil.height // 2), resample=Image.Resampling.BOX)
        scale = size / min(pil.size)
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), resample=Image.Resampling.BICUBIC)
        arr = np.asarray(pil)
        top = (arr.shape[0] - size) // 2
        left = (arr.shape[1] - size) // 2
        return np.ascontiguousarray(arr[top:top + size, left:left + size])

    def params(self) -> dict[str, Any]:
        return {"downsample": "pil-box-halving while short side >= 2*resolution", "resample": "pil-bicubic",
                "resize": "short side to resolution, round(dim*scale)", "crop": "center (dim-resolution)//2",
                "reference": "guided-diffusion center_crop_arr"}


class ResizeCoverCrop(Policy):
    name = "resize-cover-crop"

    def prepare(self, img: np.ndarray) -> np.ndarray:
        img = _check_hwc(img)
        size = self.resolution
        pil = Image.fromarray(img)
        scale = max(size / pil.width, size / pil.height)
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), resample=Image.Resampling.LANCZOS)
        left = (pil.width - size) // 2
        top = (pil.height - size) // 2
        arr = np.asarray(pil.crop((left, top, left + size, top + size)))
        return np.ascontiguousarray(arr)

    def params(self) -> dict[str, Any]:
        return {"resample": "pil-lanczos", "resize": "cover: scale=max(S/w, S/h), round(dim*scale)",
                "crop": "center (dim-resolution)//2", "reference": "VTBench pil_to_tensor(lock_ratio, center_crop)"}


class PadRestore(Policy):
    name = "pad-restore"

    def __init__(self, resolution: int | None, pad_value: float = 0.0):
        super().__init__(resolution)
        if not 0.0 <= float(pad_value) <= 1.0:
            raise ValueError(f"pad_value must be in [0, 1], got {pad_value!r}")
        self.pad_value = float(pad_value)

    def prepare(self, img: np.ndarray) -> np.ndarray:
        return _check_hwc(img)

    def to_model(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        xf = _to_unit_float(x)
        h, w = int(xf.shape[-2]), int(xf.shape[-1])
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        if side != h or side != w:
            xf = F.pad(xf, (left, side - w - left, top, side - h - top), mode="constant", value=self.pad_value)
        out = _resize_float(xf, self.resolution).clamp(0.0, 1.0)
        return out, {"size": (h, w), "side": side, "top": top, "left": left}

    def from_model(self, y: torch.Tensor, ctx: dict) -> torch.Tensor:
        y = _check_recon(y)
        h, w = ctx["size"]
        side, top, left = ctx["side"], ctx["top"], ctx["left"]
        if y.shape[-1] != y.shape[-2]:
            raise ValueError(f"pad-restore expects a square reconstruction, got {tuple(y.shape)}")
        y = _resize_float(y, side)
        return y[..., top:top + h, left:left + w].clamp(0.0, 1.0)

    def params(self) -> dict[str, Any]:
        return {"pad": "centered square, odd pixel bottom/right", "pad_value": self.pad_value,
                "resample": "torch-bicubic-antialias (float)", "restore": "resize back, unpad, clamp [0,1]",
                "metrics_at": "original resolution", "reference": "TokBench (paper description)"}


class Native(Policy):
    name = "native"

    def __init__(self, resolution: int | None = None):
        super().__init__(None)  # a native policy never resizes; any resolution passed in is irrelevant

    def prepare(self, img: np.ndarray) -> np.ndarray:
        return _check_hwc(img)

    def params(self) -> dict[str, Any]:
        return {"resize": "none"}


class NativeOrPad(Policy):
    """The detail protocol's policy: an image goes to the tokenizer at its own size when the tokenizer accepts
    that size (convolutional tokenizers, codecs), otherwise through ``pad-restore`` at ``resolution`` (fixed-size
    tokenizers); metrics are always at the original resolution. Which path each image took is in its context
    (``mode``) and the policy is recorded with both branches."""

    name = "native-or-pad"

    def __init__(self, resolution: int | None, pad_value: float = 0.0):
        super().__init__(resolution)
        self._pad = PadRestore(resolution, pad_value)
        self._accepts: Callable[[int, int], bool] | None = None

    def prepare(self, img: np.ndarray) -> np.ndarray:
        return _check_hwc(img)

    def bind(self, accepts: Callable[[int, int], bool]) -> "NativeOrPad":
        bound = NativeOrPad(self.resolution, self._pad.pad_value)
        bound._accepts = accepts
        return bound

    def to_model(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if self._accepts is None or self._accepts(h, w):
            y, ctx = super().to_model(x)
            return y, {**ctx, "mode": "native"}
        y, ctx = self._pad.to_model(x)
        return y, {**ctx, "mode": "pad"}

    def from_model(self, y: torch.Tensor, ctx: dict) -> torch.Tensor:
        return self._pad.from_model(y, ctx) if ctx.get("mode") == "pad" else super().from_model(y, ctx)

    def params(self) -> dict[str, Any]:
        return {"native": "the original size when the tokenizer accepts it",
                "otherwise": {"name": "pad-restore", **self._pad.params()}, "pad_value": self._pad.pad_value}


class TorchvisionResizeCrop(Policy):
    name = "torchvision-resize-crop"
    INTERPOLATIONS = ("bilinear", "bicubic", "lanczos")

    def __init__(self, resolution: int | None, interpolation: str = "bilinear", resize_ratio: float = 1.0):
        super().__init__(resolution)
        if interpolation not in self.INTERPOLATIONS:
            raise UnknownNameError(did_you_mean(str(interpolation), self.INTERPOLATIONS, "interpolation"))
        if isinstance(resize_ratio, bool) or not isinstance(resize_ratio, (int, float)) or resize_ratio < 1:
            raise ValueError(f"resize_ratio must be a number >= 1 (the resize before the crop), got {resize_ratio!r}")
        self.interpolation, self.resize_ratio = interpolation, float(resize_ratio)

    def prepare(self, img: np.ndarray) -> np.ndarray:
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode
        img = _check_hwc(img)
        mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                "lanczos": InterpolationMode.LANCZOS}[self.interpolation]
        pil = TF.resize(Image.fromarray(img), round(self.resize_ratio * self.resolution), interpolation=mode)
        return np.ascontiguousarray(np.asarray(TF.center_crop(pil, [self.resolution, self.resolution])))

    def params(self) -> dict[str, Any]:
        return {"interpolation": self.interpolation, "resize_ratio": self.resize_ratio,
                "reference": "torchvision Resize(round(ratio*S)) + CenterCrop(S) on PIL images"}


_CLASSES: dict[str, type[Policy]] = {c.name: c for c in (AdmCenterCrop, ResizeCoverCrop, PadRestore, Native,
                                                         NativeOrPad, TorchvisionResizeCrop)}
assert tuple(_CLASSES) == POLICIES


def get_policy(name: str, resolution: int | None = None, **params: Any) -> Policy:
    """The policy ``name`` at target size ``resolution`` (ignored for ``native``); ``params`` go to its
    constructor (e.g. ``pad_value`` for ``pad-restore``)."""
    if isinstance(name, Policy):
        return name
    if name not in _CLASSES:
        raise UnknownNameError(did_you_mean(str(name), POLICIES, "preprocessing policy"))
    return _CLASSES[name](resolution, **params)
