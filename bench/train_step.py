"""Benchmark one full EGC training step: the reference formulation against the project's default.

(a) reference: fp32, eager, contiguous memory, the loss exactly as in the paper (no Gaussian prior
    term), on the same architecture; (a') released: the same, on the released UNet's layout (GroupNorm
    in every block, no patch stem: full-resolution first level); (b) default: the project's training path (bf16 autocast and
    the config's memory format and energy prior); default-fp32: the same in fp32; compiled: default
    with train.compile (torch.compile of the torch.func.grad form; compile time is reported apart and
    not in s_per_step). Each mode runs in its own subprocess so its peak memory (max RSS) is its own.
    Also counts the FLOPs of one step of the default (and compiled) mode with torch.utils.flop_counter's
    per-operator formulas and compares the achieved rate with a large matmul's rate in the same dtype
    on this CPU, the convolutions' share of the step time and their rate, and (with both reference and
    default) the ceiling: the reference step time over the default's FLOPs at the matmul peak. Prints
    one JSON line.

    python bench/train_step.py [--size small] [--batch 64] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from egc.device import resolve_channels_last, resolve_precision


_PAPER = ["model.energy_prior=none"]  # the loss exactly as in the paper (no Gaussian prior term)
_RELEASED = ["model.norm=group", "model.patch=1"]  # the released UNet's layout: GroupNorm everywhere, no patch stem
# Config overrides per mode, shared with bench/train_equal_steps.py so both benchmarks mean the same thing.
MODES: dict[str, list[str]] = {
    "reference": [*_PAPER, "train.precision=fp32", "train.channels_last=false"],
    "released": [*_PAPER, "train.precision=fp32", "train.channels_last=false", *_RELEASED],
    # The released layout on the fast path: same network and loss as "released", only bf16 autocast
    # (and channels_last in the -cl variant), so equal-step losses can be compared with "released".
    "released-bf16": [*_PAPER, "train.precision=bf16", "train.channels_last=false", *_RELEASED],
    "released-bf16-cl": [*_PAPER, "train.precision=bf16", "train.channels_last=true", *_RELEASED],
    # The project's layout without the patch stem (full-resolution first level, no normalisation).
    "fullres-bf16": [*_PAPER, "train.precision=bf16", "train.channels_last=false", "model.patch=1"],
    # The project's layout (2 x 2 patch stem) with the released GroupNorm put back: which of the two
    # layout changes costs the per-step eps-MSE.
    "group-bf16": [*_PAPER, "train.precision=bf16", "train.channels_last=false", "model.norm=group"],
    "default": [],
    "default-fp32": ["train.precision=fp32"],
    "default-bf16": ["train.precision=bf16"],
    "compiled": ["train.compile=true"],
    # The label-conditioned energies of issue 16 on the default path: "joint" adds no forward pass,
    # "embedding" adds the null-label forward of the noisy classification term.
    "cond-none": ["model.conditioning=none"],
    "cond-joint": ["model.conditioning=joint"],
    "cond-embedding": ["model.conditioning=embedding"],
}


def _setup(mode: str, size: str, batch: int, image: int, channels: int, classes: int, extra: list[str]):
    from egc.config import load_config
    from egc.diffusion.energy import EnergyModel
    from egc.diffusion.schedule import Schedule
    from egc.nets import build_net

    over = [f"model.size={size}", f"model.image_size={image}", f"model.in_channels={channels}", f"model.num_classes={classes}",
            f"train.batch_size={batch}"]
    over += MODES[mode]
    over += list(extra)
    cfg = load_config(None, over)
    torch.manual_seed(0)
    net = build_net(cfg.model)
    torch.nn.init.normal_(net.out.weight, std=0.02)  # a trained-like, non-flat energy
    if resolve_channels_last(cfg.train.channels_last):
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.rand(batch, channels, image, image) * 2 - 1
    if resolve_channels_last(cfg.train.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    return cfg, net, opt, EnergyModel(net, cfg.model, Schedule.make(cfg.diffusion.schedule)), x, y


def _step(cfg, net, opt, em, x, y, gen, eps_fn=None):
    """One step exactly as ``egc train`` takes it (the library's forward_backward, then the optimiser);
    ``em`` is the energy model of ``net``, built once as the trainer does."""
    import functools

    from egc.diffusion.losses import egc_loss
    from egc.train.loop import forward_backward

    loss_fn = egc_loss if eps_fn is None else functools.partial(egc_loss, eps_fn=eps_fn)
    parts, _, _ = forward_backward(em, net, opt, loss_fn, cfg, x, y, gen, resolve_precision(cfg.train.precision))
    opt.step()
    return float(parts.total.detach())


class _Flops(TorchDispatchMode):
    """Sums torch.utils.flop_counter's per-operator FLOP formulas over every aten call. FlopCounterMode
    itself cannot run here: its module tracker's backward hooks fail inside the double backward on
    torch 2.13 ("A leaf node was passed to _will_engine_execute_node ..."). Ops without a formula
    (elementwise, normalisation) count 0, so this is the convolution/matmul work, as FlopCounterMode's."""

    def __init__(self) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry, self.total, self.by_op = flop_registry, 0, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.registry.get(func._overloadpacket)
        if formula is not None:
            n = int(formula(*args, **kwargs, out_val=out))
            self.total += n
            name = str(func._overloadpacket).replace("aten.", "")
            self.by_op[name] = self.by_op.get(name, 0) + n
        return out


_CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward",
             "aten::thnn_conv2d", "aten::_convolution")


