"""``egc eval``'s classification metrics: accuracy (or an unsupervised model's cluster purity),
calibration (ECE and the reliability diagram) and accuracy on noised inputs (``noisy_accuracy``)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .modelio import batched_logits, batched_net_logits, latents, noise_schedule_abar

if TYPE_CHECKING:
    from egc.model import EGC

    from .settings import EvalContext


def cluster_purity(clusters: torch.Tensor, y: torch.Tensor) -> float:
    """Share of images whose cluster's most common true label is their own: sum over clusters of the
    largest label count, over N (clusters, y int64 [N]). 1 = every cluster holds one class."""
    if y.numel() == 0:
        return float("nan")
    k = int(clusters.max()) + 1
    c = int(y.max()) + 1
    counts = torch.zeros(k, c, dtype=torch.long)
    counts.index_put_((clusters.long(), y.long()), torch.ones_like(y, dtype=torch.long), accumulate=True)
    return float(counts.max(dim=1).values.sum()) / y.numel()


def noisy_accuracy(m: EGC, x: torch.Tensor, y: torch.Tensor, ts: list[int], seed: int = 0, batch_size: int = 250,
                   quiet: bool = True) -> dict[str, float]:
    """``{str(t): accuracy of m.logits(x_t, t)}`` with x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps, one
    fixed noise draw per t; x ``[N, C, H, W]`` in [-1, 1], y ``[N]``. (A classifier baseline ignores t
    and sees x_t as a clean image.) A latent model is noised where it was trained to be: x is encoded
    once and the noise added to the latents."""
    latent = m.autoencoder is not None
    if latent:
        x = latents(m, x, batch_size)
    out: dict[str, float] = {}
    for t in ts:
        a = noise_schedule_abar(m, t)
        g = torch.Generator().manual_seed(seed + 1000 + t)
        xt = math.sqrt(a) * x + math.sqrt(1 - a) * torch.randn(x.shape, generator=g)
        if latent:
            pred = batched_net_logits(m, xt, t, batch_size).argmax(dim=1)
        else:
            pred = batched_logits(m, xt, t, batch_size, quiet, f"noisy t={t}").argmax(dim=1)
        out[str(t)] = float((pred == y).double().mean())
    return out


def _calibration(c: EvalContext) -> None:
    """metric ece: expected calibration error of the clean logits, the reliability bins and (with an
    output folder) their diagram."""
    from egc.imageio import atomic_write_bytes

    from .calibration import ece_from_bins, reliability_bins, reliability_diagram_png

    bins = reliability_bins(torch.softmax(c.logits, dim=1), c.y)
    c.metrics["ece"] = ece_from_bins(bins)
    c.metrics["reliability"] = {"bins": len(bins["count"]), **bins}
    if c.out_dir is not None:
        p = c.out_dir / "reliability.png"
        atomic_write_bytes(p, reliability_diagram_png(bins, title=Path(str(c.checkpoint)).name))
        c.artifacts["reliability_png"] = str(p)


def accuracy_and_calibration(c: EvalContext) -> None:
    """metrics acc, ece and noisy_acc; the clean logits of the test images (``c.logits``) also when only
    ood asks for them."""
    if any(c.wants(n) for n in ("acc", "ece", "ood")):
        tick = time.perf_counter()
        c.logits = batched_logits(c.m, c.x, None, c.s.batch_size, c.s.quiet)
        c.wall["classify"] = time.perf_counter() - tick
    if c.wants("acc") and not c.m.supervised:
        pred = c.logits.argmax(dim=1)
        c.metrics["cluster_purity"] = cluster_purity(pred, c.y)
        c.metrics["clusters_used"] = int(pred.unique().numel())
    elif c.wants("acc"):
        c.metrics["accuracy"] = float((c.logits.argmax(dim=1) == c.y).double().mean())
    if c.wants("ece"):
        _calibration(c)
    if c.wants("noisy_acc"):
        tick = time.perf_counter()
        c.metrics["noisy_accuracy"] = noisy_accuracy(c.m, c.x, c.y, c.s.noise_t, c.s.seed, c.s.batch_size, c.s.quiet)
        c.wall["noisy_acc"] = time.perf_counter() - tick
