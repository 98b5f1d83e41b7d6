"""Adversarial robustness: PGD (L-inf, L2) and a gradient-free Square attack (L-inf).

Every attack works on images in pixel scale [0, 1] and a differentiable ``model_fn``:
``x [B, C, H, W] in [0, 1] -> logits [B, K]`` (the caller maps [0, 1] to the model's [-1, 1]
inside ``model_fn``, so the eps budgets are the usual pixel-scale ones: 8/255 L-inf, 0.5 L2, ...).

PGD (Madry et al. 2018): random start inside the ball, ``steps`` signed-gradient (L-inf) or
normalised-gradient (L2) ascent steps on the cross-entropy with step size 2.5 * eps / steps,
projected onto the eps-ball and onto [0, 1] after every step (ball first, then the box: clamping to
[0, 1] only shortens the perturbation, so the result lies in both). ``restarts`` random starts are
run for the examples not yet broken; every iterate is checked, and an example counts as broken
(and keeps that adversarial input) as soon as any iterate is misclassified, otherwise it keeps its
highest-loss iterate. Broken examples leave the batch, which saves most of the compute.

Square attack (Andriushchenko et al. 2020) needs only logits: random +-eps vertical stripes, then
random square patches re-drawn at the ball's corners, accepted when the margin loss drops. When it
breaks examples that PGD could not, the gradients are unreliable (gradient masking).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as tfn

ModelFn = Callable[[torch.Tensor], torch.Tensor]
NORMS = ("linf", "l2")


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def _per_example_norm(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project ``x_adv`` onto {z : ||z - x|| <= eps} and then onto [0, 1]; both ``[B, C, H, W]``."""
    _check_norm(norm)
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_example_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, norm: str, eps: float, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random point of the eps-ball around ``x`` ``[B, C, H, W]``, projected onto [0, 1]."""
    _check_norm(norm)
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * eps
    else:  # uniform in the L2 ball: Gaussian direction, radius eps * u^(1/d)
        g = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        d = x[0].numel()
        r = eps * torch.rand(x.shape[0], generator=gen, dtype=x.dtype) ** (1.0 / d)
        delta = g / _per_example_norm(g).clamp_min(1e-12) * r.view(-1, *([1] * (x.dim() - 1)))
    return project(x + delta.to(x.device), x, norm, eps)


def _loss_and_grad(model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-example CE [B], logits [B, K], d sum CE / dx [B, C, H, W])."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model_fn(xg).float()
        loss = tfn.cross_entropy(logits, y, reduction="none")
        (g,) = torch.autograd.grad(loss.sum(), xg)
    return loss.detach(), logits.detach(), g


@torch.no_grad()
def _predict(model_fn: ModelFn, x: torch.Tensor) -> torch.Tensor:
    return model_fn(x).float()


def pgd(model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, steps: int = 20, restarts: int = 1,
        step_size: float | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted PGD with random restarts.

    Args:
        model_fn: differentiable ``[B, C, H, W] in [0, 1] -> logits [B, K]``.
        x: float ``[B, C, H, W]`` clean images in [0, 1]; y: int64 ``[B]`` true labels.
        norm: "linf" or "l2"; eps: the budget (pixel scale); steps >= 1; restarts >= 1.
        step_size: default 2.5 * eps / steps.
        seed: seeds the random starts.
    Returns:
        (x_adv ``[B, C, H, W]`` within the eps-ball of x and [0, 1], fooled bool ``[B]``): fooled is
        True where some input in the ball (or the clean image itself) was misclassified.
    """
    _check_norm(norm)
    if steps < 1 or restarts < 1 or not eps >= 0:
        raise ValueError(f"pgd: need steps >= 1, restarts >= 1, eps >= 0; got {steps}, {restarts}, {eps}")
    x = x.detach()
    y = y.detach().long()
    gen = torch.Generator().manual_seed(seed)
    logits = _predict(model_fn, x)
    fooled = logits.argmax(dim=1) != y
    best_x = x.clone()
    best_loss = tfn.cross_entropy(logits, y, reduction="none")
    if eps == 0:
        return best_x, fooled
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    for _ in range(restarts):
        idx = (~fooled).nonzero().flatten()  # examples still to break
        if idx.numel() == 0:
            break
        xa = random_start(x[idx], norm, eps, gen)
        for s in range(steps + 1):
            x0, y0 = x[idx], y[idx]
            if s < steps:
                loss, lg, g = _loss_and_grad(model_fn, xa, y0)
            else:  # the last iterate only needs checking
                lg = _predict(model_fn, xa)
                loss = tfn.cross_entropy(lg, y0, reduction="none")
            wrong = lg.argmax(dim=1) != y0
            better = wrong | (loss > best_loss[idx])
            best_x[idx[better]] = xa[better]
            best_loss[idx[better]] = loss[better]
            fooled[idx[wrong]] = True
            keep = ~wrong
            if s == steps or not keep.any():
                break
            idx, xa, g, x0 = idx[keep], xa[keep], g[keep], x0[keep]
            if norm == "linf":
                xa = xa + alpha * g.sign()
            else:
                xa = xa + alpha * g / _per_example_norm(g).clamp_min(1e-12)
            xa = project(xa, x0, norm, eps)
    return best_x, fooled


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logit_y - max_{k != y} logit_k [B]; negative means misclassified."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return true - other


