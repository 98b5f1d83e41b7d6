"""Training losses, one small pure function per model.kind (each kind in egc/kinds.py names its own: ``loss()``).

EGC (EGC paper Eq. 9 with the released weighting):
    L = mean ||eps_hat(x_t) - eps||^2                                    (diffusion, double backprop)
      + w_noisy * mean( sqrt(abar_t) * CE_ls(l(x_t, t), y) )             (noisy classification)
      + w_clean * CE(l(x_0, t=0), y)                                     (clean classification)
Baselines on the same UNet:
    classifier   L = CE_ls(l(x_0, CLEAN_T), y)                           (clean images only, one backward; the cnn too)
    jem          L = CE(l(x_0), y) + E(x_0) - E(x_sgld),  E = -logsumexp l   (x_sgld: SGLD from a replay buffer)
    ddpm         L = mean ||net(x_t, t) - eps||^2                        (eps-prediction, same schedule)
The latent runs' first stage (kind "autoencoder", ``autoencoder_loss``):
    autoencoder  L = recon(D(z), x0) + kl_weight * KL(q(z|x0) || N(0, I)),  z ~ q(z|x0)
All take (energy model, loss config, x0, y, gen, shard) so the training loop calls any of them: the
:class:`~egc.diffusion.energy.EnergyModel` the trainer builds once carries the network (``em.net``, DDP-wrapped
in data-parallel training), the model config (``em.cfg``) and the noise schedule (``em.sched``).

Data parallelism (``shard=(rank, world)``): x0, y are the *global* batch and every rank draws the
global batch's t and eps from the same ``gen``, then keeps rows rank::world. Each rank's LossParts
is scaled so that the mean over ranks of its total (and of every logged term) is exactly the
single-process value on the global batch, so averaging gradients over ranks reproduces one process.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
import torch.nn.functional as tfn

from ..config import LossConfig
from .energy import NULL, EnergyModel, direct_eps, net_labels
from .schedule import Schedule


@dataclass
class LossParts:
    """The total (what is minimised) and the terms and accuracies that a kind actually has; the
    others stay None and are not logged (a ddpm run logs no accuracy, a classifier no mse)."""

    total: torch.Tensor
    mse: torch.Tensor | None = None
    noisy_ce: torch.Tensor | None = None
    clean_ce: torch.Tensor | None = None
    noisy_acc: torch.Tensor | None = None
    clean_acc: torch.Tensor | None = None
    recon: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    mse_first_order: torch.Tensor | None = None  # a first-order step's eps-MSE (loss.energy_step_share)
    energy_gap: torch.Tensor | None = None  # jem: mean E(x_data) - E(x_sgld)

    def scalars(self) -> dict[str, float]:
        return {f.name: float(v.detach()) for f in fields(self) if (v := getattr(self, f.name)) is not None}


Shard = tuple[int, int]  # (rank, world size); (0, 1) = one process


def _draw(sched: Schedule, x0: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """t [B] and eps [B, C, H, W] for the whole (global) batch, drawn on ``gen``'s device (a CPU
    generator gives the same draws whatever device trains) and moved to x0's device."""
    dev = gen.device if gen is not None else x0.device
    t = torch.randint(0, sched.num_steps, (x0.shape[0],), generator=gen, device=dev)
    eps = torch.randn(x0.shape, generator=gen, device=dev, dtype=x0.dtype)
    return t.to(x0.device), eps.to(x0.device)


