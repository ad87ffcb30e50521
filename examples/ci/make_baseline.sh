#!/usr/bin/env bash
# Regenerate examples/ci/baseline/ with the committed tiny.vq checkpoint, using the same `vtbench run` line as
# github-workflow.yml (keep them identical: a different --metrics or --limit makes the gate incomparable).
# Only result.json and samples.csv are kept (no progress files, no index.html).
#   usage: examples/ci/make_baseline.sh            (from anywhere; CHECKPOINT=... to baseline another file)
set -euo pipefail
cd "$(dirname "$0")/../.."
CHECKPOINT="${CHECKPOINT:-tokenizers/weights/tiny_vq.safetensors}"
BASELINE=examples/ci/baseline
RESULTS="$(mktemp -d)"
trap 'rm -rf "$RESULTS"' EXIT

vtbench run -t tiny.vq --weights "$CHECKPOINT" --data embedded --metrics psnr,ssim,compression --limit 24 --out "$RESULTS"

rm -rf "$BASELINE"
for result in "$RESULTS"/*/*/*/result.json; do
    run_dir="$(dirname "$result")"
    dest="$BASELINE/${run_dir#"$RESULTS"/}"
    mkdir -p "$dest"
    cp "$result" "$run_dir/samples.csv" "$dest/"
done
echo "baseline written to $BASELINE:" >&2
find "$BASELINE" -type f | sort >&2
