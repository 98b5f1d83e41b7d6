"""The CaG objective's terms as pure functions (papers.md, section 2).

Total loss (weights in :class:`egc.cag.generate.CaGConfig`)::

    L = L_cls + w_div * L_div + w_dist * L_dist + w_bn * L_bn + w_tv * L_tv

- ``class_loss``: cross-entropy toward the target class, or the negative target logit.
- ``diversity_loss`` (part 3): mean over pairs i != j of cos(h_i, h_j). The paper writes the
  sum of raw dot products h_i^T h_j; the cosine is used so the term cannot be lowered by shrinking
  the features' norm, and the mean so its weight does not depend on the batch size.
- ``distribution_loss`` (part 4): |mean - mu_c|^2 + |std - sigma_c|^2 over feature dimensions,
  divided by the dimension so the weight does not depend on it.
- ``bn_stats_loss``: the data-free stand-in for L_dist (DeepInversion): every BatchNorm layer's
  batch mean and variance of its input are pulled toward the layer's running statistics.
- ``total_variation``: mean absolute difference of neighbouring pixels (a smoothness prior).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as tfn
from torch import nn

CLASS_LOSSES: tuple[str, ...] = ("ce", "logit")


def class_loss(logits: torch.Tensor, target: int | torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Scalar loss that falls as logits [B, K] favour ``target`` (int, or int64 [B]); batch mean.

    "ce": cross-entropy (raises the target's probability, i.e. also lowers the other classes);
    "logit": minus the target logit (what plain feature visualisation maximises; the only
    meaningful choice when K = 1).
    """
    y = torch.as_tensor(target, dtype=torch.long, device=logits.device)
    if y.dim() == 0:
        y = y.expand(logits.shape[0])
    if kind == "ce":
        return tfn.cross_entropy(logits, y)
    if kind == "logit":
        return -logits.gather(1, y[:, None]).mean()
    raise ValueError(f"unknown class loss '{kind}' (choose from {', '.join(CLASS_LOSSES)})")


def diversity_loss(feats: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over ordered pairs i != j of features [N, D] -> scalar in [-1, 1].

    Falls as the samples' embeddings move apart. 0 for N < 2 (nothing to push apart).
    """
    n = feats.shape[0]
    if n < 2:
        return feats.sum() * 0.0
    f = tfn.normalize(feats.flatten(1).float(), dim=1)  # [N, D]
    sim = f @ f.T  # [N, N]
    off_diag = sim.sum() - sim.diagonal().sum()
    return off_diag / (n * (n - 1))


def feature_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], std [D]) of features [N, D] (population std, so N = 1 gives std 0)."""
    f = feats.flatten(1).float()
    return f.mean(dim=0), f.std(dim=0, unbiased=False)


def distribution_loss(feats: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """|mean(feats) - mu|^2 / D + |std(feats) - sigma|^2 / D for feats [N, D], mu and sigma [D]."""
    mean, std = feature_stats(feats)
    mu, sigma = mu.to(mean), sigma.to(std)
    if mu.shape != mean.shape or sigma.shape != std.shape:
        raise ValueError(f"class statistics of shape {tuple(mu.shape)}/{tuple(sigma.shape)} do not fit features {tuple(feats.shape)}")
    return (mean - mu).pow(2).mean() + (std - sigma).pow(2).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean |x[h+1] - x[h]| + mean |x[w+1] - x[w]| over x [B, C, H, W] -> scalar."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() if x.shape[-2] > 1 else x.sum() * 0.0
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean() if x.shape[-1] > 1 else x.sum() * 0.0
    return dh + dw


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that track running statistics (the ones with a prior to match)."""
    return [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats and m.running_mean is not None]


class BNStatsRecorder:
    """Forward pre-hooks that turn every BatchNorm input into a DeepInversion statistics penalty.

    For each layer with input a [N, C, ...] (statistics over every axis but C, population variance)
    and running statistics (m, v)::

        term = rms_c((mean_c(a) - m) / sqrt(v + eps)) + rms_c(var_c(a) / (v + eps) - 1)

    i.e. the mean shift in units of the running standard deviation plus the relative variance
    error. DeepInversion uses the raw norms ||mean - m|| + ||var - v||; measured on
    EfficientNet-Lite0 with a uniform-noise 64 x 64 batch those sum to ~390 (a few layers with
    large running variance dominate) against a class CE of ~9, so one weight could not balance
    them; the standardised form is ~1 per layer whatever its scale. ``loss()`` is the mean over
    layers of the last forward, so the weight does not depend on the depth either. It is 0 when
    the batch statistics equal the running ones.

        with BNStatsRecorder(net) as rec:
            logits = net(x)
            prior = rec.loss()
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = batchnorm_layers(model)
        self._terms: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, layer: nn.modules.batchnorm._BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        a = inputs[0]
        dims = [0] + list(range(2, a.dim()))
        var, mean = torch.var_mean(a.float(), dim=dims, unbiased=False)  # [C] each, one pass
        rv = layer.running_var.float() + layer.eps
        shift = (mean - layer.running_mean.float()) / rv.sqrt()
        ratio = var / rv - 1
        self._terms.append(shift.pow(2).mean().sqrt() + ratio.pow(2).mean().sqrt())

    def __enter__(self) -> "BNStatsRecorder":
        self._terms = []
        self._handles = [layer.register_forward_pre_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset(self) -> None:
        self._terms = []

    def loss(self) -> torch.Tensor:
        """Mean penalty over the layers seen since the last reset (0 if the model has no BN)."""
        if not self._terms:
            return torch.zeros(())
        return torch.stack(self._terms).mean()


def bn_stats_loss(model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BN statistics penalty scalar, fn(x)) for one forward ``fn`` that runs ``model``'s layers.

    ``fn`` is usually the classifier (which may normalise before calling ``model``); the penalty
    is that of :class:`BNStatsRecorder`. The model should be in eval mode, so the forward itself
    uses the running statistics and is not changed by the batch.
    """
    with BNStatsRecorder(model) as rec:
        out = fn(x)
        loss = rec.loss()
    return loss, out
