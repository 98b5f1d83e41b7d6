"""Class statistics of real images for CaG (``egc cag --stats-from DATA``).

Two kinds, both measured on a user's own training images (a seeded, class-balanced subset):

- :func:`class_feature_stats`: mu_c, sigma_c of the classifier's features per class: the
  distribution loss as the paper means it (papers.md, section 2, part 4), beside the data-free
  batch-norm prior.
- :class:`PixelPrior`: a per-class Gaussian of the images themselves (mean and the top principal
  directions), from which ``init="data"`` draws each image's starting point (Santurkar et al. 2019 seed
  their robust-classifier generation the same way). A Gaussian sample alone is a blurry, naturally
  coloured blob with the real power spectrum and variety but no object: the scoreboard keeps a row of
  the seeds alone, so what the classifier adds is measured, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import EgcError


def load_class_images(spec: str, per_class: int = 500, seed: int = 0, root: str | None = None, split: str = "train",
                      image_size: int = 0, channels: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images float [N, C, H, W] in [0, 1], labels int64 [N], class names): up to ``per_class``
    seeded random images of every class of data set ``spec`` (any name ``egc train --data`` takes),
    made ``image_size`` x ``image_size`` with ``channels`` by the same preprocessing as training (0: as stored)."""
    from ..data import load_dataset

    ds = load_dataset(spec, split, root, image_size=image_size, channels=channels)
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(ds.num_classes):
        idx = (ds.labels == c).nonzero().flatten()
        keep.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]])
    idx = torch.cat(keep)
    if idx.numel() == 0:
        raise EgcError(f"--stats-from {spec}: no images")
    x = ds.images[idx].permute(0, 3, 1, 2).float() / 255
    return x.contiguous(), ds.labels[idx].long(), list(ds.class_names)


def check_classes(clf: Any, names: list[str], spec: str) -> None:
    """EgcError unless the data set has the classifier's classes, in its order."""
    own = [str(n).lower() for n in clf.class_names]
    if len(names) != len(own):
        raise EgcError(f"--stats-from {spec} has {len(names)} classes but classifier {clf.name} has {len(own)}")
    if own != [str(n).lower() for n in names] and not all(n.isdigit() for n in own):
        raise EgcError(f"--stats-from {spec}: its classes ({', '.join(names[:4])}, ...) are not the classifier's ({', '.join(own[:4])}, ...)")


@torch.no_grad()
def class_feature_stats(clf: Any, images: torch.Tensor, labels: torch.Tensor, view: int | None = None,
                        batch_size: int = 250) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{class: (mu [D], sigma [D])} of the classifier's features of clean images [N, C, H, W] in [0, 1]
    (resized to ``view`` when given, the size CaG shows the classifier)."""
    from .adapters import logits_and_features
    from .losses import feature_stats
    from .schedule import resize

    feats = []
    for i in range(0, images.shape[0], batch_size):
        xb = images[i:i + batch_size]
        if view is not None:
            xb = resize(xb, view)
        feats.append(logits_and_features(clf, xb)[1].float().cpu())
    f = torch.cat(feats)
    out = {}
    for c in sorted(set(labels.tolist())):
        out[int(c)] = feature_stats(f[labels == c])
    return out


@dataclass
class PixelPrior:
    """Per-class Gaussians of images: mean [K, D] and factor [K, r, D] (principal directions times
    their standard deviations), D = C * H * W; a draw is mean + z @ factor, z ~ N(0, I_r)."""

    mean: torch.Tensor
    factor: torch.Tensor
    shape: tuple[int, int, int]

    @classmethod
    def fit(cls, images: torch.Tensor, labels: torch.Tensor, rank: int = 64) -> "PixelPrior":
        """Fit on images [N, C, H, W] in [0, 1] with labels [N] (classes 0..K-1, each with >= 2 images)."""
        k = int(labels.max()) + 1
        shape = tuple(int(v) for v in images.shape[1:])
        flat = images.flatten(1).double()
        means, factors = [], []
        for c in range(k):
            xc = flat[labels == c]
            if xc.shape[0] < 2:
                raise EgcError(f"class {c} has {xc.shape[0]} images; a pixel prior needs at least 2 per class")
            mu = xc.mean(0)
            r = min(rank, xc.shape[0] - 1)
            # principal directions of the centred images; singular values / sqrt(n - 1) are the stds
            _, sv, vh = torch.linalg.svd(xc - mu, full_matrices=False)
            f = torch.zeros(rank, flat.shape[1], dtype=torch.float64)
            f[:r] = vh[:r] * (sv[:r] / (xc.shape[0] - 1) ** 0.5)[:, None]
            means.append(mu)
            factors.append(f)
        return cls(torch.stack(means).float(), torch.stack(factors).float(), shape)  # type: ignore[arg-type]

    def sample(self, c: int, n: int, gen: torch.Generator) -> torch.Tensor:
        """n draws of class c, float [n, C, H, W] clamped to [0, 1]."""
        z = torch.randn(n, self.factor.shape[1], generator=gen)
        x = self.mean[c] + z @ self.factor[c]
        return x.view(n, *self.shape).clamp(0, 1)
