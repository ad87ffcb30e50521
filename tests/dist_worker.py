"""The body of one rank in tests/test_distributed.py (a module of its own: spawned processes import it)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def evaluate(rank: int, world: int, init: str, out: str, tokenizers: list[str], metrics: str, limit: int,
             stop: int | None) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from vtbench.runner import RunConfig, run
    cfg = RunConfig(data="embedded/photos", metrics=metrics.split(","), limit=limit, batch_size=2, out=Path(out),
                    device="cpu", progress=False, stop_after_batches=stop, workers=0)
    try:
        run(tokenizers, cfg)
    except KeyboardInterrupt:
        pass
    finally:
        torch.distributed.destroy_process_group()


def local_evaluation(rank: int, world: int, init: str, out: str) -> None:
    """Rank 0 scores samples alone (``Evaluation(local=True)``, as the AR probe's rank 0 does) while rank 1 waits
    at a barrier: a collective inside the core would mismatch the barrier and fail within the short timeout."""
    from datetime import timedelta

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                                         timeout=timedelta(seconds=30))
    try:
        if rank == 0:
            from vtbench.evaluation import Evaluation
            from vtbench.gfid.scoring import SampleSource
            from vtbench.metrics.base import Metric, Output

            class PixelSum(Metric):
                name = "pixel_sum"
                outputs = (Output("pixel_sum", "pixel sum"),)

                def __init__(self) -> None:
                    super().__init__()
                    self.add_state("total", torch.zeros((), dtype=torch.float64), "sum")
                    self.add_state("seen", torch.zeros(0), "cat")

                def update(self, batch):
                    self.total += batch.reconstruction.double().sum()
                    self.seen.append(batch.index.float())
                    return {}

                def compute(self):
                    n = sum(len(s) for s in self.seen) if isinstance(self.seen, list) else len(self.seen)
                    return {"pixel_sum": self.value("pixel_sum", float(self.total), n)}

            g = torch.Generator().manual_seed(0)
            samples = [torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=g) for _ in range(3)]
            got = Evaluation(source=SampleSource(samples), metrics={"pixel_sum": PixelSum()}, fingerprint="t",
                             progress=False, local=True).run()
            v = got.values["pixel_sum"]
            Path(out).write_text(f"{v.value} {v.n} {float(sum(s.double().sum() for s in samples))}")
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def inception_job(rank: int, world: int, init: str, job: str, samples: str, ref: str, out: str, cache: str) -> None:
    """``vtbench fid`` (``fid_between``) or ``vtbench gfid`` (``gfid_run``) on this rank's shard; rank 0 writes
    the values as JSON to ``out/values.json``."""
    import json
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), VTBENCH_CACHE=cache)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    import vtbench.gfid.samples as sample_readers
    reads: list[str] = []
    real = sample_readers.load_image

    def counting(path, *a, **k):  # which sample files this rank decodes
        reads.append(str(path))
        return real(path, *a, **k)
    sample_readers.load_image = counting
    try:
        values = run_inception_job(job, samples, ref, out)
        (Path(out) / f"reads.r{rank}.json").write_text(json.dumps(reads))
        if rank == 0:
            (Path(out) / "values.json").write_text(json.dumps(values))
    finally:
        torch.distributed.destroy_process_group()


def run_inception_job(job: str, samples: str, ref: str, out: str) -> dict:
    if job == "fid":
        from vtbench.fid_tool import fid_between
        res = fid_between(samples, ref, batch_size=2)
        return {"fid": res["fid"], "n_a": res["n_a"], "n_b": res["n_b"]}
    from vtbench.gfid import gfid_run
    rec = gfid_run(samples, ref, resolution=64, out=out, batch_size=2)
    return {"n": rec["dataset"]["n_used"], "processes": rec["run"].get("processes"),
            **{k: v["value"] for k, v in rec["metrics"].items()}}
