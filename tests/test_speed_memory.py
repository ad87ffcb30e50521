"""Peak memory is measured per tokenizer: a baseline at each tokenizer's start (CUDA peak stats reset; on Linux
the kernel's peak RSS reset through /proc/self/clear_refs) and the growth over it."""

from __future__ import annotations

import sys

import pytest
import torch

from vtbench.metrics.speed import memory_baseline, peak_memory_mb

CPU = torch.device("cpu")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM / clear_refs are Linux's")
def test_cpu_peak_is_the_growth_since_the_baseline_and_resets():
    memory_baseline(CPU)
    before, kind = peak_memory_mb(CPU)
    assert kind in ("cpu_peak_rss_growth", "cpu_lifetime_peak_rss_growth") and before < 50
    x = torch.ones(40_000_000)  # 160 MB touched
    grown, _ = peak_memory_mb(CPU)
    assert 120 < grown - before < 400
    del x
    memory_baseline(CPU)  # the next tokenizer starts from zero, not from this one's peak
    after, kind = peak_memory_mb(CPU)
    if kind == "cpu_peak_rss_growth":
        assert after < 50
