#!/usr/bin/env bash
# Pause bench/compare_kinds.sh (to free the cores for a while): stop the script first, so that it does not go
# on to the next row, then interrupt the row that is training, which saves a checkpoint and exits. Running
# compare_kinds.sh again with the same arguments resumes that row.
#
#   bash bench/pause_compare.sh runs/cmp-fm
set -uo pipefail
OUT=${1:?output folder of compare_kinds.sh}
pkill -f "compare_kinds.sh .* $OUT\$" && echo "stopped compare_kinds.sh for $OUT"
pid=$(pgrep -f "egc (train|eval|certify) .*$OUT/" | head -1)
if [ -n "$pid" ]; then
  kill -INT "$pid" && echo "interrupted $(tr '\0' ' ' < /proc/"$pid"/cmdline | cut -c1-120)"
  while kill -0 "$pid" 2>/dev/null; do sleep 2; done   # a training saves its checkpoint before it exits
fi
pgrep -f "dc_accuracy.py .*$OUT/" | xargs -r kill
echo "nothing of $OUT is running; resume with: bash bench/compare_kinds.sh DATA MINUTES $OUT"
