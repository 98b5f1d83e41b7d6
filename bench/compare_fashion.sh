#!/usr/bin/env bash
# Issue 3's side-by-side table on Fashion-MNIST: EGC vs. a plain classifier and a plain eps-prediction
# diffusion model, all trained by `egc train` (same UNet size, data, augmentation, schedule) and judged
# by the same `egc eval` settings; ends with one HTML report.
#
#   bash bench/compare_fashion.sh EGC_RUN [BASELINE_MINUTES] [OUT]
#
# EGC_RUN is an existing EGC run (for example runs/fashion-mnist); the baselines are trained here for
# BASELINE_MINUTES each (default 45), one after the other (never two trainings at once on 2 cores).
# Evaluation settings are the same for every model; what does not apply to a kind is skipped by
# egc eval with the reason. Results: OUT/{egc,classifier,ddpm}.json and OUT/report.html.
set -euo pipefail
EGC_RUN=${1:?usage: compare_fashion.sh EGC_RUN [BASELINE_MINUTES] [OUT]}
MIN=${2:-45}
OUT=${3:-runs/compare}
EGC=${EGC:-.venv/bin/egc}
EVAL_FLAGS=${EVAL_FLAGS:---n-test 10000 --n-robust 200 --pgd-steps 20 --restarts 1 --sanity-n 100 --square-queries 300 \
  --eps-linf 0.05,0.1,0.2 --eps-l2 0.5,1.5,3 --n-samples 1000 --sampler ddim --steps 100}
mkdir -p "$OUT"
# shellcheck disable=SC2086
[ -f "$OUT/egc.json" ] || $EGC eval "$EGC_RUN" $EVAL_FLAGS --quiet --out-dir "$OUT/egc-eval" --json "$OUT/egc.json" > /dev/null
# Rerunning the command resumes a training killed with its session and skips finished work.
# shellcheck source=bench/train_or_resume.sh
source "$(dirname "${BASH_SOURCE[0]}")/train_or_resume.sh"
for kind in classifier ddpm; do
  train_or_resume "$OUT" "$kind" --config configs/fashion-mnist.yaml --model "$kind" --minutes "$MIN"
done
for kind in classifier ddpm; do
  # shellcheck disable=SC2086
  [ -f "$OUT/$kind.json" ] || $EGC eval "$OUT/$kind" $EVAL_FLAGS --quiet --out-dir "$OUT/$kind-eval" --json "$OUT/$kind.json" > /dev/null
done
$EGC report "$OUT/egc.json" "$OUT/classifier.json" "$OUT/ddpm.json" --out "$OUT/report.html" --title "Fashion-MNIST: EGC vs. baselines"
echo "$OUT/report.html"
