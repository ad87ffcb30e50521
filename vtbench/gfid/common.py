"""Shared names of the gFID package: metric keys per resize mode, errors, warnings, constants."""

from __future__ import annotations

import logging

from vtbench.metrics.inception import FEATURE_DIM, check_resize_mode

log = logging.getLogger("vtbench")


TOKEN_FILE_FORMAT = "vtbench-tokens"
TOKEN_FILE_VERSION = 1
REFERENCE_META_KEY = "vtbench_reference"
REFERENCE_CACHE_VERSION = 1
PR_REFERENCE_SIZE = 10_000  # ADM's reference batches hold 10,000 images for precision/recall
FULL_RANK_N = FEATURE_DIM
# (display name, higher is better) of each output, in report order
OUTPUTS: dict[str, tuple[str, bool]] = {"gfid": ("gFID", False), "sfid": ("sFID", False),
                                        "inception_score": ("IS", True), "precision": ("Precision", True),
                                        "recall": ("Recall", True)}
# ADM-resize values are other numbers than clean ones: their own metric keys (``gfid@adm``) and result folder, so
# the two never overwrite each other or share a leaderboard column or a compare row
RESIZE_SUFFIX = {"clean": "", "tf-bilinear": "@adm"}


def metric_key(base: str, resize: str = "clean") -> str:
    """The record key of output ``base`` (``gfid``, ...) under a resize mode: ``gfid`` / ``gfid@adm``."""
    return base + RESIZE_SUFFIX[check_resize_mode(resize)]


class SampleFormatError(ValueError):
    """A samples or reference file whose layout vtbench cannot read; the message names the file and the fix."""


class SizeMismatchError(ValueError):
    """Samples and reference images of different sizes; the message names both sizes and the fix."""


DEFAULT_RESOLUTION = 256


def _join_warnings(*parts: str | None) -> str | None:
    """Non-empty warnings joined with ``"; "`` (None when there are none)."""
    kept = [p for p in parts if p]
    return "; ".join(kept) if kept else None


def mixed_pipeline_warning(source: str, what: str = "mu/sigma") -> str:
    """The warning on a Frechet distance whose reference Gaussian was read from ``source`` (not this extractor)."""
    return (f"mixed pipelines: the reference {what} come from {source} (ADM's TF evaluator resizes bilinearly to "
            "299x299 inside its graph), the samples' features from vtbench's extractor (clean-fid resize), so the "
            "value is comparable with ADM-evaluated numbers only up to the resize difference (clean-fid vs legacy "
            "resize); score with --resize adm (resize='tf-bilinear') to use ADM's resize")