def _square_p(p_init: float, it: int, n_iters: int) -> float:
    """Share of pixels in the square at iteration ``it`` (the schedule of Andriushchenko et al., rescaled to n_iters)."""
    i = int(it / n_iters * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if i <= bound:
            return p_init / div
    return p_init / 512


@torch.no_grad()
def square_linf(model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int = 500, p_init: float = 0.05,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Square attack, L-inf (gradient-free random search on the margin loss).

    Args:
        x: float ``[B, C, H, W]`` in [0, 1]; y: int64 ``[B]``; eps: L-inf budget; queries: iterations
            after the initial stripes (each costs one forward pass of the examples not yet broken).
    Returns:
        (x_adv ``[B, C, H, W]``, fooled bool ``[B]``), like :func:`pgd`.
    """
    gen = torch.Generator().manual_seed(seed)
    x = x.detach()
    y = y.long()
    b, c, h, w = x.shape
    sign = torch.randint(0, 2, (b, c, 1, w), generator=gen).to(x) * 2 - 1
    x_best = (x + eps * sign).clamp(0, 1)
    margin = _margin(_predict(model_fn, x_best), y)
    clean_wrong = _predict(model_fn, x).argmax(dim=1) != y
    x_best[clean_wrong] = x[clean_wrong]
    margin[clean_wrong] = -1.0
    n_features = c * h * w
    for i in range(queries):
        idx = (margin > 0).nonzero().flatten()
        if idx.numel() == 0:
            break
        p = _square_p(p_init, i, queries)
        s = min(max(int(round(math.sqrt(p * n_features / c))), 1), h - 1) if h > 1 else 1
        vh = int(torch.randint(0, h - s + 1, (1,), generator=gen))
        vw = int(torch.randint(0, w - s + 1, (1,), generator=gen))
        x0 = x[idx]
        delta = x_best[idx] - x0
        new = torch.randint(0, 2, (idx.numel(), c, 1, 1), generator=gen).to(x) * 2 - 1
        delta[:, :, vh:vh + s, vw:vw + s] = eps * new
        x_new = (x0 + delta.clamp(-eps, eps)).clamp(0, 1)
        m_new = _margin(_predict(model_fn, x_new), y[idx])
        better = m_new < margin[idx]
        x_best[idx[better]] = x_new[better]
        margin[idx[better]] = m_new[better]
    return x_best, margin <= 0


def _batched(fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
             batch_size: int, bar=None) -> torch.Tensor:
    """fooled bool [N] from an attack ``fn(xb, yb) -> (x_adv, fooled)`` run in batches."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        out.append(fn(x[i:i + batch_size], y[i:i + batch_size])[1])
        if bar is not None:
            bar.update(min(batch_size, x.shape[0] - i))
    return torch.cat(out)


def robust_accuracy(model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, steps: int = 20, restarts: int = 1,
                    batch_size: int = 100, seed: int = 0, bar=None) -> tuple[float, torch.Tensor]:
    """PGD robust accuracy and the per-example fooled mask ``[N]`` for images ``[N, C, H, W]`` in [0, 1]."""
    fooled = _batched(lambda xb, yb: pgd(model_fn, xb, yb, norm, eps, steps, restarts, seed=seed), x, y, batch_size, bar)
    return float(1.0 - fooled.double().mean()), fooled


def robust_accuracy_curve(model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, norm: str, eps_list: list[float], steps: int = 20,
                          restarts: int = 1, batch_size: int = 100, seed: int = 0, progress: bool = False) -> dict[float, float]:
    """``{eps: PGD robust accuracy}`` over ``eps_list`` for images ``[N, C, H, W]`` in [0, 1], labels ``[N]``."""
    from tqdm.auto import tqdm

    out: dict[float, float] = {}
    with tqdm(total=len(eps_list) * x.shape[0], desc=f"pgd {norm}", disable=not progress, leave=False, dynamic_ncols=True) as bar:
        for eps in eps_list:
            out[eps] = robust_accuracy(model_fn, x, y, norm, eps, steps, restarts, batch_size, seed, bar)[0]
    return out


def square_accuracy(model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int = 500, batch_size: int = 100,
                    seed: int = 0) -> tuple[float, torch.Tensor]:
    """Square-attack (L-inf) robust accuracy and the fooled mask ``[N]``."""
    fooled = _batched(lambda xb, yb: square_linf(model_fn, xb, yb, eps, queries, seed=seed), x, y, batch_size)
    return float(1.0 - fooled.double().mean()), fooled


def sanity_checks(model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, eps_linf: float, steps: int = 20, restarts: int = 1,
                  square_queries: int = 500, batch_size: int = 100, seed: int = 0) -> dict[str, float | bool | int | str]:
    """Checks that the PGD numbers mean something (Carlini et al. 2019, "On evaluating adversarial robustness").

    On images ``[N, C, H, W]`` in [0, 1] (a subset is enough):
    - ``acc_linf_0.5``: PGD accuracy at L-inf 0.5 (every image can reach mid-grey): should be ~0.
    - ``unbounded_success``: share of examples an L-inf eps = 1 (the whole box) PGD with 5x the
      steps breaks: should be 1.
    - ``pgd_2x_steps_drop``: accuracy at ``eps_linf`` with ``steps`` minus with ``2 * steps``:
      more than 0.01 means the attack had not converged.
    - ``square_acc`` vs ``pgd_acc`` at ``eps_linf`` (and ``pgd_or_square_acc``, both attacks): the
      gradient-free attack winning by more than 0.01 flags gradient masking.
    ``ok`` is True when all four pass; ``problems`` names the failures.
    """
    lo = lambda e, s, r=restarts: robust_accuracy(model_fn, x, y, "linf", e, s, r, batch_size, seed)  # noqa: E731
    acc_05, _ = lo(0.5, steps)
    unb_acc, unb_fooled = lo(1.0, 5 * steps, 1)
    clean_ok = _predict_all(model_fn, x, batch_size).argmax(dim=1) == y
    n_ok = int(clean_ok.sum())
    unbounded = float(unb_fooled[clean_ok].double().mean()) if n_ok else float("nan")
    pgd_acc, pgd_fooled = lo(eps_linf, steps)
    pgd2_acc, _ = lo(eps_linf, 2 * steps)
    sq_acc, sq_fooled = square_accuracy(model_fn, x, y, eps_linf, square_queries, batch_size, seed)
    both = float(1.0 - (pgd_fooled | sq_fooled).double().mean())
    out: dict[str, float | bool | int | str] = {
        "n": int(x.shape[0]), "eps_linf": eps_linf, "steps": steps, "square_queries": square_queries,
        "acc_linf_0.5": acc_05, "unbounded_success": unbounded, "unbounded_steps": 5 * steps,
        "pgd_acc": pgd_acc, "pgd_2x_steps_acc": pgd2_acc, "pgd_2x_steps_drop": pgd_acc - pgd2_acc,
        "square_acc": sq_acc, "pgd_or_square_acc": both,
    }
    problems = []
    if acc_05 > 0.05:
        problems.append("accuracy at L-inf 0.5 above 0.05")
    if n_ok and unbounded < 0.99:
        problems.append("unbounded attack does not reach 100% success")
    if _more_than_a_point(pgd_acc - pgd2_acc):
        problems.append("2x PGD steps lower accuracy by more than 1 point (not converged)")
    gradient_masking = _more_than_a_point(pgd_acc - sq_acc)
    if gradient_masking:
        problems.append("Square beats PGD by more than 1 point (gradient masking)")
    out["gradient_masking"] = gradient_masking
    out["ok"] = not problems
    out["problems"] = "; ".join(problems)
    return out


def _more_than_a_point(drop: float) -> bool:
    """drop > 0.01, ignoring float error: accuracies are float32 shares, so one example in 100
    (exactly one point) can come out as 0.0100000054 and must not count as more than a point."""
    return round(drop, 6) > 0.01


@torch.no_grad()
def _predict_all(model_fn: ModelFn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model_fn(x[i:i + batch_size]).float() for i in range(0, x.shape[0], batch_size)])
