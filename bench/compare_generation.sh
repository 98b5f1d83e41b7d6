#!/usr/bin/env bash
# Issue 16's equal-time generation table (Fashion-MNIST by default): every model trained by `egc train`
# with one config, $CONFIG (default configs/fashion-mnist.yaml: same small UNet, data, flips, optimiser,
# EMA, noise schedule, precision chosen by `auto` for the host) for the same minutes, one after the
# other (never two trainings at once), then judged the same way:
#   - `egc eval RUN --metrics acc,ece` on the 10,000 test images (cluster purity for unsupervised EGC);
#   - a guidance sweep: `bench/sample.py` with DDIM-20 (eta 1) on N_SWEEP class-balanced samples;
#   - the chosen setting (bench/gen_table.py --pick: the lowest fd among the settings whose conditional
#     accuracy is at least 0.9 x the sweep's best; the lowest fd for unconditional models) on N_FINAL.
# Frechet distances are in the judge's features ($JUDGE, default the data set's shipped judge: zoo:fashioncnn,
# fd_fashioncnn; zoo:cifarcnn for CIFAR-10), not Inception FID. CIFAR-10: CONFIG=configs/cifar10.yaml.
#
#   bash bench/compare_generation.sh [MINUTES] [OUT] [MODEL ...]
#   MODEL: egc-joint egc-embedding egc-none egc-unsup ddpm-cond ddpm classifier (default: all, in that order)
#   then: python bench/gen_table.py OUT          # the markdown table of BENCHMARKS.md section 7
# EGC_FLAGS (environment): extra `egc train` flags for the EGC models only, for example
#   EGC_FLAGS="--set loss.noisy_ce_weight=0.05 --set loss.clean_ce_weight=0.1"
# (the config pins the first shipped model's (zoo-v1) logit scale 1 and CE 0.5 / 1.0; the default recipe of new runs is
#   EGC_FLAGS="--set model.logit_scale=10 --set loss.noisy_ce_weight=0.1 --set loss.clean_ce_weight=0.02")
set -euo pipefail
MIN=${1:-45}
OUT=${2:-runs/gen45}
shift $(( $# < 2 ? $# : 2 ))
MODELS=${*:-egc-joint egc-embedding egc-none egc-unsup ddpm-cond ddpm classifier}
N_SWEEP=${N_SWEEP:-500}
N_FINAL=${N_FINAL:-1000}
BIN=${BIN:-.venv/bin}
CONFIG=${CONFIG:-configs/fashion-mnist.yaml}
JUDGE=${JUDGE:-}   # empty: bench/sample.py takes the data set's shipped judge
mkdir -p "$OUT"

flags() {
  case $1 in
    egc-joint) echo "--model egc --set model.conditioning=joint ${EGC_FLAGS:-}" ;;
    egc-embedding) echo "--model egc --set model.conditioning=embedding ${EGC_FLAGS:-}" ;;
    egc-none) echo "--model egc --set model.conditioning=none ${EGC_FLAGS:-}" ;;
    egc-unsup) echo "--model egc --set model.supervised=false --set model.conditioning=none ${EGC_FLAGS:-}" ;;
    ddpm-cond) echo "--model ddpm --set model.conditioning=embedding" ;;
    ddpm) echo "--model ddpm" ;;
    classifier) echo "--model classifier" ;;
    *) echo "compare_generation.sh: unknown model '$1'" >&2; exit 2 ;;
  esac
}
# SAMPLER:STEPS:ETA:S:W[:LO-HI] (s = classifier guidance from the null-label head, w = classifier-free guidance,
# LO-HI the steps t/T they act at; without it the model's own default, t/T <= 0.6 for an EGC since 2026-11-29,
# so the EGC rows that mean "every step" say :0-1)
sweep() {
  case $1 in
    # the 45-minute runs of 2026-11-29: s 30-100, w 0-1 for logit scale 1; s 10-30, w 0, guidance at t/T <= 0.6
    # for the scale-10 default recipe (w >= 2 lost in both): sweep both regions
    egc-joint) echo "ddim:20:1:0:0,ddim:20:1:0:1:0-1,ddim:20:1:10:0:0-1,ddim:20:1:30:0:0-1,ddim:20:1:30:0:0-0.6,ddim:20:1:100:0:0-1" ;;
    egc-embedding) echo "ddim:20:1:0:0,ddim:20:1:0:3:0-1,ddim:20:1:30:0:0-1,ddim:20:1:100:0:0-1,ddim:20:1:300:0:0-1,ddim:20:1:100:1:0-1" ;;
    egc-none) echo "ddim:20:1:0:0,ddim:20:1:30:0:0-1,ddim:20:1:100:0:0-1,ddim:20:1:300:0:0-1" ;;
    ddpm-cond) echo "ddim:20:1:0:0,ddim:20:1:0:1,ddim:20:1:0:3" ;;
    ddpm | egc-unsup) echo "ddim:20:1" ;;
    classifier) echo "" ;;
  esac
}

for m in $MODELS; do
  flags "$m" > /dev/null
  if [ ! -f "$OUT/$m.train.json" ]; then
    echo "$(date +%T) train $m ($MIN min)" >&2
    # shellcheck disable=SC2046
    "$BIN/egc" train --config "$CONFIG" $(flags "$m") --out "$OUT/$m" --minutes "$MIN" --quiet > "$OUT/$m.train.json"
  fi
done
for m in $MODELS; do
  echo "$(date +%T) judge $m" >&2
  if [ "$m" != ddpm ] && [ "$m" != ddpm-cond ] && [ ! -f "$OUT/$m.acc.json" ]; then
    "$BIN/egc" eval "$OUT/$m" --metrics acc,ece --quiet --json "$OUT/$m.acc.json" > /dev/null
  fi
  cfgs=$(sweep "$m")
  [ -n "$cfgs" ] || continue
  [ -f "$OUT/$m.sweep.jsonl" ] || "$BIN/python" bench/sample.py "$OUT/$m" --n "$N_SWEEP" --configs "$cfgs" ${JUDGE:+--judge "$JUDGE"} > "$OUT/$m.sweep.jsonl"
  if [ ! -f "$OUT/$m.final.jsonl" ]; then
    pick=$("$BIN/python" bench/gen_table.py "$OUT" --pick "$m")
    "$BIN/python" bench/sample.py "$OUT/$m" --n "$N_FINAL" --configs "$pick" ${JUDGE:+--judge "$JUDGE"} > "$OUT/$m.final.jsonl"
  fi
done
"$BIN/python" bench/gen_table.py "$OUT"
