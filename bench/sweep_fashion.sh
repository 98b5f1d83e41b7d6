#!/usr/bin/env bash
# Short Fashion-MNIST recipe sweep for EGC (issue 2): each variant trains for $STEPS steps on the
# same seed, then bench/quick_eval.py judges it. Results: $OUT/results.jsonl (one JSON line each).
# Usage: bash bench/sweep_fashion.sh [STEPS] [OUT]   (runs sequentially: never two trainings at once)
set -euo pipefail
STEPS=${1:-600}
OUT=${2:-runs/sweep}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
run() {
  local name=$1; shift
  [ -f "$OUT/$name.done" ] && return 0
  $PY -m egc.cli train --out "$OUT/$name" --steps "$STEPS" --quiet --set train.sample_n=20 --set train.ckpt_every=100000 --set train.ckpt_minutes=1000 "$@" > "$OUT/$name.train.json"
  $PY bench/quick_eval.py "$OUT/$name" --n 300 --steps 50 --guidance 3 | sed "s/^{/{\"variant\": \"$name\", \"train_steps\": $STEPS, /" >> "$OUT/results.jsonl"
  touch "$OUT/$name.done"
}
# Round 1 (clean CE at t = 0, before the clean-time token):
run default
run prior-none --set model.energy_prior=none
run wnoisy-0.05 --set loss.noisy_ce_weight=0.05
# Round 2 (clean CE with its own time token):
run wnoisy-0.5 --set loss.noisy_ce_weight=0.5
run denoiser-w0.5 --set model.energy_prior=denoiser --set loss.noisy_ce_weight=0.5
run cosine-w0.5 --set diffusion.schedule=cosine --set loss.noisy_ce_weight=0.5
