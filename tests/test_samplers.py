"""Samplers given the exact eps of a Gaussian must return that Gaussian."""

from __future__ import annotations

import pytest
import torch

from egc.diffusion.samplers import run_sampler
from egc.diffusion.schedule import Schedule

MU, SD = 0.7, 0.4


def exact_eps(ac: torch.Tensor):
    """Data N(MU, SD^2) per pixel: x_t ~ N(sqrt(a) MU, a SD^2 + 1 - a), eps = -sqrt(1-a) * score."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ac[t].to(x.dtype).view(-1, 1, 1, 1)
        var = a * SD**2 + 1 - a
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / var

    return fn


@pytest.mark.parametrize("name,steps,eta,tol", [("ddpm", 1000, None, 0.01), ("ddim", 200, 0.0, 0.01), ("ddim", 200, 0.5, 0.015),
                                                ("dpm++2m", 10, None, 0.01), ("dpm++2m", 50, None, 0.002)])
def test_sampler_recovers_gaussian(name, steps, eta, tol):
    sched = Schedule.make("ldm-linear")
    gen = torch.Generator().manual_seed(0)
    # Start from the exact marginal at t = T-1 (the LDM schedule keeps a little signal there), so
    # any error left is the sampler's own.
    a_T = float(sched.alphas_cumprod[-1])
    x = a_T**0.5 * MU + (a_T * SD**2 + 1 - a_T) ** 0.5 * torch.randn(4000, 1, 4, 4, generator=gen, dtype=torch.float64)
    out = run_sampler(name, exact_eps(sched.alphas_cumprod), x, sched.alphas_cumprod, steps, eta=eta, clip=False, gen=gen)
    assert abs(float(out.mean()) - MU) < tol
    assert abs(float(out.std()) - SD) < tol


def test_registry_has_one_signature_and_refuses_an_eta_a_sampler_lacks():
    from egc.diffusion.samplers import REGISTRY, SAMPLERS

    sched = Schedule.make("ldm-linear")
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []

    def eps(z, t):
        calls.append(int(t[0]))
        return torch.zeros_like(z)

    for name in SAMPLERS:
        calls.clear()
        out = run_sampler(name, eps, x, sched.alphas_cumprod, 5, gen=torch.Generator().manual_seed(1))
        assert out.shape == x.shape and calls[0] == 999 and calls[-1] == 0, (name, calls)
        if not REGISTRY[name].has_eta:
            with pytest.raises(ValueError, match="has no eta"):
                run_sampler(name, eps, x, sched.alphas_cumprod, 5, eta=0.5)
    with pytest.raises(ValueError, match="unknown sampler"):
        run_sampler("euler", eps, x, sched.alphas_cumprod, 5)


def test_timesteps_span_the_schedule():
    from egc.diffusion.samplers import timesteps

    ts = timesteps(1000, 20)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 20 and ts == sorted(ts, reverse=True)


def test_callback_sees_every_step_and_can_stop_the_sampler():
    from egc.diffusion.samplers import SAMPLERS

    sched = Schedule.make("ldm-linear")
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in SAMPLERS:
        seen = []
        run_sampler(name, lambda z, t: torch.zeros_like(z), x, sched.alphas_cumprod, 4, gen=torch.Generator().manual_seed(1),
                    callback=lambda i, n, x0: seen.append((i, n, tuple(x0.shape))))
        assert seen == [(i, 4, (2, 1, 4, 4)) for i in range(1, 5)], (name, seen)

        class Stop(Exception):
            pass

        def stop(i, n, x0):
            if i == 2:
                raise Stop

        with pytest.raises(Stop):
            run_sampler(name, lambda z, t: torch.zeros_like(z), x, sched.alphas_cumprod, 4, callback=stop)
