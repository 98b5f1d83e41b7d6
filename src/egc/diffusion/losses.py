"""EGC training loss (EGC paper Eq. 9 with the released weighting), one small pure function.

    L = mean ||eps_hat(x_t) - eps||^2                                    (diffusion, double backprop)
      + w_noisy * mean( sqrt(abar_t) * CE_ls(l(x_t, t), y) )             (noisy classification)
      + w_clean * CE(l(x_0, t=0), y)                                     (clean classification)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as tfn
from torch import nn

from ..config import LossConfig, ModelConfig
from .energy import classify, eps_and_logits
from .schedule import Schedule


@dataclass
class LossParts:
    total: torch.Tensor
    mse: torch.Tensor
    noisy_ce: torch.Tensor
    clean_ce: torch.Tensor
    noisy_acc: torch.Tensor
    clean_acc: torch.Tensor

    def scalars(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "mse", "noisy_ce", "clean_ce", "noisy_acc", "clean_acc")}


def egc_loss(net: nn.Module, mcfg: ModelConfig, lcfg: LossConfig, sched: Schedule, x0: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None) -> LossParts:
    """x0 [B, C, H, W] in [-1, 1], y [B] int64 -> LossParts. Randomness (t, eps) comes from ``gen``."""
    b = x0.shape[0]
    t = torch.randint(0, sched.num_steps, (b,), generator=gen, device=x0.device)
    eps = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
    abar = sched.abar(t)
    xt = sched.add_noise(x0, t, eps)
    eps_hat, logits, _ = eps_and_logits(net, mcfg, xt, t, abar, create_graph=True)
    mse = (eps_hat.float() - eps.float()).pow(2).mean()
    ce = tfn.cross_entropy(logits, y, label_smoothing=lcfg.label_smoothing, reduction="none")
    noisy_ce = (abar.sqrt() * ce).mean()
    total = mse + lcfg.noisy_ce_weight * noisy_ce
    n_clean = int(round(lcfg.clean_fraction * b))
    if n_clean > 0 and lcfg.clean_ce_weight > 0:
        clean_logits = classify(net, mcfg, x0[:n_clean])
        clean_ce = tfn.cross_entropy(clean_logits, y[:n_clean])
        clean_acc = (clean_logits.argmax(1) == y[:n_clean]).float().mean()
        total = total + lcfg.clean_ce_weight * clean_ce
    else:
        clean_ce = clean_acc = torch.zeros((), device=x0.device)
    noisy_acc = (logits.argmax(1) == y).float().mean()
    return LossParts(total, mse.detach(), noisy_ce.detach(), clean_ce.detach(), noisy_acc, clean_acc)
