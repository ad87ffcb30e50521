"""``vtbench fid A B``: FID between two image folders and/or ``.npz`` statistics files.

Folder mode follows clean-fid's folder mode in "clean" mode: every image file under the folder (recursive,
sorted by path), decoded to RGB uint8, resized directly to 299x299 (no centre crop) with float PIL bicubic.
Statistics are streamed in batches, so memory does not grow with the number of images.

Decoding is ``vtbench.data.images.load_image``: identical to clean-fid's ``Image.open(p).convert("RGB")`` for
RGB, grayscale and opaque palette files; it differs on purpose for transparent images (composited onto white
where clean-fid drops alpha) and 16-bit grayscale (high byte where Pillow clips).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import torch

from vtbench.data.images import load_image
from vtbench.metrics.frechet import FeatureStats, GaussianStats, frechet_distance, load_stats
from vtbench.metrics.inception import FEATURE_DIM, InceptionExtractor, load_inception

# clean-fid's folder extensions (it globs them case-sensitively; here the match ignores case)
IMAGE_EXTENSIONS = frozenset({".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by path."""
    root = Path(folder)
    return sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                  key=lambda p: str(p))


def _batches(files: list[Path], batch_size: int) -> Iterator[list[Path]]:
    for i in range(0, len(files), batch_size):
        yield files[i:i + batch_size]


def folder_stats(folder: str | os.PathLike, extractor: InceptionExtractor, *, batch_size: int = 32,
                 limit: int | None = None) -> FeatureStats:
    """Streaming Inception statistics of the first ``limit`` images (sorted order) of ``folder``."""
    files = list_images(folder)
    if limit is not None:
        files = files[:limit]
    if len(files) < 2:
        raise ValueError(f"{folder}: FID needs at least 2 images, found {len(files)}")
    stats = FeatureStats.zeros(FEATURE_DIM, extractor.device)
    for chunk in _batches(files, batch_size):
        stats.update(extractor.forward_resized(extractor.resize([load_image(p) for p in chunk])))
    return stats


def _is_stats_file(spec: str) -> bool:
    return Path(spec).is_file() and spec.endswith(".npz")


def fid_between(a: str, b: str, *, batch_size: int = 32, device: str | torch.device = "cpu",
                limit: int | None = None, inception_path: str | None = None) -> dict[str, Any]:
    """FID between ``a`` and ``b``, each an image folder or an ``.npz`` with ``mu``/``sigma``.

    ``limit`` caps the number of images taken from each folder. Returns ``{"fid", "n_a", "n_b", "extractor",
    "weights_sha256"}`` (``n`` is None for a statistics file that does not record it; extractor fields are
    None when both sides are statistics files). Raises ``MetricUnavailable`` without Inception weights.
    """
    for spec in (a, b):
        if not (Path(spec).is_dir() or _is_stats_file(spec)):
            raise ValueError(f"{spec}: neither an image folder nor an .npz statistics file")
    extractor = None
    if Path(a).is_dir() or Path(b).is_dir():
        extractor = load_inception(inception_path, device)

    def stats_of(spec: str) -> GaussianStats:
        if _is_stats_file(spec):
            return load_stats(spec)
        s = folder_stats(spec, extractor, batch_size=batch_size, limit=limit)
        mu, sigma = s.mean_cov()
        return GaussianStats(mu, sigma, int(s.n))

    sa, sb = stats_of(a), stats_of(b)
    if sa.mu.shape != sb.mu.shape:
        raise ValueError(f"feature dimensions differ: {a} has {sa.mu.shape[0]}, {b} has {sb.mu.shape[0]}")
    return {
        "fid": frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma),
        "n_a": sa.n,
        "n_b": sb.n,
        "extractor": None if extractor is None else extractor.id,
        "weights_sha256": None if extractor is None else extractor.sha256,
    }
