#!/usr/bin/env bash
# From a finished training run to a zoo file with its measured figures (how zoo:fashion-mnist was made):
#   1. a guidance sweep: bench/sample.py, DDIM 20 (eta 1), N_SWEEP class-balanced samples per setting;
#   2. the setting chosen by bench/gen_table.py's stated rule (lowest fd among the settings with at least
#      0.9 x the sweep's best conditional accuracy) is recorded in the file as its sampling default:
#      `egc export RUN --guidance S --cfg W --guidance-interval LO,HI`;
#   3. the exported file judged on N_FINAL samples with DDIM 50, eta 1 and eta 0;
#   4. `egc eval` of the file: accuracy on the whole test set, ECE, noisy accuracy, PGD with the
#      sanity checks, OOD AUROC of the energy (EVAL_FLAGS);
#   5. `egc demo --model FILE`: the class-balanced grid and the shipped test images classified.
# Judges: the data set's shipped judge (zoo:fashioncnn, zoo:cifarcnn) unless JUDGE=FILE; Frechet distances are
# in its features (fd_<judge>), never Inception FID. Every step skips what OUT already holds, so a stopped
# release resumes. One job at a time: run it after the training, never beside it.
#
#   bash bench/zoo_release.sh RUN OUT [NAME]          (NAME: default the run folder's name)
#   SWEEP="ddim:20:1:30:0:0-0.6,..."  N_SWEEP=500 N_FINAL=1000  EVAL_FLAGS="..."  THREADS=2 (environment)
#   HALF=1: the file stores the network in float16 (half the size; a latent model's autoencoder stays float32);
#   every figure after the export is of that file
#   (a setting without :LO-HI takes the model's own guidance interval; :0-1 = guidance at every step)
#   CIFAR-10: EVAL_FLAGS="$CIFAR_EVAL" with the L-inf 8/255 and L2 0.5 budgets (see below), and a sweep with
#   classifier-free guidance, where the latent CIFAR-10 EGC does best (BENCHMARKS.md 4, the zoo run's midpoint):
#   SWEEP=ddim:20:1:0:1,ddim:20:1:30:0:0-0.6,ddim:20:1:0:2,ddim:20:1:10:1:0-0.6,ddim:20:1:0:0
set -euo pipefail
RUN=${1:?usage: bench/zoo_release.sh RUN OUT [NAME]}
OUT=${2:?usage: bench/zoo_release.sh RUN OUT [NAME]}
NAME=${3:-$(basename "$RUN")}
B=${BIN:-.venv/bin}
N_SWEEP=${N_SWEEP:-500}
N_FINAL=${N_FINAL:-1000}
# the default-recipe EGC's region (BENCHMARKS.md 7): classifier guidance 10-100, mostly at the less noisy steps
SWEEP=${SWEEP:-ddim:20:1:30:0:0-0.6,ddim:20:1:10:0:0-0.6,ddim:20:1:100:0:0-0.6,ddim:20:1:30:0:0-1,ddim:20:1:10:1:0-0.6,ddim:20:1:30:0:0-0.4}
# Fashion-MNIST budgets (pixel range [0, 1]); for CIFAR-10 the usual 2/255, 4/255, 8/255 and L2 0.25-1:
#   EVAL_FLAGS="--metrics acc,ece,noisy_acc,robust,ood --n-test 10000 --n-robust 500 --pgd-steps 20 --restarts 1 --sanity-n 100
#     --square-queries 300 --eps-linf 0.0078431,0.0156863,0.0313725 --eps-l2 0.25,0.5,1"
EVAL_FLAGS=${EVAL_FLAGS:---metrics acc,ece,noisy_acc,robust,ood --n-test 10000 --n-robust 200 --pgd-steps 20 --restarts 1 \
  --sanity-n 100 --square-queries 300 --eps-linf 0.05,0.1,0.2 --eps-l2 0.5,1.5,3}
JUDGE_FLAG=${JUDGE:+--judge $JUDGE}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
log() { echo "$(date +%T) $*" >&2; }

log "sweep $NAME"
# shellcheck disable=SC2086
[ -s "$OUT/$NAME.sweep.jsonl" ] || "$B/python" bench/sample.py "$RUN" --n "$N_SWEEP" --configs "$SWEEP" $JUDGE_FLAG --threads "$THREADS" > "$OUT/$NAME.sweep.jsonl"
pick=$("$B/python" bench/gen_table.py "$OUT" --pick "$NAME")
log "picked $pick"
IFS=: read -r _ _ _ S W IV <<< "$pick"
IV=${IV:-0-1}
[ -s "$OUT/$NAME.safetensors" ] || "$B/egc" export "$RUN" --out "$OUT/$NAME.safetensors" --guidance "$S" --cfg "$W" \
  --guidance-interval "${IV%-*},${IV#*-}" ${HALF:+--half} > "$OUT/$NAME.export.json"
log "final: DDIM 50 on $N_FINAL"
# shellcheck disable=SC2086
[ -s "$OUT/$NAME.final.jsonl" ] || "$B/python" bench/sample.py "$OUT/$NAME.safetensors" --n "$N_FINAL" --configs ddim:50:1,ddim:50:0 $JUDGE_FLAG --threads "$THREADS" \
  > "$OUT/$NAME.final.jsonl"
log "eval"
# shellcheck disable=SC2086
[ -s "$OUT/$NAME.eval.json" ] || "$B/egc" eval "$OUT/$NAME.safetensors" $EVAL_FLAGS --threads "$THREADS" --quiet --json "$OUT/$NAME.eval.json" > /dev/null
log "demo"
# a user's own data set (folder:, npz:) has no shipped demo images: then no demo, said in one line
[ -s "$OUT/demo.json" ] || "$B/egc" demo --model "$OUT/$NAME.safetensors" --out "$OUT/demo" --threads "$THREADS" > "$OUT/demo.json" \
  || { rm -f "$OUT/demo.json"; log "no demo grid (see the line above)"; }
log "done: $OUT/$NAME.safetensors"
