"""``egc train``: the training loop (AdamW, EMA, clipping, bf16, budgets, resumable checkpoints)."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..checkpoint import latest_in, load_checkpoint, optimizer_tensors, restore_optimizer, save_checkpoint
from ..config import RunConfig
from ..data import DEFAULT_FLIP, BatchLoader, load_dataset, to_uint8
from ..diffusion.losses import LOSSES
from ..diffusion.schedule import Schedule
from ..errors import CheckpointError, EgcError
from ..imageio import save_grid
from ..model import EGC
from ..nets import build_net
from .ema import EMA


class _Stop:
    """Turns SIGINT/SIGTERM into a request to checkpoint and exit at the end of the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): keep defaults
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second signal: the user really means it
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def lr_factor(cfg: RunConfig, step: int, elapsed_s: float) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio over whichever budget runs out first."""
    tc = cfg.train
    warm = min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else 1.0
    if tc.lr_schedule == "constant":
        return warm
    progress = 0.0
    if tc.steps > 0:
        progress = max(progress, step / tc.steps)
    if tc.minutes > 0:
        progress = max(progress, elapsed_s / (60 * tc.minutes))
    progress = min(progress, 1.0)
    return warm * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Logger:
    """CSV (always) and TensorBoard (when installed) scalars; only the writing process calls it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "log.csv"
        self.fields: list[str] | None = None
        if self.path.exists():
            with open(self.path) as f:
                self.fields = next(csv.reader(f), None)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except Exception:  # tensorboard not installed: CSV only
            self.tb = None

    def log(self, step: int, row: dict[str, float]) -> None:
        row = {"step": step, **row}
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)


