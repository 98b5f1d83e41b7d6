"""Energy, classifier logits and score of an EGC network: the only place input gradients are taken.

Given the per-pixel class-logit map F(x_t, t) [B, K, H, W] (EGC paper, Sec. 3):
    classifier logits   l(x_t, t) = pool_hw F                                  [B, K]
    energy              E(x_t, t) = -sum_hw logsumexp_k F + prior(x_t, t)       [B]
    noise prediction    eps_hat   = grad_x E                                    [B, C, H, W]
Since eps_hat = -sqrt(1 - abar_t) * score, E = -sqrt(1 - abar_t) log p(x_t) + const: the energy is
the log-density scaled by the noise level (the network learns that scale, as in the released code).
A clean input (the clean token, t = CLEAN_T) has no noise level; its energy is the logit energy alone.
Label-conditioned energies (model.conditioning) and guidance are in :class:`EnergyModel`, the one door
into the energy: the trainer builds one and hands it to every loss, ``EGC`` keeps one (``energy_model``);
the functions here are pure helpers of it (and of the baselines, which have no energy of their own).

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
from .schedule import Schedule


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


def _on(scale: float | torch.Tensor) -> bool:
    """Whether a guidance term must be computed: a non-zero number, or any per-row tensor (its rows may
    be zero; checking would read the device)."""
    return isinstance(scale, torch.Tensor) or scale != 0


def _rows_like(scale: float | torch.Tensor, ref: torch.Tensor) -> float | torch.Tensor:
    """A per-row scale [B] shaped to broadcast against ref [B, ...]; a number as it is."""
    return scale.view(-1, *([1] * (ref.dim() - 1))).to(ref.dtype) if isinstance(scale, torch.Tensor) else scale


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


def _denoiser_residual(x: torch.Tensor, r: torch.Tensor, abar: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(clean [B] bool, a, k [B, 1, 1, 1], u = x - sqrt(a) x0_hat [B, C, H, W]) with the EDM-preconditioned
    x0_hat = c_skip x + c_out r. Clean rows (abar = 1) get a stand-in a < 1 and must be zeroed by the
    caller (their limit would be inf * 0)."""
    clean = abar >= 1
    a = torch.where(clean, torch.full_like(abar, 0.5), abar).view(-1, 1, 1, 1)
    d = 1 - a + a * sigma_data**2
    c_skip = a.sqrt() * sigma_data**2 / d
    c_out = sigma_data * (1 - a).sqrt() / d.sqrt()
    k = d / (1 - a) ** 1.5
    return clean, a, k, x - a.sqrt() * (c_skip * x + c_out * r)


