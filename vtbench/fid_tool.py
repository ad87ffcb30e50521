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
from typing import Any

import numpy as np
import torch

from vtbench.metrics.base import Batch, Output
from vtbench.metrics.frechet import FeatureStats, GaussianStats, frechet_distance, load_stats
from vtbench.metrics.generation import InceptionGaussians
from vtbench.metrics.inception import InceptionExtractor, load_inception

# clean-fid's folder extensions (it globs them case-sensitively; here the match ignores case)
IMAGE_EXTENSIONS = frozenset({".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by path."""
    root = Path(folder)
    return sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                  key=lambda p: str(p))


class FeatureStatistics(InceptionGaussians):
    """Streaming Inception pool_3 statistics of image batches, each image resized on its own as clean-fid's folder
    mode does (float64 sums, reduced across torchrun ranks by addition). Internal to ``vtbench fid`` (not
    registered): ``compute`` keeps the reduced sums in ``self.result``."""

    name = "feature_statistics"
    outputs = (Output("n_images", "images"),)

    def __init__(self, extractor: InceptionExtractor):
        super().__init__()
        self.extractor = extractor
        self._add_gaussians(extractor.device, sides=("pool",))
        self.result: FeatureStats | None = None

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        images = [np.ascontiguousarray(im.permute(1, 2, 0).numpy()) for im in batch.reconstruction.cpu()]
        self._stats("pool").update(self.extractor.forward_resized(self.extractor.resize(images)))
        return {}

    def compute(self) -> dict[str, Any]:
        self.result = self._stats_copy("pool")  # all ranks' sums
        return {"n_images": self.value("n_images", float(self.pool_n), int(self.pool_n))}


def folder_stats(folder: str | os.PathLike, extractor: InceptionExtractor, *, batch_size: int = 32,
                 limit: int | None = None, progress: bool = False) -> FeatureStats:
    """Streaming Inception statistics of the first ``limit`` images (sorted order) of ``folder``, through the
    evaluation core (under torchrun: each rank reads its shard; the sums are reduced on every rank)."""
    from vtbench.evaluation import Evaluation
    from vtbench.gfid.samples import iter_samples
    from vtbench.gfid.scoring import SampleSource

    files = list_images(folder)[:limit]
    if len(files) < 2:
        raise ValueError(f"{folder}: FID needs at least 2 images, found {len(files)}")
    metric = FeatureStatistics(extractor)
    Evaluation(source=SampleSource(iter_samples(folder, batch_size=batch_size, limit=limit)),
               metrics={"stats": metric}, fingerprint="in-memory", label=f"Inception on {Path(folder).name}",
               total=len(files), progress=progress).run()
    assert metric.result is not None
    return metric.result


def _is_stats_file(spec: str) -> bool:
    return Path(spec).is_file() and spec.endswith(".npz")


def fid_between(a: str, b: str, *, batch_size: int = 32, device: str | torch.device = "cpu",
                limit: int | None = None, inception_path: str | None = None, progress: bool = False) -> dict[str, Any]:
    """FID between ``a`` and ``b``, each an image folder or an ``.npz`` with ``mu``/``sigma``.

    ``limit`` caps the number of images taken from each folder. Folders go through the evaluation core, so under
    torchrun (``vtbench fid`` launched by it) each rank reads its shard. Returns ``{"fid", "n_a", "n_b", "extractor",
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
        s = folder_stats(spec, extractor, batch_size=batch_size, limit=limit, progress=progress)
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
