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
