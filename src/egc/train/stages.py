"""``egc train`` without a hand-written latent config: pixels or latents chosen from the data, and for
latents the autoencoder stage first (or a shipped autoencoder reused when it reconstructs the data well
enough), all in one run folder that ``--resume`` continues at whichever stage it stopped.

    RUN/plan.json       what was chosen and why (read back by --resume)
    RUN/autoencoder/    the autoencoder stage, when one is trained here (an ordinary ``--model autoencoder`` run)
    RUN/checkpoints/    the EGC (or classifier / ddpm) stage, its checkpoints embedding the autoencoder

The rule (:func:`choose_space`) is measured where it could be: see its docstring.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..checkpoint import latest_in
from ..config import AUTOENCODER, RunConfig, load_config
from ..data import ImageDataset, load_data, to_model_range
from ..errors import EgcError
from ..imageio import atomic_write_bytes
from ..kinds import kind_of

# The shipped autoencoder a colour run may reuse, and its reconstruction MSE (pixels in [-1, 1]) on 512
# CIFAR-10 test images at 32 px, measured 2026-12-03 (0.0017 on the same images upscaled to 64 px).
SHIPPED_AE = "zoo:cifar10"
SHIPPED_AE_MSE = 0.0026
REUSE_FACTOR = 2.0  # reuse when the user's images reconstruct within this factor of that
AE_SHARE = 0.2  # of a minutes (or steps) budget, for an autoencoder trained here
PLAN = "plan.json"


@dataclass
class Plan:
    space: str  # "pixel" | "latent"
    why: str
    autoencoder: str | None = None  # what model.autoencoder points at for the latent stage
    ae_here: bool = False  # an autoencoder stage runs in RUN/autoencoder
    notes: list[str] = field(default_factory=list)


def choose_space(kind: str, channels: int, size: int) -> tuple[str, str]:
    """("pixel" | "latent", why) for a new run of ``kind`` on ``channels`` x ``size`` x ``size`` images.

    - colour at 32 px and more, for the generating kinds: latents. Measured on CIFAR-10 at 15 minutes each
      (BENCHMARKS.md 4): latents 60.2 % test accuracy, 86 % of samples in the requested class, fd_cifarcnn
      20.3; pixels 33.8 %, 46 %, 43; at 64 px a pixel step costs 4x a 32 px one, a latent step the same.
    - grey images: pixels (the shipped Fashion-MNIST recipe; latents were never measured on grey data).
    - colour below 32 px: pixels (an autoencoder that downsamples 4x would leave latents of 4 x 4 or less).
    - a classifier: pixels (it does not generate; an autoencoder could only lose detail)."""
    if not kind_of(kind).generates:
        return "pixel", f"a {kind} does not generate: pixels"
    if kind_of(kind).pixels_only:
        return "pixel", f"a {kind} samples by SGLD on pixels"
    if channels == 1:
        return "pixel", "grey images: pixels (the Fashion-MNIST recipe; latents not measured on grey data)"
    if size < 32:
        return "pixel", f"colour at {size} px: pixels (too small for a 4x autoencoder)"
    return "latent", (f"colour at {size} px: latents (CIFAR-10 at 15 min: 60.2 % accuracy and fd_cifarcnn 20.3 against "
                      "pixels' 33.8 % and 43.2, BENCHMARKS.md 4)")


def reconstruction_mse(ae_spec: str, ds: ImageDataset, n: int = 128) -> float:
    """Mean squared reconstruction error (pixels in [-1, 1]) of ``n`` evenly spread images of ``ds`` through
    the autoencoder ``ae_spec`` (run at the data's size: the autoencoder is convolutional)."""
    from ..autoencoder import load_autoencoder

    ae = load_autoencoder(ae_spec)
    ae.net.cfg.image_size = ds.image_size
    idx = torch.linspace(0, len(ds) - 1, min(n, len(ds))).long()
    x = to_model_range(ds.images[idx])
    with torch.no_grad():
        rec = torch.cat([ae.decode(ae.encode(x[i:i + 32])) for i in range(0, len(x), 32)])
    return float(((rec - x) ** 2).mean())


def make_plan(cfg: RunConfig, ds: ImageDataset) -> Plan:
    """What a new run of ``cfg`` on ``ds`` trains on (``model.space`` auto), and the autoencoder a latent run uses."""
    m = cfg.model
    if m.space == "pixel":
        return Plan("pixel", "model.space pixel")
    space, why = ("latent", "model.space latent") if m.space == "latent" else choose_space(m.kind, ds.channels, ds.image_size)
    if space == "pixel":
        return Plan(space, why)
    plan = Plan(space, why)
    if ds.channels == 3 and ds.image_size % 4 == 0:
        mse = reconstruction_mse(SHIPPED_AE, ds)
        if mse <= REUSE_FACTOR * SHIPPED_AE_MSE:
            plan.autoencoder = SHIPPED_AE
            plan.notes.append(f"reusing the autoencoder of {SHIPPED_AE}: it reconstructs these images at MSE {mse:.4f} "
                              f"(its own CIFAR-10 test images: {SHIPPED_AE_MSE}; reused within {REUSE_FACTOR:g}x)")
            return plan
        plan.notes.append(f"the autoencoder of {SHIPPED_AE} reconstructs these images at MSE {mse:.4f}, more than {REUSE_FACTOR:g}x "
                          f"its own {SHIPPED_AE_MSE}: training one here first")
    plan.ae_here = True
    return plan


def _downsample(size: int) -> int:
    """The autoencoder's downsampling for images of ``size`` px: 4, or 8 above 64 px."""
    return 4 if size <= 64 else 8


def _ae_config(cfg: RunConfig, size: int) -> RunConfig:
    """The autoencoder stage of ``cfg``: configs/cifar10-ae.yaml's recipe on the same data, AE_SHARE of the budget."""
    ae = copy.deepcopy(cfg)
    # 8 latent channels and 4x downsampling (8x at more than 64 px); width and depth as the user's model.ae says
    arch = dataclasses.replace(cfg.model.ae, latent_channels=8, downsample=_downsample(size))
    ae.model = type(cfg.model)(kind=AUTOENCODER, size=cfg.model.size, ae=arch)
    ae.loss = type(cfg.loss)()
    ae.train.minutes = round(cfg.train.minutes * AE_SHARE, 3)
    ae.train.steps = max(1, int(cfg.train.steps * AE_SHARE)) if cfg.train.steps else 0
    return ae.validate()


def _plan_downsample(plan: Plan, size: int) -> int:
    """The downsampling of the autoencoder the latent stage will use: the one trained here follows
    :func:`_downsample`; a reused one has its own (read from its checkpoint, whatever the image size)."""
    if plan.ae_here or plan.autoencoder is None:
        return _downsample(size)
    from ..autoencoder import load_autoencoder

    return int(load_autoencoder(plan.autoencoder).net.cfg.downsample)


def _latent_stage(cfg: RunConfig, plan: Plan, run_dir: Path) -> RunConfig:
    """The EGC (classifier, ddpm) stage: on the plan's autoencoder, with the latent recipe of
    configs/cifar10-latent.yaml (no patch stem on 8 x 8 latents, clean-view shifts of 4 px)."""
    out = copy.deepcopy(cfg)
    out.model.space = "latent"
    out.model.autoencoder = str(run_dir / "autoencoder") if plan.ae_here else plan.autoencoder
    size = cfg.data.image_size or 32
    latent = size // _plan_downsample(plan, size)
    if latent <= 8:
        out.model.patch = 1
    if out.loss.clean_shift == 0:
        out.loss.clean_shift = 4
    if plan.ae_here:
        out.train.minutes = round(cfg.train.minutes * (1 - AE_SHARE), 3)
    return out.validate()


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"egc train: {msg}", file=sys.stderr)


