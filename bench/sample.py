"""Sampler benchmark on a trained model: seconds per image and the independent judge's verdict
(conditional accuracy, Frechet distance in its features) against the number of network evaluations.

    python bench/sample.py zoo:fashion-mnist [--n 500] [--guidance 3] [--configs ddpm:1000,ddpm:250,ddim:100,ddim:50,ddim:20,dpm++2m:20,dpm++2m:10] [--precisions fp32,bf16]

A configuration is SAMPLER:STEPS[:ETA[:GUIDANCE[:CFG[:LO-HI]]]]: ETA is DDIM's noise (0 deterministic, 1 = DDPM's
variance), GUIDANCE overrides --guidance (classifier guidance) and CFG --cfg (classifier-free guidance of
a conditional model) for that row, LO-HI the guidance interval (guidance only at steps with LO <= t/T <= HI;
default the model's own), so one run sweeps the guidance scales. A model that cannot sample
classes (an unconditional ddpm) samples unconditionally and reports no conditional accuracy.
Every configuration runs once per entry of --precisions (auto = bf16 on CPUs with native bf16, else
fp32; bf16 = autocast of the network, the samplers' arithmetic stays float64/float32), same seed.

Prints one JSON line per sampler configuration, then a summary line. Frechet distances are in the
features of the judge named in the key (for example fd_fashioncnn), not Inception features. --judge
defaults to the data set's shipped judge (zoo:fashioncnn for fashion-mnist, zoo:cifarcnn for cifar10);
any other data set needs --judge FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from egc import EGC
from egc.config import PRECISIONS, parse_guidance_interval
from egc.data import load_data, to_model_range
from egc.eval.evaluate import resolve_judge
from egc.eval.judge import judge_samples


def _cpu() -> str:
    """The CPU model and its bf16 support, recorded beside every figure."""
    from egc.device import native_bf16

    name = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} (native bf16: {'yes' if native_bf16() else 'no'})"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's own (sample.guidance)")
    p.add_argument("--cfg", type=float, default=None, help="default: the model's own (sample.cfg)")
    p.add_argument("--configs", default="ddpm:1000,ddpm:250,ddim:100,ddim:50,ddim:20,dpm++2m:20,dpm++2m:10")
    p.add_argument("--judge", default=None, help="zoo:NAME or file; default: the data set's shipped judge")
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
    test = to_model_range(load_data(m.config.data, "test", shape=m.image_shape).images)
    judge, why = resolve_judge(m, m.config.data.name, a.judge)
    if judge is None:
        raise SystemExit(f"sample.py: {why}")
    rows = []
    for item, prec in [(c, q) for c in a.configs.split(",") for q in precisions]:
        m = models[prec]
        parts = item.split(":")
        if not 2 <= len(parts) <= 6:
            raise SystemExit(f"--configs: '{item}' is not SAMPLER:STEPS[:ETA[:GUIDANCE[:CFG[:LO-HI]]]]")
        sampler, steps = parts[0], int(parts[1])
        eta = float(parts[2]) if len(parts) > 2 else None  # None: the sampler's own
        guidance = float(parts[3]) if len(parts) > 3 else a.guidance if a.guidance is not None else m.config.sample.guidance
        cfg = float(parts[4]) if len(parts) > 4 else a.cfg if a.cfg is not None else m.config.sample.cfg
        interval = (parse_guidance_interval(parts[5], f"--configs '{item}'", sep="-") if len(parts) > 5
                    else (m.config.sample.guidance_tmin, m.config.sample.guidance_tmax))
        t0 = time.time()
        imgs, labels = m.sample(a.n, class_balanced=m.conditional, sampler=sampler, steps=steps, guidance=guidance, cfg=cfg, eta=eta, seed=a.seed,
                                guidance_interval=interval)
        dt = time.time() - t0
        judged = judge_samples(judge, imgs, labels if m.conditional else torch.zeros_like(labels), test, kid_subsets=50, kid_subset_size=min(a.n, 500))
        if not m.conditional:
            judged = {k: v for k, v in judged.items() if not k.startswith("cond_acc_")}
        used_eta = eta if eta is not None else {"ddpm": 1.0}.get(sampler, 0.0)  # dpm++2m is deterministic: eta 0 in effect
        row = {"benchmark": "sample", "sampler": sampler, "steps": steps, "eta": used_eta, "nfe": steps, "guidance": guidance, "cfg": cfg, "guidance_interval": list(interval), "n": a.n,
               "precision": m.precision, "conditioning": m.config.model.conditioning, "kind": m.kind, "cpu": _cpu(),
               "s_per_image": dt / a.n, **judged}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"benchmark": "sample_summary", "checkpoint": a.checkpoint, "rows": len(rows)}))


if __name__ == "__main__":
    from egc.errors import EgcError

    try:
        main()
    except EgcError as e:  # a bad checkpoint, data name or flag: one line, not a traceback
        raise SystemExit(f"{sys.argv[0]}: {e}")
