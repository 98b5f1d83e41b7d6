#!/usr/bin/env bash
# Issue 6's comparison: latent EGC (on a small KL autoencoder's 8x8x4 latents) against pixel-space EGC
# on CIFAR-10 at the same EGC training budget, judged by the same `egc eval` flags (clean accuracy,
# ECE, conditional samples scored in the features of the cifarcnn judge CNN: fd_cifarcnn is NOT an
# Inception FID). The autoencoder's own training time comes on top of the latent run's budget and is
# reported separately (OUT/ae.train.json).
#
#   bash bench/compare_latent_cifar10.sh [MINUTES] [AE_MINUTES] [OUT] [PIXEL_RUN]
#
# PIXEL_RUN reuses a pixel EGC run trained with configs/cifar10.yaml for MINUTES (for example the one
# of bench/compare_cifar10.sh, runs/compare-c10/egc); without it one is trained here. The judge is the
# shipped zoo:cifarcnn (83.0 %) unless JUDGE=FILE. One training at a time (2 cores).
# The latent UNet drops the 2x2 patch stem (model.patch=1): its 8x8 latents are already small.
set -euo pipefail
MIN=${1:-45}
AE_MIN=${2:-15}
OUT=${3:-runs/compare-latent}
PIXEL=${4:-$OUT/pixel}
EGC=${EGC:-.venv/bin/egc}
JUDGE=${JUDGE:-zoo:cifarcnn}
EVAL_FLAGS=${EVAL_FLAGS:---metrics acc,ece,gen --n-test 10000 --n-samples 500 --sampler ddim --steps 50}
mkdir -p "$OUT"
[ -d "$OUT/ae/checkpoints" ] || $EGC train --model autoencoder --data cifar10 --out "$OUT/ae" --minutes "$AE_MIN" --quiet \
  --set model.ae.downsample=4 --set model.ae.latent_channels=4 > "$OUT/ae.train.json"
[ -d "$OUT/latent/checkpoints" ] || $EGC train --config configs/cifar10.yaml --out "$OUT/latent" --minutes "$MIN" --quiet \
  --set model.autoencoder="$OUT/ae" --set model.patch=1 > "$OUT/latent.train.json"
[ -d "$PIXEL/checkpoints" ] || $EGC train --config configs/cifar10.yaml --out "$PIXEL" --minutes "$MIN" --quiet > "$OUT/pixel.train.json"
for pair in "latent:$OUT/latent" "pixel:$PIXEL"; do
  name=${pair%%:*}; run=${pair#*:}
  # shellcheck disable=SC2086
  [ -f "$OUT/$name.json" ] || $EGC eval "$run" $EVAL_FLAGS --judge "$JUDGE" --quiet --out-dir "$OUT/$name-eval" --json "$OUT/$name.json" > /dev/null
done
for ext in md html; do
  $EGC report "$OUT/latent.json" "$OUT/pixel.json" --out "$OUT/report.$ext" --title "CIFAR-10 (JPEG copy): latent vs pixel EGC, $MIN min each"
done
cat "$OUT/report.md"