def _null_labels(lcfg: LossConfig, y: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Labels y [B] (the global batch) with a share loss.null_prob replaced by NULL, drawn from ``gen``
    on its device (so every process of a data-parallel run drops the same rows)."""
    dev = gen.device if gen is not None else y.device
    drop = (torch.rand(y.shape, generator=gen, device=dev) < lcfg.null_prob).to(y.device)
    return torch.where(drop, torch.full_like(y, NULL), y)


def clean_rows(lcfg: LossConfig, batch: int) -> int:
    """How many of a global batch's first rows also feed the clean CE (loss.clean_fraction)."""
    return int(round(lcfg.clean_fraction * batch))


def own_rows(shard: Shard) -> slice:
    """The rows of a global batch that process ``shard = (rank, world)`` keeps: rank::world."""
    rank, world = shard
    return slice(rank, None, world)


def _rows(shard: Shard, *vs: torch.Tensor) -> list[torch.Tensor]:
    """This rank's rows (:func:`own_rows`) of global-batch tensors (all of them for one process)."""
    world = shard[1]
    if world == 1:
        return list(vs)
    if vs[0].shape[0] % world:
        raise ValueError(f"global batch {vs[0].shape[0]} is not divisible by the world size {world}")
    rows = own_rows(shard)
    return [v[rows] for v in vs]


# (energy model, x_t, t, energy labels or None) -> (eps_hat, logits, energy), differentiable in the weights
TrainEpsFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def egc_loss(em: EnergyModel, lcfg: LossConfig, x0: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None,
             shard: Shard = (0, 1), eps_fn: TrainEpsFn | None = None, x0_clean: torch.Tensor | None = None) -> LossParts:
    """x0 [B, C, H, W] in [-1, 1], y [B] int64 -> LossParts. Randomness (t, eps) comes from ``gen``.

    With loss.energy_step_share p < 1 a step fits the energy's gradient with probability p, else the
    first-order eps of the denoiser channels (one backward, no input gradient; its MSE is logged as
    mse_first_order, not mse). The classification terms are the same in both kinds of step.

    A conditional model (model.conditioning != none) fits the diffusion loss to E(x_t | y), with a
    share loss.null_prob of the labels replaced by the null label; classification always goes through
    the null label. An unsupervised model (model.supervised false) has the diffusion loss only.

    ``eps_fn(em, x_t, t, y) -> (eps_hat, logits, energy)``, differentiable in the weights, replaces the
    default double-backprop ``em.eps_and_logits(..., create_graph=True)`` (train.compile passes
    energy.CompiledEps here).

    ``x0_clean`` [n_clean, C, H, W] (the global batch's first n_clean rows, augmented: loss.clean_shift)
    replaces those rows as the clean-CE input; None = the rows themselves."""
    mcfg = em.cfg
    t, eps = _draw(em.sched, x0, gen)
    y_energy = _null_labels(lcfg, y, gen) if mcfg.conditioning != "none" else None  # drawn only then: unconditional runs keep their stream
    # loss.energy_step_share p < 1: an energy step with probability p, else a first-order step; one draw
    # from the shared generator (only then: p = 1 keeps the stream), so all data-parallel ranks agree.
    first_order = lcfg.energy_step_share < 1 and float(torch.rand((), generator=gen, device=gen.device if gen is not None else None)) >= lcfg.energy_step_share
    n_clean = clean_rows(lcfg, x0.shape[0])  # of the global batch: its first n_clean rows
    if x0_clean is not None and x0_clean.shape[0] != n_clean:
        raise ValueError(f"x0_clean has {x0_clean.shape[0]} rows, the batch's clean share is {n_clean}")
    # The clean view before sharding: rank r's clean rows are global rows r, r + world, ... (as for x0)
    clean_view = None if x0_clean is None else x0_clean[own_rows(shard)]
    x0, y, t, eps = _rows(shard, x0, y, t, eps)
    if y_energy is not None:
        (y_energy,) = _rows(shard, y_energy)
    abar = em.abar(t)
    xt = em.sched.add_noise(x0, t, eps)
    if first_order:
        eps_hat, logits = em.first_order_eps_and_logits(xt, t, y_energy)
    elif eps_fn is None:
        eps_hat, logits, _ = em.eps_and_logits(xt, t, y_energy, create_graph=True)
    else:
        eps_hat, logits, _ = eps_fn(em, xt, t, y_energy)
    mse = (eps_hat.float() - eps.float()).pow(2).mean()
    logged = {"mse_first_order": mse.detach()} if first_order else {"mse": mse.detach()}
    if not mcfg.supervised:
        return LossParts(mse, **logged)
    if mcfg.conditioning == "embedding" and lcfg.noisy_ce_weight > 0:
        logits = em.logits(xt, t)  # the label forward's logits are not the classifier's: a null-label forward
    ce = tfn.cross_entropy(logits, y, label_smoothing=lcfg.label_smoothing, reduction="none")
    noisy_ce = (abar.sqrt() * ce).mean()
    total = mse + lcfg.noisy_ce_weight * noisy_ce
    clean_ce, clean_acc, used = _clean_ce(em, lcfg, x0, y, clean_view, n_clean, shard)
    if used:
        total = total + lcfg.clean_ce_weight * clean_ce
    noisy_acc = (logits.argmax(1) == y).float().mean()
    return LossParts(total, noisy_ce=noisy_ce.detach(), clean_ce=clean_ce.detach(), noisy_acc=noisy_acc, clean_acc=clean_acc, **logged)


def ce_boost_at(lcfg: LossConfig, step: int) -> float:
    """The multiplier of EGC's CE weights at optimiser step ``step``: loss.ce_boost at step 0, falling
    linearly to 1 at step loss.ce_boost_steps, 1 from there on (and when the boost is off)."""
    if lcfg.ce_boost == 1 or step >= lcfg.ce_boost_steps:
        return 1.0
    return lcfg.ce_boost + (1.0 - lcfg.ce_boost) * step / lcfg.ce_boost_steps


def loss_config_at(lcfg: LossConfig, step: int) -> LossConfig:
    """``lcfg`` with both CE weights scaled by :func:`ce_boost_at` (the same object when the factor is 1)."""
    b = ce_boost_at(lcfg, step)
    if b == 1.0:
        return lcfg
    return replace(lcfg, noisy_ce_weight=lcfg.noisy_ce_weight * b, clean_ce_weight=lcfg.clean_ce_weight * b)


def _clean_ce(em: EnergyModel, lcfg: LossConfig, x0: torch.Tensor, y: torch.Tensor, clean_view: torch.Tensor | None, n_clean: int,
              shard: Shard) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """EGC's clean-image CE on this rank's rows (x0, y) of a global batch whose first n_clean rows feed it:
    (clean CE, clean accuracy, whether it is part of the total). ``clean_view``: this rank's augmented
    clean rows (loss.clean_shift), else the rows themselves."""
    rank, world = shard
    mine = len(range(rank, n_clean, world))  # global rows rank, rank + world, ... below n_clean: my first `mine` rows
    if n_clean > 0 and lcfg.clean_ce_weight > 0 and world == 1:
        clean_logits = em.logits(x0[:n_clean] if clean_view is None else clean_view)
        clean_ce = tfn.cross_entropy(clean_logits, y[:n_clean])
        clean_acc = (clean_logits.argmax(1) == y[:n_clean]).float().mean()
        return clean_ce, clean_acc, True
    if n_clean > 0 and lcfg.clean_ce_weight > 0 and mine > 0:
        # Sum over my clean rows scaled by world / n_clean: the mean over ranks is the global mean.
        clean_logits = em.logits(x0[:mine] if clean_view is None else clean_view)
        clean_ce = tfn.cross_entropy(clean_logits, y[:mine], reduction="sum") * (world / n_clean)
        clean_acc = (clean_logits.argmax(1) == y[:mine]).float().sum() * (world / n_clean)
        return clean_ce, clean_acc, True
    zero = torch.zeros((), device=x0.device)
    return zero, zero, False


def classifier_loss(em: EnergyModel, lcfg: LossConfig, x0: torch.Tensor, y: torch.Tensor,
                    gen: torch.Generator | None = None, shard: Shard = (0, 1)) -> LossParts:
    """Classifier baseline: label-smoothed CE of the pooled logit map on clean images (t = CLEAN_T).

    ``em.sched`` is unused (no timesteps). loss.noise_sigma > 0 adds Gaussian noise of that std on [0, 1] pixels
    (2 sigma on [-1, 1]) to every image, drawn from ``gen`` for the global batch (the base classifier of
    randomized smoothing)."""
    if lcfg.noise_sigma > 0:
        dev = gen.device if gen is not None else x0.device
        x0 = x0 + 2 * lcfg.noise_sigma * torch.randn(x0.shape, generator=gen, device=dev, dtype=x0.dtype).to(x0.device)
    x0, y = _rows(shard, x0, y)
    logits = em.logits(x0)
    ce = tfn.cross_entropy(logits, y, label_smoothing=lcfg.label_smoothing)
    acc = (logits.argmax(1) == y).float().mean()
    return LossParts(ce, clean_ce=ce.detach(), clean_acc=acc)


def ddpm_loss(em: EnergyModel, lcfg: LossConfig, x0: torch.Tensor, y: torch.Tensor,
              gen: torch.Generator | None = None, shard: Shard = (0, 1)) -> LossParts:
    """DDPM baseline: MSE of a direct eps prediction at a uniform t. Unconditional (labels unused), or
    with model.conditioning embedding the label input, a share loss.null_prob of it null (for CFG).

    t and eps are drawn from ``gen`` exactly as in :func:`egc_loss`, so both see the same noise. The
    network's output is the eps itself (``em.net`` is called directly: a ddpm has no energy)."""
    mcfg = em.cfg
    t, eps = _draw(em.sched, x0, gen)
    labels = None
    if mcfg.conditioning == "embedding":
        (y_in,) = _rows(shard, _null_labels(lcfg, y, gen))
        labels = net_labels(mcfg, y_in, y_in.shape[0], y_in.device)
    x0, t, eps = _rows(shard, x0, t, eps)
    xt = em.sched.add_noise(x0, t, eps)
    mse = (direct_eps(em.net, xt, t, labels).float() - eps.float()).pow(2).mean()
    return LossParts(mse, mse=mse.detach())


def autoencoder_loss(em: EnergyModel, lcfg: LossConfig, x0: torch.Tensor, y: torch.Tensor,
                     gen: torch.Generator | None = None, shard: Shard = (0, 1)) -> LossParts:
    """KL autoencoder: loss.recon ("l1" | "mse", mean per pixel value) + loss.kl_weight * KL to N(0, I)
    (mean per latent value), z drawn from the posterior with noise from ``gen`` (global batch, then
    this rank's rows, as for the diffusion losses). ``em.net`` is the KL autoencoder itself (an
    autoencoder has no energy: ``em`` only carries it and its config); ``em.sched`` and ``y`` are
    unused. Logs recon, kl and the pixel mse."""
    ae = em.cfg.ae
    dev = gen.device if gen is not None else x0.device
    noise = torch.randn((x0.shape[0], ae.latent_channels, ae.latent_size, ae.latent_size), generator=gen, device=dev).to(x0.device)
    x0, noise = _rows(shard, x0, noise)
    rec, mean, logvar = em.net(x0, noise)
    diff = rec.float() - x0.float()
    recon = diff.abs().mean() if lcfg.recon == "l1" else diff.pow(2).mean()
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
    total = recon + lcfg.kl_weight * kl
    return LossParts(total, mse=diff.pow(2).mean().detach(), recon=recon.detach(), kl=kl.detach())


def jem_loss(em: EnergyModel, lcfg: LossConfig, x0: torch.Tensor, y: torch.Tensor, x_sgld: torch.Tensor,
             energy_weight: float = 1.0, diverge_at: float = float("inf")) -> LossParts:
    """JEM (Grathwohl et al. 2020): CE(f(x0), y) + energy_weight * (mean E(x0) - mean E(x_sgld)), E = -logsumexp f
    of the clean-token logits, x_sgld the replay buffer's SGLD samples (drawn by the caller: train/jem.py).
    Plain CE (JEM trains without label smoothing). A gap |E(x0) - E(x_sgld)| above ``diverge_at`` is a
    diverged step: the total is NaN, so the trainer's non-finite policy (skip / rollback) handles it."""
    logits = em.logits(x0)
    ce = tfn.cross_entropy(logits, y)
    e_data = -torch.logsumexp(logits.float(), dim=1).mean()
    e_fake = -torch.logsumexp(em.logits(x_sgld).float(), dim=1).mean()
    gap = e_data - e_fake
    total = ce + energy_weight * gap
    if not bool(gap.detach().abs() <= diverge_at):
        total = total * float("nan")
    acc = (logits.argmax(1) == y).float().mean()
    return LossParts(total, clean_ce=ce.detach(), clean_acc=acc, energy_gap=gap.detach())


LossFn = Callable[..., LossParts]  # (em, lcfg, x0, y, gen=None, shard=(0, 1), **kind's extras) -> LossParts
