"""``egc eval``'s metric ``robust``: PGD accuracy curves (L-inf, L2) on the model's differentiable clean
logits and the sanity checks that say whether they mean something (the attacks are in attacks.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from .attacks import robust_accuracy_curve, sanity_checks
from .modelio import batched_logits, model_logits_fn

if TYPE_CHECKING:
    from .settings import EvalContext


def _attack_path_mismatch(c: EvalContext, fn: Any, x01: torch.Tensor) -> float:
    """Largest |logit| difference between the differentiable path the attacks use and ``m.logits``
    (the deployed one) on up to 8 test images: the attacked model must be the deployed model."""
    with torch.no_grad():
        k8 = min(8, x01.shape[0])  # --n-robust may be below 8
        ref = batched_logits(c.m, c.x[:k8], None, c.s.batch_size)
        return float((fn(x01[:k8]) - ref).abs().max())


def robustness(c: EvalContext) -> None:
    """metric robust: PGD-CE accuracy at each L-inf and L2 budget on the first n_robust test images (pixel
    scale [0, 1]), with the sanity checks at the middle L-inf budget (or why they were skipped)."""
    s, m = c.s, c.m
    tick = time.perf_counter()
    fn = model_logits_fn(m)
    x01, yr = (c.x[:s.n_robust] + 1) / 2, c.y[:s.n_robust]
    mismatch = _attack_path_mismatch(c, fn, x01)
    # the timestep the head is attacked at: the clean token of a head with timesteps, none for a clean-only head
    rb: dict[str, Any] = {"n": int(x01.shape[0]), "steps": s.pgd_steps, "restarts": s.restarts, "attack": "pgd-ce",
                          "t": "clean" if m.kind_info.noisy_logits else "n/a"}
    bs = min(s.batch_size, 100)
    for norm, eps_list in (("linf", s.eps_linf), ("l2", s.eps_l2)):
        if eps_list:
            curve = robust_accuracy_curve(fn, x01, yr, norm, eps_list, s.pgd_steps, s.restarts, bs, s.seed, progress=not s.quiet)
            rb[norm] = {f"{e:g}": a for e, a in curve.items()}
    if s.sanity and s.eps_linf:
        n_s = min(s.sanity_n, x01.shape[0])
        mid = sorted(s.eps_linf)[len(s.eps_linf) // 2]
        sanity = sanity_checks(fn, x01[:n_s], yr[:n_s], mid, s.pgd_steps, s.restarts, s.square_queries, bs, s.seed)
        sanity["attack_path_max_abs_diff"] = mismatch
        rb["sanity"] = sanity
    else:
        rb["sanity"] = {"skipped": "--no-sanity" if not s.sanity else "no L-inf eps given", "attack_path_max_abs_diff": mismatch}
    c.metrics["robust"] = rb
    c.wall["robust"] = time.perf_counter() - tick
