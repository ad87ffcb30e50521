"""Throughput and memory: images per second through ``encode`` and ``decode`` (device-synchronised timings
taken by the runner around each call) and peak memory (CUDA: peak allocated bytes during the run; CPU: the
process's peak resident set size, which also counts everything loaded before — labelled in ``extra``)."""

from __future__ import annotations

import math
import resource
import sys

import torch

from vtbench.metrics.base import Batch, Metric, MetricContext, MetricValue, Output


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_peak_rss"


class Speed(Metric):
    name = "speed"
    needs = frozenset({"timings"})
    outputs = (
        Output("encode_images_per_s", "Encode throughput", "img/s", True),
        Output("decode_images_per_s", "Decode throughput", "img/s", True),
        Output("peak_memory_mb", "Peak memory", "MiB", False),
    )

    @classmethod
    def from_context(cls, ctx: MetricContext) -> "Speed":
        return cls(device=ctx.device)

    def __init__(self, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.add_state("n", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("encode_s", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("decode_s", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("peak_mb", torch.zeros((), dtype=torch.float64), "max")
        self.to(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.n += batch.size
        self.encode_s += batch.encode_seconds
        self.decode_s += batch.decode_seconds
        self.peak_mb = torch.maximum(self.peak_mb, torch.tensor(peak_memory_mb(self.device)[0], dtype=torch.float64))
        return {}

    def compute(self) -> dict[str, MetricValue]:
        n = int(self.n)
        kind = peak_memory_mb(self.device)[1]
        out = {}
        for key, secs in (("encode_images_per_s", float(self.encode_s)), ("decode_images_per_s", float(self.decode_s))):
            if not math.isfinite(secs):  # n / inf would report 0 img/s
                why = f"a measured time was not finite ({secs}): throughput is undefined"
            else:
                why = None if secs > 0 else "no time measured"
            out[key] = self.value(key, None if why else n / secs, n, why, seconds=secs, device=str(self.device))
        out["peak_memory_mb"] = self.value("peak_memory_mb", float(self.peak_mb) if n else None, n,
                                           None if n else "no images", measure=kind)
        return out
