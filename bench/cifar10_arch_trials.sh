#!/usr/bin/env bash
# Issue 18's second question, measured rather than assumed: in zoo:cifar10's form (EGC on the 8 x 8 x 8
# latents of zoo:cifar10's own autoencoder, joint energy, logit scale 10, CE 0.1 / 0.02, clean shifts of 4),
# which network size, layout and peak learning rate learn fastest per CPU-minute? Every variant trains for
# the same MINUTES (its own cosine schedule over them), one after the other (never two at once), and is
# judged like the first trials (bench/compare_generation.sh: test accuracy and ECE on 10,000 images, a
# guidance sweep on N_SWEEP samples with DDIM 20, the picked setting on N_FINAL, judge zoo:cifarcnn, so
# fd_cifarcnn, not Inception FID).
#   base      configs/cifar10.yaml's "small" UNet: 48 channels, levels (1, 2) = 8x8 and 4x4, 2 res blocks,
#             attention at 4x4, peak learning rate 1e-3 (what zoo:cifar10 is)
#   lr2e-3    the same network, peak learning rate 2e-3
#   ch64      64 channels instead of 48 (about 1.8x the weights)
#   ch32      32 channels (about 0.45x the weights)
#   res1      one res block per level instead of two (fewer weights, more steps in the same minutes)
#   mult122   a third level (1, 2, 2): 8x8, 4x4, 2x2
#   A+B       two changes at once, e.g. res1+lr2e-3
#
#   bash bench/cifar10_arch_trials.sh [MINUTES] [OUT] [VARIANT ...]    (default 15, runs/c10-arch, all but ch32)
#   then: for v in OUT/*/; do python bench/gen_table.py $v; done
set -euo pipefail
MIN=${1:-15}
OUT=${2:-runs/c10-arch}
shift $(( $# < 2 ? $# : 2 ))
VARIANTS=${*:-base lr2e-3 ch64 res1 mult122}
export CONFIG=configs/cifar10.yaml N_SWEEP=${N_SWEEP:-200} N_FINAL=${N_FINAL:-500}
FORM="--set model.autoencoder=zoo:cifar10 --set model.patch=1 --set loss.clean_shift=4"
flags() {
  case $1 in
    base) echo "" ;;
    lr2e-3) echo "--set train.lr=0.002" ;;
    ch64) echo "--set model.channels=64" ;;
    ch32) echo "--set model.channels=32" ;;
    res1) echo "--set model.num_res_blocks=1" ;;
    mult122) echo "--set model.channel_mult=[1,2,2]" ;;
    *) echo "cifar10_arch_trials.sh: unknown variant '$1' (base lr2e-3 ch64 ch32 res1 mult122, or several joined by +)" >&2; return 2 ;;
  esac
}
for v in $VARIANTS; do
  extra=""
  for part in ${v//+/ }; do
    extra="$extra $(flags "$part")" || exit 2
  done
  echo "$(date +%T) variant $v ($MIN min)" >&2
  EGC_FLAGS="$FORM $extra" bash "$(dirname "${BASH_SOURCE[0]}")/compare_generation.sh" "$MIN" "$OUT/$v" egc-joint
done
