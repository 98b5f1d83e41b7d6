"""Judge generated samples with an independent feature classifier from the zoo.

``load_judge("zoo:fashioncnn")`` loads the classifier shipped in ``egc/zoo/fashioncnn.safetensors``
(trained by ``bench/train_feature_classifier.py`` and never used for training or sampling);
``judge_samples`` reports conditional accuracy and distribution metrics, every key carrying the
judge's name (e.g. ``fd_fashioncnn``) so numbers from different judges are never confused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egc.errors import CheckpointError, EgcError
from egc.eval.features import FeatureCNN, load_feature_net
from egc.eval.fid import (
    extract_features,
    frechet_distance,
    gaussian_stats,
    kid,
    metric_name,
    precision_recall,
)

ZOO_PREFIX = "zoo:"


@dataclass
class Judge:
    """A loaded feature network plus its metadata; ``name`` goes into every metric name."""

    net: FeatureCNN
    name: str
    meta: dict[str, Any] = field(default_factory=dict)


def zoo_path(name: str) -> Path:
    """Path of ``egc/zoo/<name>.safetensors`` inside the installed package."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise CheckpointError(f"bad zoo model name {name!r}")
    # importlib.resources finds the package data both in a wheel install and an editable one.
    return Path(str(resources.files("egc.zoo").joinpath(f"{name}.safetensors")))


def load_judge(name_or_path: str | Path = "zoo:fashioncnn") -> Judge:
    """Load a judge from ``zoo:NAME`` or a path to a file written by ``save_feature_net``.

    The judge's name is ``meta["name"]`` (falling back to the file stem).
    Raises:
        CheckpointError: missing, unreadable or foreign file.
    """
    spec = str(name_or_path)
    if spec.startswith(ZOO_PREFIX):
        path = zoo_path(spec[len(ZOO_PREFIX) :])
        if not path.is_file():
            raise CheckpointError(
                f"zoo model {spec!r} not found at {path}; train it with "
                "bench/train_feature_classifier.py"
            )
    else:
        path = Path(spec)
    net, meta = load_feature_net(path)
    name = str(meta.get("name") or path.stem)
    return Judge(net=net, name=name, meta=meta)


def _check_images(images: torch.Tensor, judge: Judge, what: str) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise EgcError(f"{what} must be float [N,C,H,W], got {images.dtype} {tuple(images.shape)}")
    if images.shape[1] != judge.net.in_ch:
        raise EgcError(
            f"{what} have {images.shape[1]} channels but judge {judge.name} expects "
            f"{judge.net.in_ch}"
        )
    lo, hi = float(images.min()), float(images.max())
    # A small tolerance allows samplers that overshoot slightly; anything beyond means uint8 or
    # [0, 255] data was passed and every metric would be garbage.
    if lo < -1.05 or hi > 1.05:
        raise EgcError(f"{what} must be in [-1, 1], got range [{lo:.3g}, {hi:.3g}]")


def _checked_labels(judge: Judge, images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor) -> torch.Tensor:
    """The requested labels as int64 [N] on the CPU, after one-line checks of both image sets and the labels."""
    _check_images(images, judge, "samples")
    _check_images(test_images, judge, "test images")
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    n = images.shape[0]
    if labels.shape[0] != n:
        raise EgcError(f"{n} samples but {labels.shape[0]} labels")
    if n < 2 or test_images.shape[0] < 2:
        raise EgcError("judge_samples needs at least 2 samples and 2 test images")
    if labels.min() < 0 or labels.max() >= judge.net.num_classes:
        raise EgcError(f"labels must be in [0, {judge.net.num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    return labels


@torch.no_grad()
def judge_samples(
    judge: Judge,
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    *,
    batch_size: int = 256,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float | int]:
    """Score generated samples against real test images.

    Args:
        judge: from :func:`load_judge`.
        images: generated, float ``[N, C, H, W]`` in ``[-1, 1]``.
        labels: int ``[N]``, the class each sample was asked to be.
        test_images: real reference images, float ``[M, C, H, W]`` in ``[-1, 1]``.
        kid_subsets, kid_subset_size, seed: passed to :func:`kid`.
        k: neighbourhood size for :func:`precision_recall`; N and M must exceed it.
    Returns:
        ``{"cond_acc_<name>", "fd_<name>", "kid_<name>", "kid_std_<name>",
        "precision_<name>", "recall_<name>", "n", "n_ref"}``; cond_acc is the share of samples
        the judge classifies as their requested label.
    """
    labels = _checked_labels(judge, images, labels, test_images)
    n = images.shape[0]
    fake = extract_features(judge.net, images, batch_size)  # [N, D] float64
    real = extract_features(judge.net, test_images, batch_size)  # [M, D] float64
    # Predictions from the same features: one forward pass serves both metrics. The features are
    # float32 values widened to float64, so narrowing back is exact.
    judge.net.eval()
    param = next(judge.net.parameters())
    logits = judge.net.classify_features(fake.to(param.device, param.dtype))
    cond_acc = float((logits.argmax(dim=1).cpu() == labels).double().mean())

    mu_f, sig_f = gaussian_stats(fake)
    mu_r, sig_r = gaussian_stats(real)
    fd = frechet_distance(mu_r, sig_r, mu_f, sig_f)
    kid_mean, kid_std = kid(real, fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    if min(n, test_images.shape[0]) > k:
        prec, rec = precision_recall(real, fake, k=k)
    else:  # too few points for a k-NN manifold
        prec, rec = float("nan"), float("nan")

    name = judge.name
    return {
        metric_name("cond_acc", name): cond_acc,
        metric_name("fd", name): fd,
        metric_name("kid", name): kid_mean,
        metric_name("kid_std", name): kid_std,
        metric_name("precision", name): prec,
        metric_name("recall", name): rec,
        "n": int(n),
        "n_ref": int(test_images.shape[0]),
    }


def feature_stats(judge: Judge, images: torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
    """``{"mu": [D], "sigma": [D, D]}`` of the judge's features of ``images`` ``[N,C,H,W]``;
    handy for caching the test-set reference statistics."""
    _check_images(images, judge, "images")
    mu, sigma = gaussian_stats(extract_features(judge.net, images, batch_size))
    return {"mu": mu, "sigma": sigma}
