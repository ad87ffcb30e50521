"""What samples are scored against: ADM reference batches, vtbench reference files, datasets (cached statistics)."""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from vtbench import distributed as dist
from vtbench.core import fingerprint
from vtbench.gfid.common import (
    DEFAULT_RESOLUTION,
    PR_REFERENCE_SIZE,
    REFERENCE_CACHE_VERSION,
    REFERENCE_META_KEY,
    SampleFormatError,
    SizeMismatchError,
    mixed_pipeline_warning,
)
from vtbench.gfid.files import check_adm_images, iter_npz_rows, npz_array_info, npz_keys
from vtbench.gfid.samples import Samples, _nhwc_to_tensor
from vtbench.metrics.base import Output
from vtbench.metrics.frechet import FeatureStats, GaussianStats
from vtbench.metrics.generation import InceptionGaussians
from vtbench.metrics.inception import (
    FEATURE_DIM,
    SPATIAL_DIM,
    SPATIAL_ID,
    InceptionExtractor,
    check_resize_mode,
    load_inception,
)
from vtbench.results import write_npz_atomic

log = logging.getLogger("vtbench")

# -------------------------------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """What samples are scored against.

    ``pool`` / ``spatial``: Gaussians of pool_3 (gFID) and spatial (sFID) features; ``features``: float32
    ``(M, 2048)`` pool_3 features for precision/recall; ``extractor``: id of the extractor that computed what
    vtbench computed (None when everything came from a file); ``missing``: part (``gfid``, ``sfid``,
    ``precision_recall``) -> why it is absent; ``description`` becomes the result's ``dataset`` section;
    ``warnings``: part (``gfid``, ``sfid``) -> the warning every value of it carries (statistics read from a file
    that another pipeline computed).
    """

    id: str
    description: dict[str, Any]
    pool: GaussianStats | None = None
    spatial: GaussianStats | None = None
    features: torch.Tensor | None = None
    extractor: str | None = None
    missing: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int | None:
        return None if self.pool is None else self.pool.n

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Reference":
        """Read a reference file written by ``save`` (``SampleFormatError`` when it is not one)."""
        path = Path(path)
        keys = npz_keys(path)
        if REFERENCE_META_KEY not in keys:
            raise SampleFormatError(f"{path}: not a vtbench reference file (no {REFERENCE_META_KEY}; keys: "
                                    f"{', '.join(keys)})")
        with np.load(path, allow_pickle=False) as z:
            a = {k: np.asarray(z[k]) for k in keys if k != "arr_0"}
        meta = json.loads(str(a[REFERENCE_META_KEY]))
        pool, spatial, feats = _arrays_to_stats(path, a)
        return cls(id=meta["id"], description=dict(meta["description"]), pool=pool, spatial=spatial,
                   features=feats, extractor=meta.get("extractor"), missing=dict(meta.get("missing") or {}),
                   warnings=dict(meta.get("warnings") or {}))

    def save(self, path: str | os.PathLike) -> Path:
        """Write as a reference ``.npz`` (ADM keys + ``features`` + metadata), atomically."""
        arrays: dict[str, np.ndarray] = {}
        if self.pool is not None:
            arrays.update(mu=self.pool.mu, sigma=self.pool.sigma)
            if self.pool.n is not None:
                arrays["n"] = np.asarray(self.pool.n, np.int64)
        if self.spatial is not None:
            arrays.update(mu_s=self.spatial.mu, sigma_s=self.spatial.sigma)
        if self.features is not None:
            arrays["features"] = self.features.cpu().numpy().astype(np.float32)
        meta = {"id": self.id, "description": self.description, "extractor": self.extractor,
                "missing": self.missing, "warnings": self.warnings, "version": REFERENCE_CACHE_VERSION}
        arrays[REFERENCE_META_KEY] = np.asarray(json.dumps(meta))
        return write_npz_atomic(path, **arrays)


_SPATIAL_WHAT = "ADM's spatial (mixed_6/conv, 7 x 17 x 17)"


def _check_dims(path: Path, name: str, mu: np.ndarray, sigma: np.ndarray, dim: int, what: str) -> None:
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise SampleFormatError(f"{path}: {name} has shapes {mu.shape} / {sigma.shape}; {what} statistics have "
                                f"{dim} dimensions")


def _check_features(path: Path, f: np.ndarray) -> np.ndarray:
    if f.ndim != 2 or f.shape[1] != FEATURE_DIM or not np.issubdtype(f.dtype, np.floating):
        raise SampleFormatError(f"{path}: features must be float (M, {FEATURE_DIM}) pool_3 features, got "
                                f"{f.dtype} {f.shape}")
    return f.astype(np.float32)


def _arrays_to_stats(path: Path, a: dict[str, np.ndarray]
                     ) -> tuple[GaussianStats | None, GaussianStats | None, torch.Tensor | None]:
    """Pool and spatial Gaussians and P/R features from an npz's arrays (each None when absent), checked."""
    n = int(a["n"]) if "n" in a else None
    pool = spatial = feats = None
    if "mu" in a and "sigma" in a:
        _check_dims(path, "mu/sigma", a["mu"], a["sigma"], FEATURE_DIM, "pool_3")
        pool = GaussianStats(a["mu"].astype(np.float64), a["sigma"].astype(np.float64), n)
    if "mu_s" in a and "sigma_s" in a:
        _check_dims(path, "mu_s/sigma_s", a["mu_s"], a["sigma_s"], SPATIAL_DIM, _SPATIAL_WHAT)
        spatial = GaussianStats(a["mu_s"].astype(np.float64), a["sigma_s"].astype(np.float64), n)
    if "features" in a:
        feats = torch.from_numpy(_check_features(path, a["features"]))
    return pool, spatial, feats


