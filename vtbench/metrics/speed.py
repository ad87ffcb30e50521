"""Throughput and memory: images per second through ``encode`` and ``decode`` (device-synchronised timings
taken by the runner around each call) and each tokenizer's own peak memory (``extra.measure`` and ``extra.device``
say how and where):

- CUDA: ``torch.cuda.max_memory_allocated`` with the peak statistics reset when the tokenizer's run starts
  (``memory_baseline``, called by the runner before it builds the tokenizer), so weights and activations of this
  tokenizer only;
- CPU (Linux): the growth of the process's peak resident set over the RSS at that baseline. The kernel's peak
  (``VmHWM``) is reset at the baseline through ``/proc/self/clear_refs`` so an earlier, larger tokenizer does not
  mask this one; where that reset is not allowed, the growth of the lifetime peak is reported and labelled so;
- elsewhere: the process's lifetime peak RSS (labelled ``process_peak_rss``).
"""

from __future__ import annotations

import math
import resource
import sys

import torch

from vtbench.metrics.base import Batch, Metric, MetricContext, MetricValue, Output

_BASELINE: dict[str, float | str] = {}


def _status_kb(field: str) -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def memory_baseline(device: torch.device) -> None:
    """Start a tokenizer's memory measurement: reset the CUDA peak statistics, or on Linux the kernel's peak RSS
    (``VmHWM``, via ``/proc/self/clear_refs``), and remember the current RSS."""
    _BASELINE.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    rss = _status_kb("VmRSS")
    if rss is None:
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _BASELINE.update(rss_kb=rss, kind="cpu_peak_rss_growth")
    except OSError:
        _BASELINE.update(rss_kb=rss, kind="cpu_lifetime_peak_rss_growth")


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    hwm = _status_kb("VmHWM")
    if hwm is not None and "rss_kb" in _BASELINE:
        return max(0.0, hwm - float(_BASELINE["rss_kb"])) / 1024, str(_BASELINE["kind"])
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
