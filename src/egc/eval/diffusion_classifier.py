"""A diffusion classifier (Li et al., ICCV 2023, "Your diffusion model is secretly a zero-shot
classifier"): for a class-conditional diffusion model, p(y | x) is proportional to
exp(-E_{t, eps} ||eps - eps_theta(x_t, t, y)||^2), the ELBO up to terms every class shares.

Every class is scored on the same (t, eps) pairs (so the noise draws cancel between classes), and
unlikely classes are pruned in rounds: a schedule ``[(keep, trials), ...]`` scores the best ``keep``
classes (by mean error so far) on ``trials`` new pairs per round. Li et al. use 10 classes x 50 trials,
then the best 5 x 450 (about 2,750 network evaluations per image); ``egc classify --method diffusion``
takes the schedule as ``--dc-schedule 10:50,5:450``.

Works for any conditional eps: a conditional ddpm (one forward per class and pair) and EGC's own
class energies (eps_y = grad_x E(x_t | y): a forward and a backward per class and pair).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..errors import EgcError

if TYPE_CHECKING:
    from ..model import EGC
    from .settings import EvalContext

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t [N,C,H,W], t [N], y [N]) -> eps [N,C,H,W]


def parse_schedule(text: str, num_classes: int) -> list[tuple[int, int]]:
    """"KEEP:TRIALS,..." -> [(keep, trials), ...]; keep is clamped to the class count, must not grow,
    and the last round must leave a choice to make (keep >= 1)."""
    rounds: list[tuple[int, int]] = []
    try:
        for part in (p for p in text.split(",") if p.strip()):
            keep, trials = (int(v) for v in part.split(":"))
            rounds.append((min(keep, num_classes), trials))
    except ValueError:
        raise EgcError(f"--dc-schedule: expected KEEP:TRIALS[,KEEP:TRIALS...] (e.g. 10:50,5:450), got '{text}'") from None
    if not rounds or any(k < 1 or n < 1 for k, n in rounds) or any(b[0] > a[0] for a, b in zip(rounds, rounds[1:])):
        raise EgcError(f"--dc-schedule: rounds need KEEP >= 1 and TRIALS >= 1, KEEP never growing; got '{text}'")
    return rounds


def evaluations(rounds: list[tuple[int, int]]) -> int:
    """Network evaluations (class x pair) per image of a schedule."""
    return sum(k * n for k, n in rounds)


def _pairs(n: int, num_steps: int, shape: tuple[int, ...], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n (t, eps) pairs: t stratified over [0, T) (one per n-th of the schedule, uniform within it; Li et al.
    found evenly spread timesteps better than random ones), eps standard normal."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    t = ((torch.arange(n, dtype=torch.float64) + u) * num_steps / n).long().clamp(max=num_steps - 1)
    return t, torch.randn((n, *shape), generator=gen)


@torch.no_grad()
def diffusion_classify(eps_fn: EpsFn, x: torch.Tensor, num_classes: int, alphas_cumprod: torch.Tensor, rounds: list[tuple[int, int]],
                       seed: int = 0, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Class of each image x [B, C, H, W] (on the diffusion model's scale) by the pruned ELBO rule.

    Returns (predicted class ids [B], mean eps errors [B, K] with +inf for classes pruned before the end).
    ``batch`` bounds the rows of one eps_fn call. The (t, eps) pairs come from ``seed`` and are shared by
    every image and class."""
    b = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(b, num_classes, dtype=torch.float64)
    seen = torch.zeros(b, num_classes, dtype=torch.float64)
    alive = torch.ones(b, num_classes, dtype=torch.bool)
    ac = alphas_cumprod.to(torch.float64)
    for keep, trials in rounds:
        if keep < num_classes:  # prune to the best `keep` by mean error so far (the first round keeps all)
            mean = torch.where(alive, total / seen.clamp(min=1), torch.full_like(total, float("inf")))
            best = mean.topk(keep, dim=1, largest=False).indices
            alive = torch.zeros_like(alive).scatter_(1, best, True)
        cls = alive.nonzero()  # [R, 2] rows (image, class) to score this round
        t, eps = _pairs(trials, len(ac), tuple(x.shape[1:]), gen)
        for j in range(trials):
            a = ac[t[j]]
            for s in range(0, cls.shape[0], batch):
                rows = cls[s:s + batch]
                x0 = x[rows[:, 0].to(x.device)]
                e = eps[j].to(x.device, x.dtype).expand_as(x0)
                xt = a.sqrt().to(x.dtype) * x0 + (1 - a).sqrt().to(x.dtype) * e
                tt = torch.full((rows.shape[0],), int(t[j]), dtype=torch.long, device=x.device)
                err = (eps_fn(xt, tt, rows[:, 1].to(x.device)).float() - e.float()).pow(2).flatten(1).mean(1).double().cpu()
                total.index_put_((rows[:, 0], rows[:, 1]), err, accumulate=True)
                seen.index_put_((rows[:, 0], rows[:, 1]), torch.ones_like(err), accumulate=True)
    mean = torch.where(alive, total / seen.clamp(min=1), torch.full_like(total, float("inf")))
    return mean.argmin(1), mean


def model_eps(m: EGC) -> tuple[EpsFn, Callable[[torch.Tensor], torch.Tensor]]:
    """(the class-conditional eps of an EGC or conditional ddpm checkpoint without guidance, the map from
    pixel images to the space it works in: a latent model's scaled latents)."""
    if not m.conditional:
        raise EgcError(f"the diffusion classifier needs a class-conditional diffusion model (an EGC or a ddpm with "
                       f"model.conditioning embedding); this is a {'unconditional ' if m.can_generate else ''}{m.kind} checkpoint")

    def eps(xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return m.eps(xt, t, y, guidance=0.0, cfg=0.0)

    def space(x: torch.Tensor) -> torch.Tensor:
        m.check_input(x)
        with torch.no_grad():
            return m.autoencoder.encode(x.to(m.device)) if m.autoencoder is not None else x.to(m.device)

    return eps, space


def diffusion_classifier_metric(c: EvalContext) -> None:
    """``egc eval``'s metric dc: accuracy of the diffusion classifier on the first n_dc test images, with its cost."""
    tick = time.perf_counter()
    k = c.m.config.model.num_classes
    rounds = parse_schedule(c.s.dc_schedule.replace("K", str(k)), k)
    eps, space = model_eps(c.m)
    x, y = c.x[:c.s.n_dc], c.y[:c.s.n_dc]
    pred, _ = diffusion_classify(eps, space(x), k, c.m.schedule.alphas_cumprod, rounds, seed=c.s.seed)
    c.wall["dc"] = time.perf_counter() - tick
    c.metrics["diffusion_classifier"] = {"accuracy": float((pred.cpu() == y).double().mean()), "n": int(x.shape[0]), "schedule": c.s.dc_schedule,
                                         "evaluations_per_image": evaluations(rounds), "ms_per_image": round(1000 * c.wall["dc"] / x.shape[0], 1)}
