"""Energy, classifier logits and score of an EGC network: the only place input gradients are taken.

Given the per-pixel class-logit map F(x_t, t) [B, K, H, W] (EGC paper, Sec. 3):
    classifier logits   l(x_t, t) = pool_hw F                                  [B, K]
    energy              E(x_t, t) = -sum_hw logsumexp_k F + prior(x_t, t)       [B]
    noise prediction    eps_hat   = grad_x E                                    [B, C, H, W]
so log p(x_t) = -E + const and eps_hat = -sqrt(1 - abar_t) * score up to the scale the network learns.

``prior`` (model.energy_prior = "gaussian", the project's default; "none" is the released form) is
0.5 * c_t * ||x_t||^2 with c_t = sqrt(1 - abar_t) / (abar_t * sigma_data^2 + 1 - abar_t): the exact
eps-prediction energy for Gaussian data of standard deviation sigma_data. It equals adding the same
term -0.5 c_t ||x_t[:, h, w]||^2 to every class logit of a pixel, so p(y | x) is untouched, and the
network only learns the residual, as a skip connection does for an ordinary denoiser.

``"denoiser"`` goes further, in the spirit of Salimans & Ho (2021, "Should EBMs model the energy or
the score?"): the network's map carries C extra channels r, read as an EDM-preconditioned estimate
x0_hat = c_skip x_t + c_out r, and the shared term is 0.5 * k_t * ||x_t - sqrt(abar_t) x0_hat||^2 with
k_t chosen so that its gradient is exactly (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t) (the eps
an x0-predicting denoiser would give) plus a term through the Jacobian of r. At r = 0 it equals the
Gaussian prior, so training starts from the same point. The class logits still pool only the K
class channels, so classification is the released head.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..config import ModelConfig


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision activations (bf16 autocast) are widened to float32 before reductions."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def input_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(x), d sum(fn(x)) / dx) for a batch x; the one helper every input gradient goes through.

    With ``create_graph`` the gradient is itself differentiable (double backpropagation for training);
    without it the graph is freed at once (sampling, attacks, CaG).
    """
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        out = fn(xg)
        (g,) = torch.autograd.grad(out.sum(), xg, create_graph=create_graph)
    return out, g


def pool_logits(fmap: torch.Tensor, kind: str) -> torch.Tensor:
    """Class logits [B, K] from the logit map [B, K, H, W].

    "attention" is the released parameter-free attention pool: the mean token is prepended to the
    pixel tokens, one softmax self-attention with q = k = v runs, and token 0 is kept.
    """
    tokens = _wide(fmap).flatten(2).transpose(1, 2)  # [B, HW, K]
    mean = tokens.mean(dim=1, keepdim=True)  # [B, 1, K]
    if kind == "mean":
        return mean[:, 0]
    seq = torch.cat([mean, tokens], dim=1)  # [B, 1 + HW, K]
    att = torch.softmax(mean @ seq.transpose(1, 2) / seq.shape[-1] ** 0.5, dim=-1)  # [B, 1, 1 + HW]
    return (att @ seq)[:, 0]


