#!/usr/bin/env bash
# The CIFAR-10 table (issues 3 and 18): EGC, a plain classifier and a class-conditional eps-prediction
# diffusion model (label embedding, null-label dropout, classifier-free guidance), each
# trained by `egc train --config configs/cifar10.yaml` for the SAME number of minutes, one after the
# other (never two trainings at once on 2 cores), then judged by the same `egc eval` flags: robust
# accuracy at L-inf 8/255 and L2 0.5 (pixel scale [0, 1]); Frechet distance / KID / precision-recall /
# conditional accuracy in the features of a CIFAR-10 judge CNN trained here by
# bench/train_feature_classifier.py (named "cifarcnn"; it is NOT Inception, so no figure is an FID).
#
#   bash bench/compare_cifar10.sh [MINUTES] [OUT]        (default 45 minutes each, runs/compare-c10)
#
# The data is the JPEG re-encoding of CIFAR-10 in ../shared/data (artefacts: not comparable with
# published CIFAR-10 figures). Results: OUT/{egc,classifier,ddpm}.json, OUT/report.html.
#
# LATENT_AE (environment): a trained autoencoder (run folder or file, `egc train --model autoencoder`, or a
# latent model whose embedded autoencoder is shared, e.g. zoo:cifar10):
# EGC and the ddpm then both run on its latents with the same UNet (model.patch=1: the latents are
# already small); the classifier stays on pixels. The autoencoder's own minutes are not in MINUTES:
# quote them beside the table.
# EGC_FLAGS, CLASSIFIER_FLAGS, DDPM_FLAGS (environment): extra `egc train` flags per model, e.g. the recipe
# chosen by bench/cifar10_trials.sh (EGC_FLAGS="--set loss.clean_shift=4" with CLASSIFIER_FLAGS the same, so
# the baseline gets the augmentation EGC's classifier got).
# zoo:cifar10's form (configs/cifar10-latent.yaml) at equal minutes, on zoo:cifar10's own autoencoder (the table
# of BENCHMARKS.md 4):
#   LATENT_AE=zoo:cifar10 EGC_FLAGS="--set loss.clean_shift=4" CLASSIFIER_FLAGS="--set loss.clean_shift=4" \
#     bash bench/compare_cifar10.sh 45 runs/compare-c10-45
set -euo pipefail
MIN=${1:-45}
OUT=${2:-runs/compare-c10}
EGC=${EGC:-.venv/bin/egc}
PY=${PY:-.venv/bin/python}
# The judge: zoo:cifarcnn (shipped, 83.0 %), or JUDGE=FILE, trained here first when FILE does not exist
JUDGE=${JUDGE:-zoo:cifarcnn}
EVAL_FLAGS=${EVAL_FLAGS:---n-test 10000 --n-robust 500 --pgd-steps 20 --restarts 1 --sanity-n 100 --square-queries 300 \
  --eps-linf 0.0078431,0.0156863,0.0313725 --eps-l2 0.25,0.5,1 --n-samples 1000 --sampler ddim --steps 100}
mkdir -p "$OUT"
# A judge trained here: random crops (reflect padding) and flips, as natural images want; its test accuracy
# is in OUT/judge.json and must be quoted beside every figure it judges. These flags made zoo:cifarcnn
# (83.0 % test accuracy, 1,398 s on a 2-core AMD EPYC, BENCHMARKS.md 4). Robust accuracy on 500 images.
JUDGE_ARGS=${JUDGE_ARGS:---epochs 10 --width 64 --max-shift 4 --pad reflect --hflip}
# shellcheck disable=SC2086
[ "${JUDGE#zoo:}" != "$JUDGE" ] || [ -f "$JUDGE" ] || $PY bench/train_feature_classifier.py --data cifar10 --name cifarcnn --threads 2 $JUDGE_ARGS --out "$JUDGE" > "$OUT/judge.json"
# A table longer than a session: rerunning the command resumes a training killed with its session and
# skips finished trainings and evaluations (bench/train_or_resume.sh).
# shellcheck source=bench/train_or_resume.sh
source "$(dirname "${BASH_SOURCE[0]}")/train_or_resume.sh"
for kind in egc classifier ddpm; do
  case $kind in
    egc) extra="${EGC_FLAGS:-}" ;;
    classifier) extra="${CLASSIFIER_FLAGS:-}" ;;
    ddpm) extra="--set model.conditioning=embedding ${DDPM_FLAGS:-}" ;;
  esac
  if [ -n "${LATENT_AE:-}" ] && [ "$kind" != classifier ]; then
    extra="$extra --set model.autoencoder=$LATENT_AE --set model.patch=1"
  fi
  # shellcheck disable=SC2086
  train_or_resume "$OUT" "$kind" --config configs/cifar10.yaml --model "$kind" $extra --minutes "$MIN"
done
for kind in egc classifier ddpm; do
  # shellcheck disable=SC2086
  [ -f "$OUT/$kind.json" ] || $EGC eval "$OUT/$kind" $EVAL_FLAGS --judge "$JUDGE" --quiet --out-dir "$OUT/$kind-eval" --json "$OUT/$kind.json" > /dev/null
done
$EGC report "$OUT/egc.json" "$OUT/classifier.json" "$OUT/ddpm.json" --out "$OUT/report.html" --title "CIFAR-10 (JPEG copy): EGC vs. baselines, $MIN min each"
echo "$OUT/report.html"
