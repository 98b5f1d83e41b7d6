"""Model glue of ``egc eval``: an :class:`egc.model.EGC` asked in batches (logits, OOD energies, a latent
model's latents and its network's logits on them) and its differentiable logits for the attacks.

Images are float ``[N, C, H, W]`` in the model range [-1, 1] unless a name says ``x01`` (pixel scale
[0, 1], which the attacks use so that eps budgets are the usual ones). A latent model's network sees
scaled latents: attacks differentiate through its encoder (``EGC.logits_fn``), noisy accuracy noises the
latents (:func:`latents`, :func:`batched_net_logits`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from egc.model import EGC


def progress_bar(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, leave=False, dynamic_ncols=True, file=sys.stderr)


def model_logits_fn(m: EGC, t: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Differentiable ``x01 [B, C, H, W] in [0, 1] -> logits [B, K]``: the computation of ``m.logits``
    (clean token by default, the model's precision, a latent model's encoder), with the graph kept."""
    return m.logits_fn(t)


@torch.no_grad()
def batched_logits(m: EGC, x: torch.Tensor, t: int | None = None, batch_size: int = 250, quiet: bool = True, desc: str = "classify") -> torch.Tensor:
    """``m.logits`` over ``x`` ``[N, C, H, W]`` in [-1, 1] -> float ``[N, K]``."""
    out = []
    with progress_bar(x.shape[0], desc, quiet) as bar:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            out.append(m.logits(xb) if t is None else m.logits(xb, t))
            bar.update(xb.shape[0])
    return torch.cat(out).float()


@torch.no_grad()
def energy_scores(m: EGC, x: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """OOD score ``[N]`` (higher = more OOD): ``m.energy(x)`` (t = 0) for EGC, -logsumexp(logits) for a classifier."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        if not m.kind_info.noisy_logits:  # the classifier baselines and jem: the logit energy of the clean head
            out.append(-torch.logsumexp(m.logits(xb).float(), dim=1))
        else:
            out.append(m.energy(xb).float())
    return torch.cat(out)


def noise_schedule_abar(m: EGC, t: int) -> float:
    """abar_t of the model's noise schedule."""
    return float(m.schedule.abar(torch.tensor([t]))[0])


@torch.no_grad()
def latents(m: EGC, x: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Pixels ``[N, C, H, W]`` in [-1, 1] -> a latent model's scaled posterior means, in batches."""
    return torch.cat([m.autoencoder.encode_differentiable(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def batched_net_logits(m: EGC, z: torch.Tensor, t: int, batch_size: int) -> torch.Tensor:
    """Logits [N, K] of the network itself on its own inputs z (a latent model's noisy latents) at t."""
    return torch.cat([m.net_logits(z[i:i + batch_size], t) for i in range(0, z.shape[0], batch_size)])
