#!/usr/bin/env bash
# GPU check for vtbench's scale-out (issue 14): run on a machine with NVIDIA GPUs, from a vtbench checkout or with
# vtbench installed; takes a few minutes (the default run is 11 tokenizers x 74 embedded images).
#
#   1. images/s of the default run (`vtbench run`, every default-run tokenizer, the protocol's metrics) on CUDA;
#   2. the same run on the CPU, and every metric compared with the CUDA run (result.json files) to tolerance;
#   3. torchrun --nproc_per_node=<every GPU> (NCCL), compared with the one-GPU run, and its images/s.
#
# Usage:  benchmarks/gpu_check.sh [--out DIR] [--limit N] [--cpu-only]
#   --out DIR    where runs and summary.json go (default: a new folder gpu_check.<date> here)
#   --limit N    images per tokenizer (default: all 74 embedded images)
#   --cpu-only   no GPU here: run every step on the CPU instead (CPU vs CPU, torchrun with 2 gloo processes) to
#                check the script itself
# Environment: PYTHON (default: python3), TOL_CODEC / TOL_LEARNED (relative tolerances, default 1e-4 / 2e-2;
# codecs run on the CPU in both runs, so only the metrics' arithmetic differs; learned tokenizers run their
# convolutions in TF32 on Ampere and later GPUs by default, so their pixels can flip by one level).
# Exit status: 0 all checks passed; 1 a check failed (the summary says which); 2 usage or missing GPU.
set -euo pipefail

PYTHON=${PYTHON:-python3}
OUT=""
LIMIT=""
CPU_ONLY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT=${2:?--out needs a folder}; shift 2 ;;
        --limit) LIMIT=${2:?--limit needs a number}; shift 2 ;;
        --cpu-only) CPU_ONLY=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-gpu_check.$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -f "$HERE/vtbench/__init__.py" ]]; then  # a checkout: use it whether or not it is installed
    export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
fi
LOG="$OUT/log.txt"
: > "$LOG"

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'gpu_check: %s\n' "$*" >&2; exit "${2:-1}"; }
now() { "$PYTHON" -c 'import time; print(time.time())'; }

step "environment"
"$PYTHON" -c 'import vtbench, torch' 2>>"$LOG" \
    || fail "cannot import vtbench and torch with $PYTHON (install vtbench, or set PYTHON=...); see $LOG" 2
"$PYTHON" - <<'EOF' | tee -a "$LOG"
import platform, torch, vtbench
print(f"python {platform.python_version()}, torch {torch.__version__}, vtbench {vtbench.__version__}")
print(f"cuda available: {torch.cuda.is_available()}, cuda {torch.version.cuda}, "
      f"nccl available: {torch.distributed.is_available() and torch.distributed.is_nccl_available()}")
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
EOF
if [[ $CPU_ONLY == 1 ]]; then
    DEV=cpu
    NPROC=2
    echo "--cpu-only: every step on the CPU; torchrun with $NPROC gloo processes"
else
    command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: no NVIDIA GPU here (use --cpu-only to check the script)" 2
    NPROC=$(nvidia-smi -L | wc -l)
    [[ $NPROC -ge 1 ]] || fail "nvidia-smi lists no GPU" 2
    "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || fail "nvidia-smi lists $NPROC GPU(s) but torch.cuda.is_available() is False (a CPU-only torch build?)" 2
    DEV=cuda
    nvidia-smi -L
fi

# default_run NAME DEVICE LAUNCHER...: one `vtbench run` of the default tokenizers on DEVICE into $OUT/NAME, with
# its own reference-statistics cache (no run reads statistics another computed); prints the wall seconds
default_run() {
    local name=$1 device=$2; shift 2
    local t0 t1
    t0=$(now)
    if ! VTBENCH_CACHE="$OUT/cache-$name" "$@" -m vtbench.cli run --device "$device" --out "$OUT/$name" --json \
            --force ${LIMIT:+--limit "$LIMIT"} >"$OUT/$name.json" 2>>"$LOG"; then
        fail "the $name run failed (exit status above in $LOG):
$(tail -n 20 "$LOG")"
    fi
    t1=$(now)
    "$PYTHON" -c "print(round($t1 - $t0, 2))"
}

step "1. default run on $DEV (one process)"
T_DEV=$(default_run "single-$DEV" "$DEV" "$PYTHON")
echo "wall ${T_DEV} s"

step "2. default run on cpu (one process)"
if [[ $DEV == cpu ]]; then
    T_CPU=$(default_run single-cpu-again cpu "$PYTHON")
    CPU_DIR=single-cpu-again
else
    T_CPU=$(default_run single-cpu cpu "$PYTHON")
    CPU_DIR=single-cpu
fi
echo "wall ${T_CPU} s"

step "3. torchrun --nproc_per_node=$NPROC ($([[ $DEV == cuda ]] && echo NCCL || echo gloo))"
if [[ $DEV == cuda && $NPROC -lt 2 ]]; then
    echo "one GPU: no process group to test (NCCL needs one GPU per process); skipped"
    T_DIST=""