def denoiser_term(x: torch.Tensor, r: torch.Tensor, abar: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """0.5 * k_t * ||x - sqrt(a) x0_hat||^2 [B] for x, r [B, C, H, W] (see the module docstring).

    A clean input (abar = 1, the clean token) has no noise to remove: the term is 0 there, so the
    clean energy is the logit energy alone."""
    clean, _, k, u = _denoiser_residual(x, r, abar, sigma_data)
    term = 0.5 * (k * u.pow(2)).sum(dim=(1, 2, 3))
    return torch.where(clean, torch.zeros_like(term), term)


def denoiser_eps(x: torch.Tensor, r: torch.Tensor, abar: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """The first-order part of grad_x denoiser_term [B, C, H, W]: its gradient with r held fixed,
    (x - sqrt(a) x0_hat) / sqrt(1 - a), the eps an x0-predicting denoiser gives (k (1 - sqrt(a) c_skip)
    = 1 / sqrt(1 - a)). The full gradient adds a term through the Jacobian of r (and the logit
    energy's gradient); this part needs no input gradient, so fitting it costs one backward.
    Clean rows (abar = 1) get 0."""
    clean, a, _, u = _denoiser_residual(x, r, abar, sigma_data)
    return torch.where(clean.view(-1, 1, 1, 1), torch.zeros_like(u), u / (1 - a).sqrt())


NULL = -1  # the label value that means "no label" (the null label of a conditional model)
CLEAN_T = -1  # the time input that marks a clean image (see nets/unet.py)


def net_labels(cfg: ModelConfig, y: torch.Tensor | None, b: int, device: torch.device) -> torch.Tensor | None:
    """The label input of the network for labels y [B] (NULL = -1 allowed) or None (all null):
    indices into the K + 1 entry embedding (K = null) for model.conditioning "embedding", else None
    (the network takes no label)."""
    if cfg.conditioning != "embedding":
        return None
    if y is None:
        return torch.full((b,), cfg.num_classes, dtype=torch.long, device=device)
    return torch.where(y < 0, torch.full_like(y, cfg.num_classes), y)


class EnergyModel:
    """A network with its model config and noise schedule, read as an energy (the one object every
    loss, sampler adapter and inference path asks; the EDM preconditioner plays the same role there).

    Convention, stated once: with the network's logit map F [B, K, H, W] (+ C denoiser channels),
        E(x_t, t | y)   = -sum_hw F_y + prior   ("joint") | -sum_hw logsumexp_k F(x_t, t, y) + prior ("embedding")
        E(x_t, t | null)= -sum_hw logsumexp_k F + prior   (also the only energy of "none")
        eps_hat         = grad_x E ,  so  E = -sqrt(1 - abar_t) log p(x_t) + const  and
        score           = grad_x log p(x_t) = -eps_hat / sqrt(1 - abar_t)
    i.e. E is the log-density scaled by sqrt(1 - abar_t) (the network learns that scale, as released).
    The classifier logits l(x_t, t) = model.logit_scale * pool_hw F always come from the null-label forward, so
    classification means the same for every conditioning.

    ``net`` is whatever computes the map (a DDP-wrapped network in data-parallel training); ``sched``
    None serves :meth:`logits` and :meth:`fmap` only (nothing that needs abar_t).
    """

    def __init__(self, net: nn.Module, cfg: ModelConfig, sched: Schedule | None) -> None:
        self.net = net
        self.cfg = cfg
        self.sched = sched

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t [B] float32 on t's device; clean inputs (t = CLEAN_T) get abar = 1."""
        return self.sched.abar(t)

    def fmap(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network's output map in float32 for x [B, C, H, W], t [B], energy labels y [B] or None."""
        lab = net_labels(self.cfg, y, x.shape[0], x.device)
        return _wide(self.net(x, t) if lab is None else self.net(x, t, lab))

    def _prior(self, x: torch.Tensor, fmap: torch.Tensor, abar: torch.Tensor) -> torch.Tensor | float:
        c = self.cfg
        if c.energy_prior == "gaussian":
            return 0.5 * prior_coef(abar, c.sigma_data) * _wide(x).pow(2).sum(dim=(1, 2, 3))
        if c.energy_prior == "denoiser":
            return denoiser_term(_wide(x), fmap[:, c.num_classes:], abar.to(fmap.dtype), c.sigma_data)
        return 0.0

    def _logits_from_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """Classifier logits [B, K] = model.logit_scale * pool_hw F of an output map [B, K (+ C), H, W].
        The scale lets the classifier reach its confidence with a c times smaller logit map, so the
        class channels disturb the energy's gradient (the eps) less; 1 = as released."""
        return pool_logits(fmap[:, : self.cfg.num_classes], self.cfg.pool) * self.cfg.logit_scale

    def _energy_from_map(self, x: torch.Tensor, fmap: torch.Tensor, abar: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        k = self.cfg.num_classes
        logit_map = fmap[:, :k]
        e = -torch.logsumexp(logit_map, dim=1).sum(dim=(1, 2))
        if self.cfg.conditioning == "joint" and y is not None:
            own = -logit_map.gather(1, y.clamp(min=0).view(-1, 1, 1, 1).expand(-1, 1, *logit_map.shape[2:]))[:, 0].sum(dim=(1, 2))
            e = torch.where(y >= 0, own, e)
        return e + self._prior(x, fmap, abar)

    def energy_and_logits(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """E(x_t, t | y) [B] and the pooled logits [B, K] of the same forward. y None (or NULL rows):
        the null-label energy. For "embedding" with labels the logits are those of the label's forward,
        not the classifier's (use :meth:`logits`)."""
        fmap = self.fmap(x, t, y)
        abar = self.abar(t)
        return self._energy_from_map(x, fmap, abar, y), self._logits_from_map(fmap)

    def energy(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.energy_and_logits(x, t, y)[0]

    def logits(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Classifier logits [B, K] (null label; no input gradient). t defaults to CLEAN_T (clean input)."""
        if t is None:
            t = torch.full((x.shape[0],), CLEAN_T, dtype=torch.long, device=x.device)
        return self._logits_from_map(self.fmap(x, t))

    def eps_and_logits(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, create_graph: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(eps_hat [B, C, H, W], logits [B, K], energy [B]) from one forward and one input gradient."""
        logits: list[torch.Tensor] = []

        def fn(xg: torch.Tensor) -> torch.Tensor:
            e, lg = self.energy_and_logits(xg, t, y)
            logits.append(lg)
            return e

        energy, eps = input_grad(fn, x, create_graph=create_graph)
        return eps, logits[0], energy

    def first_order_eps_and_logits(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(first-order eps [B, C, H, W] of the denoiser channels (:func:`denoiser_eps`), pooled logits
        [B, K]) from one forward and no input gradient; model.energy_prior "denoiser" only. It is not
        the model's eps (that is grad_x E): the cheap training steps of loss.energy_step_share fit it."""
        if self.cfg.energy_prior != "denoiser":
            raise ValueError(f"the first-order eps needs model.energy_prior denoiser, not '{self.cfg.energy_prior}'")
        fmap = self.fmap(x, t, y)
        k = self.cfg.num_classes
        eps = denoiser_eps(_wide(x), fmap[:, k:], self.abar(t).to(fmap.dtype), self.cfg.sigma_data)
        return eps, self._logits_from_map(fmap)

    def guided_energy(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, guidance: float | torch.Tensor = 0.0,
                      cfg_scale: float | torch.Tensor = 0.0) -> torch.Tensor:
        """The energy whose input gradient is the guided noise prediction [B]:

            E_g = (1 + w) E(x_t | y) - w E(x_t | null) - s sqrt(1 - abar_t) log softmax(l(x_t))[y]

        w = cfg_scale (classifier-free guidance between the label and null energies), s = guidance
        (classifier guidance from the null-label head, as released). A weighted sum of energies is an
        energy, so the guided eps stays a gradient. y None: the null energy alone (unconditional).
        For "none" conditioning E(x | y) = E(x | null), so w has no effect there. s and w are numbers or
        per-row tensors [B] (a row's energy uses its own scales: the guidance interval).
        """
        if y is None:
            return self.energy(x, t)
        abar = self.abar(t)
        c = self.cfg
        # "none" / "joint": one label-free forward gives every energy and the classifier logits;
        # "embedding": the label's forward, plus the null-label one only when CFG or the head needs it.
        if c.conditioning == "embedding":
            y_map = self.fmap(x, t, y)
            null_map = self.fmap(x, t) if _on(cfg_scale) or _on(guidance) else None
        else:
            y_map = null_map = self.fmap(x, t)
        e = self._energy_from_map(x, y_map, abar, y)  # for "none" this is the null energy: y is not read
        if _on(cfg_scale) and c.conditioning != "none":
            w = _rows_like(cfg_scale, e)
            e = (1 + w) * e - w * self._energy_from_map(x, null_map, abar, None)
        if _on(guidance):
            logp = torch.log_softmax(self._logits_from_map(null_map), dim=1).gather(1, y.clamp(min=0)[:, None])[:, 0]
            e = e - _rows_like(guidance, logp) * (1 - abar).sqrt() * logp
        return e

    def guided_eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, guidance: float | torch.Tensor = 0.0,
                   cfg_scale: float | torch.Tensor = 0.0) -> torch.Tensor:
        """grad_x of :meth:`guided_energy` [B, C, H, W], one backward for every term, detached."""
        return input_grad(lambda xg: self.guided_energy(xg, t, y, guidance, cfg_scale), x)[1].detach()


def _eps_and_logits_func(em: EnergyModel, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``em.eps_and_logits(x, t, y, create_graph=True)`` written with torch.func.grad. The results stay
    differentiable with respect to the weights (functorch levels compose with ordinary autograd), and
    torch.compile can trace it: AOTAutograd refuses the double backward of autograd.grad(create_graph=True)
    ("does not currently support double backward"), but a traced func.grad is a plain forward graph
    whose first-order backward it can build."""

    def fn(xg: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        e, lg = em.energy_and_logits(xg, t, y)
        return e.sum(), (lg, e)

    eps, (logits, energy) = torch.func.grad(fn, has_aux=True)(x)
    return eps, logits, energy


class CompiledEps:
    """The training path's ``em.eps_and_logits(..., create_graph=True)`` through torch.compile (train.compile).

    Call it as ``CompiledEps()(em, x, t, y=None)`` with the trainer's :class:`EnergyModel` (built once, so
    the compiled graph's guards on it keep holding). The first call compiles (minutes on 2 CPU cores; a new
    input shape compiles again). If compiling fails (for example no C compiler for the CPU backend), it
    says so once on stderr and runs the same torch.func path eagerly from then on, so a run never dies of
    it; ``self.error`` keeps the reason.
    """

    def __init__(self) -> None:
        self._fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = torch.compile(_eps_and_logits_func, dynamic=False)
        self.error: str | None = None

    def __call__(self, em: EnergyModel, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.error is None:
            try:
                return self._fn(em, x, t, y)
            except Exception as e:  # noqa: BLE001 - any backend failure: fall back, never lose the run
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                self.error = f"{type(e).__name__}: {first}"[:300]
                import sys

                print(f"egc: torch.compile failed ({self.error}); training continues uncompiled", file=sys.stderr)
        return _eps_and_logits_func(em, x, t, y)


# ---- the baselines (model.kind "classifier" / "ddpm"): plain forward passes, no input gradient ----
def direct_eps(net: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """kind "ddpm": the network's output [B, C, H, W] is the noise prediction itself. ``labels``: the
    network's label input (:func:`net_labels`) of a conditional ddpm, None otherwise."""
    return _wide(net(x, t) if labels is None else net(x, t, labels))


def guided_direct_eps(net: nn.Module, cfg: ModelConfig, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                      cfg_scale: float | torch.Tensor = 0.0) -> torch.Tensor:
    """kind "ddpm": (1 + w) eps(x | y) - w eps(x | null) for a conditional ddpm (y None: eps(x | null),
    or eps(x) of an unconditional one); w a number or per-row [B]."""
    b = x.shape[0]
    if cfg.conditioning != "embedding":
        return direct_eps(net, x, t)
    null = direct_eps(net, x, t, net_labels(cfg, None, b, x.device)) if (y is None or _on(cfg_scale)) else None
    if y is None:
        return null
    cond = direct_eps(net, x, t, net_labels(cfg, y, b, x.device))
    if not _on(cfg_scale):
        return cond
    w = _rows_like(cfg_scale, cond)
    return (1 + w) * cond - w * null


def logit_energy(logits: torch.Tensor) -> torch.Tensor:
    """kind "classifier": the JEM-style energy -logsumexp_k l_k(x) [B] of plain classifier logits [B, K]
    (an OOD score; not a generative model, nothing was trained to make it one)."""
    return -torch.logsumexp(_wide(logits), dim=1)
