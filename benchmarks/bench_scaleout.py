"""Benchmark: scale-out and throughput of ``vtbench run`` (issue 14). Ratios measured in one run, no timed tests.

Sections (``--sections``, default all), each a ratio or a fraction measured in this one invocation:

- ``busy``: the default run (every default-run tokenizer, the protocol's metrics, the embedded data, a fresh
  reference cache) with its wall time split into parts by wrapping the runner's functions in this process:
  tokenizer ``encode``/``decode`` (the runner's own synchronised timings), metric updates
  (``Evaluation._update``: Inception, SSIM, LPIPS, ... on each batch), extra decodes for pFID and the final
  ``compute`` (the runner's ``metrics_s``), against what is not a forward pass: data loading and preprocessing,
  quantisation and thumbnails, building tokenizers and metrics, progress checkpoints, writing results.
  Busy = encode + decode + metric updates + metrics_s (goal: >= 85% of the wall time).
- ``workers``: images/s of the evaluation loop with 0, the machine's default (``runner.default_workers``) and 2
  DataLoader workers on a synthetic folder of ``--images`` PNGs (ImageNet-like 500x375, so the ADM preprocessing
  resizes), ``jpeg.q50`` with psnr, ssim, compression (cheap metrics: the loader's share is largest), alternated,
  best of ``--repeat``.
- ``processes``: ``torchrun --nproc_per_node 1`` vs ``2`` (gloo on CPU) on the same folder, ``jpeg.q50`` and
  ``tiny.vq`` with the protocol's metrics, each with a fresh reference cache; wall time of the whole command and
  every metric compared between the two.
- ``memory``: each tokenizer's peak memory (the ``speed`` metric's ``peak_memory_mb``) and the process's peak RSS
  (``VmHWM``) at N = 200 and N = 2,000 images of a synthetic 256x256 folder, each in a fresh interpreter
  (``jpeg.q50``, ``identity.none``; psnr, ssim, compression, speed). Goal: flat within 1.1x.
- ``cache``: the reference side of rFID (Inception on the originals) with a cold and a warm statistics cache:
  ``jpeg.q50`` with a fresh cache, then ``webp.q50`` (a second tokenizer on the same data) and ``jpeg.q50`` again
  (forced), seconds of Inception on originals and of the whole tokenizer run, as ratios.

Prints a table per section and writes ``benchmarks/results/scaleout.json`` (sections run now replace their entry;
the others are kept). Usage::

    python benchmarks/bench_scaleout.py [--sections busy workers processes memory cache] [--images 200]
        [--memory-n 200 2000] [--limit N] [--repeat 2]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scaleout.json"
SECTIONS = ("busy", "workers", "processes", "memory", "cache")


# -- helpers -------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """The machine in words: CPU model and core count (lscpu), torch version and threads."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": cores, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "date": date.today().isoformat()}


