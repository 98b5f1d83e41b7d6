#!/usr/bin/env bash
# Issue 18's first question, measured rather than assumed: which CIFAR-10 EGC form learns fastest per
# CPU-minute? Each trial trains for the same MINUTES with configs/cifar10.yaml (the default recipe: joint
# energy, logit scale 10, CE 0.1 / 0.02), one after the other (never two at once), and is judged the same
# way by bench/compare_generation.sh: test accuracy and ECE, a guidance sweep on N_SWEEP samples (DDIM 20),
# the chosen setting on N_FINAL, all in the features of zoo:cifarcnn (fd_cifarcnn, not Inception FID).
#   pixel/egc-joint    EGC on 32 x 32 x 3 pixels (2 x 2 patch stem)
#   pixel/ddpm-cond    the conditional diffusion model of the same UNet (the generation yardstick)
#   latent/egc-joint   EGC on the 8 x 8 x AE_CH latents of a KL autoencoder trained here first for AE_MIN
#                      minutes (not counted in MINUTES: quote both); OUT/ae.floor.jsonl has the judge's
#                      view of its reconstructions (bench/ae_floor.py), the floor under any latent sample
#
#   bash bench/cifar10_trials.sh [MINUTES] [OUT]        (default 15 minutes each, runs/c10-trials)
#   then: python bench/gen_table.py OUT/pixel; python bench/gen_table.py OUT/latent
set -euo pipefail
MIN=${1:-15}
OUT=${2:-runs/c10-trials}
AE_MIN=${AE_MIN:-10}
AE_CH=${AE_CH:-4}  # latent channels (8 x 8 x AE_CH); zoo:cifar10 uses 8 and AE_MIN 30 (configs/cifar10-ae.yaml)
B=${BIN:-.venv/bin}
export BIN=$B CONFIG=configs/cifar10.yaml N_SWEEP=${N_SWEEP:-200} N_FINAL=${N_FINAL:-500}
mkdir -p "$OUT"
log() { echo "$(date +%T) $*" >&2; }

log "autoencoder ($AE_MIN min)"
[ -d "$OUT/ae/checkpoints" ] || "$B/egc" train --model autoencoder --data cifar10 --out "$OUT/ae" --minutes "$AE_MIN" --quiet \
  --set model.ae.downsample=4 --set model.ae.latent_channels="$AE_CH" > "$OUT/ae.train.json"
# the floor under latent samples: 1,000 training images and their reconstructions judged like samples
[ -s "$OUT/ae.floor.jsonl" ] || "$B/python" bench/ae_floor.py "$OUT/ae" --n 1000 > "$OUT/ae.floor.jsonl"
# The two EGC forms first, the yardstick last: a session that ends early has the comparison that decides.
log "latent EGC ($MIN min)"
EGC_FLAGS="--set model.autoencoder=$OUT/ae --set model.patch=1" bash bench/compare_generation.sh "$MIN" "$OUT/latent" egc-joint
log "pixel EGC ($MIN min)"
bash bench/compare_generation.sh "$MIN" "$OUT/pixel" egc-joint
log "the conditional ddpm ($MIN min)"
bash bench/compare_generation.sh "$MIN" "$OUT/pixel" ddpm-cond
log "done"
