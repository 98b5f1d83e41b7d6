"""Accuracy of the diffusion classifier (Li et al. 2023) read out of a conditional model, at one budget of
network evaluations, beside the model's own head when it has one (issue 33). Prints JSON.

    python bench/dc_accuracy.py runs/cmp-fm/egc --schedule K:5,3:10 --n 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from egc import EGC  # noqa: E402
from egc.data import load_data, to_model_range  # noqa: E402
from egc.eval.diffusion_classifier import diffusion_classify, evaluations, model_eps, parse_schedule  # noqa: E402
from egc.host import cpu_name  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--schedule", default="K:5,3:10")
    p.add_argument("--n", type=int, default=100, help="test images (a seeded random subset)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    m = EGC.load(a.checkpoint)
    k = m.config.model.num_classes
    rounds = parse_schedule(a.schedule.replace("K", str(k)), k)
    ds = load_data(m.config.data, "test", shape=m.image_shape)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(a.seed))[:a.n]
    x, y = to_model_range(ds.images[idx]), ds.labels[idx]
    eps, space = model_eps(m)
    t0 = time.perf_counter()
    pred, _ = diffusion_classify(eps, space(x), k, m.schedule.alphas_cumprod, rounds, seed=a.seed)
    dc_s = time.perf_counter() - t0
    out = {"checkpoint": a.checkpoint, "kind": m.kind, "schedule": a.schedule, "rounds": rounds, "n": len(idx),
           "evaluations_per_image": evaluations(rounds), "dc_accuracy": float((pred == y).float().mean()),
           "dc_ms_per_image": round(1000 * dc_s / len(idx), 1), "test_split": ds.split_note, "cpu": cpu_name()}
    if m.can_classify:
        t0 = time.perf_counter()
        head = m.logits(x).argmax(1)
        out.update(head_accuracy=float((head == y).float().mean()), head_evaluations_per_image=1,
                   head_ms_per_image=round(1000 * (time.perf_counter() - t0) / len(idx), 2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
