"""Training throughput of data parallelism on this CPU: 2 processes x 1 thread (torchrun, gloo, DDP)
against 1 process x 2 threads, same config, same global batch, same number of steps.

Both run the real ``egc train`` command in a temporary folder (a synthetic npz data set unless
--data is given; no sample grids). Images/s is measured from log.csv over the steps after the
first --warmup steps (start-up, first-step allocation and process-group set-up are excluded); the
wall time of each whole command is reported as well. Prints one JSON line.

    python bench/ddp_throughput.py                                  # small model, 28x28x1, batch 64, 60 steps
    python bench/ddp_throughput.py --size tiny --steps 6 --warmup 2 --batch 16    # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_npz(path: Path, n: int, size: int, classes: int = 10, seed: int = 0) -> Path:
    """uint8 [n, size, size, 1] noise with a class-dependent bright square (contents do not matter here)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    imgs = rng.integers(0, 60, size=(n, size, size, 1)).astype(np.uint8)
    q = max(1, size // 4)
    for i, k in enumerate(labels):
        r, c = divmod(int(k) % 16, 4)
        imgs[i, r * q:(r + 1) * q, c * q:(c + 1) * q] = 220
    np.savez(path, images=imgs, labels=labels.astype(np.int64))
    return path


def run(mode: str, out: Path, a: argparse.Namespace, data: str) -> dict:
    procs, threads = (1, 2) if mode == "1x2" else (2, 1)
    train = ["-m", "egc.cli", "train", "--out", str(out), "--data", data, "--model-size", a.size, "--steps", str(a.steps),
             "--batch-size", str(a.batch // procs), "--threads", str(threads), "--device", "cpu", "--quiet",
             "--set", f"train.log_every={a.warmup}", "--set", "train.sample_n=0", "--set", f"train.ckpt_every={a.steps}",
             "--set", "train.ckpt_minutes=1e9", "--set", f"train.precision={a.precision}", "--set", "train.warmup_steps=0"]
    for item in a.set or []:
        train += ["--set", item]
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else []) + train
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"{mode} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    with open(out / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("img_per_s")]
    timed = rows[1:] or rows  # drop the first window (warm-up)
    ips = sum(float(r["img_per_s"]) for r in timed) / len(timed)
    summary = json.loads((out / "summary.json").read_text())
    return {"processes": procs, "threads_per_process": threads, "img_per_s": round(ips, 2), "timed_steps": len(timed) * a.warmup,
            "wall_s": round(wall, 2), "final_total": summary.get("total")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=["tiny", "small", "base", "large"])
    ap.add_argument("--batch", type=int, default=64, help="global batch (each of 2 processes takes half)")
    ap.add_argument("--steps", type=int, default=60, help="total steps (a multiple of --warmup)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed first steps; also the length of each timed window")
    ap.add_argument("--image", type=int, default=28, help="image side of the synthetic data")
    ap.add_argument("--n", type=int, default=2048, help="images in the synthetic data")
    ap.add_argument("--data", help="a real data set instead (e.g. fashion-mnist)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra config overrides for both runs")
    a = ap.parse_args()
    if a.batch % 2 or a.steps % a.warmup or a.steps < 2 * a.warmup:
        raise SystemExit("--batch must be even and --steps a multiple of --warmup, at least 2 x --warmup")
    with tempfile.TemporaryDirectory(prefix="egc-ddp-bench-") as tmp:
        root = Path(tmp)
        data = a.data or f"npz:{synthetic_npz(root / 'data.npz', a.n, a.image)}"
        one = run("1x2", root / "one", a, data)
        two = run("2x1", root / "two", a, data)
    print(json.dumps({"bench": "ddp_throughput", "size": a.size, "global_batch": a.batch, "steps": a.steps, "precision": a.precision,
                      "data": a.data or f"synthetic {a.n}x{a.image}x{a.image}x1", "cpus": os.cpu_count(),
                      "one_process_two_threads": one, "two_processes_one_thread": two,
                      "speedup_2x1_over_1x2": round(two["img_per_s"] / one["img_per_s"], 3)}))


if __name__ == "__main__":
    main()