def prior_coef(abar: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """c_t of the Gaussian prior energy for abar [B] -> [B]."""
    return (1 - abar).sqrt() / (abar * sigma_data**2 + 1 - abar)


def denoiser_term(x: torch.Tensor, r: torch.Tensor, abar: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """0.5 * k_t * ||x - sqrt(a) x0_hat||^2 [B] for x, r [B, C, H, W] (see the module docstring)."""
    a = abar.view(-1, 1, 1, 1)
    d = 1 - a + a * sigma_data**2
    c_skip = a.sqrt() * sigma_data**2 / d
    c_out = sigma_data * (1 - a).sqrt() / d.sqrt()
    k = d / (1 - a) ** 1.5
    u = x - a.sqrt() * (c_skip * x + c_out * r)
    return 0.5 * (k * u.pow(2)).sum(dim=(1, 2, 3))


def energy_and_logits(net: nn.Module, cfg: ModelConfig, x: torch.Tensor, t: torch.Tensor, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E(x_t, t) [B] and classifier logits [B, K] for x [B, C, H, W], t [B], abar [B]."""
    fmap = _wide(net(x, t))
    k = cfg.num_classes
    logit_map = fmap[:, :k]
    energy = -torch.logsumexp(logit_map, dim=1).sum(dim=(1, 2))
    if cfg.energy_prior == "gaussian":
        energy = energy + 0.5 * prior_coef(abar, cfg.sigma_data) * _wide(x).pow(2).sum(dim=(1, 2, 3))
    elif cfg.energy_prior == "denoiser":
        energy = energy + denoiser_term(_wide(x), fmap[:, k:], abar.to(fmap.dtype), cfg.sigma_data)
    return energy, pool_logits(logit_map, cfg.pool)


CLEAN_T = -1  # the time input that marks a clean image (see nets/unet.py)


def classify(net: nn.Module, cfg: ModelConfig, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """Classifier logits [B, K] (no input gradient needed). t defaults to CLEAN_T (clean input)."""
    if t is None:
        t = torch.full((x.shape[0],), CLEAN_T, device=x.device)
    return pool_logits(_wide(net(x, t))[:, : cfg.num_classes], cfg.pool)


def eps_and_logits(net: nn.Module, cfg: ModelConfig, x: torch.Tensor, t: torch.Tensor, abar: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eps_hat [B, C, H, W], logits [B, K], energy [B]) from one forward and one input gradient."""
    logits: list[torch.Tensor] = []

    def fn(xg: torch.Tensor) -> torch.Tensor:
        e, lg = energy_and_logits(net, cfg, xg, t, abar)
        logits.append(lg)
        return e

    energy, eps = input_grad(fn, x, create_graph=create_graph)
    return eps, logits[0], energy


def _eps_and_logits_func(net: nn.Module, cfg: ModelConfig, x: torch.Tensor, t: torch.Tensor, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """eps_and_logits(create_graph=True) written with torch.func.grad. The results stay differentiable
    with respect to the weights (functorch levels compose with ordinary autograd), and torch.compile
    can trace it: AOTAutograd refuses the double backward of autograd.grad(create_graph=True)
    ("does not currently support double backward"), but a traced func.grad is a plain forward graph
    whose first-order backward it can build."""

    def fn(xg: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        e, lg = energy_and_logits(net, cfg, xg, t, abar)
        return e.sum(), (lg, e)

    eps, (logits, energy) = torch.func.grad(fn, has_aux=True)(x)
    return eps, logits, energy


class CompiledEps:
    """The training path's eps_and_logits(create_graph=True) through torch.compile (train.compile).

    Call it like ``eps_and_logits(net, cfg, x, t, abar)``. The first call compiles (minutes on 2 CPU
    cores; a new input shape compiles again). If compiling fails (for example no C compiler for the
    CPU backend), it says so once on stderr and runs the same torch.func path eagerly from then on,
    so a run never dies of it; ``self.error`` keeps the reason.
    """

    def __init__(self) -> None:
        self._fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = torch.compile(_eps_and_logits_func, dynamic=False)
        self.error: str | None = None

    def __call__(self, net: nn.Module, cfg: ModelConfig, x: torch.Tensor, t: torch.Tensor, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.error is None:
            try:
                return self._fn(net, cfg, x, t, abar)
            except Exception as e:  # noqa: BLE001 - any backend failure: fall back, never lose the run
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                self.error = f"{type(e).__name__}: {first}"[:300]
                import sys

                print(f"egc: torch.compile failed ({self.error}); training continues uncompiled", file=sys.stderr)
        return _eps_and_logits_func(net, cfg, x, t, abar)


def guided_eps(net: nn.Module, cfg: ModelConfig, x: torch.Tensor, t: torch.Tensor, abar: torch.Tensor, y: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Class-conditional noise prediction, as released (one backward for both terms):

        eps' = eps_hat - sqrt(1 - abar_t) * s * grad_x log softmax(l(x_t))[y]
             = grad_x [ E(x_t) - s * sqrt(1 - abar_t) * log p(y | x_t) ]

    y [B] int64 (None, or s = 0: unconditional, the gradient of the energy alone).
    """
    conditional = y is not None and scale != 0

    def fn(xg: torch.Tensor) -> torch.Tensor:
        e, lg = energy_and_logits(net, cfg, xg, t, abar)
        if not conditional:
            return e
        logp = torch.log_softmax(lg, dim=1).gather(1, y[:, None])[:, 0]
        return e - scale * (1 - abar).sqrt() * logp

    return input_grad(fn, x)[1].detach()


# ---- the baselines (model.kind "classifier" / "ddpm"): plain forward passes, no input gradient ----
def direct_eps(net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """kind "ddpm": the network's output [B, C, H, W] is the noise prediction itself."""
    return _wide(net(x, t))


def logit_energy(logits: torch.Tensor) -> torch.Tensor:
    """kind "classifier": the JEM-style energy -logsumexp_k l_k(x) [B] of plain classifier logits [B, K]
    (an OOD score; not a generative model, nothing was trained to make it one)."""
    return -torch.logsumexp(_wide(logits), dim=1)
