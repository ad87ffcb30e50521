"""Multi-process evaluation with ``torch.distributed`` (``torchrun``): NCCL on GPUs, gloo on CPU.

``torchrun --nproc_per_node=N -m vtbench.cli run ...`` starts N copies of the command; ``init_from_env`` joins them
into one process group (from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR``), each rank
evaluates its shard of the items (``shard``: item ``i`` belongs to rank ``i % world``, so uneven counts differ by
at most one and no item is counted twice or lost), metric states are reduced by torchmetrics as each declares
(``sum`` / ``cat`` / ``max``), the per-sample rows are gathered, and rank 0 writes results and caches. With one
process (no torchrun) every function here is a no-op.
"""

from __future__ import annotations

import logging
import os
from typing import Any, TypeVar

import torch

log = logging.getLogger("vtbench")
T = TypeVar("T")


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if is_initialized() else 0


def world() -> int:
    return torch.distributed.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True when started by torchrun (or another launcher setting ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> torch.device | None:
    """Join the process group torchrun describes (once); returns this rank's device for ``device`` ("auto": its
    local GPU under NCCL, else the CPU), or None when not launched by torchrun."""
    if not launched():
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not is_initialized():
        backend = "nccl" if want_cuda else "gloo"
        if want_cuda:
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend=backend)
        log.info("rank %d of %d joined (%s)", rank(), world(), backend)
    return torch.device("cuda", local) if want_cuda else torch.device("cpu")


def shard(ids: list[str]) -> set[str]:
    """The ids this rank evaluates: positions ``rank, rank + world, ...`` of ``ids`` (dataset order)."""
    r, w = rank(), world()
    return {sid for i, sid in enumerate(ids) if i % w == r}


def gather_objects(obj: T) -> list[T]:
    """``obj`` of every rank, in rank order, on every rank (pickled; for rows, ids and small records)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_initialized():
        torch.distributed.barrier()


def progress_name(base: str = "progress.pt") -> str:
    """This rank's resume file: ``progress.pt`` for one process, ``progress.r<rank>-of-<world>.pt`` for several
    (a run resumes with the same process count; another count starts its shard over)."""
    if world() == 1:
        return base
    stem, _, ext = base.rpartition(".")
    return f"{stem}.r{rank()}-of-{world()}.{ext}"


__all__ = ["barrier", "broadcast_object", "gather_objects", "init_from_env", "is_initialized", "is_main",
           "launched", "progress_name", "rank", "shard", "world"]
