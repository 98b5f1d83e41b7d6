"""Certified L2 robustness by randomized smoothing (Cohen et al., ICML 2019), pure functions.

The smoothed classifier g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I). CERTIFY draws
n0 noisy copies to pick the top class c, then n more to bound pA = P(f(x + delta) = c) from below
(one-sided Clopper-Pearson at 1 - alpha); g is certified at x within L2 radius sigma * Phi^-1(pA_lower)
when pA_lower > 1/2, else it abstains. sigma and radii are on [0, 1] pixels, as the literature quotes
them (the model's [-1, 1] scale doubles both).

An EGC model needs no extra denoiser: its head classifies x_t = sqrt(abar_t) (x + delta') with delta' of
standard deviation sqrt((1 - abar_t) / abar_t) on its scale, which is exactly x + delta scaled, at the
timestep whose noise level matches 2 sigma (:func:`base_classifier`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

import torch

from ..errors import EgcError

if TYPE_CHECKING:
    from ..model import EGC

BaseFn = Callable[[torch.Tensor], torch.Tensor]  # noisy images [B, C, H, W] on the model's scale -> class ids [B]


def _log_binom_tail(k: int, n: int, p: float) -> float:
    """log P(X >= k) for X ~ Binomial(n, p), summed in log space (n up to millions is fine)."""
    if k <= 0:
        return 0.0
    if p <= 0:
        return -math.inf
    if p >= 1:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq for j in range(k, n + 1)]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n trials: the p at
    which P(X >= k | p) = alpha (bisection; 0 when k = 0, alpha^(1/n) when k = n)."""
    if not 0 <= k <= n or n < 1 or not 0 < alpha < 1:
        raise ValueError(f"need 0 <= k <= n, n >= 1, 0 < alpha < 1; got k={k}, n={n}, alpha={alpha}")
    if k == 0:
        return 0.0
    if k == n:
        return alpha ** (1.0 / n)
    lo, hi, target = 0.0, k / n, math.log(alpha)
    for _ in range(60):  # P(X >= k | p) rises with p; 60 halvings leave ~1e-18
        mid = 0.5 * (lo + hi)
        if _log_binom_tail(k, n, mid) < target:
            lo = mid
        else:
            hi = mid
    return lo


def radius(p_lower: float, sigma: float) -> float:
    """Certified L2 radius sigma * Phi^-1(p_lower), or 0 (abstain) when p_lower <= 1/2."""
    return sigma * NormalDist().inv_cdf(p_lower) if p_lower > 0.5 else 0.0


def noisy_counts(base: BaseFn, x: torch.Tensor, sigma_model: float, n: int, num_classes: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """How often ``base`` picks each class over n copies of x [C, H, W] plus N(0, sigma_model^2) noise
    (drawn from ``gen`` on the CPU, so a seed gives the same draws on any device). Returns int64 [K]."""
    counts = torch.zeros(num_classes, dtype=torch.long)
    done = 0
    while done < n:
        b = min(batch, n - done)
        noise = torch.randn((b, *x.shape), generator=gen) * sigma_model
        pred = base(x.unsqueeze(0).cpu() + noise).cpu().long()
        counts += torch.bincount(pred, minlength=num_classes)[:num_classes]
        done += b
    return counts


@dataclass
class Certificate:
    label: int  # the smoothed prediction, -1 = abstain
    radius: float  # certified L2 radius on [0, 1] pixels (0 when abstaining)
    p_lower: float
    evaluations: int  # network evaluations spent (n0 + n)


def certify(base: BaseFn, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float, num_classes: int, batch: int = 500,
            gen: torch.Generator | None = None) -> Certificate:
    """Cohen et al.'s CERTIFY for one image x [C, H, W] on the model's [-1, 1] scale; ``sigma`` on [0, 1] pixels."""
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    sigma_model = 2.0 * sigma
    guess = int(noisy_counts(base, x, sigma_model, n0, num_classes, batch, gen).argmax())
    counts = noisy_counts(base, x, sigma_model, n, num_classes, batch, gen)
    p_lower = lower_confidence_bound(int(counts[guess]), n, alpha)
    r = radius(p_lower, sigma)
    return Certificate(guess if r > 0 else -1, r, p_lower, n0 + n)


def base_classifier(m: EGC, sigma: float) -> tuple[BaseFn, str]:
    """(the base classifier f of noisy images on the model's scale, how it reads them) for an EGC
    checkpoint (its head at the timestep whose noise level matches, no denoiser) or a classifier
    baseline (its clean-image head on the noisy image: meaningful when it was trained with that noise)."""
    if not m.can_classify:
        raise EgcError(f"certify needs a model that classifies; this is a {m.kind} checkpoint")
    if m.autoencoder is not None:
        raise EgcError("certify: latent models are excluded: the smoothing noise is on pixels, and their head sees noise on the "
                       "autoencoder's latents, which pixel noise does not become")
    if not m.kind_info.noisy_logits:  # classifier, cnn, jem: a clean-image head, given x + delta as it is
        return (lambda xn: m.logits(xn).argmax(1)), f"the {m.kind}'s head on x + delta (clean token)"
    t = m.schedule.timestep_for_noise(2.0 * sigma)
    scale = float(m.schedule.alphas_cumprod[t]) ** 0.5
    noise = 2 * sigma

    def f(xn: torch.Tensor) -> torch.Tensor:
        return m.logits(xn * scale, t).argmax(1)  # x_t = sqrt(abar_t) (x + delta)

    got = math.sqrt((1 - scale**2) / scale**2)
    return f, f"EGC's noisy head at t={t} (noise level {got:.3f} on [-1, 1] for the smoothing's {noise:.3f}), no denoiser"


def certified_accuracy(certs: list[Certificate], labels: list[int], radii: list[float]) -> dict[str, float]:
    """Share of images certified correct at radius >= r, for each r (r = 0: the smoothed classifier's accuracy)."""
    n = max(1, len(certs))
    return {f"{r:g}": sum(c.label == y and c.radius >= r for c, y in zip(certs, labels)) / n for r in radii}
