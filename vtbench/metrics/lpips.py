"""LPIPS v0.1 (Zhang et al. 2018), implemented here: an ImageNet backbone's ReLU features at five depths, each
unit-normalised along channels, squared difference, weighted by a learned non-negative 1x1 projection
("linear head"), averaged over space and summed over the five layers. Lower is more similar; 0 for identical
images.

Backbones are torchvision's AlexNet and VGG16 architectures with torchvision's ImageNet checkpoints; the
linear heads are the v0.1 files that the ``lpips`` package bundles (``weights/v0.1/alex.pth``, ``vgg.pth``, keys
``lin0.model.1.weight`` ... ``lin4.model.1.weight``). Weights are found, in order:

- backbone: the ``backbone_path`` argument; ``$VTBENCH_LPIPS_BACKBONE`` (the file, or a folder holding it);
  ``torch.hub.get_dir()/checkpoints/<file>`` (torch hub's cache, under ``$TORCH_HOME``: where torchvision keeps
  it); ``$VTBENCH_WEIGHTS/<file>``; else, when downloads are allowed (neither ``VTBENCH_OFFLINE`` nor
  ``HF_HUB_OFFLINE`` is set, as for tokenizer weights), torchvision's weights API downloads it into torch hub's
  cache (sha256 prefix checked by torch hub, loaded with ``weights_only=True``).
- linear heads: the ``lin_path`` argument; ``$VTBENCH_LPIPS_LIN`` (the file, or a folder holding
  ``alex.pth`` / ``vgg.pth``); the installed ``lpips`` package's ``weights/v0.1/``. Never downloaded.

Only :class:`LPIPSMetric`'s constructor resolves (and may download); importing this module never does, so a run
that does not select ``lpips`` never touches the network for it. A path given explicitly (argument or
environment) that does not exist is an error, not a reason to look further. When a file is absent (offline, or
the download failed), the constructor raises ``MetricUnavailable`` naming the file, its URL, where it was looked
for and the command that fixes it; the run records ``lpips: null`` with that reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from vtbench.extras import install_hint
from vtbench.metrics.base import Batch, Metric, MetricUnavailable, MetricValue, Output

__all__ = ["LPIPSMetric", "LPIPSNet", "NETS", "BackboneFile", "build_lpips", "load_weights_file",
           "resolve_backbone", "resolve_lin", "resolve_lpips_weights"]

log = logging.getLogger(__name__)

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

    @property
    def url(self) -> str:
        """Where torchvision downloads ``backbone_file`` from (the same as its weights enum's ``url``)."""
        return f"https://download.pytorch.org/models/{self.backbone_file}"

    @property
    def sha256_prefix(self) -> str:
        """The sha256 prefix in torchvision's file name (``alexnet-owt-7be5be79.pth`` -> ``7be5be79``)."""
        return Path(self.backbone_file).stem.rsplit("-", 1)[-1]


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


@dataclass(frozen=True)
class BackboneFile:
    """Where the backbone checkpoint was found: ``source`` is ``"argument"``, ``"$VTBENCH_LPIPS_BACKBONE"``,
    ``"torch hub cache"``, ``"$VTBENCH_WEIGHTS"`` or ``"downloaded"`` (into torch hub's cache by this process)."""

    path: Path
    source: str

    @property
    def downloaded(self) -> bool:
        return self.source == "downloaded"


# url -> why its download failed: a run over several tokenizers builds the metric once per tokenizer, and a
# download that failed (no route, proxy) is not retried, each time at the cost of a timeout, within one process
_FAILED_DOWNLOADS: dict[str, str] = {}


def _download_backbone(spec: NetSpec, target: Path) -> None:
    """torchvision's weights API: fetch ``spec.url`` into torch hub's cache (``target``); raise on failure."""
    import torchvision

    weights = torchvision.models.get_model_weights(spec.arch)[spec.weights_enum]
    log.warning("LPIPS: downloading %s to %s (torchvision's ImageNet %s; once per machine)",
                weights.url, target, spec.arch)
    # check_hash: torch hub compares the file's sha256 with the prefix in its name and deletes a mismatch;
    # weights_only: torch.load of the fresh file may not run pickled code. The loaded state is dropped (the
    # metric reads the cached file like any other), so the first run reads it twice.
    # torch hub announces the download on stdout; stdout is for --json, so the line goes to stderr with the logs
    with contextlib.redirect_stdout(sys.stderr):
        weights.get_state_dict(progress=False, check_hash=True, weights_only=True, map_location="cpu")


def _backbone_fix(spec: NetSpec, hub: Path) -> str:
    """The commands that put the backbone where vtbench finds it."""
    return (f"on a machine with internet run curl -L --create-dirs -o {hub} {spec.url} (or python -c \"import "
            f"torchvision; torchvision.models.{spec.arch}(weights='{spec.weights_enum}')\", then copy "
            f"~/.cache/torch/hub/checkpoints/{spec.backbone_file} to {hub} here), or set "
            f"{BACKBONE_ENV}=/path/to/{spec.backbone_file}")


def resolve_backbone(net: str = "alex", backbone_path: str | Path | None = None, *,
                     allow_download: bool = True) -> BackboneFile:
    """The backbone checkpoint for ``net``: an explicit path, the local places, else (when ``allow_download``
    and downloads are allowed) a download into torch hub's cache. Raises ``MetricUnavailable`` naming the file,
    its URL, the places searched, why nothing was downloaded and the fix."""
    from vtbench.paths import downloads_allowed, offline_switches

    spec = _spec(net)
    given = _given(backbone_path, BACKBONE_ENV, spec.backbone_file, f"{net} backbone")
    if given is not None:
        return BackboneFile(given, "argument" if backbone_path is not None else f"${BACKBONE_ENV}")
    hub = Path(torch.hub.get_dir()) / "checkpoints" / spec.backbone_file
    candidates = [("torch hub cache", hub)]
    if os.environ.get("VTBENCH_WEIGHTS"):
        candidates.append(("$VTBENCH_WEIGHTS", Path(os.environ["VTBENCH_WEIGHTS"]) / spec.backbone_file))
    for source, p in candidates:
        if p.is_file():
            return BackboneFile(p, source)
    if not allow_download:
        why = "downloading was not allowed by the caller"
    elif not downloads_allowed():
        off = offline_switches()
        why = (f"downloads are off ({', '.join(off)}; unset {'it' if len(off) == 1 else 'them'} to let vtbench "
               "download it)")
    elif spec.url in _FAILED_DOWNLOADS:
        why = f"its download failed earlier in this process: {_FAILED_DOWNLOADS[spec.url]}"
    else:
        try:
            _download_backbone(spec, hub)
            if not hub.is_file():
                raise FileNotFoundError(f"the download finished but {hub} does not exist")
            return BackboneFile(hub, "downloaded")
        except Exception as exc:  # no route, proxy, hash mismatch, disk full: null with the reason, never a crash
            _FAILED_DOWNLOADS[spec.url] = f"{type(exc).__name__}: {exc}"
            why = f"its download failed: {_FAILED_DOWNLOADS[spec.url]}"
    raise MetricUnavailable(
        f"LPIPS ({net}) needs torchvision's ImageNet {spec.arch} checkpoint {spec.backbone_file} ({spec.url}), "
        f"which is not in {' or '.join(str(p) for _, p in candidates)}, and {why}. "
        f"Fix: {_backbone_fix(spec, hub)}.")


def resolve_lin(net: str = "alex", lin_path: str | Path | None = None) -> Path:
    """The v0.1 linear heads for ``net`` (never downloaded). Raises ``MetricUnavailable`` with the fix."""
    spec = _spec(net)
    lin = _given(lin_path, LIN_ENV, spec.lin_file, f"{net} linear heads")
    if lin is not None:
        return lin
    pkg = _lpips_package_dir()
    bundled = pkg / "weights" / "v0.1" / spec.lin_file if pkg is not None else None
    if bundled is None or not bundled.is_file():
        where = f"the lpips package has no {bundled}" if bundled else "the lpips package is not installed"
        raise MetricUnavailable(
            f"LPIPS ({net}) needs the v0.1 linear heads {spec.lin_file} ({where}, and {LIN_ENV} is not set). "
            f"Fix: {install_hint('lpips')} (the lpips package bundles lpips/weights/v0.1/{spec.lin_file}), "
            f"or copy that file from "
            f"https://github.com/richzhang/PerceptualSimilarity/tree/master/lpips/weights/v0.1 and set "
            f"{LIN_ENV}=/path/to/{spec.lin_file}.")
    return bundled


def resolve_lpips_weights(net: str = "alex", backbone_path: str | Path | None = None,
                          lin_path: str | Path | None = None, *, allow_download: bool = False) -> tuple[Path, Path]:
    """Paths of the backbone checkpoint and the linear heads for ``net`` (see the module docstring for the
    search order; no download unless ``allow_download``). Raises ``MetricUnavailable`` with the fix."""
    lin = resolve_lin(net, lin_path)  # the heads first: no backbone download for a metric that cannot run
    return resolve_backbone(net, backbone_path, allow_download=allow_download).path, lin


class LPIPSMetric(Metric):
    """LPIPS v0.1 distance per image pair, averaged over the dataset (lower is better).

    ``update(batch)`` reads uint8 ``(N, 3, H, W)`` images (``H, W >= 31`` for alex), scales them to ``[0, 1]``
    then ``[-1, 1]``, runs the network on the batch's device in float32 and returns ``{"lpips": (N,)}``.
    ``compute()`` returns the mean; ``extra["weights"]`` is the provenance of the weight files: paths, sha256,
    where the backbone came from (``backbone_source``, see :class:`BackboneFile`), whether this process downloaded
    it (``backbone_downloaded``), its URL and whether its sha256 matches the prefix in torchvision's file name
    (``backbone_matches_torchvision``; false for any other ImageNet checkpoint given by path).

    ``net``: ``"alex"`` (default, the convention of tokenizer papers) or ``"vgg"``. The constructor resolves the
    weights, downloading the backbone when it is absent and downloads are allowed, and raises
    ``MetricUnavailable`` when a weights file cannot be had (see the module docstring).
    """

    name = "lpips"
    outputs = (Output("lpips", "LPIPS", "", False),)

    def __init__(self, net: str = "alex", *, backbone_path: str | Path | None = None,
                 lin_path: str | Path | None = None, chunk: int = 32):
        super().__init__()
        spec = _spec(net)
        lin_file = resolve_lin(net, lin_path)  # the heads first: no backbone download for a metric that cannot run
        backbone = resolve_backbone(net, backbone_path)
        self.model = build_lpips(net, load_weights_file(backbone.path), load_weights_file(lin_file))
        self.net = net
        from vtbench.hashing import sha256sum
        backbone_sha = sha256sum(backbone.path)
        self.weight_files = {"backbone": str(backbone.path), "lin": str(lin_file),
                             "backbone_sha256": backbone_sha, "lin_sha256": sha256sum(lin_file),
                             "backbone_source": backbone.source, "backbone_downloaded": backbone.downloaded,
                             "backbone_url": spec.url,
                             "backbone_matches_torchvision": backbone_sha.startswith(spec.sha256_prefix)}
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
