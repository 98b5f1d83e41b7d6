"""Samplers as pure functions over a noise predictor ``eps_fn(x [B, C, H, W], t [B] int64) -> eps``.

Each takes the schedule's ``alphas_cumprod`` (float64 [T]) and a starting noise x_T, and returns x_0.
Every tensor a sampler makes lives on x_T's device; fresh noise is drawn on ``gen`` (a CPU generator
gives the same images on any device) and moved there.
None of them knows about EGC: the same code samples a plain eps-prediction model, an analytic
Gaussian (tests), or the guided EGC energy gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config import SAMPLER_NAMES
from ..device import randn_from

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Called after every step as callback(step, total, x0_hat [B, C, H, W]) with the current estimate of
# x_0 (live previews); raising from it stops the sampler (how a caller cancels a run).
Callback = Callable[[int, int, torch.Tensor], None]
SAMPLERS = SAMPLER_NAMES  # the names live in config.py (the CLI offers them without importing torch)


def timesteps(num_train_steps: int, n: int) -> list[int]:
    """n distinct timesteps from T-1 down to 0, evenly spaced ("trailing" spacing: starts at T-1)."""
    if not 1 <= n <= num_train_steps:
        raise ValueError(f"sampling steps must be in [1, {num_train_steps}], got {n}")
    grid = torch.linspace(num_train_steps - 1, 0, n).round().long().tolist()
    return list(dict.fromkeys(grid))


def logsnr_timesteps(alphas_cumprod: torch.Tensor, n: int) -> list[int]:
    """n timesteps from T-1 down to 0 evenly spaced in log-SNR (what DPM-Solver recommends), each the
    nearest integer timestep; duplicates (possible for large n) are dropped."""
    lam = 0.5 * torch.log(alphas_cumprod / (1 - alphas_cumprod))  # increasing as t decreases
    targets = torch.linspace(float(lam[-1]), float(lam[0]), n, dtype=torch.float64)
    idx = (lam[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()
    idx[0], idx[-1] = alphas_cumprod.shape[0] - 1, 0
    return list(dict.fromkeys(idx))


def _x0_eps(x: torch.Tensor, eps: torch.Tensor, a: float, clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted x_0 from (x_t, eps) at abar = a; clipping to [-1, 1] re-derives a consistent eps."""
    x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
    return x0, eps


def _tvec(x: torch.Tensor, t: int) -> torch.Tensor:
    """The timestep t as a [B] int64 tensor on x's device."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def _bar(iterable, progress: bool, desc: str):
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True) if progress else iterable


def ddim(eps_fn: EpsFn, x: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int, eta: float = 0.0, clip: bool = True,
         gen: torch.Generator | None = None, progress: bool = False, callback: Callback | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, Eq. 12). eta = 0 is deterministic; eta = 1 is DDPM's posterior variance."""
    ts = timesteps(alphas_cumprod.shape[0], steps)
    # ddpm() is ddim(eta=1) at the full step count; a strided run with eta > 0 is still DDIM (eta shown)
    label = "ddpm" if eta == 1.0 and steps >= len(alphas_cumprod) else ("ddim" if eta == 0 else f"ddim eta={eta:g}")
    for i in _bar(range(len(ts)), progress, label):
        t = ts[i]
        a = float(alphas_cumprod[t])
        a_prev = float(alphas_cumprod[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        x0, eps = _x0_eps(x, eps_fn(x, _tvec(x, t)), a, clip)
        if callback is not None:
            callback(i + 1, len(ts), x0)
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * randn_from(x, gen)
    return x


def ddpm(eps_fn: EpsFn, x: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int = 1000, clip: bool = True,
         gen: torch.Generator | None = None, progress: bool = False, callback: Callback | None = None) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020) on an evenly respaced grid of ``steps`` timesteps.

    On a respaced grid the ancestral step with the posterior variance beta_tilde is exactly DDIM with
    eta = 1, so both share one update.
    """
    return ddim(eps_fn, x, alphas_cumprod, steps, eta=1.0, clip=clip, gen=gen, progress=progress, callback=callback)


def dpmpp_2m(eps_fn: EpsFn, x: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int = 20, clip: bool = True,
             progress: bool = False, gen: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): a multistep second-order solver of the diffusion ODE
    in the data-prediction form, on a grid uniform in log-SNR."""
    if not 1 <= steps <= alphas_cumprod.shape[0]:
        raise ValueError(f"sampling steps must be in [1, {alphas_cumprod.shape[0]}], got {steps}")
    ts = logsnr_timesteps(alphas_cumprod, steps)
    x0_prev, h_prev = None, None
    for i in _bar(range(len(ts)), progress, "dpm++2m"):
        t = ts[i]
        a = float(alphas_cumprod[t])
        x0, _ = _x0_eps(x, eps_fn(x, _tvec(x, t)), a, clip)
        if callback is not None:
            callback(i + 1, len(ts), x0)
        if i + 1 == len(ts):
            return x0
        a_next = float(alphas_cumprod[ts[i + 1]])
        lam = 0.5 * torch.log(torch.tensor(a / (1 - a))).item()
        lam_next = 0.5 * torch.log(torch.tensor(a_next / (1 - a_next))).item()
        h = lam_next - lam
        d = x0
        if x0_prev is not None:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        s_ratio = ((1 - a_next) / (1 - a)) ** 0.5
        x = s_ratio * x - a_next**0.5 * (torch.exp(torch.tensor(-h)).item() - 1) * d
        x0_prev, h_prev = x0, h
    return x


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its update function in the one shared signature
    ``fn(eps_fn, x, alphas_cumprod, steps, eta, clip, gen, progress, callback) -> x_0``, and whether it has an
    ``eta`` (DDIM's noise) to set; ddpm is eta = 1 by definition and dpm++2m is an ODE solver."""

    fn: Callable[..., torch.Tensor]
    has_eta: bool


def _ddim(eps_fn, x, ac, steps, eta, clip, gen, progress, callback):
    return ddim(eps_fn, x, ac, steps, eta=0.0 if eta is None else eta, clip=clip, gen=gen, progress=progress, callback=callback)


def _ddpm(eps_fn, x, ac, steps, eta, clip, gen, progress, callback):
    return ddpm(eps_fn, x, ac, steps, clip=clip, gen=gen, progress=progress, callback=callback)


def _dpmpp(eps_fn, x, ac, steps, eta, clip, gen, progress, callback):
    return dpmpp_2m(eps_fn, x, ac, steps, clip=clip, progress=progress, callback=callback)


REGISTRY: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(_ddpm, has_eta=False),
    "ddim": SamplerSpec(_ddim, has_eta=True),
    "dpm++2m": SamplerSpec(_dpmpp, has_eta=False),
}
assert tuple(REGISTRY) == SAMPLERS


def run_sampler(name: str, eps_fn: EpsFn, x: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int, eta: float | None = None,
                clip: bool = True, gen: torch.Generator | None = None, progress: bool = False, callback: Callback | None = None) -> torch.Tensor:
    """Run the registered sampler ``name`` on x_T [B, C, H, W] -> x_0. ``eta`` is DDIM's noise (None:
    the sampler's own, 0 for ddim); giving it to a sampler without one is an error, not ignored."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise ValueError(f"unknown sampler '{name}' (choose from {', '.join(SAMPLERS)})")
    if eta is not None and not spec.has_eta:
        raise ValueError(f"sampler {name} has no eta (only ddim does; ddpm is eta 1, dpm++2m deterministic)")
    return spec.fn(eps_fn, x, alphas_cumprod, steps, eta, clip, gen, progress, callback)
