#!/usr/bin/env bash
# Issue 16, item 5: a new user's first run on a ten-class set of 28 x 28 PNGs the project has never
# trained on, with no --config (the defaults are the recipe under test).
#   1. the data: bench/make_font_digits.py (digits 0-9 in the machine's fonts, random pose and stroke);
#   2. an independent judge CNN trained on it (bench/train_feature_classifier.py, name "digitcnn":
#      Frechet distances are in ITS features, not Inception FID); its test accuracy is in OUT/judge.json;
#   3. `egc train --data folder:OUT/data --out OUT/run --minutes MINUTES` (defaults only);
#   4. clean accuracy and ECE on the 5,000 test images; 500 class-balanced DDIM-20 samples at the
#      model's own guidance defaults, judged; a 100-image grid (one row per class).
#
#   bash bench/new_user_run.sh [MINUTES] [OUT]          (default 20 minutes, runs/new-user)
# One training at a time: the judge trains before the EGC run, never beside it.
set -euo pipefail
MIN=${1:-20}
OUT=${2:-runs/new-user}
B=${BIN:-.venv/bin}
mkdir -p "$OUT"
[ -d "$OUT/data/train" ] || "$B/python" bench/make_font_digits.py --out "$OUT/data" > "$OUT/data.json"
JUDGE="$OUT/digitcnn.safetensors"
[ -f "$JUDGE" ] || "$B/python" bench/train_feature_classifier.py --data "folder:$OUT/data" --name digitcnn --epochs 3 --threads 2 \
  --out "$JUDGE" > "$OUT/judge.json"
[ -d "$OUT/run/checkpoints" ] || "$B/egc" train --data "folder:$OUT/data" --out "$OUT/run" --minutes "$MIN" --quiet > "$OUT/train.json"
[ -f "$OUT/acc.json" ] || "$B/egc" eval "$OUT/run" --metrics acc,ece --quiet --json "$OUT/acc.json" > /dev/null
[ -f "$OUT/sample.jsonl" ] || "$B/python" bench/sample.py "$OUT/run" --n 500 --configs ddim:20:1 --judge "$JUDGE" > "$OUT/sample.jsonl"
"$B/egc" sample "$OUT/run" --n 100 --class-balanced --steps 20 --eta 1 --out "$OUT/grid.png" --quiet > /dev/null
"$B/python" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
judge = json.loads((out / "judge.json").read_text())
train = json.loads((out / "train.json").read_text() or "{}")
acc = json.loads((out / "acc.json").read_text())["metrics"]
row = next(r for r in map(json.loads, (out / "sample.jsonl").read_text().splitlines()) if r.get("benchmark") == "sample")
keep = {k: v for k, v in row.items() if k.endswith("_digitcnn") or k in ("guidance", "cfg", "guidance_interval", "cpu", "n")}
keep["sample_steps"] = row.get("steps")  # the sampler's steps; "steps" is the training's
print(json.dumps({"benchmark": "new_user_run", "judge_test_accuracy": judge.get("test_accuracy"), "steps": train.get("step"),
                  "elapsed_s": train.get("elapsed_s"), "accuracy": acc.get("accuracy"), "ece": acc.get("ece"), **keep}))
PY
