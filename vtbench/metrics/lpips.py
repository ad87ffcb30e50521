"""LPIPS v0.1 (Zhang et al. 2018), implemented here: an ImageNet backbone's ReLU features at five depths, each
unit-normalised along channels, squared difference, weighted by a learned non-negative 1x1 projection
("linear head"), averaged over space and summed over the five layers. Lower is more similar; 0 for identical
images.

Backbones are torchvision's AlexNet and VGG16 architectures with torchvision's ImageNet checkpoints; the
linear heads are the v0.1 files that the ``lpips`` package bundles (``weights/v0.1/alex.pth``, ``vgg.pth``, keys
``lin0.model.1.weight`` ... ``lin4.model.1.weight``). Nothing is ever downloaded. Weights are found, in order:

- backbone: the ``backbone_path`` argument; ``$VTBENCH_LPIPS_BACKBONE`` (the file, or a folder holding it);
  ``torch.hub.get_dir()/checkpoints/<file>`` (where torchvision caches it); ``$VTBENCH_WEIGHTS/<file>``.
- linear heads: the ``lin_path`` argument; ``$VTBENCH_LPIPS_LIN`` (the file, or a folder holding
  ``alex.pth`` / ``vgg.pth``); the installed ``lpips`` package's ``weights/v0.1/``.

A path given explicitly (argument or environment) that does not exist is an error, not a reason to look
further. When a file is absent, :class:`LPIPSMetric` raises ``MetricUnavailable`` naming the file, where it was
looked for and the command that fixes it.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from vtbench.metrics.base import Batch, Metric, MetricUnavailable, MetricValue, Output

__all__ = ["LPIPSMetric", "LPIPSNet", "NETS", "build_lpips", "load_weights_file", "resolve_lpips_weights"]

BACKBONE_ENV = "VTBENCH_LPIPS_BACKBONE"
LIN_ENV = "VTBENCH_LPIPS_LIN"
_EPS = 1e-10  # added to the channel norm, as LPIPS does, so all-zero features normalise to 0
# LPIPS v0.1 input normalisation, applied to images in [-1, 1]
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


@dataclass(frozen=True)
class NetSpec:
    """One LPIPS backbone: torchvision architecture, ReLU taps (indices in ``.features``) and their widths."""

    arch: str
    taps: tuple[int, ...]
    channels: tuple[int, ...]
    backbone_file: str  # torchvision's checkpoint file name (hash prefix included)
    weights_enum: str  # torchvision weights name that downloads it
    lin_file: str  # file name in lpips/weights/v0.1/


NETS: dict[str, NetSpec] = {
    # relu1 .. relu5 of AlexNet; relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of VGG16
    "alex": NetSpec("alexnet", (1, 4, 7, 9, 11), (64, 192, 384, 256, 256),
                    "alexnet-owt-7be5be79.pth", "IMAGENET1K_V1", "alex.pth"),
    "vgg": NetSpec("vgg16", (3, 8, 15, 22, 29), (64, 128, 256, 512, 512),
                   "vgg16-397923af.pth", "IMAGENET1K_V1", "vgg.pth"),
}


def _spec(net: str) -> NetSpec:
    if net not in NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; known: {', '.join(NETS)}")
    return NETS[net]


class LPIPSNet(nn.Module):
    """The LPIPS distance as a module. ``forward(x0, x1)`` takes float ``(N, 3, H, W)`` in ``[-1, 1]`` and
    returns ``(N,)``. Images must be large enough for the backbone's five stages (at least 31x31 for alex,
    16x16 for vgg)."""

    def __init__(self, net: str, features: nn.Sequential, lins: nn.ModuleList):
        super().__init__()
        self.net = net
        self.taps = _spec(net).taps
        self.features = features
        self.lins = lins
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        n = x0.shape[0]
        h = (torch.cat([x0, x1]) - self.shift) / self.scale  # both images through the backbone in one pass
        dist = h.new_zeros(n)
        layer = 0
        for i, module in enumerate(self.features):
            h = module(h)
            if i == self.taps[layer]:
                unit = h / (h.square().sum(dim=1, keepdim=True).sqrt() + _EPS)
                diff = (unit[:n] - unit[n:]).square()
                dist = dist + self.lins[layer](diff).mean(dim=(1, 2, 3))
                layer += 1
                if layer == len(self.taps):
                    break
        return dist


def _own(v: torch.Tensor) -> torch.Tensor:
    """A float32 copy, so the module never shares storage with the caller's state dict (``assign=True``)."""
    return v.detach().to(torch.float32, copy=True)


