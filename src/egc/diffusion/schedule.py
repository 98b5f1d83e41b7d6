"""Noise schedules for the variance-preserving diffusion x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

A schedule is just the vector of cumulative products ``alphas_cumprod`` (abar_t, t = 0..T-1); every
sampler and loss derives what it needs from it, so adding a schedule means adding one function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError

SCHEDULES = ("ldm-linear", "ddpm-linear", "cosine")


def _betas(name: str, steps: int) -> torch.Tensor:
    if name == "ldm-linear":
        # As released with EGC (and Stable Diffusion): linear in sqrt(beta) from 0.00085 to 0.012.
        return torch.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=torch.float64) ** 2
    if name == "ddpm-linear":
        # Ho et al. 2020, rescaled so that any step count spans the same noise range.
        scale = 1000.0 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if name == "cosine":
        # Nichol & Dhariwal 2021: abar follows a squared cosine; betas clipped at 0.999 as they do.
        s = 0.008
        u = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ConfigError(f"unknown noise schedule '{name}' (choose from {', '.join(SCHEDULES)})")


@dataclass(frozen=True)
class Schedule:
    """Discrete VP schedule. ``alphas_cumprod`` is float64 [T] so samplers keep full precision."""

    name: str
    alphas_cumprod: torch.Tensor  # float64 [T]

    @classmethod
    def make(cls, name: str, steps: int = 1000) -> "Schedule":
        if steps < 2:
            raise ConfigError(f"diffusion steps must be >= 2, got {steps}")
        return cls(name, torch.cumprod(1 - _betas(name, steps), 0))

    @property
    def num_steps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t as float32 [B] for integer timesteps t [B] (t = -1 means clean, abar = 1)."""
        ac = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod]).float()
        return ac.to(t.device)[t.long() + 1]

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t for x0 [B, C, H, W], t [B], eps like x0."""
        a = self.abar(t).view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def timestep_for_noise(self, sigma: float) -> int:
        """The timestep whose noise-to-signal ratio sqrt((1 - abar_t) / abar_t) is closest to ``sigma``
        (on the model's scale): x_t / sqrt(abar_t) = x + sigma eps, so a classifier of x_t at that t
        classifies x plus Gaussian noise of that size (CaG's noisy head, randomized smoothing)."""
        ac = self.alphas_cumprod
        return int((((1 - ac) / ac).sqrt() - float(sigma)).abs().argmin())
