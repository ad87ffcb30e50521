"""Thumbnail assets for tokenizer pages: re-encoded originals and reconstructions, a zoomed crop of the
highest-detail region of each, and an error map.

Only files that a record names *inside its own run directory* are read, and each is decoded and re-encoded as
PNG under a name vtbench chooses, so a hostile record can neither pull other files into the site nor choose
file names there.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger("vtbench")

CROP = 48  # side of the detail window, in image pixels
ZOOM = 4  # nearest-neighbour magnification of the crop
ERROR_FULL_SCALE = 64  # |orig - recon| (8-bit levels, channel mean) mapped to the top of the colour scale
SHARED_DIR = "assets/originals"  # tokenizer slugs never take this name (see view.RESERVED_SLUGS)
MAX_SIDE = 512  # larger thumbnails are downscaled for display (crops and error maps use full resolution)


@dataclass
class Thumb:
    """Relative paths (from the site root) of one thumbnail's images, plus the crop window in the original."""

    id: str
    original: str
    reconstruction: str
    crop_original: str | None = None
    crop_reconstruction: str | None = None
    error_map: str | None = None
    window: tuple[int, int, int, int] | None = None  # x, y, size, and the original's width
    height: int = 0
    mean_abs_error: float | None = None


def _inside(root: Path, rel: Any) -> Path | None:
    if not isinstance(rel, str) or not rel:
        return None
    p = (root / rel).resolve()
    root = root.resolve()
    return p if p.is_file() and (p == root or root in p.parents) else None


def _load_rgb(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("leaderboard: cannot read thumbnail %s (%s); skipped", path, exc)
        return None


def detail_window(img: np.ndarray, size: int = CROP) -> tuple[int, int, int]:
    """(x, y, side) of the ``size`` x ``size`` window with the largest gradient energy (HWC uint8 input)."""
    h, w = img.shape[:2]
    side = min(size, h, w)
    g = img.astype(np.float64).mean(axis=2)
    energy = np.zeros_like(g)
    energy[:, 1:] += np.diff(g, axis=1) ** 2
    energy[1:, :] += np.diff(g, axis=0) ** 2
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side])
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(x), int(y), side


def zoom(img: np.ndarray, factor: int = ZOOM) -> np.ndarray:
    """Nearest-neighbour magnification (every pixel becomes a ``factor`` x ``factor`` block)."""
    return img.repeat(factor, axis=0).repeat(factor, axis=1)


def error_map(orig: np.ndarray, recon: np.ndarray, full_scale: float = ERROR_FULL_SCALE) -> Image.Image:
    """|orig - recon| averaged over channels as a heat map (inferno palette; ``full_scale`` levels and above
    map to the top colour). A palette image: one byte per pixel, so noisy error maps stay small."""
    from matplotlib import colormaps
    err = np.abs(orig.astype(np.int16) - recon.astype(np.int16)).mean(axis=2) / full_scale
    index = (np.clip(err, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    lut = (colormaps["inferno"](np.arange(256) / 255.0)[:, :3] * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(index, "L").convert("P")
    im.putpalette(lut.reshape(-1).tolist())
    return im


def _save(img: np.ndarray | Image.Image, path: Path, max_side: int | None = None) -> None:
    im = img if isinstance(img, Image.Image) else Image.fromarray(img, "RGB")
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.convert("RGB").resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                                      Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _save_shared(arr: np.ndarray, site: Path, max_side: int | None = None) -> str:
    """Save under a content-addressed name in ``assets/originals`` (every tokenizer shows the same originals)."""
    digest = hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()[:20]
    rel = f"{SHARED_DIR}/{digest}.png"
    if not (site / rel).is_file():
        _save(arr, site / rel, max_side)
    return rel


def thumbnails(record: dict[str, Any], run_dir: Path, site: Path, rel_dir: str) -> list[Thumb]:
    """Write the assets of every thumbnail pair ``record['thumbnails']`` names under ``site/rel_dir``."""
    items = record.get("thumbnails")
    out: list[Thumb] = []
    for i, t in enumerate(items if isinstance(items, list) else []):
        if not isinstance(t, dict):
            continue
        po, pr = _inside(run_dir, t.get("original")), _inside(run_dir, t.get("reconstruction"))
        if po is None or pr is None:
            continue
        o, r = _load_rgb(po), _load_rgb(pr)
        if o is None or r is None:
            continue
        stem = f"{rel_dir}/{i:03d}"
        th = Thumb(id=str(t.get("id", f"image {i}")), original=_save_shared(o, site, MAX_SIDE),
                   reconstruction=f"{stem}.recon.png", height=o.shape[0])
        _save(r, site / th.reconstruction, MAX_SIDE)
        if o.shape == r.shape:
            x, y, side = detail_window(o)
            th.window = (x, y, side, o.shape[1])
            th.crop_original = _save_shared(zoom(o[y:y + side, x:x + side]), site)
            th.crop_reconstruction, th.error_map = f"{stem}.crop-recon.png", f"{stem}.error.png"
            _save(zoom(r[y:y + side, x:x + side]), site / th.crop_reconstruction)
            _save(error_map(o, r), site / th.error_map, MAX_SIDE)
            th.mean_abs_error = float(np.abs(o.astype(np.int16) - r.astype(np.int16)).mean())
        out.append(th)
    return out
