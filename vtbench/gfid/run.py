"""``vtbench gfid``: one scored run written as a RunResult (``gfid_run``, ``result_path``)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from vtbench import distributed as dist
from vtbench.core import fingerprint
from vtbench.evaluation import Evaluation, Outcome
from vtbench.gfid.common import DEFAULT_RESOLUTION, RESIZE_SUFFIX, _join_warnings
from vtbench.gfid.reference import check_sizes, open_reference
from vtbench.gfid.samples import iter_samples
from vtbench.gfid.scoring import SampleSource, generation_metric
from vtbench.metrics.generation import NEAREST_K
from vtbench.metrics.inception import check_resize_mode, load_inception
from vtbench.results import RESULT_FILE, environment, new_record, protocol_section, run_dir

log = logging.getLogger("vtbench")

# -------------------------------------------------------------------------------------------------- the run


def result_path(out: str | os.PathLike, reference: Any, name: str, resize: str = "clean") -> Path:
    """``results.run_dir(out, reference, name, "generation")/result.json`` (a subfolder, so a ``vtbench run`` of a
    tokenizer of the same name on the same data keeps its own ``result.json``); ``generation-adm/`` for the ADM
    resize, whose values are other numbers. ``reference``: its description (``id`` and ``root``/``path``)."""
    folder = "generation" + RESIZE_SUFFIX[check_resize_mode(resize)].replace("@", "-")
    return run_dir(out, reference, name, folder) / RESULT_FILE


def gfid_run(samples_spec: str, ref_spec: str, *, name: str | None = None, out: str | os.PathLike = "results",
             tokenizer: str | None = None, weights: str | None = None, resolution: int | None = None,
             limit: int | None = None, seed: int = 0, batch_size: int = 32, device: str | torch.device = "cpu",
             inception_path: str | None = None, nearest_k: int = NEAREST_K, progress: bool = False,
             ref_limit: int | None = None, trust_checkpoint: bool = False,
             allow_size_mismatch: bool = False, resize: str = "clean", force: bool = False) -> dict[str, Any]:
    """Score ``samples_spec`` against ``ref_spec`` and write the result record (``result_path``); returns it.

    ``name``: the row name (default: the tokenizer of a token file, else the samples' file or folder name);
    ``limit``: the first N samples; ``ref_limit``: a seeded subset of the reference images (a dataset's ids, an
    npz's ``arr_0`` rows); ``resolution``: a dataset reference's crop size (None: the samples' size when square,
    else 256); ``trust_checkpoint``: passed to ``build_tokenizer`` as ``trust``. Samples and reference images of
    different sizes raise ``SizeMismatchError`` unless ``allow_size_mismatch`` (then every value warns).
    ``resize``: ``"clean"`` (clean-fid) or ``"tf-bilinear"`` (ADM's evaluator), for samples and reference alike.
    Runs through the evaluation core: an interrupted run resumes, a complete one with the same fingerprint is
    returned as it is unless ``force``; under ``torchrun`` each rank scores its shard of the samples (reading or
    decoding only those) and rank 0 writes the record.
    """
    from vtbench.config import load_protocol

    if ref_limit is not None and ref_limit < 1:
        raise ValueError(f"ref_limit must be a positive integer, got {ref_limit}")
    check_resize_mode(resize)
    started = datetime.now(timezone.utc).isoformat()
    protocol = load_protocol("generation")
    samples = iter_samples(samples_spec, tokenizer=tokenizer, batch_size=batch_size, limit=limit, device=device,
                           weights=weights, trust=trust_checkpoint)
    is_file = Path(ref_spec).suffix.lower() == ".npz"
    if is_file:
        used, source = None, "not used (npz reference)"
        if resolution is not None:
            log.warning("--resolution %s is ignored: %s is an .npz reference (its images are used as stored)",
                        resolution, ref_spec)
    elif resolution is not None:
        used, source = int(resolution), "--resolution"
    elif samples.size is not None and samples.size[0] == samples.size[1]:
        used, source = int(samples.size[0]), "samples"
    else:
        used, source = DEFAULT_RESOLUTION, "default"
    size_warning = check_sizes(samples, ref_spec, used or DEFAULT_RESOLUTION, allow_size_mismatch=allow_size_mismatch)
    if size_warning:
        log.warning("%s", size_warning)
    t0 = time.perf_counter()
    # under torchrun every rank computes its shard of the reference statistics (rank 0 caches them)
    reference = open_reference(ref_spec, resolution=used or DEFAULT_RESOLUTION, limit=ref_limit, seed=seed,
                               batch_size=batch_size, device=device, inception_path=inception_path,
                               progress=progress, resize=resize)
    t1 = time.perf_counter()
    extractor = load_inception(inception_path, device).with_resize(resize)
    tok = samples.tokenizer
    if name is None:
        name = tok.name if tok is not None else (Path(samples_spec).stem or Path(samples_spec).resolve().name)
    if tok is not None:
        tok_section = {**tok.card.to_dict(), **tok.provenance(), "name": name}
    else:
        tok_section = {"name": name, "family": name.split(".")[0], "kind": "samples", "reference": False}
    dataset = {"id": reference.id, **reference.description}
    run_section = {"seed": seed, "batch_size": batch_size, "nearest_k": nearest_k, "resolution": used,
                   "resolution_source": source, "resize": resize, "limit": limit, "ref_limit": ref_limit,
                   "trust_checkpoint": bool(trust_checkpoint), "allow_size_mismatch": bool(allow_size_mismatch),
                   "size_warning": size_warning, "reference_spec": str(ref_spec), "samples_spec": str(samples_spec)}
    # what the numbers depend on: the samples (content), the reference, the extractor and the settings
    key = fingerprint(samples.provenance.get("sha256") or samples.provenance, dataset, extractor.id,
                      protocol_section(protocol), {k: v for k, v in run_section.items() if k != "batch_size"},
                      tok_section.get("weights_sha256"))
    source_ = SampleSource(samples, extractor.device)
    source_.timings["reference_s"] = t1 - t0

    def record(outcome: Outcome) -> dict[str, Any]:
        sizes = samples.provenance.get("sizes") or []
        mixed = (f"the samples have {len(sizes)} image sizes ({', '.join(f'{h}x{w}' for h, w in sizes)}); the size "
                 "check used the first one's") if len(sizes) > 1 else None
        values = outcome.values
        if mixed:
            values = {k: dataclasses.replace(v, extra={**v.extra, "warning": _join_warnings(v.extra.get("warning"),
                                                                                             mixed)})
                      for k, v in values.items()}
        return new_record(
            created=started, finished=outcome.finished, environment=environment(str(device)),
            tokenizer=tok_section,
            # n_requested / n_used count samples (leaderboards and compare read them); the reference's own count
            # is n_reference, its subset ref_limit (+ the dataset's selection)
            dataset={**dataset, "n_requested": limit, "n_used": outcome.n_used, "ref_limit": ref_limit},
            protocol=protocol_section(protocol),
            metrics={k: v.to_dict() for k, v in values.items()},
            timings=outcome.timings,
            samples={**samples.provenance, "n_requested": limit, "n": outcome.n_used},
            extractor=extractor.describe(),
            run={**run_section, "processes": dist.world()},
        )

    metric = generation_metric(reference, extractor, nearest_k=nearest_k, warning=size_warning)
    folder = result_path(out, dataset, name, resize).parent
    return Evaluation(source=source_, metrics={"generation": metric}, fingerprint=key, dir=folder,
                      label=f"{name} samples", total=len(samples), record=record, seed=seed, force=force,
                      progress=progress).run()
