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
from ..checkpoint import JEM_PREFIX, Checkpoint, latest_in, load_checkpoint, optimizer_tensors, remove_stale_tmp, restore_optimizer, save_checkpoint
from ..config import RunConfig
from ..data import DEFAULT_FLIP, BatchLoader, load_data, to_model_range, to_uint8
from ..data.augment import random_shift
from ..diffusion.energy import CompiledEps, EnergyModel
from ..diffusion.losses import clean_rows, loss_config_at, own_rows
from ..diffusion.schedule import Schedule
from ..errors import CheckpointError, EgcError
from ..imageio import atomic_write_bytes, save_grid
from ..kinds import kind_of
from ..device import resolve_channels_last, resolve_precision
from ..model import EGC
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


def check_budget(cfg: RunConfig) -> None:
    """EgcError unless the run has a step or time budget."""
    if cfg.train.steps == 0 and cfg.train.minutes == 0:
        raise EgcError("no budget: give --steps N or --minutes M (or train.steps / train.minutes in the config)")


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


def _mmss(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def _int_or_none(s: str) -> int | None:
    try:
        return int(s)
    except ValueError:
        return None


def _closing_line(summary: dict[str, Any], run_dir: Path, cfg: RunConfig) -> str:
    """One line for the user: where the model is, its held-out accuracy, and what to run next."""
    where = f"egc train: {run_dir} at step {summary['step']} ({summary['elapsed_s'] / 60:.1f} min)"
    if "test_accuracy" in summary:
        where += f"; accuracy {summary['test_accuracy']:.3f} on {summary['test_images']} test images ({summary['test_split']})"
    if summary["budget_left"]:
        return where + f"; budget not spent: continue with  egc train --out {run_dir} --resume"
    kind = kind_of(cfg.model.kind)
    if kind.generates and (kind.classifies and cfg.model.supervised or cfg.model.conditioning == "embedding"):
        return where + f"; sample with  egc sample {run_dir} --class-balanced"
    if kind.generates:
        return where + f"; sample with  egc sample {run_dir}"
    return where


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
    if kind_of(m.kind).first_stage:
        m.ae.in_channels, m.ae.image_size = ds.channels, ds.image_size
        if ds.image_size % m.ae.downsample:
            raise EgcError(f"image size {ds.image_size} is not divisible by model.ae.downsample {m.ae.downsample}")
    elif m.latent:
        if ds.channels == m.ae.in_channels and ds.image_size % m.ae.downsample == 0:
            m.ae.image_size = ds.image_size  # the autoencoder is convolutional: any size its downsampling divides
        want = (m.ae.in_channels, m.ae.image_size, m.ae.image_size)
        if pix != want:
            raise EgcError(f"data {cfg.data.name} has {'x'.join(map(str, pix))} images (CxHxW) but the autoencoder {m.autoencoder} "
                           f"takes {'x'.join(map(str, want))}")
    kind = kind_of(m.kind)
    if not ds.labeled:
        if not kind.unconditional_ok or (kind.predicts_eps and m.conditioning != "none"):
            raise EgcError(f"data {cfg.data.name} has no labels: a {m.kind} model with model.conditioning {m.conditioning} needs them "
                           "(unlabelled images train an unsupervised EGC: --model egc, or an unconditional ddpm)")
        if kind.energy == "diffusion" and m.supervised:
            print(f"egc train: {cfg.data.name} has no labels: training an unsupervised EGC (model.supervised=false, "
                  "model.conditioning=none)", file=sys.stderr)
            m.supervised, m.conditioning = False, "none"
    # The network sees latents in a latent run and pixels otherwise (an autoencoder's net is the AE).
    channels, size = (m.ae.latent_channels, m.ae.latent_size) if m.latent else (ds.channels, ds.image_size)
    k = ds.num_classes if m.supervised else (m.clusters or ds.num_classes or 10)
    m.in_channels, m.num_classes, m.image_size = channels, k, size
    if kind.net == "unet" and m.backbone == "unet" and m.image_size % m.patch:
        raise EgcError(f"image size {m.image_size} is not divisible by model.patch {m.patch}")
    if cfg.loss.clean_shift >= ds.image_size // 2:
        raise EgcError(f"loss.clean_shift {cfg.loss.clean_shift} is too large for {ds.image_size} x {ds.image_size} images "
                       f"(at most {ds.image_size // 2 - 1} pixels)")


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, quiet: bool = False, stop_at_step: int | None = None,
          stop_after_minutes: float | None = None, data: Any = None) -> dict[str, Any]:
    """Train until the step or time budget is spent (or SIGINT/SIGTERM); returns a summary dict.

    ``data``: the train split already loaded as ``cfg.data`` says (else it is loaded here).
    ``stop_at_step`` and ``stop_after_minutes`` (of training time in this invocation, rank 0's clock)
    end this invocation early, exactly as an interruption would (checkpoint and return) without
    changing the budgets that shape the learning-rate schedule: a multi-hour budget can be trained
    in pieces with --resume.

    Under torchrun (WORLD_SIZE > 1) every process calls this: the global batch is train.batch_size x
    world size, gradients are averaged by DDP, and only rank 0 writes (see train/dist.py).
    """
    dist = start_dist(cfg.train.device)
    try:
        return _Trainer(cfg, Path(run_dir), resume, quiet, dist, data).run(stop_at_step, stop_after_minutes)
    finally:
        dist.close()