def train_run(cfg: RunConfig, run_dir: str | Path, resume: bool = False, quiet: bool = False,
              stop_after_minutes: float | None = None) -> dict[str, Any]:
    """``egc train``: a plain run when the kind or config fixes pixels or latents, else the staged run above."""
    from .loop import check_budget, train

    run_dir = Path(run_dir)
    plan_file = run_dir / PLAN
    fixed = kind_of(cfg.model.kind).first_stage or cfg.model.latent or cfg.model.space == "pixel"
    if not resume:
        check_budget(cfg)  # before the data is read and the plan is said
    if resume and not plan_file.is_file() or not resume and fixed:
        return train(cfg, run_dir, resume=resume, quiet=quiet, stop_after_minutes=stop_after_minutes)
    ds = None  # the train split, loaded once here for a new run and handed to both stages
    if resume:
        plan = Plan(**json.loads(plan_file.read_text()))
        _say(f"continuing the {plan.space} plan of {run_dir} ({plan.why})", quiet)
    else:
        ds = load_data(cfg.data, "train")
        for note in ds.notes:
            _say(f"{cfg.data.name}: {note}", quiet)
        cfg.data.image_size = ds.image_size
        plan = make_plan(cfg, ds)
        _say(f"{plan.why}", quiet)
        for note in plan.notes:
            _say(note, quiet)
        if plan.space == "pixel":
            cfg.model.space = "pixel"
            return train(cfg, run_dir, quiet=quiet, stop_after_minutes=stop_after_minutes, data=ds)
        if kind_of(cfg.model.kind).pixels_only:
            raise EgcError(f"model.space latent: a {cfg.model.kind} runs on pixels")
        run_dir.mkdir(parents=True, exist_ok=True)
        if plan.ae_here:  # written now so that --resume finds the stage's config whenever it stops
            atomic_write_bytes(run_dir / "autoencoder" / "config.yaml",
                               yaml.safe_dump(_ae_config(cfg, ds.image_size).to_dict(), sort_keys=False).encode())
        cfg = _latent_stage(cfg, plan, run_dir)
        atomic_write_bytes(plan_file, json.dumps(plan.__dict__, indent=2).encode())
        # --resume without --config reads this, whichever stage is running when it stops
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    t0 = time.time()
    if plan.ae_here:
        ae_dir = run_dir / "autoencoder"
        done = (ae_dir / "summary.json").is_file() and not json.loads((ae_dir / "summary.json").read_text()).get("budget_left", True)
        if not done:
            ae_cfg = load_config(ae_dir / "config.yaml")
            _say(f"stage 1 of 2: the autoencoder in {ae_dir}", quiet)
            summary = train(ae_cfg, ae_dir, resume=latest_in(ae_dir) is not None, quiet=quiet, stop_after_minutes=stop_after_minutes, data=ds)
            if summary["interrupted"] or summary["budget_left"]:
                return {**summary, "stage": "autoencoder", "run_dir": str(run_dir)}
        if stop_after_minutes is not None:
            stop_after_minutes -= (time.time() - t0) / 60
            if stop_after_minutes <= 0:
                return {"run_dir": str(run_dir), "stage": "autoencoder", "interrupted": True, "budget_left": True}
        _say("stage 2 of 2: the model on the autoencoder's latents", quiet)
    summary = train(cfg, run_dir, resume=resume and latest_in(run_dir) is not None, quiet=quiet, stop_after_minutes=stop_after_minutes, data=ds)
    return {**summary, "space": plan.space, "autoencoder": cfg.model.autoencoder}
