"""Quick quality check of an EGC checkpoint on Fashion-MNIST: clean test accuracy, and the
independent judge's (zoo:fashioncnn) verdict on class-conditional samples. Prints one JSON line.

    python bench/quick_eval.py RUN_OR_CKPT [--n 300] [--steps 50] [--guidance 3] [--sampler ddim]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from egc import EGC
from egc.data import load_data, to_model_range
from egc.eval.judge import judge_samples, load_judge


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--test-n", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    m = EGC.load(a.checkpoint)
    test = load_data(m.config.data, "test", shape=m.image_shape)
    x = to_model_range(test.images[: a.test_n])
    y = test.labels[: a.test_n]
    t0 = time.time()
    pred = torch.cat([m.logits(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    acc = float((pred == y).float().mean())
    t1 = time.time()
    imgs, labels = m.sample(a.n, class_balanced=True, sampler=a.sampler, steps=a.steps, guidance=a.guidance, seed=a.seed)
    t2 = time.time()
    judged = judge_samples(load_judge("zoo:fashioncnn"), imgs, labels, x, kid_subsets=20, kid_subset_size=min(a.n, 200))
    print(json.dumps({"benchmark": "quick_eval", "checkpoint": a.checkpoint, "test_acc": acc, "sampler": a.sampler,
                      "steps": a.steps, "guidance": a.guidance, **judged, "classify_s": round(t1 - t0, 1),
                      "sample_s_per_image": round((t2 - t1) / a.n, 4)}))


if __name__ == "__main__":
    main()
