"""Multi-process evaluation on CPU with gloo: the numbers do not depend on the process count.

The fast tests spawn 2 and 3 ranks in-process (``torch.multiprocessing``, a file rendezvous) on a few embedded
images, including an image count not divisible by the process count, and compare every metric and the per-sample
table with one process; a killed multi-process run resumes. The slow test runs the real command line,
``torchrun --nproc_per_node=N -m vtbench.cli run``, for N = 1, 2, 3 on the default run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dist_worker
import pandas as pd
import pytest
import torch.multiprocessing as mp

from vtbench.distributed import progress_name, shard
from vtbench.results import iter_records

TOKENIZERS = ["identity.none", "jpeg.q50", "tiny.vq"]
METRICS = "psnr,ssim,compression,rfid,detail"


def _spawn(world: int, out: Path, limit: int, stop: int | None = None) -> None:
    if world == 1:
        from vtbench.runner import RunConfig, run
        run(TOKENIZERS, RunConfig(data="embedded/photos", metrics=METRICS.split(","), limit=limit, batch_size=2,
                                  out=out, device="cpu", progress=False, workers=0))
        return
    import uuid
    init = f"file://{out.parent / f'{out.name}.{uuid.uuid4().hex}.rendezvous'}"  # a fresh file per process group
    # spawned, not forked: a fork of a process whose torch thread pools are running can deadlock
    mp.start_processes(dist_worker.evaluate, args=(world, init, str(out), TOKENIZERS, METRICS, limit, stop),
                       nprocs=world, start_method="spawn")


def _values(out: Path) -> dict[tuple[str, str], float | None]:
    return {(rec["tokenizer"]["name"], k): v["value"] for _, rec in iter_records(out)
            for k, v in rec["metrics"].items() if k not in ("encode_images_per_s", "decode_images_per_s",
                                                              "peak_memory_mb")}


def _rows(out: Path, tok: str) -> pd.DataFrame:
    path = next(p for p, rec in iter_records(out) if rec["tokenizer"]["name"] == tok).parent / "samples.csv"
    return pd.read_csv(path)


def test_shards_cover_every_item_once():
    ids = [f"i{k}" for k in range(7)]
    for world in (1, 2, 3, 8):
        parts = []
        for r in range(world):
            import vtbench.distributed as d
            d_rank, d_world = d.rank, d.world
            d.rank, d.world = (lambda r=r: r), (lambda w=world: w)
            try:
                parts.append(shard(ids))
            finally:
                d.rank, d.world = d_rank, d_world
        assert sorted(i for p in parts for i in p) == ids
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("world", [2, 3])
def test_process_count_does_not_change_any_number(tmp_path, world):
    limit = 5  # not divisible by 2 or 3
    _spawn(1, tmp_path / "one", limit)
    _spawn(world, tmp_path / "many", limit)
    one, many = _values(tmp_path / "one"), _values(tmp_path / "many")
    assert one.keys() == many.keys() and len(one) > 20
    for key, v in one.items():
        if v is None:  # null with a reason: null in both
            assert many[key] is None, key
        elif key[0] in ("identity.none", "jpeg.q50") and key[1] not in ("rfid",):  # codecs: exact (per-image sums)
            assert many[key] == pytest.approx(v, rel=1e-12, abs=0), key
        elif key[0] == "tiny.vq" or key[1] == "rfid":
            # the ranks batch other images together and float32 convolutions round differently by batch: a learned
            # tokenizer's uint8 pixels can flip, Inception features move at 1e-7, and a 5-image Frechet distance
            # (rank-deficient covariance) amplifies both
            assert many[key] == pytest.approx(v, rel=1e-4, abs=1e-9), key
        else:  # set statistics of codecs: float64 sums in another order
            assert many[key] == pytest.approx(v, rel=1e-9, abs=1e-9), key
    for tok in TOKENIZERS:
        a, b = _rows(tmp_path / "one", tok), _rows(tmp_path / "many", tok)
        assert list(a["id"]) == list(b["id"]) and len(a) == limit
        pd.testing.assert_frame_equal(a, b, rtol=1e-4 if tok == "tiny.vq" else 1e-9)
    rec = next(r for _, r in iter_records(tmp_path / "many"))
    assert rec["run"]["processes"] == world and rec["dataset"]["n_used"] == limit


def test_a_killed_multi_process_run_resumes(tmp_path):
    limit = 6
    _spawn(2, tmp_path / "run", limit, stop=1)  # every rank stops after its first batch, progress saved
    folder = tmp_path / "run" / "embedded-photos" / "identity.none" / "reconstruction"
    assert sorted(p.name for p in folder.glob("progress*.pt")) == ["progress.r0-of-2.pt", "progress.r1-of-2.pt"]
    _spawn(2, tmp_path / "run", limit)
    assert not list(folder.glob("progress*.pt"))
    _spawn(2, tmp_path / "ref", limit)  # uninterrupted, same process count: the same numbers
    resumed, ref = _values(tmp_path / "run"), _values(tmp_path / "ref")
    assert resumed.keys() == ref.keys()
    for key, v in ref.items():
        assert resumed[key] == v if v is None else resumed[key] == pytest.approx(v, rel=1e-9, abs=1e-12), key


def test_progress_file_names():
    assert progress_name() == "progress.pt"


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2, 3])
def test_torchrun_command_line(tmp_path, world):
    """The README's command: torchrun --nproc_per_node=N -m vtbench.cli run (default tokenizers, embedded data)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--master_port",
           str(29500 + world), "-m", "vtbench.cli", "run", "--limit", "5", "--metrics", METRICS, "--out", str(out),
           "--json", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    json.loads(r.stdout)  # rank 0 alone prints one JSON object
    ref = tmp_path / "ref"
    single = subprocess.run([sys.executable, "-m", "vtbench.cli", "run", "--limit", "5", "--metrics", METRICS,
                             "--out", str(ref), "--json", "--device", "cpu"], capture_output=True, text=True,
                            timeout=1200)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = _values(out), _values(ref)
    assert a.keys() == b.keys()
    for k in a:
        if b[k] is None:  # null with a reason in both (e.g. a metric without its weights)
            assert a[k] is None, k
        elif k[0].startswith("tiny.") or k[1] == "rfid":  # learned tokenizers and rFID: see the test above
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-9), k
        else:  # codecs: float64 sums in another order
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-9), k


