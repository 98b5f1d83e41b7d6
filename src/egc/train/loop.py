"""``egc train``: the training loop (AdamW, EMA, clipping, bf16, budgets, resumable checkpoints).

The same loop trains the KL autoencoder of latent runs (model.kind "autoencoder": its grids show
originals above reconstructions) and latent runs (model.autoencoder set): images are encoded by the
frozen autoencoder on the fly, scaled by model.latent_scale (measured once when a new run starts),
and the autoencoder's weights are embedded in every checkpoint (``ae.*``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..autoencoder import AE_PREFIX, Autoencoder, embedded_autoencoder, load_autoencoder, measure_latent_scale
from ..checkpoint import Checkpoint, latest_in, load_checkpoint, optimizer_tensors, remove_stale_tmp, restore_optimizer, save_checkpoint
from ..config import AUTOENCODER, RunConfig
from ..data import DEFAULT_FLIP, BatchLoader, load_dataset, to_model_range, to_uint8
from ..diffusion.energy import CompiledEps
from ..diffusion.losses import loss_for, own_rows
from ..diffusion.schedule import Schedule
from ..errors import CheckpointError, EgcError
from ..imageio import atomic_write_bytes, save_grid
from ..model import EGC, resolve_channels_last, resolve_precision
from ..nets import build_net
from .dist import Dist, start as start_dist
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

    def __init__(self, run_dir: Path, upto: int | None = None) -> None:
        self.path = run_dir / "log.csv"
        self.fields: list[str] | None = None
        if self.path.exists():
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f))
            self.fields = rows[0] if rows else None
            if upto is not None and self.fields:
                # Starting from the checkpoint of step ``upto`` (0: a fresh run): drop rows of the steps
                # about to be redone (a kill after a log line, before the next checkpoint) and a torn
                # last line, so the log holds every step once.
                keep = [r for r in rows[1:] if len(r) == len(self.fields) and _int_or_none(r[0]) is not None and _int_or_none(r[0]) <= upto]
                if len(keep) != len(rows) - 1:
                    self._rewrite(keep)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except Exception:  # tensorboard not installed: CSV only
            self.tb = None

    def _rewrite(self, rows: list[list[str]]) -> None:
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.fields)
        w.writerows(rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def log(self, step: int, row: dict[str, float]) -> None:
        row = {"step": step, **row}
        new = self.fields is None
        if new:
            self.fields = list(row)
        elif extra := [k for k in row if k not in self.fields]:  # a new column (e.g. the first non-finite event)
            with open(self.path, newline="") as f:
                old = list(csv.reader(f))[1:]
            self.fields = self.fields + extra
            self._rewrite([r + [""] * len(extra) for r in old])
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)


def _int_or_none(s: str) -> int | None:
    try:
        return int(s)
    except ValueError:
        return None


class _NoLog:
    """The logger of ranks other than 0 (only rank 0 writes files)."""

    def log(self, step: int, row: dict[str, float]) -> None:
        pass


def _encode_own_rows(ae: Autoencoder, x: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    """Latents [B, c, h, w] of a global pixel batch x [B, C, H, W], encoding only the rows this
    process's loss keeps (``own_rows``); the other rows stay zero and are never read. So each of
    ``world`` processes encodes 1/world of the batch instead of all of it."""
    if shard[1] == 1:
        return ae.encode(x)
    rows = own_rows(shard)
    z_own = ae.encode(x[rows])
    z = z_own.new_zeros((x.shape[0], *z_own.shape[1:]))
    z[rows] = z_own
    return z


def _fit_model_to_data(cfg: RunConfig, ds: Any) -> None:
    """Shapes from the data: the image shape (an autoencoder's pixels too), or for a latent run the
    autoencoder's latent shape, after checking that the data has the autoencoder's pixel shape."""
    m = cfg.model
    pix = (ds.channels, ds.image_size, ds.image_size)
    if m.kind == AUTOENCODER:
        m.ae.in_channels, m.ae.image_size = ds.channels, ds.image_size
        if ds.image_size % m.ae.downsample:
            raise EgcError(f"image size {ds.image_size} is not divisible by model.ae.downsample {m.ae.downsample}")
    elif m.latent:
        want = (m.ae.in_channels, m.ae.image_size, m.ae.image_size)
        if pix != want:
            raise EgcError(f"data {cfg.data.name} has {'x'.join(map(str, pix))} images (CxHxW) but the autoencoder {m.autoencoder} "
                           f"takes {'x'.join(map(str, want))}")
    if not ds.labeled:
        if m.kind == "classifier" or m.conditioning != "none":
            raise EgcError(f"data {cfg.data.name} has no labels: a {m.kind} model with model.conditioning {m.conditioning} needs them "
                           "(unlabelled images train an unsupervised EGC: --model egc, or a ddpm)")
        if m.kind == "egc" and m.supervised:
            print(f"egc train: {cfg.data.name} has no labels: training an unsupervised EGC (model.supervised=false)", file=sys.stderr)
            m.supervised = False
    # The network sees latents in a latent run and pixels otherwise (an autoencoder's net is the AE).
    channels, size = (m.ae.latent_channels, m.ae.latent_size) if m.latent else (ds.channels, ds.image_size)
    k = ds.num_classes if m.supervised else (m.clusters or ds.num_classes or 10)
    m.in_channels, m.num_classes, m.image_size = channels, max(k, 2), size
    if m.kind != AUTOENCODER and m.image_size % m.patch:
        raise EgcError(f"image size {m.image_size} is not divisible by model.patch {m.patch}")


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, quiet: bool = False, stop_at_step: int | None = None) -> dict[str, Any]:
    """Train until the step or time budget is spent (or SIGINT/SIGTERM); returns a summary dict.

    ``stop_at_step`` ends this invocation early, exactly as an interruption would (checkpoint and
    return) without changing the budgets that shape the learning-rate schedule.

    Under torchrun (WORLD_SIZE > 1) every process calls this: the global batch is train.batch_size x
    world size, gradients are averaged by DDP, and only rank 0 writes (see train/dist.py).
    """
    dist = start_dist(cfg.train.device)
    try:
        return _train(cfg, run_dir, resume, quiet, stop_at_step, dist)
    finally:
        dist.close()


def _train(cfg: RunConfig, run_dir: str | Path, resume: bool, quiet: bool, stop_at_step: int | None, dist: Dist) -> dict[str, Any]:
    run_dir = Path(run_dir)
    tc = cfg.train
    if tc.steps == 0 and tc.minutes == 0:
        raise EgcError("no budget: give --steps N or --minutes M (or train.steps / train.minutes in the config)")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.set_flush_denormal(tc.flush_denormal)
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
    ae: Autoencoder | None = None  # a latent run's frozen autoencoder
    if cfg.model.latent:
        if ckpt is not None:  # from the checkpoint itself: the autoencoder file may be gone by now
            ae = embedded_autoencoder(ckpt)
        else:
            ae = load_autoencoder(cfg.model.autoencoder)
            cfg.model.ae = dataclasses.replace(ae.config)
    ds = load_dataset(cfg.data.name, "train", cfg.data.root)
    _fit_model_to_data(cfg, ds)
    cfg.validate()
    if ae is not None:
        ae.to(dist.device)
        if cfg.model.latent_scale == 0:  # a new run: 1/std of the latents of a few batches, then part of the config
            n = min(len(ds), max(4 * tc.batch_size, 256))
            idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(tc.seed))[:n]
            cfg.model.latent_scale = measure_latent_scale(ae, to_model_range(ds.images[idx]).to(dist.device))
        ae.scale = cfg.model.latent_scale
    flip = DEFAULT_FLIP.get(cfg.data.name, False) if cfg.data.flip is None else cfg.data.flip
    # Every rank reads the same global batch; the loss keeps this rank's rows (shard=(rank, world)).
    loader = BatchLoader(ds, tc.batch_size * dist.world, seed=tc.seed, flip=flip)
    net = build_net(cfg.model).to(dist.device)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    ema = EMA(net, tc.ema_decay)
    gen = torch.Generator().manual_seed(tc.seed + 1)
    step, elapsed = 0, 0.0
    lr_scale = 1.0  # product of the rollback_lr_factor of every rollback so far (kept in checkpoints)
    last_good: Path | None = None  # the checkpoint a rollback returns to: the newest this run resumed from or wrote

    def restore(ck: Checkpoint) -> None:
        """Weights, optimiser, EMA, RNG and data order from ``ck`` (for --resume and for a rollback)."""
        net.load_state_dict(ck.group("model"))
        restore_optimizer(opt, ck.group("opt"), ck.meta["opt_groups"])
        ema.load_state_dict(ck.group("ema"), ck.meta["ema_updates"])
        ema.shadow = {k: v.to(dist.device) for k, v in ema.shadow.items()}
        gen.set_state(ck.tensors["rng.loss"])
        torch.set_rng_state(ck.tensors["rng.torch"])
        loader.load_state_dict({**ck.meta["loader"], **{k: v for k, v in ck.group("loader").items()}})

    if ckpt is not None:
        saved_b = int(ckpt.meta["loader"].get("batch_size", loader.batch_size))
        if saved_b != loader.batch_size:  # the data order is kept per global batch
            hint = f"--batch-size {saved_b // dist.world}" if saved_b % dist.world == 0 else f"a process count that divides {saved_b}"
            raise EgcError(f"--resume: {found.name} was trained on global batches of {saved_b} images; this run's would be {loader.batch_size} "
                           f"({dist.world} process(es) x train.batch_size {tc.batch_size}): use {hint}")
        restore(ckpt)
        step, elapsed = ckpt.step, float(ckpt.meta["elapsed_s"])
        lr_scale, last_good = float(ckpt.meta.get("lr_scale", 1.0)), found
    channels_last = resolve_channels_last(cfg.train.channels_last, dist.device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = dist.wrap(net)  # what the loss calls (DDP for several processes); net = the weights themselves
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Temporary files of a killed earlier process (a kill mid-write leaves ".NAME.tmpPID", never half a NAME).
        for folder, names in ((run_dir / "checkpoints", None), (run_dir / "samples", None), (run_dir, ("config.yaml", "summary.json", "log.csv"))):
            remove_stale_tmp(folder, names)
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    # The log describes the steps this run's checkpoints hold: rows after ``step`` (of a killed attempt) go.
    logger: Logger | _NoLog = Logger(run_dir, upto=step) if dist.is_main else _NoLog()
    sched = Schedule.make(cfg.diffusion.schedule, cfg.diffusion.steps)
    precision = resolve_precision(tc.precision, dist.device)  # "auto": bf16 only where it is native
    autocast = (lambda: torch.autocast(dist.device.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    loss_fn = loss_for(cfg.model.kind)  # the one place the model kind picks the objective
    if tc.compile:
        if cfg.model.kind != "egc" or dist.world > 1:
            raise EgcError(f"train.compile applies to model.kind egc in one process (this run: kind {cfg.model.kind}, {dist.world} processes)")
        loss_fn = functools.partial(loss_fn, eps_fn=CompiledEps())

    def budget_left() -> bool:
        return not ((tc.steps and step >= tc.steps) or (tc.minutes and elapsed >= 60 * tc.minutes))

    def checkpoint() -> Path:
        """Rank 0 writes (checkpoint and grid); the other ranks wait for it at a barrier."""
        path = write_checkpoint() if dist.is_main else run_dir / "checkpoints" / f"step-{step:07d}.safetensors"
        dist.barrier()
        return path

    def write_checkpoint() -> Path:
        loader_sd = loader.state_dict()
        loader_t = {k: v for k, v in loader_sd.items() if torch.is_tensor(v)}
        loader_m = {k: v for k, v in loader_sd.items() if not torch.is_tensor(v)}
        opt_t, opt_groups = optimizer_tensors(opt)
        meta = {"opt_groups": opt_groups, "ema_updates": ema.updates, "loader": loader_m, "elapsed_s": elapsed,
                "class_names": ds.class_names if cfg.model.supervised else [f"cluster {i}" for i in range(cfg.model.num_classes)], "data": cfg.data.name, "world_size": dist.world, "lr_scale": lr_scale}
        groups = {"model": net.state_dict(), "ema": ema.state_dict(), "opt": opt_t, "loader": loader_t,
                  "rng": {"torch": torch.get_rng_state(), "loss": gen.get_state()}}
        if ae is not None:  # the frozen autoencoder: the checkpoint does not depend on its file
            groups[AE_PREFIX] = ae.state_dict()
        path = save_checkpoint(run_dir / "checkpoints" / f"step-{step:07d}.safetensors", cfg, step, groups, meta=meta)
        old = sorted((run_dir / "checkpoints").glob("step-*.safetensors"))[:-tc.keep_ckpts]
        for q in old:
            q.unlink(missing_ok=True)
        if tc.sample_n > 0 and cfg.model.kind == AUTOENCODER:  # originals (top row) above their reconstructions
            with torch.random.fork_rng(devices=[]):
                ema_net = build_net(cfg.model)
            ema_net.load_state_dict(ema.state_dict())
            n = min(tc.sample_n, len(ds), 16)
            x = to_model_range(ds.images[torch.linspace(0, len(ds) - 1, n).long()])
            rec = Autoencoder(ema_net).reconstruct(x)
            save_grid(to_uint8(torch.cat([x, rec])), run_dir / "samples" / f"step-{step:07d}.png", nrow=n, scale=2)
        elif tc.sample_n > 0 and cfg.model.kind != "classifier":  # a classifier cannot draw a grid
            # build_net draws initial weights from the global RNG: without fork_rng the grid would shift the
            # training RNG (dropout masks) by an amount that a resume from this checkpoint does not repeat.
            with torch.random.fork_rng(devices=[]):
                ema_net = build_net(cfg.model)
            ema_net.load_state_dict(ema.state_dict())
            # The grid is drawn on the CPU: the precision chosen for a GPU need not suit it.
            model = EGC(ema_net, cfg, ds.class_names, precision if dist.device.type == "cpu" else "auto", autoencoder=ae)
            balanced = model.conditional  # an unconditional ddpm or unsupervised EGC: an unconditional grid
            imgs, _ = model.sample(tc.sample_n, class_balanced=balanced, steps=tc.sample_steps, seed=0)
            save_grid(to_uint8(imgs), run_dir / "samples" / f"step-{step:07d}.png",
                      nrow=max(1, tc.sample_n // cfg.model.num_classes) if balanced else None, scale=2)
        return path

    bar = tqdm(total=tc.steps or None, initial=step, disable=quiet or not dist.is_main, dynamic_ncols=True, desc="train")
    last_ckpt_t, last_ckpt_step = time.time(), step
    window_imgs, window_t = 0, time.time()
    stats: dict[str, float] = {}
    skipped = rollbacks = 0
    in_a_row, fail_step = 0, -1  # non-finite steps since training last got past the step that failed
    if tc.nonfinite == "rollback" and last_good is None:  # a fresh run: a state to roll back to before the first step
        last_good = checkpoint()
    stop = _Stop()
    stopping = False  # several processes: the stop request as agreed after the last step (a signal may reach one rank only)
    with stop:
        while budget_left() and not (stopping or dist.world == 1 and stop.requested) and (stop_at_step is None or step < stop_at_step):
            t0 = time.time()
            x, y = next(loader)
            x, y = x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
            if ae is not None:  # latent run: the frozen encoder's scaled posterior mean (augmentation happened in pixels)
                x = _encode_own_rows(ae, x, dist.shard)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = tc.lr * lr_scale * lr_factor(cfg, step, elapsed)
            net.train()
            with autocast():
                parts = loss_fn(model, cfg.model, cfg.loss, sched, x, y, gen, shard=dist.shard)
            bad = ""
            if not dist.all_true(torch.isfinite(parts.total)):  # every rank sees it, or none does
                bad = "loss"
            else:
                opt.zero_grad(set_to_none=True)
                parts.total.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
                if not torch.isfinite(gnorm):  # the same on every rank (DDP averaged the gradients)
                    bad = "gradient"
            if bad:  # the weights are untouched: skip the step, or return to the last checkpoint with a lower lr
                opt.zero_grad(set_to_none=True)
                in_a_row, fail_step = in_a_row + 1, max(fail_step, step)
                what = "skipped steps" if tc.nonfinite == "skip" else "rollbacks"
                if in_a_row > tc.max_nonfinite:
                    raise EgcError(f"step {step}: non-finite {bad} after {tc.max_nonfinite} {what} in a row (train.nonfinite={tc.nonfinite}, "
                                   f"train.max_nonfinite={tc.max_nonfinite}): giving up; lower train.lr or check the data")
                if tc.nonfinite == "skip":
                    skipped += 1
                    msg = f"step {step}: non-finite {bad}, step skipped ({skipped} so far)"
                else:
                    if last_good is None or not last_good.is_file():
                        raise EgcError(f"step {step}: non-finite {bad} and no checkpoint to roll back to ({last_good} is gone)")
                    bad_step, good = step, load_checkpoint(last_good)
                    restore(good)
                    step = last_ckpt_step = good.step  # the time spent stays spent (elapsed is not rolled back)
                    rollbacks += 1
                    lr_scale *= tc.rollback_lr_factor
                    msg = (f"step {bad_step}: non-finite {bad}: rolled back to {last_good.name} (step {step}), learning rate x{tc.rollback_lr_factor:g} "
                           f"(now x{lr_scale:g} of the schedule; rollback {in_a_row} of at most {tc.max_nonfinite} in a row)")
                    bar.n = step
                if dist.is_main:
                    tqdm.write(msg, file=sys.stderr)
                logger.log(step if tc.nonfinite == "skip" else bad_step,
                           {"nonfinite": 1.0, "skipped_nonfinite": float(skipped), "rollbacks": float(rollbacks), "lr_scale": lr_scale})
                continue
            opt.step()
            ema.update(net)
            step += 1
            if step > fail_step:
                in_a_row = 0
            elapsed += time.time() - t0
            window_imgs += x.shape[0]  # the global batch
            due = step % tc.ckpt_every == 0 or time.time() - last_ckpt_t > 60 * tc.ckpt_minutes
            # Several processes: rank 0's clock and checkpoint timing, anyone's stop signal, mean scalars.
            elapsed, due, stopping, sc = dist.agree(elapsed, due, stop.requested, parts.scalars())
            for k, v in sc.items():
                stats[k] = 0.9 * stats.get(k, v) + 0.1 * v
            bar.update(1)
            if step % tc.log_every == 0:
                ips = window_imgs / max(time.time() - window_t, 1e-9)
                window_imgs, window_t = 0, time.time()
                shown = {n: f"{stats[k]:.{d}f}" for n, k, d in (("mse", "mse", 4), ("acc", "clean_acc", 2)) if k in stats}
                bar.set_postfix(loss=f"{stats['total']:.4f}", **shown, ips=f"{ips:.0f}")
                logger.log(step, {**sc, "lr": opt.param_groups[0]["lr"], "grad_norm": float(gnorm), "img_per_s": ips, "elapsed_s": elapsed})
            if due:
                last_good = checkpoint()
                last_ckpt_t, last_ckpt_step = time.time(), step
        # Still inside `with stop:` so a SIGTERM during the final checkpoint or summary only marks the run
        # interrupted instead of killing it between the two (the checkpoint write itself is atomic).
        bar.close()
        final = dist.from_main(step != last_ckpt_step or not list((run_dir / "checkpoints").glob("step-*.safetensors")))
        path = checkpoint() if final else latest_in(run_dir)
        summary = {"run_dir": str(run_dir), "step": step, "elapsed_s": round(elapsed, 1), "checkpoint": str(path), "precision": precision, "channels_last": channels_last,
                   "interrupted": stop.requested or stopping, "skipped_steps": skipped, "rollbacks": rollbacks, "lr_scale": lr_scale,
                   **{k: round(v, 5) for k, v in stats.items()}}
        if dist.is_main:
            atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    return summary