class _ReferenceImages:
    """Reference images as a source of the evaluation core: ``ids`` in order and ``read(positions)`` yielding
    ``(ids, uint8 batch, [(id, error), ...])`` for those positions only (a torchrun rank reads its shard)."""

    def __init__(self, ids: list[str], read: Callable[[list[int]], Iterator[tuple[list[str], Any, list]]]):
        self.ids, self._read = ids, read

    def batches(self, done: set[str], skip: Callable[[str, str], None]) -> Iterator[Any]:
        from vtbench.metrics.base import Batch
        for ids, images, errors in self._read([i for i, sid in enumerate(self.ids) if sid not in done]):
            for sid, err in errors:
                skip(sid, err)
            if ids:
                yield Batch(ids=ids, original=None, reconstruction=images)


class ReferenceStatistics(InceptionGaussians):
    """Pool_3 and spatial Gaussian sums of reference images (float64, torchmetrics ``sum`` states) and the pool_3
    features of the ids in ``keep`` (``cat``; precision/recall are set statistics, so the order in which ranks
    contribute does not matter). Internal to references (not registered); ``compute`` keeps the reduced states
    in ``self.result`` (torchmetrics restores the local states after ``compute``)."""

    name = "reference_statistics"
    outputs = (Output("n_images", "images"),)

    def __init__(self, extractor: InceptionExtractor, keep: set[str] | None = None):
        super().__init__()
        self.extractor, self.keep = extractor, keep
        self._add_gaussians(extractor.device)
        self.add_state("features", None, "cat")
        self.result: tuple[FeatureStats, FeatureStats, torch.Tensor] | None = None

    def update(self, batch: Any) -> dict[str, torch.Tensor]:
        out = self.extractor.features_all(batch.reconstruction, logits=False)
        self._stats("pool").update(out.pool)
        self._stats("spatial").update(out.spatial)
        rows = [j for j, sid in enumerate(batch.ids) if self.keep is None or sid in self.keep]
        if rows:
            self.features.append(out.pool[rows].to(torch.float32))
        return {}

    def compute(self) -> dict[str, Any]:
        parts = [self.features] if isinstance(self.features, torch.Tensor) else list(self.features)
        feats = torch.cat([f.cpu() for f in parts]) if parts else torch.zeros(0, FEATURE_DIM, dtype=torch.float32)
        self.result = (self._stats_copy("pool"), self._stats_copy("spatial"), feats)
        return {"n_images": self.value("n_images", float(self.pool_n), int(self.pool_n))}


def _image_features(source: _ReferenceImages, extractor: InceptionExtractor, *, keep: set[str] | None,
                    progress: bool, label: str, local: bool) -> tuple[FeatureStats, FeatureStats, torch.Tensor,
                                                                       list[dict[str, str]]]:
    """Pool and spatial statistics of every image of ``source`` and the pool features of the ids in ``keep``
    (None: all), through the evaluation core: under torchrun (unless ``local``) each rank reads its shard and
    every rank gets the reduced statistics. Also returns the skipped items (id, reason)."""
    from vtbench.evaluation import Evaluation
    metric = ReferenceStatistics(extractor, keep)
    outcome = Evaluation(source=source, metrics={"statistics": metric}, fingerprint="in-memory", label=label,
                         total=len(source.ids), progress=progress, local=local).run()
    assert metric.result is not None
    pool, spatial, feats = metric.result
    return pool, spatial, feats, outcome.skipped