def test_a_local_evaluation_on_one_rank_makes_no_collective(tmp_path):
    """The AR probe's rank 0 scores its samples alone under torchrun: ``Evaluation(local=True)`` neither shards,
    gathers nor syncs metric states, so the other ranks (waiting at a barrier) are not needed and the value is
    the whole sum (the slow ``test_probe_torchrun_two_processes`` runs the real command)."""
    import uuid
    init = f"file://{tmp_path / uuid.uuid4().hex}.rendezvous"
    out = tmp_path / "value.txt"
    mp.start_processes(dist_worker.local_evaluation, args=(2, init, str(out)), nprocs=2, start_method="spawn")
    value, n, direct = out.read_text().split()
    assert float(value) == float(direct) and int(n) == 6


@pytest.mark.parametrize("job", ["fid", "gfid"])
def test_fid_and_gfid_shard_across_processes(tmp_path, job):
    """``vtbench fid`` and ``vtbench gfid`` under torchrun: 2 gloo ranks on 7 samples (not divisible) give the
    numbers of one process. Inception batches other images on each rank (float32 rounding by batch), and 7-image
    Frechet distances amplify that, hence rel 1e-4 (as rFID above); the sample count is exact."""
    import json
    import uuid

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for name, n in (("samples", 7), ("ref", 6)):
        (tmp_path / name).mkdir()
        for i in range(n):  # smooth 64x64 colour fields
            small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((64, 64), Image.BICUBIC).save(tmp_path / name / f"{i:02d}.png")
    samples, ref, cache = str(tmp_path / "samples"), str(tmp_path / "ref"), str(tmp_path / "cache")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    import os
    old = os.environ.get("VTBENCH_CACHE")
    os.environ["VTBENCH_CACHE"] = str(tmp_path / "cache-one")
    try:
        one = dist_worker.run_inception_job(job, samples, ref, str(tmp_path / "one"))
    finally:
        os.environ.pop("VTBENCH_CACHE") if old is None else os.environ.__setitem__("VTBENCH_CACHE", old)
    init = f"file://{tmp_path / uuid.uuid4().hex}.rendezvous"
    mp.start_processes(dist_worker.inception_job, args=(2, init, job, samples, ref, str(tmp_path / "two"), cache),
                       nprocs=2, start_method="spawn")
    two = json.loads((tmp_path / "two" / "values.json").read_text())
    assert one.keys() == two.keys()
    for folder in (samples, ref) if job == "fid" else (samples,):  # each rank decoded its shard, not everything
        reads = [[p for p in json.loads((tmp_path / "two" / f"reads.r{r}.json").read_text())
                  if str(Path(p).parent) == folder] for r in (0, 1)]
        n = len(list(Path(folder).iterdir()))
        # rank 0: positions 0, 2, ...; rank 1: 1, 3, ... plus the first file, which opening the folder reads
        assert [len(set(r)) for r in reads] == [(n + 1) // 2, n // 2 + 1], reads
    if job == "fid":
        assert (two["n_a"], two["n_b"]) == (one["n_a"], one["n_b"]) == (7, 6)
    else:
        assert two["n"] == one["n"] == 7 and (one["processes"], two["processes"]) == (1, 2)
        assert list((tmp_path / "cache").rglob("*.npz")), "rank 0 cached the reference statistics"
    for k, v in one.items():
        if k in ("n", "n_a", "n_b", "processes"):
            continue
        assert (two[k] is None) if v is None else two[k] == pytest.approx(v, rel=1e-4), k
    assert one["fid" if job == "fid" else "gfid"] is not None
