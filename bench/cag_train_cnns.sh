#!/usr/bin/env bash
# The ordinary classifiers CaG's scoreboard generates from (bench/cag_scoreboard.sh): a small CNN per data
# set (the judge's architecture, other seed and width, so never the judge itself), plain and trained with
# Gaussian noise augmentation (sigma 0.25 on [0, 1] pixels). About 4 minutes (Fashion-MNIST) and 6-8
# (CIFAR-10) each on 2 cores when nothing else runs.
set -euo pipefail
OUT=${1:-runs/cag}
PY=${PY:-.venv/bin/python}
R="an ordinary classifier CaG generates from; not a judge"
T="$PY bench/train_feature_classifier.py --width 32 --threads 2"
[ -f "$OUT/fashion-cnn.safetensors" ] || $T --data fashion-mnist --epochs 5 --seed 11 --name fashion-gen-cnn --role "$R" --out "$OUT/fashion-cnn.safetensors"
[ -f "$OUT/fashion-cnn-noise25.safetensors" ] || $T --data fashion-mnist --epochs 5 --seed 12 --noise-sigma 0.25 --name fashion-gen-cnn-noise25 \
  --role "$R (Gaussian noise augmentation, sigma 0.25)" --out "$OUT/fashion-cnn-noise25.safetensors"
C10="--data cifar10 --epochs 8 --max-shift 4 --pad reflect --hflip"
[ -f "$OUT/cifar10-cnn.safetensors" ] || $T $C10 --seed 11 --name cifar-gen-cnn --role "$R" --out "$OUT/cifar10-cnn.safetensors"
[ -f "$OUT/cifar10-cnn-noise25.safetensors" ] || $T $C10 --seed 12 --noise-sigma 0.25 --name cifar-gen-cnn-noise25 \
  --role "$R (Gaussian noise augmentation, sigma 0.25)" --out "$OUT/cifar10-cnn-noise25.safetensors"
