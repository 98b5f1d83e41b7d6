"""Sampler benchmark on a trained model: seconds per image and the independent judge's verdict
(conditional accuracy, Frechet distance in its features) against the number of network evaluations.

    python bench/sample.py zoo:fashion-mnist [--n 500] [--guidance 3] [--configs ddpm:1000,ddpm:250,ddim:100,ddim:50,ddim:20,dpm++2m:20,dpm++2m:10] [--precisions fp32,bf16]

A configuration is SAMPLER:STEPS[:ETA[:GUIDANCE]]: ETA is DDIM's noise (0 deterministic, 1 = DDPM's
variance), GUIDANCE overrides --guidance for that row (few-step samplers may want another scale).
Every configuration runs once per entry of --precisions (auto = bf16 on CPUs with native bf16, else
fp32; bf16 = autocast of the network, the samplers' arithmetic stays float64/float32), same seed.

Prints one JSON line per sampler configuration, then a summary line. Frechet distances are in the
features of the judge named in the key (for example fd_fashioncnn), not Inception features.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from egc import EGC
from egc.config import PRECISIONS
from egc.data import load_dataset, to_model_range
from egc.eval.judge import judge_samples, load_judge


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--configs", default="ddpm:1000,ddpm:250,ddim:100,ddim:50,ddim:20,dpm++2m:20,dpm++2m:10")
    p.add_argument("--judge", default="zoo:fashioncnn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precisions", default="auto", help="comma list of auto, fp32, bf16")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    precisions = a.precisions.split(",")
    bad = [x for x in precisions if x not in PRECISIONS]
    if bad:
        raise SystemExit(f"--precisions: '{bad[0]}' is not auto, fp32 or bf16")
    models = {prec: EGC.load(a.checkpoint, precision=prec) for prec in precisions}
    m = models[precisions[0]]
    test = to_model_range(load_dataset(m.config.data.name, "test", m.config.data.root).images)
    judge = load_judge(a.judge)
    rows = []
    for item, prec in [(c, q) for c in a.configs.split(",") for q in precisions]:
        m = models[prec]
        parts = item.split(":")
        if not 2 <= len(parts) <= 4:
            raise SystemExit(f"--configs: '{item}' is not SAMPLER:STEPS[:ETA[:GUIDANCE]]")
        sampler, steps = parts[0], int(parts[1])
        eta = float(parts[2]) if len(parts) > 2 else 0.0
        guidance = float(parts[3]) if len(parts) > 3 else a.guidance
        t0 = time.time()
        imgs, labels = m.sample(a.n, class_balanced=True, sampler=sampler, steps=steps, guidance=guidance, eta=eta, seed=a.seed)
        dt = time.time() - t0
        row = {"benchmark": "sample", "sampler": sampler, "steps": steps, "eta": eta, "nfe": steps, "guidance": guidance, "n": a.n,
               "precision": m.precision,
               "s_per_image": dt / a.n, **judge_samples(judge, imgs, labels, test, kid_subsets=50, kid_subset_size=min(a.n, 500))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"benchmark": "sample_summary", "checkpoint": a.checkpoint, "rows": len(rows)}))


if __name__ == "__main__":
    main()
