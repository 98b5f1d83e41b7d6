"""Shared fixtures: tiny data sets written to disk and a tiny config, so every test is CPU-fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # tests are tiny; one thread keeps them deterministic and leaves a core free


def make_npz(path: Path, n: int = 48, size: int = 8, classes: int = 3, seed: int = 0) -> Path:
    """Class k = a bright square in a class-specific corner plus noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    imgs = rng.integers(0, 40, size=(n, size, size, 1)).astype(np.uint8)
    h = size // 2
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 2)
        imgs[i, r * h:(r + 1) * h, c * h:(c + 1) * h] = 220
    np.savez(path, images=imgs, labels=labels.astype(np.int64), class_names=np.array([f"c{k}" for k in range(classes)]))
    return path


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    return make_npz(tmp_path / "tiny.npz")


TINY = ["model.size=tiny", "train.batch_size=8", "train.sample_n=3", "train.sample_steps=2", "train.log_every=1",
        "train.warmup_steps=0", "train.ema_decay=0.9", "train.threads=1"]
# the architecture of a tiny KL autoencoder (egc train --model autoencoder)
TINY_AE = ["model.ae.downsample=2", "model.ae.channels=8", "model.ae.latent_channels=2", "model.ae.num_res_blocks=0"]


@pytest.fixture
def tiny_overrides(tiny_npz: Path) -> list[str]:
    return TINY + [f"data.name=npz:{tiny_npz}"]


def tiny_rgb32_run(tmp: Path):
    """A tiny EGC run (1 step) on 32 x 32 RGB images of 10 classes; returns its loaded Checkpoint, so a test can
    relabel its data set (as a CIFAR-10 model, say) and save it with egc.checkpoint.save_checkpoint."""
    from egc.checkpoint import load_checkpoint
    from egc.cli import main

    with np.load(make_npz(tmp / "g.npz", n=20, size=32, classes=10)) as z:
        np.savez(tmp / "rgb.npz", images=np.repeat(z["images"], 3, axis=-1), labels=z["labels"], class_names=z["class_names"])
    # on pixels: colour images of 32 px would otherwise train on the shipped autoencoder's latents (model.space auto)
    assert main(tiny_train_argv(tmp / "rgb-run", tmp / "rgb.npz", 1, "--set", "model.space=pixel")) == 0
    return load_checkpoint(str(tmp / "rgb-run"))


def tiny_train_argv(run: Path, npz: Path, steps: int, *extra: str) -> list[str]:
    """``egc train`` arguments for a tiny run on ``npz`` (the TINY config), as a user would type them."""
    args = ["train", "--out", str(run), "--data", f"npz:{npz}", "--steps", str(steps), "--quiet", *extra]
    for s in TINY:
        args += ["--set", s]
    return args


def fit_fixed_batch(loss_fn, net: torch.nn.Module, cfg, x0: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 3e-3):
    """Adam on one fixed batch for ``steps`` steps; returns (loss before, loss after, last parts).

    Both losses use the same noise draw (seed 123) so they compare like with like."""
    from egc.diffusion.energy import EnergyModel
    from egc.diffusion.schedule import Schedule

    em = EnergyModel(net, cfg.model, Schedule.make("ldm-linear"))
    opt = torch.optim.Adam(net.parameters(), lr)

    def eval_loss() -> float:
        return float(loss_fn(em, cfg.loss, x0, y, torch.Generator().manual_seed(123)).total.detach())

    before = eval_loss()
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        parts = loss_fn(em, cfg.loss, x0, y, gen)
        opt.zero_grad()
        parts.total.backward()
        opt.step()
    return before, eval_loss(), parts


# Modules whose tests train, spawn processes or drive a browser (about 5 s or more each by the --durations of
# scripts/test.sh on 2 cores): marked slow, so `FAST=1 bash scripts/test.sh` (pytest -m "not slow") leaves
# them out for a quick run while CI runs everything.
SLOW_MODULES = {"test_bench", "test_kill_resume", "test_distributed", "test_serve_browser", "test_inception"}
SLOW_TESTS = {"test_full_disk", "test_defaults_reach_the_class_for_every_classifier_kind"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
