"""Benchmark: how long the CLI takes to answer commands that need no model, against ``import torch`` alone.

Each command runs in a fresh interpreter (``python -m vtbench.cli ...``), alternated with ``python -c "import
torch"`` and ``python -c pass`` in the same session, best of ``--repeat`` each. Reported as ratios to the torch
import (no absolute-time claims: the machine's load decides those). Before the lazy imports every command paid
the full import (torch, metrics, adapters) before its arguments were checked, a ratio above 1. Usage::

    python benchmarks/bench_cli_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "vtbench --help": ["-m", "vtbench.cli", "--help"],
    "vtbench run --help": ["-m", "vtbench.cli", "run", "--help"],
    "vtbench ls tokenizers": ["-m", "vtbench.cli", "ls", "tokenizers"],
    "vtbench info jpeg.q50": ["-m", "vtbench.cli", "info", "jpeg.q50"],
    "vtbench run -t jpg.q50 (exit 2)": ["-m", "vtbench.cli", "run", "-t", "jpg.q50"],
}
BASELINES = {"import torch": ["-c", "import torch"], "python -c pass": ["-c", "pass"]}


def wall(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runs = {**BASELINES, **COMMANDS}
    best = {k: float("inf") for k in runs}
    for _ in range(args.repeat):  # alternate, so a change in the machine's load hits every entry alike
        for name, cmd in runs.items():
            best[name] = min(best[name], wall(cmd, env))
    torch_s = best["import torch"]
    print(f"best of {args.repeat}, each in a fresh interpreter; ratio = wall time / `python -c \"import torch\"`\n")
    print("| command | ratio to import torch |")
    print("|---|---|")
    for name in runs:
        print(f"| {name} | {best[name] / torch_s:.2f} |")


if __name__ == "__main__":
    main()