else
    # --device auto under torchrun: each rank takes the GPU of its LOCAL_RANK and joins with NCCL
    T_DIST=$(default_run "torchrun-$NPROC" "$([[ $DEV == cuda ]] && echo auto || echo cpu)" "$PYTHON" \
        -m torch.distributed.run --nproc_per_node="$NPROC" --master_port "${MASTER_PORT:-29511}")
    echo "wall ${T_DIST} s"
fi

step "summary"
set +e
"$PYTHON" - "$OUT" "$DEV" "$CPU_DIR" "$NPROC" "$T_DEV" "$T_CPU" "${T_DIST:-}" <<'EOF'
import json, math, os, sys
from pathlib import Path
from vtbench.results import iter_records

out, dev, cpu_dir, nproc, t_dev, t_cpu, t_dist = sys.argv[1:]
tol_codec, tol_learned = float(os.environ.get("TOL_CODEC", "1e-4")), float(os.environ.get("TOL_LEARNED", "2e-2"))
SPEED = ("encode_images_per_s", "decode_images_per_s", "peak_memory_mb")


def load(name):
    recs = {rec["tokenizer"]["name"]: rec for _, rec in iter_records(Path(out) / name)}
    if not recs:
        sys.exit(f"gpu_check: no result.json under {out}/{name}")
    return recs


def compare(a, b, label):
    """Every metric of run a against run b: max relative difference per tokenizer; failures listed."""
    rows, bad = [], []
    for tok in sorted(a):
        card = a[tok]["tokenizer"]
        learned = not card.get("reference") and card.get("kind") not in ("codec", "reference")
        tol = tol_learned if learned else tol_codec
        worst, worst_key = 0.0, "-"
        for key, va in a[tok]["metrics"].items():
            if key in SPEED:
                continue
            x, y = va["value"], b[tok]["metrics"].get(key, {}).get("value")
            if (x is None) != (y is None):
                bad.append(f"{tok} {key}: {x} vs {y} (null in one run)")
                continue
            if x is None or x == y:
                continue
            if not (math.isfinite(x) and math.isfinite(y)):
                bad.append(f"{tok} {key}: {x} vs {y}")
                continue
            rel = abs(x - y) / max(abs(x), abs(y), 1e-12)
            if rel > worst:
                worst, worst_key = rel, key
            if rel > tol:
                bad.append(f"{tok} {key}: {x:.6g} vs {y:.6g} (relative {rel:.1e} > {tol:g})")
        rows.append((tok, "learned" if learned else "codec", worst, worst_key))
    print(f"\n{label}: largest relative difference per tokenizer (tolerance codec {tol_codec:g}, "
          f"learned {tol_learned:g})")
    for tok, kind, worst, key in rows:
        print(f"  {tok:<16} {kind:<8} {worst:9.2e}  {key}")
    return bad


single, cpu = load(f"single-{dev}"), load(cpu_dir)
images = sum(r["dataset"]["n_used"] for r in single.values())
summary = {"device": dev, "tokenizers": len(single), "images": images,
           "single": {"wall_s": float(t_dev), "images_per_s": round(images / float(t_dev), 2)},
           "cpu": {"wall_s": float(t_cpu), "images_per_s": round(images / float(t_cpu), 2)},
           "per_tokenizer_encode_decode_images_per_s": {
               t: [r["metrics"]["encode_images_per_s"]["value"], r["metrics"]["decode_images_per_s"]["value"]]
               for t, r in single.items()}}
failures = compare(single, cpu, f"{dev} vs cpu")
if t_dist:
    dist = load(f"torchrun-{nproc}")
    procs = {r["run"].get("processes") for r in dist.values()}
    if procs != {int(nproc)}:
        failures.append(f"torchrun run records processes={procs}, expected {nproc}")
    summary["torchrun"] = {"processes": int(nproc), "wall_s": float(t_dist),
                           "images_per_s": round(images / float(t_dist), 2),
                           "speedup_over_single": round(float(t_dev) / float(t_dist), 2)}
    failures += compare(dist, single, f"torchrun x{nproc} vs one process")
summary["failures"] = failures
(Path(out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"\n{len(single)} tokenizers x {images // max(len(single), 1)} images = {images} images (whole command, "
      f"start-up included)")
print(f"  {dev:<5} 1 process : {summary['single']['wall_s']:8.1f} s  {summary['single']['images_per_s']:8.2f} images/s")
print(f"  cpu   1 process : {summary['cpu']['wall_s']:8.1f} s  {summary['cpu']['images_per_s']:8.2f} images/s")
if t_dist:
    d = summary["torchrun"]
    print(f"  {dev:<5} {nproc} procs   : {d['wall_s']:8.1f} s  {d['images_per_s']:8.2f} images/s  "
          f"({d['speedup_over_single']:.2f}x one process)")
if failures:
    print("\nFAILED:")
    for f in failures:
        print("  " + f)
    sys.exit(1)
print(f"\nall checks passed; details in {out}/summary.json")
EOF
status=$?
set -e
exit $status