def _resume_config(cfg: RunConfig, run_dir: Path) -> tuple[RunConfig, Checkpoint, Path]:
    """(the run's config, its newest checkpoint, that file) for --resume: architecture and data come
    from the checkpoint; budgets and logging (the train section) from ``cfg``."""
    found = latest_in(run_dir)
    if found is None:
        raise CheckpointError(f"--resume: no checkpoint in {run_dir}")
    ckpt = load_checkpoint(found)
    saved = ckpt.config
    if saved.model.kind != cfg.model.kind:
        raise EgcError(f"--resume: {found.name} is a model.kind '{saved.model.kind}' run, not '{cfg.model.kind}' (drop --model or use another --out)")
    saved.train = cfg.train
    return saved.validate(), ckpt, found


def forward_backward(em: EnergyModel, net: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: Any, cfg: RunConfig,
                     x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, precision: str, shard: tuple[int, int] = (0, 1),
                     all_true: Any = bool, **loss_kwargs: Any) -> tuple[Any, str, torch.Tensor | None]:
    """The gradient half of one training step (what ``egc train`` and bench/train_step.py both run):
    the loss under the run's precision, backward, gradient clipping. Returns (loss parts, "" or what
    was non-finite ("loss" | "gradient"), the gradient norm); the optimiser step is the caller's.
    ``em`` is the energy model the loss is given (built once by the caller: ``em.net`` is what the loss
    calls, DDP-wrapped or not, with the model config and noise schedule), ``net`` the weights;
    ``all_true`` agrees a flag across processes (plain ``bool`` for one); ``loss_kwargs`` go to the loss
    (EGC's x0_clean)."""
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with autocast:
        parts = loss_fn(em, cfg.loss, x, y, gen, shard=shard, **loss_kwargs)
    if not all_true(torch.isfinite(parts.total)):  # every rank sees it, or none does
        return parts, "loss", None
    opt.zero_grad(set_to_none=True)
    parts.total.backward()
    clip = cfg.train.grad_clip
    gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), clip if clip > 0 else float("inf"))
    if not torch.isfinite(gnorm):  # the same on every rank (DDP averaged the gradients)
        return parts, "gradient", gnorm
    return parts, "", gnorm


