"""Benchmark: vtbench's one-pass runner against the two-stage pipeline people usually script.

Two-stage: tokenize, write reconstructions and preprocessed originals as PNG, then clean-fid's folder FID
(``mode="clean"``, the same Inception module) plus PSNR/SSIM (skimage) read back from the PNG pairs.
One-pass: ``vtbench run`` with psnr, ssim, rfid fed from the same decoded batch (reference statistics computed,
not cached, so both sides do the same Inception work on originals).

Reported as a ratio measured in the same process (no absolute-time claims). Also reports images/s of the
default run on the embedded data. Usage::

    python benchmarks/bench_runner.py [--tokenizers jpeg.q50 tiny.vq] [--limit N] [--skip-default]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def one_pass(tok: str, out: Path, limit: int | None) -> tuple[float, dict]:
    from vtbench.runner import RunConfig, run
    t0 = time.perf_counter()
    (rec,) = run([tok], RunConfig(data="embedded", metrics=["psnr", "ssim", "rfid"], out=out, limit=limit,
                                  progress=False, force=True))
    return time.perf_counter() - t0, {k: rec["metrics"][k]["value"] for k in ("psnr", "ssim", "rfid")}


def two_stage(tok_name: str, work: Path, limit: int | None) -> tuple[float, dict]:
    from cleanfid import fid as cfid
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from vtbench.data.datasets import open_dataset
    from vtbench.data.policies import get_policy
    from vtbench.metrics.inception import load_inception
    from vtbench.tokenizers import build_tokenizer

    t0 = time.perf_counter()
    ds = open_dataset("embedded", get_policy("adm-center-crop", 256), limit=limit)
    tok = build_tokenizer(tok_name)
    a, b = work / "orig", work / "recon"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    # stage 1: tokenize and write PNGs
    for i in range(0, len(ds), 16):
        items = [ds[j] for j in range(i, min(i + 16, len(ds)))]
        x = torch.stack([s["image"] for s in items]).float() / 255
        with torch.inference_mode():
            y = tok.decode(tok.encode(x))
        y8 = y.clamp(0, 1).mul(255).round().to(torch.uint8)
        for s, r in zip(items, y8):
            name = s["id"].replace("/", "__").rsplit(".", 1)[0] + ".png"
            Image.fromarray(s["image"].permute(1, 2, 0).numpy()).save(a / name)
            Image.fromarray(r.permute(1, 2, 0).numpy()).save(b / name)
    # stage 2: read back, FID by clean-fid on the same Inception module, PSNR/SSIM by skimage
    ext = load_inception()

    class Wrap(torch.nn.Module):  # clean-fid hands custom extractors float [0,255] 299x299 batches
        def forward(self, x):
            return ext.forward_resized(x).float()

    fid = cfid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=Wrap(), num_workers=0,
                           batch_size=32, device=torch.device("cpu"), verbose=False)
    ps, ss = [], []
    for p in sorted(a.iterdir()):
        o, r = np.asarray(Image.open(p)), np.asarray(Image.open(b / p.name))
        ps.append(peak_signal_noise_ratio(o, r, data_range=255))
        ss.append(structural_similarity(o, r, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255))
    finite = [p for p in ps if np.isfinite(p)]
    return time.perf_counter() - t0, {"psnr": float(np.mean(finite)) if finite else None,
                                      "ssim": float(np.mean(ss)), "rfid": float(fid)}


def default_run_speed(out: Path) -> dict:
    from vtbench.runner import RunConfig, run
    from vtbench.tokenizers import list_tokenizers
    names = list_tokenizers(default_run=True)
    t0 = time.perf_counter()
    recs = run(names, RunConfig(data="embedded", out=out, progress=False, force=True))
    wall = time.perf_counter() - t0
    images = sum(r["dataset"]["n_used"] for r in recs)
    return {"tokenizers": len(names), "images": images, "seconds": round(wall, 2),
            "images_per_s": round(images / wall, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizers", nargs="+", default=["jpeg.q50", "tiny.vq"])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--skip-default", action="store_true")
    args = ap.parse_args(argv)
    report: dict = {"device": "cpu", "threads": torch.get_num_threads(), "comparisons": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["VTBENCH_CACHE"] = str(tmp / "cache")  # no cached reference statistics: equal work
        for tok in args.tokenizers:
            shutil.rmtree(tmp / "cache", ignore_errors=True)
            t_one, v_one = one_pass(tok, tmp / f"one-{tok}", args.limit)
            t_two, v_two = two_stage(tok, tmp / f"two-{tok}", args.limit)
            report["comparisons"].append({"tokenizer": tok, "one_pass_s": round(t_one, 2),
                                          "two_stage_s": round(t_two, 2),
                                          "speedup_two_stage_over_one_pass": round(t_two / t_one, 2),
                                          "one_pass": v_one, "two_stage": v_two})
            print(f"{tok}: one-pass {t_one:.1f}s, two-stage {t_two:.1f}s, ratio {t_two / t_one:.2f}x; "
                  f"rFID {v_one['rfid']:.4f} vs {v_two['rfid']:.4f}", file=sys.stderr)
        if not args.skip_default:
            shutil.rmtree(tmp / "cache", ignore_errors=True)
            report["default_run"] = default_run_speed(tmp / "default")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
