"""Where an EGC training step's time goes, per network, beside the DDPM's and the fast CNN's step.

For each model the step is split into its phases, each timed with the ones before it done again
untimed, so a phase's time is its own:
    forward        the network's output map, the energy and the pooled logits (EGC) / eps or logits
    input_grad     EGC: d E / d x with create_graph (the eps prediction, itself differentiable)
    backward       the loss's backward (for EGC through the input gradient: the double backward)
    optimizer      AdamW's step
The training path's precision and memory format are the host's (``--precision auto`` rules,
egc.device), so the figures mean what a run on this host pays. Prints one JSON line: ms per phase,
ms per step, and every step as a ratio to the DDPM's and the CNN's in the same run.

    python bench/step_cost.py [--data-shape 3,32,32] [--batch 64] [--steps 8] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as tfn

from egc.config import load_config
from egc.device import resolve_channels_last, resolve_precision
from egc.diffusion.energy import EnergyModel
from egc.diffusion.schedule import Schedule
from egc.host import cpu_name
from egc.nets import build_net

# rows: name -> config overrides (the small size of each)
ROWS: dict[str, list[str]] = {
    "egc-unet": ["model.kind=egc"],
    "egc-hybrid": ["model.kind=egc", "model.backbone=hybrid"],
    "egc-hybrid-group": ["model.kind=egc", "model.backbone=hybrid", "model.norm=group"],
    "egc-hybrid-p2": ["model.kind=egc", "model.backbone=hybrid", "model.patch=2"],
    "egc-hybrid-p2-group": ["model.kind=egc", "model.backbone=hybrid", "model.patch=2", "model.norm=group"],
    "egc-hybrid-w32": ["model.kind=egc", "model.backbone=hybrid", "model.channels=32"],
    "ddpm": ["model.kind=ddpm", "model.conditioning=embedding"],
    "cnn": ["model.kind=cnn"],
}


def _phases(kind: str, em: EnergyModel, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, sched: Schedule,
            autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, Callable[[], object]]:
    """Closures that run the step up to and including each phase (the last one is the full step)."""
    t = torch.randint(0, sched.num_steps, (x.shape[0],))
    eps = torch.randn_like(x)
    xt = sched.add_noise(x, t, eps)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    if kind == "egc":
        def fwd():
            with autocast():
                xg = xt.detach().requires_grad_(True)
                e, lg = em.energy_and_logits(xg, t, None)
            return xg, e, lg

        def grad():
            xg, e, lg = fwd()
            with autocast():
                (g,) = torch.autograd.grad(e.sum(), xg, create_graph=True)
            return g, lg

        def loss():
            g, lg = grad()
            return (g.float() - eps).pow(2).mean() + 0.1 * tfn.cross_entropy(lg, y)
    elif kind == "ddpm":
        def fwd():
            with autocast():
                return net(xt, t, y)


        def loss():
            return (fwd().float() - eps).pow(2).mean()
    else:  # cnn
        def fwd():
            with autocast():
                return net(x)[:, :, 0, 0]


        def loss():
            return tfn.cross_entropy(fwd().float(), y)

    def back():
        opt.zero_grad(set_to_none=True)
        loss().backward()

    def step():
        back()
        opt.step()

    if kind == "egc":
        return {"forward": fwd, "input_grad": grad, "backward": back, "optimizer": step}
    return {"forward": fwd, "backward": back, "optimizer": step}


def _time(fn: Callable[[], object], steps: int) -> float:
    fn()  # warm-up (allocator, oneDNN primitives)
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure(name: str, shape: tuple[int, int, int], batch: int, steps: int, precision: str, channels_last: bool,
            size: str = "small") -> dict:
    c, h, _ = shape
    cfg = load_config(None, [f"model.size={size}", *ROWS[name], f"model.in_channels={c}", f"model.image_size={h}",
                             "model.space=pixel"]).model
    net = build_net(cfg)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    sched = Schedule.make("ldm-linear", 1000)
    em = EnergyModel(net, cfg, sched)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *shape), generator=gen) * 2 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=gen)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    cum = {k: _time(fn, steps) for k, fn in _phases(cfg.kind, em, net, x, y, sched, autocast).items()}
    own, prev = {}, 0.0
    for k, v in cum.items():  # cumulative -> each phase's own share
        own[k] = round(1e3 * max(v - prev, 0.0), 2)
        prev = v
    return {"params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3), "ms_per_step": round(1e3 * prev, 1), "ms": own}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-shape", default="3,32,32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 1 step: checks the bench runs")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    shape = tuple(int(v) for v in a.data_shape.split(","))
    batch, steps = a.batch, a.steps
    if a.smoke:
        shape, batch, steps = (1, 8, 8), 4, 1
    precision = resolve_precision("auto", torch.device("cpu"))
    channels_last = resolve_channels_last("auto", torch.device("cpu"))
    rows = [r for r in a.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"step_cost: unknown row(s) {', '.join(bad)} (choose from {', '.join(ROWS)})")
    size = "tiny" if a.smoke else "small"
    res = {r: measure(r, shape, batch, steps, precision, channels_last, size) for r in rows}
    for r in res.values():
        for base in ("ddpm", "cnn"):
            if base in res:
                r[f"x_{base}"] = round(r["ms_per_step"] / res[base]["ms_per_step"], 2)
    print(json.dumps({"cpu": cpu_name(), "precision": precision, "channels_last": channels_last, "shape": list(shape),
                      "batch": batch, "size": size, "threads": torch.get_num_threads(), "rows": res}))


if __name__ == "__main__":
    main()
