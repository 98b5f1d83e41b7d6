#!/usr/bin/env bash
# Issue 34's CaG scoreboard, one data set per call (run them one after the other, never two at once):
#   bash bench/cag_scoreboard.sh fashion-mnist runs/cag/board-fm
#   bash bench/cag_scoreboard.sh cifar10 runs/cag/board-c10
# Needs the generator CNNs (plain and Gaussian-noise-trained), trained first by:
#   bash bench/cag_train_cnns.sh
# Rows: controls (real training images; the per-class pixel Gaussian's draws alone), an ordinary CNN
# (the paper's parts with the data-free batch-norm prior; with the distribution loss on real feature
# statistics; seeded from the pixel Gaussian, without and with input noise), the noise-trained CNN
# (data-free with annealed input noise; seeded), and the shipped EGC model's head at egc cag's defaults
# (annealed noise at its own timesteps) data-free and seeded. N per class: $N (CNN rows), $N_EGC (EGC rows).
set -euo pipefail
DATA=${1:?data set: fashion-mnist or cifar10}
OUT=${2:-runs/cag/board-$DATA}
N=${N:-100}
N_EGC=${N_EGC:-20}
PY=${PY:-.venv/bin/python}
case $DATA in
  fashion-mnist) CNN=runs/cag/fashion-cnn.safetensors; NCNN=runs/cag/fashion-cnn-noise25.safetensors; EGC=zoo:fashion-mnist ;;
  cifar10) CNN=runs/cag/cifar10-cnn.safetensors; NCNN=runs/cag/cifar10-cnn-noise25.safetensors; EGC=zoo:cifar10 ;;
  *) echo "cag_scoreboard.sh: data set must be fashion-mnist or cifar10, got '$DATA'" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
B="--data $DATA --stats-from $DATA --out $OUT"
$PY bench/cag_scoreboard.py $B --n-per-class "$N" --controls real,seeds \
  --generator "cnn=$CNN" \
  --setting "paper:real_stats=False,batch=50" \
  --setting "paper-dist:bn_weight=0,batch=50" \
  --setting "seeded:init=data,batch=50" \
  --setting "seeded-noise:init=data,noise=0.25,mask=False,batch=50" \
  --generator "cnn-noise25=$NCNN" \
  --setting "noise:noise=0.5,mask=False,real_stats=False,batch=50,steps=300" \
  --setting "seeded-noise:init=data,noise=0.25,mask=False,batch=50" \
  > "$OUT/cnn.jsonl"
$PY bench/cag_scoreboard.py $B --n-per-class "$N_EGC" --generator "egc=$EGC" \
  --setting "defaults:real_stats=False" \
  --setting "seeded:init=data" \
  > "$OUT/egc.jsonl"
