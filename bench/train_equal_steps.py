"""Equal-steps training comparison for issue 5: does a faster path learn as well, step for step?

Trains the same recipe once per mode with `egc train --steps N` (same seed, same batches, same noise
draws), one mode after the other, and prints one JSON line with, per mode: seconds per step (from
the run's own log), and the mean and standard error of every logged loss term over the last
``--window`` logged steps. "Within noise" = the difference of two modes' means is within about two
standard errors of the difference (the SE uses the spread of the logged values, which are single
batches, so it is a loose, honest yardstick rather than a test).

Modes are bench/train_step.py's MODES (reference, released, released-bf16, default, default-bf16, ...).

    python bench/train_equal_steps.py --config configs/fashion-mnist.yaml --steps 300 --modes reference,default

With --runs NAME=DIR,... it trains nothing and compares existing runs' logs instead, over the logged
rows with steps in --step-range LO:HI (default: each run's last --window rows). Runs made with
--minutes anneal their learning rate by the clock, not by steps, so their mean lr over the range is
reported beside the losses: a lower lr there flatters that run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import MODES  # noqa: E402  (one table of modes for both benchmarks)

TERMS = ("total", "mse", "noisy_ce", "clean_ce", "noisy_acc", "clean_acc", "lr")


def _summarise(log: Path, window: int, step_range: tuple[int, int] | None = None) -> dict:
    with log.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"train_equal_steps: {log} has no logged rows")
    tail = rows[-window:] if step_range is None else [r for r in rows if step_range[0] <= int(r["step"]) <= step_range[1]]
    out: dict = {"logged_rows": len(rows), "final_step": int(rows[-1]["step"]), "rows_averaged": len(tail)}
    for k in TERMS:
        vals = [float(r[k]) for r in tail if r.get(k) not in (None, "")]
        if len(vals) >= 2:
            out[k] = {"mean": statistics.fmean(vals), "se": statistics.stdev(vals) / math.sqrt(len(vals))}
    # Step time from the elapsed clock between the first and last logged rows (compile time, which
    # falls before the first logged row, is excluded).
    if len(rows) >= 2:
        d_steps = int(rows[-1]["step"]) - int(rows[0]["step"])
        out["s_per_step"] = (float(rows[-1]["elapsed_s"]) - float(rows[0]["elapsed_s"])) / max(d_steps, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/fashion-mnist.yaml")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--window", type=int, default=5, help="last logged rows averaged (log_every steps apart)")
    p.add_argument("--modes", default="reference,default")
    p.add_argument("--data", help="data name passed to egc train --data (default: the config's)")
    p.add_argument("--set", action="append", default=[], help="extra override for every mode (key=value)")
    p.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--egc", default=str(Path(sys.executable).with_name("egc")))
    p.add_argument("--runs", help="NAME=RUN_DIR,...: compare these existing runs' log.csv instead of training")
    p.add_argument("--step-range", help="LO:HI: average the logged rows with LO <= step <= HI (with --runs)")
    a = p.parse_args()
    results = {}
    if a.runs:
        step_range = None
        if a.step_range:
            try:
                lo, hi = (int(v) for v in a.step_range.split(":"))
            except ValueError:
                p.error(f"--step-range: '{a.step_range}' is not LO:HI (two integers)")
            step_range = (lo, hi)
        for item in a.runs.split(","):
            name, _, run = item.partition("=")
            log = Path(run) / "log.csv"
            if not run or not log.is_file():
                p.error(f"--runs: '{item}' is not NAME=RUN_DIR with a log.csv")
            results[name] = {"run": run, **_summarise(log, a.window, step_range)}
        _report(a, list(results), results, {"runs": a.runs, "step_range": a.step_range})
        return
    modes = a.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"--modes: unknown {', '.join(bad)} (choose from {', '.join(MODES)})")
    root = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="egc-equal-steps-"))
    for mode in modes:
        run = root / mode
        cmd = [a.egc, "train", "--config", a.config, "--out", str(run), "--steps", str(a.steps), "--quiet",
               "--set", "train.sample_n=0", "--set", "train.ckpt_minutes=100000"]  # one checkpoint, at the end
        if a.data:
            cmd += ["--data", a.data]
        for s in [*a.set, *MODES[mode]]:
            cmd += ["--set", s]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"train_equal_steps: mode {mode} failed: {proc.stderr.strip().splitlines()[-1:]}")
        results[mode] = {"overrides": MODES[mode], **_summarise(run / "log.csv", a.window)}
    _report(a, modes, results, {"config": a.config, "steps": a.steps})


def _report(a: argparse.Namespace, modes: list[str], results: dict, head: dict) -> None:
    """Print one JSON line: every mode's summary and each mode's differences from the first."""
    first = results[modes[0]]
    diffs = {}
    for m in modes[1:]:
        d = {}
        for k in TERMS:
            if k in first and k in results[m]:
                delta = results[m][k]["mean"] - first[k]["mean"]
                se = math.hypot(results[m][k]["se"], first[k]["se"])
                d[k] = {"delta": delta, "in_se": delta / se if se > 0 else None}
        if "s_per_step" in first and "s_per_step" in results[m]:
            d["speedup"] = first["s_per_step"] / results[m]["s_per_step"]
        diffs[f"{m}_vs_{modes[0]}"] = d
    print(json.dumps({"benchmark": "train_equal_steps", **head, "window": a.window,
                      "extra": a.set, **results, "differences": diffs}))


if __name__ == "__main__":
    main()