def _backbone_features_state(state: Mapping[str, torch.Tensor], spec: NetSpec) -> dict[str, torch.Tensor]:
    """torchvision layout (``features.<i>.weight``; ``classifier.*`` ignored) -> keys of ``features[:last+1]``."""
    out = {k[len("features."):]: _own(v) for k, v in state.items()
           if k.startswith("features.") and int(k.split(".")[1]) <= spec.taps[-1]}
    if not out:
        raise ValueError(f"backbone state dict has no 'features.*' keys: expected torchvision's {spec.arch} "
                         f"layout (e.g. 'features.0.weight'); got keys {sorted(state)[:5]} ...")
    return out


def _lin_state(state: Mapping[str, torch.Tensor], spec: NetSpec) -> dict[str, torch.Tensor]:
    """lpips layout (``lin<k>.model.<j>.weight``) -> ``<k>.weight``; checks shapes and non-negativity."""
    out = {}
    for key, v in state.items():
        m = re.fullmatch(r"lin(\d+)\.model\.\d+\.weight", key)
        if m:
            out[f"{m.group(1)}.weight"] = _own(v)
    expected = {f"{k}.weight": (1, c, 1, 1) for k, c in enumerate(spec.channels)}
    got = {k: tuple(v.shape) for k, v in out.items()}
    if got != expected:
        raise ValueError(f"linear heads do not fit LPIPS {spec.arch}: expected lin0..lin{len(expected) - 1} "
                         f"('lin<k>.model.1.weight') of shapes {list(expected.values())}, got {got}")
    if any(bool((v < 0).any()) for v in out.values()):
        raise ValueError("LPIPS linear head weights must be non-negative; this is not an LPIPS v0.1 file")
    return out


def build_lpips(net: str, backbone_state: Mapping[str, torch.Tensor],
                lin_state: Mapping[str, torch.Tensor]) -> LPIPSNet:
    """Build LPIPS from explicit state dicts: ``backbone_state`` in torchvision's key layout for ``alexnet`` /
    ``vgg16`` (a full model state dict or only its ``features.*`` entries), ``lin_state`` in the lpips
    package's layout (``lin0.model.1.weight`` ...). Returns an ``LPIPSNet`` in eval mode, float32, on the CPU,
    without gradients."""
    import torchvision

    spec = _spec(net)
    lin_weights = _lin_state(lin_state, spec)  # cheap checks first
    with torch.device("meta"):  # no random init of weights that are replaced anyway (VGG16 is 138M params)
        features = getattr(torchvision.models, spec.arch)(weights=None).features[: spec.taps[-1] + 1]
        lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in spec.channels)
    try:
        features.load_state_dict(_backbone_features_state(backbone_state, spec), strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"backbone state dict does not fit torchvision {spec.arch}: {exc}") from exc
    lins.load_state_dict(lin_weights, strict=True, assign=True)
    return LPIPSNet(net, features, lins).eval().requires_grad_(False)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth`` loaded with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _given(value: str | Path | None, env: str, file_name: str, what: str) -> Path | None:
    """An explicitly given location (argument, else environment variable), or None; missing -> unavailable."""
    source = "argument" if value is not None else f"${env}"
    value = value if value is not None else os.environ.get(env) or None
    if value is None:
        return None
    p = Path(value).expanduser()
    if p.is_dir():
        p = p / file_name
    if not p.is_file():
        raise MetricUnavailable(f"LPIPS {what}: {p} (from {source}) does not exist; expected the file {file_name} "
                                f"there. Fix the path, or unset {env} to use the default locations.")
    return p


