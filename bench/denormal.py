"""Subnormal floats: time of one EGC training step (loss with double backward + backward) with and
without torch.set_flush_denormal, on a checkpoint's trained raw weights and on fresh weights.
Trained weights drift into subnormal values that x86 CPUs process far more slowly. One JSON line.

    python bench/denormal.py RUN_OR_CKPT [--batch 16] [--threads 1] [--reps 4]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from egc.checkpoint import load_checkpoint
from egc.diffusion.energy import EnergyModel
from egc.diffusion.losses import egc_loss
from egc.diffusion.schedule import Schedule
from egc.nets import build_net


def step_time(net: torch.nn.Module, cfg, sched: Schedule, x: torch.Tensor, y: torch.Tensor, reps: int) -> float:
    """Best-of-reps seconds for one loss + backward (the first call is a warm-up)."""
    gen = torch.Generator().manual_seed(0)
    em = EnergyModel(net, cfg.model, sched)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        egc_loss(em, cfg.loss, x, y, gen).total.backward()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=4)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ck = load_checkpoint(a.checkpoint)
    cfg = ck.config
    sched = Schedule.make(cfg.diffusion.schedule, cfg.diffusion.steps)
    torch.manual_seed(0)
    shape = (a.batch, cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    x, y = torch.rand(shape) * 2 - 1, torch.randint(0, cfg.model.num_classes, (a.batch,))
    out: dict[str, float] = {}
    for name in ("trained", "fresh"):
        net = build_net(cfg.model)
        if name == "trained":
            net.load_state_dict(ck.group("model"))
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            out[f"{name}_{'flush' if flush else 'noflush'}_s"] = round(step_time(net, cfg, sched, x, y, a.reps), 4)
    out["trained_speedup_from_flush"] = round(out["trained_noflush_s"] / out["trained_flush_s"], 3)
    print(json.dumps({"benchmark": "denormal", "checkpoint": str(a.checkpoint), "step": ck.step, "batch": a.batch,
                      "threads": a.threads, **out, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