def _conv_profile(cfg, net, opt, em, x, y, gen, by_op: dict, peak: float) -> dict:
    """Where one step's time goes: the convolutions' share of the profiled CPU time and the rate they
    run at, against the matmul peak. Convolutions near the peak mean that, at this architecture and
    FLOP count, no kernel-level change can buy much more (the question issue 5 asks)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _step(cfg, net, opt, em, x, y, gen)
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    conv_us = sum(e.self_cpu_time_total for e in events if e.key in _CONV_OPS)
    conv_flops = by_op.get("convolution", 0) + by_op.get("convolution_backward", 0)
    rate = conv_flops / (conv_us * 1e-6) / 1e9 if conv_us else 0.0
    return {"conv_time_share": conv_us / total_us if total_us else 0.0, "conv_gflops": rate, "conv_share_of_peak": rate / peak}


def _matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of an n x n matmul in dtype on this CPU: the practical peak the step is measured against."""
    m1, m2 = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        m1 @ m2
    t0 = time.perf_counter()
    for _ in range(reps):
        m1 @ m2
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def _cpu() -> dict:
    """The CPU features that decide what bf16 can gain (AMX tiles multiply bf16 far faster than AVX-512)."""
    return {"avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()), "amx_tile": bool(torch.cpu._is_amx_tile_supported())}


def run_mode(a: argparse.Namespace) -> dict:
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # as egc train does (train.flush_denormal)
    cfg, net, opt, em, x, y = _setup(a.mode, a.size, a.batch, a.image, a.channels, a.classes, a.set or [])
    gen = torch.Generator().manual_seed(0)
    eps_fn = None
    out: dict = {"mode": a.mode}
    if cfg.train.compile:
        from egc.diffusion.energy import CompiledEps

        eps_fn = CompiledEps()
        t0 = time.perf_counter()
        _step(cfg, net, opt, em, x, y, gen, eps_fn)  # the first call compiles
        out["compile_s"] = time.perf_counter() - t0
        if eps_fn.error:
            out["compile_error"] = eps_fn.error
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        _step(cfg, net, opt, em, x, y, gen, eps_fn)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out.update({"s_per_step": med, "images_per_s": a.batch / med, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    if a.mode in ("default", "compiled", "reference"):
        # Counted on the eager path (a compiled graph's kernels are not dispatched one by one): the
        # same arithmetic, so achieved = counted FLOPs / this mode's measured step time.
        counter = _Flops()
        with counter:
            _step(cfg, net, opt, em, x, y, gen)
        flops = counter.total
        out["flops_by_op"] = counter.by_op
        out["flops_per_step"] = flops
        out["achieved_gflops"] = flops / med / 1e9
        dtype = torch.bfloat16 if resolve_precision(cfg.train.precision) == "bf16" else torch.float32
        peak = _matmul_peak(dtype, a.peak_n)
        out["matmul_peak_gflops"] = peak
        out["peak_dtype"] = str(dtype).replace("torch.", "")
        out["share_of_peak"] = out["achieved_gflops"] / peak
        if dtype != torch.float32:
            # What the dtype alone can buy at equal FLOPs: its matmul peak over fp32's, same process.
            out["matmul_peak_fp32_gflops"] = _matmul_peak(torch.float32, a.peak_n)
            out["dtype_peak_ratio"] = peak / out["matmul_peak_fp32_gflops"]
        if a.mode != "reference":
            out.update(_conv_profile(cfg, net, opt, em, x, y, gen, counter.by_op, peak))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="small")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak-n", type=int, default=2048, help="matrix size of the matmul peak measurement (small for smoke tests: "
                   "on a CPU without native bf16 a 2048^2 bf16 matmul is emulated and takes minutes)")
    p.add_argument("--set", action="append", help="extra config override applied to every mode (key=value)")
    p.add_argument("--modes", default="reference,default", help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--mode", choices=list(MODES), help="internal: run one mode in this process")
    a = p.parse_args()
    if a.mode:
        print(json.dumps(run_mode(a)))
        return
    bad = [m for m in a.modes.split(",") if m not in MODES]
    if bad:
        p.error(f"--modes: unknown {', '.join(bad)} (choose from {', '.join(MODES)})")
    results = {}
    base = [sys.executable, __file__] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("mode", "set", "modes")]
    base += [f"--set={s}" for s in a.set or []]
    for mode in a.modes.split(","):
        proc = subprocess.run(base + [f"--mode={mode}"], capture_output=True, text=True, check=True)
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    first = results[a.modes.split(",")[0]]
    bound = {}
    if "reference" in results and "default" in results:
        # The most a kernel-level fast path could give at this architecture: the reference's step
        # time against the default's counted FLOPs run at the measured matmul peak (no overhead at all).
        d = results["default"]
        bound = {"ceiling_vs_reference": results["reference"]["s_per_step"] / (d["flops_per_step"] / (d["matmul_peak_gflops"] * 1e9))}
    print(json.dumps({"benchmark": "train_step", "size": a.size, "batch": a.batch, "image": a.image, "threads": a.threads,
                      "overrides": a.set or [], "cpu": _cpu(), **results,
                      "speedup_vs_first": {m: r["images_per_s"] / first["images_per_s"] for m, r in results.items()}, **bound,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
