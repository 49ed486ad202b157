#!/usr/bin/env bash
# Install (scripts/setup.sh) and run every stage that exists on the built-in synthetic CT-RATE.
# Output goes to ${DEMO_OUT:-out/demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${DEMO_OUT:-out/demo}
X=.venv/bin/x2ct-pipeline
$X synth --out "$OUT/ct-rate" --n 64 --size 96 --seed 0
$X manifest ct-rate --root "$OUT/ct-rate" --split train --out "$OUT/train.jsonl"
$X manifest ct-rate --root "$OUT/ct-rate" --split valid --out "$OUT/valid.jsonl"
$X simulate-drr --manifest "$OUT/valid.jsonl" --out "$OUT/drr-valid.zarr" --views pa,lateral
$X preview "$OUT/drr-valid.zarr" --out "$OUT/drr-valid.png"