def _fit_model_to_data(cfg: RunConfig, ds: Any) -> None:
    m = cfg.model
    m.in_channels, m.num_classes, m.image_size = ds.channels, ds.num_classes, ds.image_size
    if m.image_size % m.patch:
        raise EgcError(f"image size {m.image_size} is not divisible by model.patch {m.patch}")


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, quiet: bool = False, stop_at_step: int | None = None) -> dict[str, Any]:
    """Train until the step or time budget is spent (or SIGINT/SIGTERM); returns a summary dict.

    ``stop_at_step`` ends this invocation early, exactly as an interruption would (checkpoint and
    return) without changing the budgets that shape the learning-rate schedule.
    """
    run_dir = Path(run_dir)
    tc = cfg.train
    if tc.steps == 0 and tc.minutes == 0:
        raise EgcError("no budget: give --steps N or --minutes M (or train.steps / train.minutes in the config)")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    ckpt = None
    if resume:
        found = latest_in(run_dir)
        if found is None:
            raise CheckpointError(f"--resume: no checkpoint in {run_dir}")
        ckpt = load_checkpoint(found)
        # Architecture and data come from the checkpoint; budgets and logging may be changed.
        saved = ckpt.config
        if saved.model.kind != cfg.model.kind:
            raise EgcError(f"--resume: {found.name} is a model.kind '{saved.model.kind}' run, not '{cfg.model.kind}' (drop --model or use another --out)")
        saved.train = cfg.train
        cfg = saved.validate()
    torch.manual_seed(tc.seed)
    ds = load_dataset(cfg.data.name, "train", cfg.data.root)
    _fit_model_to_data(cfg, ds)
    cfg.validate()
    flip = DEFAULT_FLIP.get(cfg.data.name, False) if cfg.data.flip is None else cfg.data.flip
    loader = BatchLoader(ds, tc.batch_size, seed=tc.seed, flip=flip)
    net = build_net(cfg.model)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    ema = EMA(net, tc.ema_decay)
    gen = torch.Generator().manual_seed(tc.seed + 1)
    step, elapsed = 0, 0.0
    if ckpt is not None:
        net.load_state_dict(ckpt.group("model"))
        restore_optimizer(opt, ckpt.group("opt"), ckpt.meta["opt_groups"])
        ema.load_state_dict(ckpt.group("ema"), ckpt.meta["ema_updates"])
        gen.set_state(ckpt.tensors["rng.loss"])
        torch.set_rng_state(ckpt.tensors["rng.torch"])
        loader.load_state_dict({**ckpt.meta["loader"], **{k: v for k, v in ckpt.group("loader").items()}})
        step, elapsed = ckpt.step, float(ckpt.meta["elapsed_s"])
    if cfg.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    logger = Logger(run_dir)
    sched = Schedule.make(cfg.diffusion.schedule, cfg.diffusion.steps)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if tc.precision == "bf16" else contextlib.nullcontext
    loss_fn = LOSSES[cfg.model.kind]  # the one place the model kind picks the objective

    def budget_left() -> bool:
        return not ((tc.steps and step >= tc.steps) or (tc.minutes and elapsed >= 60 * tc.minutes))

    def checkpoint() -> Path:
        loader_sd = loader.state_dict()
        loader_t = {k: v for k, v in loader_sd.items() if torch.is_tensor(v)}
        loader_m = {k: v for k, v in loader_sd.items() if not torch.is_tensor(v)}
        opt_t, opt_groups = optimizer_tensors(opt)
        meta = {"opt_groups": opt_groups, "ema_updates": ema.updates, "loader": loader_m, "elapsed_s": elapsed,
                "class_names": ds.class_names, "data": cfg.data.name}
        path = save_checkpoint(run_dir / "checkpoints" / f"step-{step:07d}.safetensors", cfg, step,
                               {"model": net.state_dict(), "ema": ema.state_dict(), "opt": opt_t, "loader": loader_t,
                                "rng": {"torch": torch.get_rng_state(), "loss": gen.get_state()}}, meta=meta)
        old = sorted((run_dir / "checkpoints").glob("step-*.safetensors"))[:-tc.keep_ckpts]
        for q in old:
            q.unlink(missing_ok=True)
        if tc.sample_n > 0 and cfg.model.kind != "classifier":  # a classifier cannot draw a grid
            ema_net = build_net(cfg.model)
            ema_net.load_state_dict(ema.state_dict())
            model = EGC(ema_net, cfg, ds.class_names, tc.precision)
            balanced = cfg.model.kind == "egc"  # ddpm: an unconditional grid
            imgs, _ = model.sample(tc.sample_n, class_balanced=balanced, steps=tc.sample_steps, guidance=tc.guidance, seed=0)
            save_grid(to_uint8(imgs), run_dir / "samples" / f"step-{step:07d}.png",
                      nrow=max(1, tc.sample_n // cfg.model.num_classes) if balanced else None, scale=2)
        return path

    bar = tqdm(total=tc.steps or None, initial=step, disable=quiet, dynamic_ncols=True, desc="train")
    last_ckpt_t, last_ckpt_step = time.time(), step
    window_imgs, window_t = 0, time.time()
    stats: dict[str, float] = {}
    skipped = 0
    stop = _Stop()
    with stop:
        while budget_left() and not stop.requested and (stop_at_step is None or step < stop_at_step):
            t0 = time.time()
            x, y = next(loader)
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = tc.lr * lr_factor(cfg, step, elapsed)
            net.train()
            with autocast():
                parts = loss_fn(net, cfg.model, cfg.loss, sched, x, y, gen)
            if not torch.isfinite(parts.total):
                skipped += 1
                logger.log(step, {"skipped_nonfinite": float(skipped)})
                tqdm.write(f"step {step}: non-finite loss, step skipped ({skipped} so far)")
                opt.zero_grad(set_to_none=True)
                continue
            opt.zero_grad(set_to_none=True)
            parts.total.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
            if not torch.isfinite(gnorm):
                skipped += 1
                tqdm.write(f"step {step}: non-finite gradient, step skipped ({skipped} so far)")
                continue
            opt.step()
            ema.update(net)
            step += 1
            elapsed += time.time() - t0
            window_imgs += x.shape[0]
            sc = parts.scalars()
            for k, v in sc.items():
                stats[k] = 0.9 * stats.get(k, v) + 0.1 * v
            bar.update(1)
            if step % tc.log_every == 0:
                ips = window_imgs / max(time.time() - window_t, 1e-9)
                window_imgs, window_t = 0, time.time()
                shown = {n: f"{stats[k]:.{d}f}" for n, k, d in (("mse", "mse", 4), ("acc", "clean_acc", 2)) if k in stats}
                bar.set_postfix(loss=f"{stats['total']:.4f}", **shown, ips=f"{ips:.0f}")
                logger.log(step, {**sc, "lr": opt.param_groups[0]["lr"], "grad_norm": float(gnorm), "img_per_s": ips, "elapsed_s": elapsed})
            if step % tc.ckpt_every == 0 or time.time() - last_ckpt_t > 60 * tc.ckpt_minutes:
                checkpoint()
                last_ckpt_t, last_ckpt_step = time.time(), step
    bar.close()
    path = checkpoint() if step != last_ckpt_step or not list((run_dir / "checkpoints").glob("step-*.safetensors")) else latest_in(run_dir)
    summary = {"run_dir": str(run_dir), "step": step, "elapsed_s": round(elapsed, 1), "checkpoint": str(path),
               "interrupted": stop.requested, "skipped_steps": skipped, **{k: round(v, 5) for k, v in stats.items()}}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
