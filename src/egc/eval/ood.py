"""Out-of-distribution detection: rank-based AUROC and the OOD image sets.

The score is the model's energy (higher = less likely = more OOD): E(x, t=0) for an EGC model and
-logsumexp(logits) for a plain classifier (JEM, Grathwohl et al. 2020). AUROC is the probability
that a random OOD image scores higher than a random in-distribution one (ties count one half), the
Mann-Whitney U statistic computed from average ranks.

OOD sets are converted to the model's input format (channels and size): uniform noise, Gaussian
noise, and other data sets when they are installed (CIFAR-10 in grey resized to 28 x 28 for a grey
model, MNIST / Fashion-MNIST repeated over 3 channels and resized for an RGB model).

``egc eval``'s metric ``ood`` (:func:`out_of_distribution`) scores the model's test images against each
set with the energy and, as a baseline, with the maximum softmax probability (MSP).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as tfn

from egc.errors import DataError

from .modelio import batched_logits, energy_scores
from .testsets import norm_name

if TYPE_CHECKING:
    from egc.model import EGC

    from .settings import EvalContext

OOD_DATASETS = ("cifar10", "mnist", "fashion-mnist")
OOD_NOISE = ("uniform", "gaussian")


def auroc(scores_in: torch.Tensor | np.ndarray, scores_out: torch.Tensor | np.ndarray) -> float:
    """P(score_out > score_in) + 0.5 * P(score_out == score_in), exact with ties.

    Args:
        scores_in: ``[N_in]`` scores of in-distribution examples (the negatives).
        scores_out: ``[N_out]`` scores of OOD examples (the positives; higher = more OOD).
    Returns:
        AUROC in [0, 1]; 0.5 is chance, 1 a perfect separation.
    """
    a = np.asarray(torch.as_tensor(scores_in).detach().cpu().double().reshape(-1))
    b = np.asarray(torch.as_tensor(scores_out).detach().cpu().double().reshape(-1))
    if a.size == 0 or b.size == 0:
        raise ValueError("auroc: both score sets need at least one value")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("auroc: scores contain NaN or inf")
    s = np.concatenate([a, b])
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    avg_rank = end - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    u = ranks[a.size:].sum() - b.size * (b.size + 1) / 2.0
    return float(u / (a.size * b.size))


def uniform_noise(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """``[n, C, H, W]`` pixels uniform in [0, 1], returned in the model range [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g) * 2 - 1


def gaussian_noise(n: int, shape: tuple[int, int, int], seed: int = 0, mean: float = 0.5, std: float = 0.25) -> torch.Tensor:
    """``[n, C, H, W]`` pixels N(mean, std^2) clipped to [0, 1] (pixel scale), returned in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn((n, *shape), generator=g) * std + mean).clamp(0, 1)) * 2 - 1


def convert_images(images_uint8: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float ``[N, channels, size, size]`` in [-1, 1].

    RGB -> grey uses the ITU-R BT.601 luma weights; grey -> RGB repeats the channel; the size is
    changed with antialiased bilinear resampling.
    """
    x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != channels:
        raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    if x.shape[-1] != size or x.shape[-2] != size:
        x = tfn.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 2 - 1).contiguous()


def ood_set_key(name: str, src_channels: int, channels: int) -> str:
    """JSON key of a converted data set: ``cifar10_grey``, ``mnist``, ``fashion_mnist_rgb``, ..."""
    key = name.replace("-", "_")
    if src_channels == 3 and channels == 1:
        return f"{key}_grey"
    if src_channels == 1 and channels == 3:
        return f"{key}_rgb"
    return key


def _ood_data_set(name: str, root: str | None, n: int, c: int, s: int, seed: int) -> tuple[str, torch.Tensor | None, str]:
    """(key, images ``[n', c, s, s]`` in [-1, 1] or None, why not) of an installed data set's test split."""
    from egc.data import load_dataset

    ds, err = None, ""
    for r in dict.fromkeys([None, root]):  # the default locations first, then --data-root
        try:
            ds = load_dataset(name, "test", r)
            break
        except DataError as e:
            err = str(e)
    if ds is None:
        return name, None, f"not available ({err})"
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return ood_set_key(norm_name(name), ds.channels, c), convert_images(ds.images[idx], c, s), ""


def ood_sets(m: EGC, data_name: str, names: list[str] | None, n: int, root: str | None, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({key: images ``[n', C, H, W]`` in [-1, 1]}, {name: why skipped}) for the requested OOD sets
    (None: both noise sets and every data set but the model's own)."""
    c, s, _ = m.image_shape
    own = norm_name(data_name)
    wanted = names if names is not None else [*OOD_NOISE, *(d for d in OOD_DATASETS if d != own)]
    sets: dict[str, torch.Tensor] = {}
    notes: dict[str, str] = {}
    for name in wanted:
        if name == "uniform":
            sets["uniform_noise"] = uniform_noise(n, (c, s, s), seed)
        elif name == "gaussian":
            sets["gaussian_noise"] = gaussian_noise(n, (c, s, s), seed + 1)
        else:
            key, images, why = _ood_data_set(name, root, n, c, s, seed)
            if images is None:
                notes[name] = why
            else:
                sets[key] = images
    return sets, notes


def out_of_distribution(c: EvalContext) -> None:
    """metric ood: AUROC of the energy (``ood_auroc``) and of the MSP (``ood_auroc_msp``) on each OOD set
    against the test images (``c.logits``: their clean logits, computed by the accuracy step)."""
    s, m = c.s, c.m
    tick = time.perf_counter()
    sets, notes = ood_sets(m, c.data_name, s.ood_sets, c.x.shape[0], s.data_root, s.seed)
    e_in = energy_scores(m, c.x, s.batch_size)
    msp_in = -torch.softmax(c.logits, dim=1).max(dim=1).values
    ood: dict[str, Any] = {}
    ood_msp: dict[str, Any] = {}
    for key, xo in sets.items():
        ood[key] = auroc(e_in, energy_scores(m, xo, s.batch_size))
        ood_msp[key] = auroc(msp_in, -torch.softmax(batched_logits(m, xo, None, s.batch_size), dim=1).max(dim=1).values)
    c.metrics["ood_auroc"] = ood
    c.metrics["ood_auroc_msp"] = ood_msp
    if notes:
        c.metrics["ood_notes"] = notes
    c.wall["ood"] = time.perf_counter() - tick