def _lpips_package_dir() -> Path | None:
    spec = importlib.util.find_spec("lpips")  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_lpips_weights(net: str = "alex", backbone_path: str | Path | None = None,
                          lin_path: str | Path | None = None) -> tuple[Path, Path]:
    """Paths of the backbone checkpoint and the linear heads for ``net`` (see the module docstring for the
    search order). Raises ``MetricUnavailable`` with the file name, the places searched and the fix."""
    spec = _spec(net)
    backbone = _given(backbone_path, BACKBONE_ENV, spec.backbone_file, f"{net} backbone")
    if backbone is None:
        hub = Path(torch.hub.get_dir()) / "checkpoints" / spec.backbone_file
        candidates = [hub] + ([Path(os.environ["VTBENCH_WEIGHTS"]) / spec.backbone_file]
                              if os.environ.get("VTBENCH_WEIGHTS") else [])
        backbone = next((p for p in candidates if p.is_file()), None)
        if backbone is None:
            raise MetricUnavailable(
                f"LPIPS ({net}) needs torchvision's ImageNet {spec.arch} checkpoint {spec.backbone_file}, which is "
                f"not in {' or '.join(str(p) for p in candidates)}. vtbench never downloads it. Fix: on a "
                f"machine with internet run python -c \"import torchvision; torchvision.models.{spec.arch}"
                f"(weights='{spec.weights_enum}')\", then copy ~/.cache/torch/hub/checkpoints/{spec.backbone_file} "
                f"to {hub} here, or set {BACKBONE_ENV}=/path/to/{spec.backbone_file}.")
    lin = _given(lin_path, LIN_ENV, spec.lin_file, f"{net} linear heads")
    if lin is None:
        pkg = _lpips_package_dir()
        bundled = pkg / "weights" / "v0.1" / spec.lin_file if pkg is not None else None
        if bundled is None or not bundled.is_file():
            where = f"the lpips package has no {bundled}" if bundled else "the lpips package is not installed"
            raise MetricUnavailable(
                f"LPIPS ({net}) needs the v0.1 linear heads {spec.lin_file} ({where}, and {LIN_ENV} is not set). "
                f"Fix: pip install lpips (it bundles lpips/weights/v0.1/{spec.lin_file}), or copy that file from "
                f"https://github.com/richzhang/PerceptualSimilarity/tree/master/lpips/weights/v0.1 and set "
                f"{LIN_ENV}=/path/to/{spec.lin_file}.")
        lin = bundled
    return backbone, lin


class LPIPSMetric(Metric):
    """LPIPS v0.1 distance per image pair, averaged over the dataset (lower is better).

    ``update(batch)`` reads uint8 ``(N, 3, H, W)`` images (``H, W >= 31`` for alex), scales them to ``[0, 1]``
    then ``[-1, 1]``, runs the network on the batch's device in float32 and returns ``{"lpips": (N,)}``.
    ``compute()`` returns the mean; ``extra`` names the net and the weight files used.

    ``net``: ``"alex"`` (default, the convention of tokenizer papers) or ``"vgg"``. The constructor raises
    ``MetricUnavailable`` when a weights file is missing (see the module docstring).
    """

    name = "lpips"
    outputs = (Output("lpips", "LPIPS", "", False),)

    def __init__(self, net: str = "alex", *, backbone_path: str | Path | None = None,
                 lin_path: str | Path | None = None, chunk: int = 32):
        super().__init__()
        _spec(net)
        backbone_file, lin_file = resolve_lpips_weights(net, backbone_path, lin_path)
        self.model = build_lpips(net, load_weights_file(backbone_file), load_weights_file(lin_file))
        self.net = net
        from vtbench.hashing import sha256sum
        self.weight_files = {"backbone": str(backbone_file), "lin": str(lin_file),
                             "backbone_sha256": sha256sum(backbone_file), "lin_sha256": sha256sum(lin_file)}
        self.chunk = max(1, int(chunk))  # images per forward pass; bounds activation memory
        self.add_state("lpips_sum", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("n_images", torch.zeros((), dtype=torch.int64), "sum")

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        device = batch.original.device
        if self.model.shift.device != device:
            self.model.to(device)
        values = []
        with torch.inference_mode():
            for a, b in zip(batch.original.split(self.chunk), batch.reconstruction.split(self.chunk)):
                values.append(self.model(Batch.to_float(a) * 2 - 1, Batch.to_float(b) * 2 - 1))
        out = torch.cat(values)
        self.lpips_sum = self.lpips_sum + out.double().sum().cpu()
        self.n_images = self.n_images + out.numel()
        return {"lpips": out}

    def compute(self) -> dict[str, MetricValue]:
        n = int(self.n_images)
        extra = {"net": self.net, "version": "0.1", "weights": dict(self.weight_files)}
        if n == 0:
            return {"lpips": self.value("lpips", None, 0, reason="no images were seen", **extra)}
        return {"lpips": self.value("lpips", float(self.lpips_sum) / n, n, **extra)}
