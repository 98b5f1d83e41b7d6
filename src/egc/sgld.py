"""Stochastic gradient Langevin dynamics on a logit energy, as JEM samples (Grathwohl et al. 2020):

    x <- x - step_size * dE/dx + noise * N(0, I),   E(x) = -logsumexp_k f(x)_k   (or -f(x)_y for class y)

JEM's published values: step size 1, noise 0.01, 20 steps per training iteration (the step size and the
noise are deliberately not the Langevin pair 2 eta / sqrt(2 eta): that is what makes it train). JEM++'s
proximal variant bounds each step's change to ``clip`` in every pixel. Pure: the energy function, the
start and the generator in, the samples out. Pixels stay in [-1, 1] (clamped after each step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .diffusion import energy as en

LogitFn = Callable[[torch.Tensor], torch.Tensor]  # x [B, C, H, W] -> logits [B, K], differentiable in x


def logit_energy(logits: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """E [B]: -logsumexp_k logits (the marginal), or -logits[y] for classes y [B] (the joint with y)."""
    if y is None:
        return en.logit_energy(logits)
    return -logits.float().gather(1, y.view(-1, 1))[:, 0]


def sgld(logits_fn: LogitFn, x: torch.Tensor, steps: int, step_size: float = 1.0, noise: float = 0.01, clip: float = 0.0,
         y: torch.Tensor | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
    """``steps`` SGLD steps from x [B, C, H, W]; returns the samples (detached, clamped to [-1, 1]).

    ``clip`` > 0 bounds each step's change per pixel (JEM++'s proximal SGLD). The noise is drawn on
    ``gen``'s device (CPU by default) so a seed gives the same chain on any device."""
    for _ in range(steps):
        _, grad = en.input_grad(lambda xg: logit_energy(logits_fn(xg), y), x)
        step = -step_size * grad
        if clip > 0:
            step = step.clamp(-clip, clip)
        z = torch.randn(x.shape, generator=gen, device=gen.device if gen is not None else x.device).to(x.device, x.dtype)
        x = (x.detach() + step + noise * z).clamp(-1.0, 1.0)
    return x.detach()