def synthetic_folder(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> Path:
    """``n`` deterministic RGB PNGs of ``size`` (width, height): smooth gradients, a few shapes and mild noise, so
    PNG decoding and the codecs do realistic work (pure noise would be unrealistically slow to decode)."""
    root.mkdir(parents=True, exist_ok=True)
    if len(list(root.glob("*.png"))) == n:
        return root
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        a = rng.uniform(0, 2 * np.pi, 3)
        f = rng.uniform(0.005, 0.05, 3)
        img = np.stack([127 + 100 * np.sin(f[c] * (xx * np.cos(a[c]) + yy * np.sin(a[c]))) for c in range(3)], -1)
        for _ in range(4):  # rectangles of flat colour: edges for the codecs
            x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
            img[y0:y0 + rng.integers(8, h // 2), x0:x0 + rng.integers(8, w // 2)] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 6, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB").save(root / f"img_{i:05d}.png")
    return root


class Clock:
    """Seconds spent in wrapped functions, per part and per tokenizer (the label is the tokenizer being built or
    run); nested parts are kept apart by the caller's arithmetic, not here."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.label = "-"
        self._undo: list[tuple[Any, str, Any]] = []

    def add(self, part: str, seconds: float) -> None:
        self.parts[self.label][part] += seconds

    def wrap(self, owner: Any, attr: str, part: str, label_from: Callable[..., str] | None = None) -> None:
        orig = getattr(owner, attr)

        @functools.wraps(orig)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if label_from is not None:
                self.label = label_from(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                self.add(part, time.perf_counter() - t0)

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, orig))

    def wrap_generator(self, owner: Any, attr: str, part: str) -> None:
        """Time each ``next()`` of a generator method (the time the consumer waits for the next item)."""
        orig = getattr(owner, attr)

        @functools.wraps(orig)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            it = orig(*args, **kwargs)
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    self.add(part, time.perf_counter() - t0)
                    return
                self.add(part, time.perf_counter() - t0)
                yield item

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, orig))

    def undo(self) -> None:
        while self._undo:
            owner, attr, orig = self._undo.pop()
            setattr(owner, attr, orig)


@contextlib.contextmanager
def instrumented() -> Iterator[Clock]:
    import vtbench.runner as runner
    from vtbench.evaluation import Evaluation
    clock = Clock()
    clock.wrap(runner, "build_tokenizer", "build_tokenizer", label_from=lambda name, *a, **k: name)
    clock.wrap(runner, "build_metrics", "build_metrics")
    clock.wrap(runner.TokenizerRun, "__init__", "init")
    clock.wrap(runner.TokenizerRun, "run", "evaluation")
    clock.wrap_generator(runner.TokenizerRun, "batches", "batches")
    clock.wrap(runner.TokenizerRun, "_process", "process")
    clock.wrap(runner.TokenizerRun, "_perturbed", "extra_decode")
    clock.wrap(Evaluation, "_update", "metric_updates")
    clock.wrap(Evaluation, "save_progress", "checkpoints")
    clock.wrap(Evaluation, "finish", "finish")
    try:
        yield clock
    finally:
        clock.undo()


@contextlib.contextmanager
def fresh_cache(path: Path) -> Iterator[Path]:
    """Point VTBENCH_CACHE at ``path`` (the reference statistics start cold) for the duration."""
    old = os.environ.get("VTBENCH_CACHE")
    os.environ["VTBENCH_CACHE"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("VTBENCH_CACHE", None)
        else:
            os.environ["VTBENCH_CACHE"] = old


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


# -- sections ------------------------------------------------------------------------------------------------------
def section_busy(tmp: Path, limit: int | None) -> dict[str, Any]:
    from vtbench.runner import RunConfig, default_workers, run
    from vtbench.tokenizers import list_tokenizers
    names = list_tokenizers(default_run=True)
    with fresh_cache(tmp / "cache-busy"), instrumented() as clock:
        t0 = time.perf_counter()
        records = run(names, RunConfig(data="embedded", out=tmp / "busy", limit=limit, progress=False, force=True))
        wall = time.perf_counter() - t0
    per_tok = []
    total: dict[str, float] = defaultdict(float)
    for rec in records:
        name, t = rec["tokenizer"]["name"], rec["timings"]
        c = clock.parts[name]
        compute = t["metrics_s"] - c["extra_decode"]
        parts = {
            "encode": t["encode_s"], "decode": t["decode_s"], "metric_updates": c["metric_updates"],
            "extra_decode": c["extra_decode"], "metric_compute": compute,
            "loading_preprocessing": c["batches"] - c["process"],
            "quantise_thumbnails": c["process"] - t["encode_s"] - t["decode_s"] - c["extra_decode"],
            "build_tokenizer": c["build_tokenizer"], "build_metrics": c["build_metrics"],
            "checkpoints": c["checkpoints"], "write_results": c["finish"] - compute,
        }
        tok_wall = c["build_tokenizer"] + c["init"] + c["evaluation"]
        parts["other"] = tok_wall - sum(parts.values())
        busy = sum(parts[k] for k in ("encode", "decode", "metric_updates", "extra_decode", "metric_compute"))
        per_tok.append({"tokenizer": name, "images": rec["dataset"]["n_used"], "wall_s": round(tok_wall, 3),
                        "busy_fraction": round(busy / tok_wall, 4),
                        "parts_s": {k: round(v, 3) for k, v in parts.items()}})
        for k, v in parts.items():
            total[k] += v
    outside = wall - sum(p["wall_s"] for p in per_tok)  # dataset opening, protocol, imports done lazily in run()
    total["outside_tokenizers"] = outside
    busy = sum(total[k] for k in ("encode", "decode", "metric_updates", "extra_decode", "metric_compute"))
    images = sum(p["images"] for p in per_tok)
    out = {"tokenizers": len(names), "images": images, "metrics": records[0]["run"]["metrics_selected"],
           "workers": default_workers(), "wall_s": round(wall, 2), "images_per_s": round(images / wall, 2),
           "busy_fraction": round(busy / wall, 4), "goal": ">= 0.85",
           "fractions": {k: round(v / wall, 4) for k, v in sorted(total.items(), key=lambda kv: -kv[1])},
           "per_tokenizer": per_tok}
    print(f"\n[busy] default run: {len(names)} tokenizers x {images // max(len(names), 1)} images, {wall:.1f} s "
          f"wall, busy {busy / wall:.1%} (goal >= 85%)")
    print(table(["part", "s", "fraction"],
                [[k, f"{v:.2f}", f"{v / wall:.1%}"] for k, v in sorted(total.items(), key=lambda kv: -kv[1])]))
    print(table(["tokenizer", "wall s", "busy"], [[p["tokenizer"], p["wall_s"], f"{p['busy_fraction']:.1%}"]
                                                  for p in per_tok]))
    return out


def section_workers(tmp: Path, n_images: int, repeat: int) -> dict[str, Any]:
    from vtbench.runner import RunConfig, default_workers, run
    folder = synthetic_folder(tmp / f"folder-{n_images}-500x375", n_images, (500, 375))
    default = default_workers()
    counts = sorted({0, default, 2})
    metrics = ["psnr", "ssim", "compression"]
    with fresh_cache(tmp / "cache-workers"):
        run(["jpeg.q50"], RunConfig(data=str(folder), metrics=metrics, limit=16, out=tmp / "warm", progress=False,
                                    force=True, workers=0))  # content digests and page cache warm for every count
        best: dict[int, float] = {}
        for _ in range(repeat):
            for w in counts:
                with instrumented() as clock:
                    (rec,) = run(["jpeg.q50"], RunConfig(data=str(folder), metrics=metrics, out=tmp / f"w{w}",
                                                         progress=False, force=True, workers=w))
                secs = clock.parts["jpeg.q50"]["evaluation"]
                best[w] = min(best.get(w, float("inf")), secs)
    n = rec["dataset"]["n_used"]
    rows = {str(w): {"seconds": round(best[w], 3), "images_per_s": round(n / best[w], 2),
                     "speedup_over_0": round(best[0] / best[w], 3)} for w in counts}
    out = {"images": n, "size": "500x375 PNG -> adm-center-crop 256", "tokenizer": "jpeg.q50", "metrics": metrics,
           "default_workers": default, "repeat": repeat, "by_workers": rows}
    print(f"\n[workers] {n} synthetic 500x375 PNGs, jpeg.q50 + {','.join(metrics)}, best of {repeat} "
          f"(default workers here: {default})")
    print(table(["workers", "s", "images/s", "vs 0"],
                [[f"{w}{' (default)' if w == default else ''}", r["seconds"], r["images_per_s"],
                  f"{r['speedup_over_0']:.2f}x"] for w, r in zip(counts, rows.values())]))
    return out


def _metric_values(out: Path) -> dict[str, float | None]:
    from vtbench.results import iter_records
    skip = ("encode_images_per_s", "decode_images_per_s", "peak_memory_mb")
    return {f"{rec['tokenizer']['name']}/{k}": v["value"] for _, rec in iter_records(out)
            for k, v in rec["metrics"].items() if k not in skip}


def section_processes(tmp: Path, n_images: int, repeat: int) -> dict[str, Any]:
    import resource
    folder = synthetic_folder(tmp / f"folder-{n_images}-500x375", n_images, (500, 375))
    tokenizers = ["jpeg.q50", "tiny.vq"]
    best: dict[int, dict[str, Any]] = {}
    for k in range(repeat):
        for world in ((1, 2) if k % 2 == 0 else (2, 1)):  # alternated: a change in the machine's load hits both
            out = tmp / f"procs-{world}"
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--master_port",
                   str(29600 + world), "-m", "vtbench.cli", "run", "--data", str(folder), "--out", str(out),
                   "--json", "--device", "cpu", "--force"]
            for t in tokenizers:
                cmd += ["-t", t]
            env = {**os.environ, "VTBENCH_CACHE": str(tmp / f"cache-procs-{world}-{k}"), "PYTHONPATH": str(ROOT)}
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if r.returncode != 0:
                raise RuntimeError(f"torchrun --nproc_per_node={world} failed (exit {r.returncode}):\n"
                                   f"{r.stderr[-3000:]}")
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(f"  torchrun x{world}, try {k + 1}: {wall:.1f} s wall, {cpu:.1f} CPU s", file=sys.stderr)
            if world not in best or wall < best[world]["wall_s"]:
                best[world] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "values": _metric_values(out)}
    images = n_images * len(tokenizers)
    a, b = best[1]["values"], best[2]["values"]
    diffs = {k: abs((a[k] or 0) - (b[k] or 0)) / max(abs(a[k] or 0), 1e-12) for k in a if a[k] is not None}
    out = {"images": n_images, "tokenizers": tokenizers, "metrics": "protocol default", "repeat": repeat,
           "threads": "1 process: torch's default threads; 2 processes: OMP_NUM_THREADS=1 each (torchrun's default)",
           "by_processes": {str(w): {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                                     "images_per_s": round(images / r["wall_s"], 2)} for w, r in best.items()},
           "speedup_2_over_1": round(best[1]["wall_s"] / best[2]["wall_s"], 3),
           "cpu_s_2_over_1": round(best[2]["cpu_s"] / best[1]["cpu_s"], 3),
           "same_metrics": sorted(a) == sorted(b) and all((a[k] is None) == (b[k] is None) for k in a),
           "max_relative_difference": max(diffs.values()) if diffs else 0.0,
           "worst_metric": max(diffs, key=diffs.get) if diffs else None}
    print(f"\n[processes] torchrun, gloo on CPU: {n_images} images x {len(tokenizers)} tokenizers, protocol metrics, "
          f"whole command, best of {repeat} alternated")
    print(table(["processes", "wall s", "CPU s", "images/s"],
                [[w, r["wall_s"], r["cpu_s"], out["by_processes"][str(w)]["images_per_s"]] for w, r in best.items()]))
    print(f"2 / 1 process speed-up {out['speedup_2_over_1']:.2f}x (CPU seconds 2 / 1: {out['cpu_s_2_over_1']:.2f}); "
          f"largest relative metric difference {out['max_relative_difference']:.2e} ({out['worst_metric']})")
    return out


MEMORY_DRIVER = """
import json, sys
from pathlib import Path
from vtbench.runner import RunConfig, run
folder, out, limit = sys.argv[1], Path(sys.argv[2]), (int(sys.argv[3]) or None)
recs = run(["identity.none", "jpeg.q50"], RunConfig(data=folder, metrics=["psnr", "ssim", "compression", "speed"],
           limit=limit, out=out, progress=False, force=True))
hwm = next(float(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"images": recs[0]["dataset"]["n_used"], "process_peak_rss_mb": hwm / 1024,
                  "tokenizers": {r["tokenizer"]["name"]: {"peak_memory_mb": r["metrics"]["peak_memory_mb"]["value"],
                                 "measure": r["metrics"]["peak_memory_mb"]["extra"]["measure"]} for r in recs}}))
"""


def section_memory(tmp: Path, ns: list[int]) -> dict[str, Any]:
    folder = synthetic_folder(tmp / f"folder-{max(ns)}-256", max(ns), (256, 256))
    runs = {}
    env = {**os.environ, "VTBENCH_CACHE": str(tmp / "cache-memory"), "PYTHONPATH": str(ROOT)}
    for n in ns:  # a fresh interpreter each: nothing left from another size
        r = subprocess.run([sys.executable, "-c", MEMORY_DRIVER, str(folder), str(tmp / f"mem-{n}"),
                            str(0 if n == max(ns) else n)], capture_output=True, text=True, env=env, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"memory run at N={n} failed:\n{r.stderr[-3000:]}")
        runs[n] = json.loads(r.stdout.strip().splitlines()[-1])
    lo, hi = min(ns), max(ns)
    ratios = {"process_peak_rss": round(runs[hi]["process_peak_rss_mb"] / runs[lo]["process_peak_rss_mb"], 3)}
    for tok in runs[lo]["tokenizers"]:
        a, b = runs[lo]["tokenizers"][tok]["peak_memory_mb"], runs[hi]["tokenizers"][tok]["peak_memory_mb"]
        ratios[tok] = round(b / a, 3) if a else None
    out = {"size": "256x256 PNG", "metrics": ["psnr", "ssim", "compression", "speed"],
           "by_n": {str(n): r for n, r in runs.items()}, f"ratio_{hi}_over_{lo}": ratios, "goal": "<= 1.1"}
    print("\n[memory] synthetic 256x256 folder; psnr, ssim, compression, speed; a fresh interpreter per N")
    rows = [["process peak RSS (MiB)", *(f"{runs[n]['process_peak_rss_mb']:.1f}" for n in ns),
             f"{ratios['process_peak_rss']:.3f}"]]
    for tok in runs[lo]["tokenizers"]:
        rows.append([f"{tok} peak_memory_mb", *(f"{runs[n]['tokenizers'][tok]['peak_memory_mb']:.1f}" for n in ns),
                     ratios[tok]])
    print(table(["", *(f"N={n}" for n in ns), f"{hi}/{lo}"], rows))
    return out


def section_cache(tmp: Path, limit: int | None) -> dict[str, Any]:
    from vtbench.metrics.fid import RFID
    from vtbench.runner import RunConfig, run
    ref_s = defaultdict(float)
    state = {"label": ""}
    orig_update = RFID.update

    def timed_update(self: RFID, batch: Any) -> Any:  # Inception on the originals is the reference side
        features = self.extractor.features

        def split(images: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            try:
                return features(images)
            finally:
                ref_s[(state["label"], "ref" if images is batch.original else "rec")] += time.perf_counter() - t0

        self.extractor.features = split
        try:
            return orig_update(self, batch)
        finally:
            del self.extractor.features

    steps = [("cold", "jpeg.q50"), ("warm, second tokenizer", "webp.q50"), ("warm, same tokenizer", "jpeg.q50")]
    rows = {}
    RFID.update = timed_update
    try:
        with fresh_cache(tmp / "cache-rfid"):
            for label, tok in steps:
                state["label"] = label
                with instrumented() as clock:
                    (rec,) = run([tok], RunConfig(data="embedded", metrics=["psnr", "rfid"], out=tmp / "cache-runs",
                                                  limit=limit, progress=False, force=True))
                rows[label] = {"tokenizer": tok, "images": rec["dataset"]["n_used"],
                               "reference_s": round(ref_s[(label, "ref")], 3),
                               "reconstruction_s": round(ref_s[(label, "rec")], 3),
                               "tokenizer_run_s": round(clock.parts[tok]["evaluation"], 3),
                               "reference_cache": rec["metrics"]["rfid"]["extra"].get("reference_cache"),
                               "rfid": rec["metrics"]["rfid"]["value"]}
    finally:
        RFID.update = orig_update
    cold, warm, same = (rows[s[0]] for s in steps)
    out = {"data": "embedded", "metrics": ["psnr", "rfid"], "runs": rows,
           "reference_s_warm_over_cold": round(warm["reference_s"] / cold["reference_s"], 4),
           "tokenizer_run_cold_over_warm_same_tokenizer": round(cold["tokenizer_run_s"] / same["tokenizer_run_s"], 3),
           "rfid_identical_cold_vs_warm": cold["rfid"] == same["rfid"]}
    print("\n[cache] rFID reference side (Inception on originals), cold vs warm statistics cache, embedded data")
    print(table(["run", "tokenizer", "reference s", "reconstruction s", "tokenizer run s", "cache", "rFID"],
                [[k, r["tokenizer"], r["reference_s"], r["reconstruction_s"], r["tokenizer_run_s"],
                  r["reference_cache"], f"{r['rfid']:.4f}"] for k, r in rows.items()]))
    print(f"reference side warm / cold: {out['reference_s_warm_over_cold']:.4f}; jpeg.q50 run cold / warm: "
          f"{out['tokenizer_run_cold_over_warm_same_tokenizer']:.2f}x; rFID identical: "
          f"{out['rfid_identical_cold_vs_warm']}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--images", type=int, default=200, help="synthetic images for workers and processes")
    ap.add_argument("--proc-images", type=int, default=None, help="processes: images (default: --images)")
    ap.add_argument("--memory-n", type=int, nargs=2, default=[200, 2000])
    ap.add_argument("--limit", type=int, default=None, help="embedded images per tokenizer (busy, cache)")
    ap.add_argument("--repeat", type=int, default=2, help="workers, processes: best of this many, alternated")
    ap.add_argument("--work", type=Path, default=None, help="keep the synthetic folders here (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report["machine"] = machine()
    with tempfile.TemporaryDirectory() as t:
        tmp = args.work or Path(t)
        for s in args.sections:
            t0 = time.perf_counter()
            if s == "busy":
                report[s] = section_busy(tmp, args.limit)
            elif s == "workers":
                report[s] = section_workers(tmp, args.images, args.repeat)
            elif s == "processes":
                report[s] = section_processes(tmp, args.proc_images or args.images, args.repeat)
            elif s == "memory":
                report[s] = section_memory(tmp, sorted(args.memory_n))
            elif s == "cache":
                report[s] = section_cache(tmp, args.limit)
            report[s]["machine"] = machine()
            report[s]["section_s"] = round(time.perf_counter() - t0, 1)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each section: partial runs keep theirs
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