class _Trainer:
    """One ``egc train`` invocation: set-up (``__init__``), then ``run`` = steps until a budget, a
    signal or ``stop_at_step``, checkpoints on the way and at the end. Every process of a data-parallel
    run builds one; only rank 0 writes files."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool, quiet: bool, dist: Dist, data: Any = None) -> None:
        tc = cfg.train
        check_budget(cfg)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        torch.set_flush_denormal(tc.flush_denormal)
        ckpt, found = None, None
        if resume:
            cfg, ckpt, found = _resume_config(cfg, run_dir)
        self.cfg, self.tc, self.run_dir, self.quiet, self.dist = cfg, cfg.train, run_dir, quiet, dist
        torch.manual_seed(tc.seed)
        self.ae = self._autoencoder(ckpt)
        self.ds = data if data is not None else load_data(cfg.data, "train")
        if dist.is_main and not quiet and data is None:  # a caller that loaded the data has shown its notes
            for note in self.ds.notes:
                print(f"egc train: {cfg.data.name}: {note}", file=sys.stderr)
        cfg.data.image_size = self.ds.image_size  # the preprocessing as decided: saved with the model
        _fit_model_to_data(cfg, self.ds)
        if self.ae is not None:  # a convolutional autoencoder takes the data's size (checked in _fit_model_to_data)
            self.ae.net.cfg.image_size = cfg.model.ae.image_size
        if cfg.model.space == "auto":  # a run called without the staged plan: it trains where its config says
            cfg.model.space = "latent" if cfg.model.latent else "pixel"
        cfg.validate()
        self._latent_scale()
        self._build()
        self.loss_fn = self._loss()  # the one place the model kind picks the objective (before a resume restores its state)
        self.step, self.elapsed = 0, 0.0
        self.lr_scale = 1.0  # product of the rollback_lr_factor of every rollback so far (kept in checkpoints)
        self.last_good: Path | None = None  # the checkpoint a rollback returns to: the newest this run resumed from or wrote
        if ckpt is not None:
            self._resume_from(ckpt, found)
        self.channels_last = resolve_channels_last(tc.channels_last, dist.device)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.model = dist.wrap(self.net)  # what the loss calls (DDP for several processes); net = the weights themselves
        self._prepare_run_dir()
        # The log describes the steps this run's checkpoints hold: rows after ``step`` (of a killed attempt) go.
        self.logger: Logger | _NoLog = Logger(run_dir, upto=self.step) if dist.is_main else _NoLog()
        self.sched = Schedule.make(cfg.diffusion.schedule, cfg.diffusion.steps)
        # the one energy model every loss call is given: the network the loss calls (DDP-wrapped for
        # several processes), the model config and the schedule
        self.energy_model = EnergyModel(self.model, cfg.model, self.sched)
        self.precision = resolve_precision(tc.precision, dist.device)  # "auto": bf16 only where it is native
        if tc.compile:
            if kind_of(cfg.model.kind).energy != "diffusion" or dist.world > 1:
                raise EgcError(f"train.compile applies to model.kind egc in one process (this run: kind {cfg.model.kind}, {dist.world} processes)")
            self.loss_fn = functools.partial(self.loss_fn, eps_fn=CompiledEps())

    # ---- set-up ---------------------------------------------------------------------------
    def _loss(self) -> Any:
        """The objective of the kind; jem's keeps a replay buffer (train/jem.py), checkpointed with the run."""
        cfg = self.cfg
        kind = kind_of(cfg.model.kind)
        if kind.sampler != "sgld":
            return kind.loss()
        from .jem import JEMLoss

        if self.dist.world > 1:
            raise EgcError("model.kind jem trains in one process (its replay buffer is not shared between processes)")
        if cfg.model.latent:
            raise EgcError("model.kind jem runs on pixels (drop model.autoencoder / use --set model.space=pixel)")
        n = min(len(self.ds), 5000)  # the informative init's class Gaussians: the first images, a fixed set
        return JEMLoss(cfg, to_model_range(self.ds.images[:n]), self.ds.labels[:n], self.gen)

    def _autoencoder(self, ckpt: Checkpoint | None) -> Autoencoder | None:
        """A latent run's frozen autoencoder: from the checkpoint when resuming (its file may be gone)."""
        if not self.cfg.model.latent:
            return None
        if ckpt is not None:
            return embedded_autoencoder(ckpt)
        ae = load_autoencoder(self.cfg.model.autoencoder)
        self.cfg.model.ae = dataclasses.replace(ae.config)
        return ae

    def _latent_scale(self) -> None:
        """A new latent run measures 1/std of its latents once; it is part of the config from then on."""
        ae, cfg, tc = self.ae, self.cfg, self.tc
        if ae is None:
            return
        ae.to(self.dist.device)
        if cfg.model.latent_scale == 0:
            n = min(len(self.ds), max(4 * tc.batch_size, 256))
            idx = torch.randperm(len(self.ds), generator=torch.Generator().manual_seed(tc.seed))[:n]
            cfg.model.latent_scale = measure_latent_scale(ae, to_model_range(self.ds.images[idx]).to(self.dist.device))
        ae.scale = cfg.model.latent_scale

    def _build(self) -> None:
        cfg, tc, dist = self.cfg, self.tc, self.dist
        flip = DEFAULT_FLIP.get(cfg.data.name, False) if cfg.data.flip is None else cfg.data.flip
        # Every rank reads the same global batch; the loss keeps this rank's rows (shard=(rank, world)).
        self.loader = BatchLoader(self.ds, tc.batch_size * dist.world, seed=tc.seed, flip=flip)
        self.net = build_net(cfg.model).to(dist.device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.ema = EMA(self.net, tc.ema_decay)
        self.gen = torch.Generator().manual_seed(tc.seed + 1)

    def _restore(self, ck: Checkpoint) -> None:
        """Weights, optimiser, EMA, RNG and data order from ``ck`` (for --resume and for a rollback)."""
        self.net.load_state_dict(ck.group("model"))
        restore_optimizer(self.opt, ck.group("opt"), ck.meta["opt_groups"])
        self.ema.load_state_dict(ck.group("ema"), ck.meta["ema_updates"])
        self.ema.shadow = {k: v.to(self.dist.device) for k, v in self.ema.shadow.items()}
        self.gen.set_state(ck.tensors["rng.loss"])
        torch.set_rng_state(ck.tensors["rng.torch"])
        self.loader.load_state_dict({**ck.meta["loader"], **{k: v for k, v in ck.group("loader").items()}})
        if hasattr(self.loss_fn, "load_state_dict"):  # jem's replay buffer
            self.loss_fn.load_state_dict(ck.group(JEM_PREFIX))

    def _resume_from(self, ckpt: Checkpoint, found: Path) -> None:
        saved_b = int(ckpt.meta["loader"].get("batch_size", self.loader.batch_size))
        if saved_b != self.loader.batch_size:  # the data order is kept per global batch
            world = self.dist.world
            hint = f"--batch-size {saved_b // world}" if saved_b % world == 0 else f"a process count that divides {saved_b}"
            raise EgcError(f"--resume: {found.name} was trained on global batches of {saved_b} images; this run's would be {self.loader.batch_size} "
                           f"({world} process(es) x train.batch_size {self.tc.batch_size}): use {hint}")
        self._restore(ckpt)
        self.step, self.elapsed = ckpt.step, float(ckpt.meta["elapsed_s"])
        self.lr_scale, self.last_good = float(ckpt.meta.get("lr_scale", 1.0)), found

    def _prepare_run_dir(self) -> None:
        if not self.dist.is_main:
            return
        run_dir = self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        # Temporary files of a killed earlier process (a kill mid-write leaves ".NAME.tmpPID", never half a NAME).
        for folder, names in ((run_dir / "checkpoints", None), (run_dir / "samples", None), (run_dir, ("config.yaml", "summary.json", "log.csv"))):
            remove_stale_tmp(folder, names)
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False).encode())

    # ---- checkpoints and grids ------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Rank 0 writes (checkpoint and grid); the other ranks wait for it at a barrier."""
        path = self._write_checkpoint() if self.dist.is_main else self.run_dir / "checkpoints" / f"step-{self.step:07d}.safetensors"
        self.dist.barrier()
        return path

    def _write_checkpoint(self) -> Path:
        cfg, tc, step = self.cfg, self.tc, self.step
        loader_sd = self.loader.state_dict()
        loader_t = {k: v for k, v in loader_sd.items() if torch.is_tensor(v)}
        loader_m = {k: v for k, v in loader_sd.items() if not torch.is_tensor(v)}
        opt_t, opt_groups = optimizer_tensors(self.opt)
        names = self.ds.class_names if cfg.model.supervised else [f"cluster {i}" for i in range(cfg.model.num_classes)]
        meta = {"opt_groups": opt_groups, "ema_updates": self.ema.updates, "loader": loader_m, "elapsed_s": self.elapsed,
                "class_names": names, "data": cfg.data.name, "world_size": self.dist.world, "lr_scale": self.lr_scale}
        groups = {"model": self.net.state_dict(), "ema": self.ema.state_dict(), "opt": opt_t, "loader": loader_t,
                  "rng": {"torch": torch.get_rng_state(), "loss": self.gen.get_state()}}
        if self.ae is not None:  # the frozen autoencoder: the checkpoint does not depend on its file
            groups[AE_PREFIX] = self.ae.state_dict()
        if hasattr(self.loss_fn, "state_dict"):  # jem's replay buffer
            groups[JEM_PREFIX] = self.loss_fn.state_dict()
        path = save_checkpoint(self.run_dir / "checkpoints" / f"step-{step:07d}.safetensors", cfg, step, groups, meta=meta)
        for q in sorted((self.run_dir / "checkpoints").glob("step-*.safetensors"))[:-tc.keep_ckpts]:
            q.unlink(missing_ok=True)
        if tc.sample_n > 0:
            self._draw_grid()
        return path

    def _ema_net(self) -> torch.nn.Module:
        # build_net draws initial weights from the global RNG: without fork_rng the grid would shift the
        # training RNG (dropout masks) by an amount that a resume from this checkpoint does not repeat.
        with torch.random.fork_rng(devices=[]):
            ema_net = build_net(self.cfg.model)
        ema_net.load_state_dict(self.ema.state_dict())
        return ema_net

    def _draw_grid(self) -> None:
        """The grid beside each checkpoint: an autoencoder's originals (top row) above their
        reconstructions; samples of an EGC or ddpm (class-balanced when it can sample classes); a
        classifier draws none."""
        cfg, tc, ds = self.cfg, self.tc, self.ds
        out = self.run_dir / "samples" / f"step-{self.step:07d}.png"
        kind = kind_of(cfg.model.kind)
        if kind.first_stage:
            n = min(tc.sample_n, len(ds), 16)
            x = to_model_range(ds.images[torch.linspace(0, len(ds) - 1, n).long()])
            rec = Autoencoder(self._ema_net()).reconstruct(x)
            save_grid(to_uint8(torch.cat([x, rec])), out, nrow=n, scale=2)
        elif kind.generates:
            # The grid is drawn on the CPU: the precision chosen for a GPU need not suit it.
            cpu_precision = self.precision if self.dist.device.type == "cpu" else "auto"
            model = EGC(self._ema_net(), cfg, ds.class_names, cpu_precision, autoencoder=self.ae)
            balanced = model.conditional  # an unconditional ddpm or unsupervised EGC: an unconditional grid
            imgs, _ = model.sample(tc.sample_n, class_balanced=balanced, steps=tc.sample_steps, seed=0)
            save_grid(to_uint8(imgs), out, nrow=max(1, tc.sample_n // cfg.model.num_classes) if balanced else None, scale=2)

    # ---- the loop -------------------------------------------------------------------------
    def budget_left(self) -> bool:
        tc = self.tc
        return not ((tc.steps and self.step >= tc.steps) or (tc.minutes and self.elapsed >= 60 * tc.minutes))

    def _forward_backward(self) -> tuple[Any, str, torch.Tensor | None, int]:
        """One batch: (loss parts, "" or what was non-finite ("loss" | "gradient"), gradient norm, images)."""
        dist, tc, cfg = self.dist, self.tc, self.cfg
        x, y = next(self.loader)
        x, y = x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
        x, clean = self._clean_view(x)
        if self.ae is not None:  # latent run: the frozen encoder's scaled posterior mean (augmentation happened in pixels)
            x = _encode_own_rows(self.ae, x, dist.shard)
            clean = None if clean is None else self.ae.encode(clean)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            clean = None if clean is None else clean.contiguous(memory_format=torch.channels_last)
        for g in self.opt.param_groups:
            g["lr"] = tc.lr * self.lr_scale * lr_factor(cfg, self.step, self.elapsed)
        self.net.train()
        extra = {} if clean is None else {"x0_clean": clean}
        lcfg = loss_config_at(cfg.loss, self.step)  # the early CE boost (loss.ce_boost), else cfg.loss itself
        cfg = cfg if lcfg is cfg.loss else dataclasses.replace(cfg, loss=lcfg)
        parts, bad, gnorm = forward_backward(self.energy_model, self.net, self.opt, self.loss_fn, cfg, x, y, self.gen,
                                             self.precision, dist.shard, dist.all_true, **extra)
        return parts, bad, gnorm, x.shape[0]

    def _clean_view(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """loss.clean_shift: (the batch, the shifted clean-CE rows or None), in pixels. A classifier's
        whole batch is its clean view, so it is shifted in place; an EGC's first n_clean rows get a
        shifted copy and the diffusion loss keeps the originals. Shifts are drawn from the loss
        generator (checkpointed, the same on every rank), only when the option is on."""
        cfg = self.cfg
        s = cfg.loss.clean_shift
        kind = kind_of(cfg.model.kind)
        if s == 0 or not kind.classifies or kind.sampler == "sgld":
            return x, None
        if kind.energy != "diffusion":  # classifier, cnn: the whole batch is the clean view
            return random_shift(x, s, self.gen), None
        n_clean = clean_rows(cfg.loss, x.shape[0])
        if not cfg.model.supervised or cfg.loss.clean_ce_weight == 0 or n_clean == 0:
            return x, None
        return x, random_shift(x[:n_clean], s, self.gen)

    def _nonfinite(self, bad: str) -> None:
        """The weights are untouched: skip the step, or return to the last checkpoint with a lower lr;
        give up after train.max_nonfinite in a row."""
        tc = self.tc
        self.opt.zero_grad(set_to_none=True)
        self.in_a_row, self.fail_step = self.in_a_row + 1, max(self.fail_step, self.step)
        what = "skipped steps" if tc.nonfinite == "skip" else "rollbacks"
        if self.in_a_row > tc.max_nonfinite:
            raise EgcError(f"step {self.step}: non-finite {bad} after {tc.max_nonfinite} {what} in a row (train.nonfinite={tc.nonfinite}, "
                           f"train.max_nonfinite={tc.max_nonfinite}): giving up; lower train.lr or check the data")
        bad_step = self.step
        if tc.nonfinite == "skip":
            self.skipped += 1
            msg = f"step {self.step}: non-finite {bad}, step skipped ({self.skipped} so far)"
        else:
            if self.last_good is None or not self.last_good.is_file():
                raise EgcError(f"step {self.step}: non-finite {bad} and no checkpoint to roll back to ({self.last_good} is gone)")
            good = load_checkpoint(self.last_good)
            self._restore(good)
            self.step = self.last_ckpt_step = good.step  # the time spent stays spent (elapsed is not rolled back)
            self.rollbacks += 1
            self.lr_scale *= tc.rollback_lr_factor
            msg = (f"step {bad_step}: non-finite {bad}: rolled back to {self.last_good.name} (step {self.step}), learning rate x{tc.rollback_lr_factor:g} "
                   f"(now x{self.lr_scale:g} of the schedule; rollback {self.in_a_row} of at most {tc.max_nonfinite} in a row)")
            self.bar.n = self.step
        if self.dist.is_main:
            tqdm.write(msg, file=sys.stderr)
        self.logger.log(self.step if tc.nonfinite == "skip" else bad_step,
                        {"nonfinite": 1.0, "skipped_nonfinite": float(self.skipped), "rollbacks": float(self.rollbacks), "lr_scale": self.lr_scale})

    def _after_step(self, parts: Any, gnorm: torch.Tensor, images: int, t0: float) -> None:
        """Optimiser and EMA step, clocks, the agreed state of all ranks, logging and checkpoints."""
        tc = self.tc
        self.opt.step()
        self.ema.update(self.net)
        self.step += 1
        if self.step > self.fail_step:
            self.in_a_row = 0
        self.elapsed += time.time() - t0
        self.window_imgs += images  # the global batch
        due = self.step % tc.ckpt_every == 0 or time.time() - self.last_ckpt_t > 60 * tc.ckpt_minutes
        # Several processes: rank 0's clock and checkpoint timing, anyone's stop signal, mean scalars.
        self.elapsed, due, self.stopping, sc = self.dist.agree(self.elapsed, due, self.stop.requested, parts.scalars())
        for k, v in sc.items():
            self.stats[k] = 0.9 * self.stats.get(k, v) + 0.1 * v
        self.bar.update(1)
        if self.step % tc.log_every == 0:
            ips = self.window_imgs / max(time.time() - self.window_t, 1e-9)
            self.window_imgs, self.window_t = 0, time.time()
            shown = {n: f"{self.stats[k]:.{d}f}" for n, k, d in (("mse", "mse", 4), ("acc", "clean_acc", 2)) if k in self.stats}
            if tc.minutes:
                self.bar.set_description_str(self._clock(), refresh=False)  # (set_description would add a second colon)
            self.bar.set_postfix(loss=f"{self.stats['total']:.4f}", **shown, ips=f"{ips:.0f}")  # refreshes the bar
            self.logger.log(self.step, {**sc, "lr": self.opt.param_groups[0]["lr"], "grad_norm": float(gnorm), "img_per_s": ips, "elapsed_s": self.elapsed})
        if due:
            self.last_good = self.checkpoint()
            self.last_ckpt_t, self.last_ckpt_step = time.time(), self.step

    def _clock(self) -> str:
        """A time budget's progress: how much of it is spent and how much is left (the step count is open)."""
        budget = 60 * self.tc.minutes
        return f"train {_mmss(self.elapsed)} of {_mmss(budget)}, {_mmss(max(0.0, budget - self.elapsed))} left"

    def _finish(self) -> dict[str, Any]:
        """The final checkpoint (unless the newest one holds this step) and summary.json."""
        self.bar.close()
        final = self.dist.from_main(self.step != self.last_ckpt_step or not list((self.run_dir / "checkpoints").glob("step-*.safetensors")))
        path = self.checkpoint() if final else latest_in(self.run_dir)
        summary = {"run_dir": str(self.run_dir), "step": self.step, "elapsed_s": round(self.elapsed, 1), "checkpoint": str(path),
                   "precision": self.precision, "channels_last": self.channels_last,
                   "interrupted": self.stop.requested or self.stopping, "budget_left": self.budget_left(), "skipped_steps": self.skipped, "rollbacks": self.rollbacks,
                   "lr_scale": self.lr_scale, **{k: round(v, 5) for k, v in self.stats.items()}}
        if self.dist.is_main:
            summary.update(self._held_out())
            atomic_write_bytes(self.run_dir / "summary.json", json.dumps(summary, indent=2).encode())
            if not self.quiet:
                print(_closing_line(summary, self.run_dir, self.cfg), file=sys.stderr)
        return summary

    def _held_out(self) -> dict[str, Any]:
        """Accuracy of the EMA weights on the test split (a folder's held-out share), and which split that is."""
        cfg = self.cfg
        if not kind_of(cfg.model.kind).classifies or not cfg.model.supervised:
            return {}
        try:
            test = load_data(cfg.data, "test", shape=cfg.model.pixel_shape)
        except EgcError as e:
            return {"test_split": f"none ({' '.join(str(e).split())[:120]})"}
        if not test.labeled or len(test) == 0:
            return {}
        # on the CPU, like the grids (_ema_net builds there), in the training precision when training ran on the CPU
        model = EGC(self._ema_net(), cfg, self.ds.class_names, self.precision if self.dist.device.type == "cpu" else "auto",
                    autoencoder=self.ae.to("cpu") if self.ae is not None else None)
        n = min(len(test), 10_000)  # the whole test split of every supported set
        correct = 0
        for i in range(0, n, 500):
            x = to_model_range(test.images[i:min(i + 500, n)])
            correct += int((model.logits(x).argmax(1).cpu() == test.labels[i:min(i + 500, n)]).sum())
        return {"test_accuracy": round(correct / n, 4), "test_images": n, "test_split": test.split_note}

    def run(self, stop_at_step: int | None, stop_after_minutes: float | None = None) -> dict[str, Any]:
        tc, dist = self.tc, self.dist
        # this invocation's share of the budget, on the agreed training clock (self.elapsed), so every rank stops together
        session_end = self.elapsed + 60 * stop_after_minutes if stop_after_minutes else float("inf")
        self.bar = tqdm(total=tc.steps or None, initial=self.step, disable=self.quiet or not dist.is_main, dynamic_ncols=True,
                        desc=self._clock() if tc.minutes else "train")
        self.last_ckpt_t, self.last_ckpt_step = time.time(), self.step
        self.window_imgs, self.window_t = 0, time.time()
        self.stats: dict[str, float] = {}
        self.skipped = self.rollbacks = 0
        self.in_a_row, self.fail_step = 0, -1  # non-finite steps since training last got past the step that failed
        if tc.nonfinite == "rollback" and self.last_good is None:  # a fresh run: a state to roll back to before the first step
            self.last_good = self.checkpoint()
        self.stop = _Stop()
        self.stopping = False  # several processes: the stop request as agreed after the last step (a signal may reach one rank only)
        with self.stop:
            while (self.budget_left() and not (self.stopping or dist.world == 1 and self.stop.requested)
                   and (stop_at_step is None or self.step < stop_at_step) and self.elapsed < session_end):
                t0 = time.time()
                parts, bad, gnorm, images = self._forward_backward()
                if bad:
                    self._nonfinite(bad)
                    continue
                self._after_step(parts, gnorm, images, t0)
            # Still inside `with stop:` so a SIGTERM during the final checkpoint or summary only marks the run
            # interrupted instead of killing it between the two (the checkpoint write itself is atomic).
            return self._finish()