def _gaussian(stats: FeatureStats) -> GaussianStats | None:
    if int(stats.n) < 2:
        return None
    mu, sigma = stats.mean_cov()
    return GaussianStats(mu, sigma, int(stats.n))


def _digest(*parts: Any) -> str:
    return fingerprint(*parts, length=32)


def _cache_path(key: str) -> Path:
    from vtbench.paths import cache_dir
    return cache_dir() / "gfid_reference" / f"{key}.npz"


def _load_cached(path: Path) -> Reference | None:
    """A cached reference file, or None when it is missing or damaged (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        return Reference.load(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable reference cache (%s); recomputing", path, exc)
        return None


def _shared_cache(path: Path, local: bool) -> Reference | None:
    """The cached reference at ``path`` or None; under torchrun (unless ``local``) rank 0's answer, sent to every
    rank, so all ranks take the same branch (compute together, or all use the cache) even without a shared disk."""
    if local or not dist.is_initialized() or dist.world() == 1:
        return _load_cached(path)
    return dist.broadcast_object(_load_cached(path) if dist.is_main() else None)


def _reference_from_npz(path: Path, *, extractor: InceptionExtractor | None, limit: int | None = None,
                        seed: int = 0, batch_size: int = 32, progress: bool = False, local: bool = False
                        ) -> Reference:
    from vtbench.data.datasets import select_subset
    from vtbench.hashing import sha256sum

    keys = npz_keys(path)
    sha = sha256sum(path)
    if REFERENCE_META_KEY in keys:  # a vtbench reference file: as saved
        ref = Reference.load(path)
        ref.description.update(reference_file=str(path.resolve()), file_sha256=sha)
        return ref
    has_images = "arr_0" in keys
    if not ({"mu", "sigma"} <= set(keys) or has_images or "features" in keys):
        raise SampleFormatError(f"{path}: a reference needs mu/sigma (ADM statistics), arr_0 (uint8 NHWC images) "
                                f"or features; keys found: {', '.join(keys) or 'none'}")
    with np.load(path, allow_pickle=False) as z:
        a = {k: np.asarray(z[k]) for k in ("mu", "sigma", "mu_s", "sigma_s", "features", "n") if k in keys}
    pool, spatial, feats = _arrays_to_stats(path, a)
    pool_from_file, spatial_from_file = pool is not None, spatial is not None
    ext_id, n_images, n_selected, image_size = None, None, None, None
    if has_images:
        shape, dtype = npz_array_info(path, "arr_0")
        if len(shape) == 4:
            image_size = [int(shape[1]), int(shape[2])]
    if has_images and (feats is None or pool is None):
        check_adm_images(path, shape, dtype, keys)
        if extractor is None:
            raise ValueError(f"{path}: reading arr_0 images needs the Inception extractor")
        n_images = shape[0]
        subset = select_subset([str(i) for i in range(n_images)], limit, seed)
        n_selected = len(subset)
        cache = _cache_path(_digest("npz", sha, extractor.id, SPATIAL_ID, limit, seed, REFERENCE_CACHE_VERSION))
        images = _shared_cache(cache, local)
        if images is None:
            def read(positions: list[int]) -> Iterator[tuple[list[str], Any, list]]:
                rows = [subset[i] for i in positions]  # row indices of arr_0, ascending
                left = iter(rows)
                keep = None if len(rows) == n_images else set(rows)
                for chunk in iter_npz_rows(path, "arr_0", batch_size, keep=keep):
                    yield [str(next(left)) for _ in range(len(chunk))], _nhwc_to_tensor(chunk), []

            img_pool, img_spatial, img_feats, _ = _image_features(
                _ReferenceImages([str(i) for i in subset], read), extractor, keep=None, progress=progress,
                label=f"reference {path.name}", local=local)
            images = Reference(f"{path.name}#arr_0", {"file_sha256": sha}, _gaussian(img_pool),
                               _gaussian(img_spatial), img_feats, extractor.id)
            if local or dist.is_main():
                images.save(cache)
        ext_id = extractor.id
        if feats is None:
            feats = images.features
        if pool is None:  # ADM computes both statistics from arr_0 when the file holds no mu (evaluator L164-172)
            pool, spatial = images.pool, images.spatial
            pool_from_file = spatial_from_file = False
    missing: dict[str, str] = {}
    if pool is None:
        missing["gfid"] = f"{path.name} has no mu/sigma and fewer than 2 usable arr_0 images"
    if spatial is None:
        missing["sfid"] = f"{path.name} has no mu_s/sigma_s (ADM's spatial statistics)" + (
            "; its mu/sigma come from the file, so statistics of its arr_0 images would describe another set"
            if has_images and pool is not None and "mu" in a else "")
    if feats is None:
        missing["precision_recall"] = (f"{path.name} holds no reference images (arr_0, uint8 NHWC) or pool_3 "
                                       "features (features); precision/recall compare samples with reference "
                                       "features (ADM: the 10,000 images of its reference batch)")
    desc = {"id": path.stem, "kind": "npz", "root": str(path.resolve()), "file_sha256": sha, "keys": keys,
            "statistics": ("file (ADM's evaluator: TF graph, bilinear resize)" if "mu" in a
                           else f"vtbench: {ext_id}" if pool is not None else None),
            "n_reference": None if pool is None else pool.n,
            "n_reference_features": None if feats is None else int(feats.shape[0]),
            "n_images": n_images, "n_selected": n_selected, "limit": limit, "seed": seed,
            "selection": None if n_selected is None else _digest(limit, seed, n_images)[:12],
            "image_size": image_size}
    # statistics read from the file came from ADM's TF evaluator: ``score_state`` applies these warnings unless the
    # samples go through ADM's resize too
    warnings = {}
    if pool_from_file and pool is not None:
        warnings["gfid"] = mixed_pipeline_warning(f"{path.name}, not this extractor", "mu/sigma")
    if spatial_from_file and spatial is not None:
        warnings["sfid"] = mixed_pipeline_warning(f"{path.name}, not this extractor", "mu_s/sigma_s")
    return Reference(id=path.stem, description=desc, pool=pool, spatial=spatial, features=feats, extractor=ext_id,
                     missing=missing, warnings=warnings)


def _reference_from_dataset(spec: str, *, resolution: int, limit: int | None, seed: int, batch_size: int,
                            extractor: InceptionExtractor, progress: bool, pr_reference_size: int,
                            local: bool = False) -> Reference:
    from vtbench.data.datasets import collate, open_dataset, select_subset
    from vtbench.data.policies import get_policy

    ds = open_dataset(spec, get_policy("adm-center-crop", resolution), limit=limit, seed=seed)
    info = ds.info
    pr_n = min(len(ds), pr_reference_size)
    key = _digest("dataset", info.id, info.revision, info.selection, info.policy, extractor.id, SPATIAL_ID, pr_n,
                  seed, REFERENCE_CACHE_VERSION)
    cache = _cache_path(key)
    cached = _shared_cache(cache, local)
    if cached is not None:
        log.info("reference %s: cached statistics %s", info.id, cache)
        cached.description.update(cache=str(cache), image_size=[resolution, resolution])
        return cached
    keep_ids = set(ds.ids) if pr_n == len(ds) else {ds.ids[i] for i in select_subset(ds.ids, pr_n, seed)}

    def read(positions: list[int]) -> Iterator[tuple[list[str], Any, list]]:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, positions), batch_size=batch_size,
                                             shuffle=False, collate_fn=collate)
        for chunk in loader:  # adm-center-crop makes every image resolution x resolution
            yield chunk["ids"], torch.stack(chunk["images"]) if chunk["images"] else None, chunk["errors"]

    pool, spatial, feats, skipped = _image_features(_ReferenceImages(list(ds.ids), read), extractor,
                                                    keep=keep_ids, progress=progress, label=f"reference {info.id}",
                                                    local=local)
    n = int(pool.n)
    pool, spatial = _gaussian(pool), _gaussian(spatial)
    missing = {} if pool is not None else {"gfid": f"reference {info.id} has {n} usable image(s); a covariance "
                                                   "needs at least 2"}
    if spatial is None:
        missing["sfid"] = missing["gfid"]
    desc = {**info.to_dict(), "reference_kind": "dataset", "n_reference": n,
            "n_reference_features": int(feats.shape[0]), "statistics": f"vtbench: {extractor.id}",
            "skipped": skipped, "image_size": [resolution, resolution]}
    ref = Reference(info.id, desc, pool, spatial, feats, extractor.id, missing)
    if local or dist.is_main():  # one writer under torchrun
        ref.save(cache)
    ref.description["cache"] = str(cache)
    return ref


def open_reference(spec: str, *, resolution: int = 256, limit: int | None = None, seed: int = 0,
                   batch_size: int = 32, device: str | torch.device = "cpu", inception_path: str | None = None,
                   progress: bool = False, pr_reference_size: int = PR_REFERENCE_SIZE,
                   resize: str = "clean", local: bool = False) -> Reference:
    """Open a reference: an ADM/vtbench reference ``.npz`` or a dataset (see the module docstring).

    ``limit`` / ``seed``: a deterministic subset of the dataset (or of an npz's ``arr_0`` images);
    ``pr_reference_size``: at most this many dataset images (a seeded subset) keep pool_3 features for
    precision/recall. Raises ``MetricUnavailable`` when Inception weights are needed and missing,
    ``SampleFormatError`` / ``DatasetError`` (both ``ValueError``) for unreadable inputs. ``resize``: the
    extractor's resize mode (``"clean"`` or ``"tf-bilinear"``; part of every cache key). Statistics are computed
    through the evaluation core: under torchrun every rank must call this (each reads its shard; rank 0 writes the
    cache), unless ``local`` (one rank computing alone, e.g. the AR probe's rank 0).
    """
    check_resize_mode(resize)
    path = Path(spec)
    if path.suffix.lower() == ".npz" and path.is_file():
        keys = npz_keys(path)
        needs_images = "arr_0" in keys and not ({"mu", "sigma", "features"} <= set(keys))
        extractor = load_inception(inception_path, device).with_resize(resize) if needs_images else None
        return _reference_from_npz(path, extractor=extractor, limit=limit, seed=seed, batch_size=batch_size,
                                   progress=progress, local=local)
    if path.suffix.lower() == ".npz":
        raise FileNotFoundError(f"{spec}: no such reference file")
    return _reference_from_dataset(spec, resolution=resolution, limit=limit, seed=seed, batch_size=batch_size,
                                   extractor=load_inception(inception_path, device).with_resize(resize),
                                   progress=progress, pr_reference_size=pr_reference_size, local=local)


def reference_image_size(spec: str, resolution: int = DEFAULT_RESOLUTION) -> tuple[tuple[int, int] | None, str]:
    """(height, width) of the reference's images without computing anything, and what they are: a dataset is
    cropped to ``resolution`` square; an ``.npz`` has its ``arr_0`` size (a vtbench reference file: the size it
    recorded); None when unknown (statistics only)."""
    path = Path(spec)
    if path.suffix.lower() != ".npz":
        return (resolution, resolution), f"the dataset {spec} cropped by adm-center-crop at --resolution {resolution}"
    if not path.is_file():
        return None, str(spec)
    keys = npz_keys(path)
    if REFERENCE_META_KEY in keys:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z[REFERENCE_META_KEY]))
        size = (meta.get("description") or {}).get("image_size")
        return (tuple(int(v) for v in size) if size else None), f"the images behind the reference file {path.name}"
    if "arr_0" in keys:
        shape, _ = npz_array_info(path, "arr_0")
        if len(shape) == 4:
            return (int(shape[1]), int(shape[2])), f"the arr_0 images of {path.name}"
    return None, str(spec)


def check_sizes(samples: Samples, ref_spec: str, resolution: int = DEFAULT_RESOLUTION, *,
                allow_size_mismatch: bool = False) -> str | None:
    """Raise ``SizeMismatchError`` when the samples' and the reference's image sizes differ (naming both and the
    fix); with ``allow_size_mismatch`` return the warning instead. None when they match or a size is unknown."""
    ref_size, what = reference_image_size(ref_spec, resolution)
    if samples.size is None or ref_size is None or tuple(samples.size) == tuple(ref_size):
        return None
    (h, w), (rh, rw) = samples.size, ref_size
    msg = f"samples are {h}x{w} (H x W) but the reference images are {rh}x{rw} ({what})"
    if allow_size_mismatch:
        return f"{msg}: Frechet distances and precision/recall across image sizes are not comparable"
    dataset = Path(ref_spec).suffix.lower() != ".npz"
    if dataset and h == w:
        fix = f"pass --resolution {h} to crop the reference dataset to the samples' size"
    elif dataset:
        fix = ("the samples are not square and adm-center-crop makes square references: crop/resize the samples to a "
               "square size and pass it as --resolution")
    else:
        fix = (f"score samples generated at {rh}x{rw}, or use a reference of {h}x{w} images (a dataset with "
               f"--resolution {h})")
    raise SizeMismatchError(f"{msg}; {fix}, or pass --allow-size-mismatch to score anyway (the values are then "
                            "not comparable with same-size numbers)")
