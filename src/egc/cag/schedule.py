"""Progressive resolution and the image parameterisation for CaG (papers.md, section 2, part 2).

The optimised variable is an unconstrained tensor z of shape [B, C, s, s] at the current stage size
s; the image is x = sigmoid(z), so it always lies in (0, 1) and no clamping (which would zero the
gradient of saturated pixels) is needed. The classifier always sees x resized to the final size S:
a low stage size therefore restricts the image to low frequencies first, which is what the paper's
coarse-to-fine schedule is for (a 32 x 32 input fed as such to an ImageNet network would reach its
head as a 1 x 1 map and carry no layout).

Between stages the image (not z) is upsampled bicubically and mapped back with the logit, so the
picture carries over unchanged apart from the interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as tfn

from ..errors import ConfigError

#: Keeps the logit finite when an upsampled image reaches 0 or 1 after bicubic overshoot.
_EPS = 1e-4


def default_stages(final: int, min_size: int = 32) -> list[int]:
    """Sizes halving down from ``final`` while they stay >= ``min_size``: 128 -> [32, 64, 128]."""
    sizes = [final]
    while sizes[0] // 2 >= min_size and sizes[0] % 2 == 0:
        sizes.insert(0, sizes[0] // 2)
    return sizes


def resolution_schedule(final: int, stages: Sequence[int] | None = None, steps: int | Sequence[int] = 100,
                        progressive: bool = True) -> list[tuple[int, int]]:
    """The optimisation plan: a list of (stage size, steps at that size) ending at ``final``.

    ``steps`` is per stage (one int for all, or one per stage). With ``progressive`` off the plan is
    one stage at ``final`` with the *total* number of steps, so an ablation spends the same
    optimisation budget.
    """
    if final < 1:
        raise ConfigError(f"image size must be >= 1, got {final}")
    sizes = list(stages) if stages else default_stages(final)
    if any(s < 1 for s in sizes) or any(a >= b for a, b in zip(sizes, sizes[1:])):
        raise ConfigError(f"stages must be increasing positive sizes, got {sizes}")
    if sizes[-1] != final:
        raise ConfigError(f"the last stage must be the final size {final}, got stages {sizes}")
    per = [int(steps)] * len(sizes) if isinstance(steps, int) else [int(s) for s in steps]
    if len(per) != len(sizes):
        raise ConfigError(f"{len(per)} step counts given for {len(sizes)} stages {sizes}")
    if any(s < 1 for s in per):
        raise ConfigError(f"steps per stage must be >= 1, got {per}")
    if not progressive:
        return [(final, sum(per))]
    return list(zip(sizes, per))


def resize(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Differentiable resize of x [B, C, h, w] to [B, C, size, size] (antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    shrink = size < x.shape[-1] or size < x.shape[-2]
    return tfn.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=shrink)


def to_image(z: torch.Tensor) -> torch.Tensor:
    """Image in (0, 1) from the unconstrained parameter z (same shape [B, C, s, s])."""
    return torch.sigmoid(z)


def to_param(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_image` for an image x in [0, 1] (clamped away from 0 and 1 first)."""
    return torch.logit(x.clamp(_EPS, 1 - _EPS))


def upsample_param(z: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Carry the parameter z [B, C, s, s] to the next stage [B, C, size, size].

    The image is interpolated (interpolating z itself would sharpen edges through the sigmoid).
    """
    if mode not in ("bilinear", "bicubic"):
        raise ConfigError(f"upsampling mode must be 'bilinear' or 'bicubic', got '{mode}'")
    with torch.no_grad():
        return to_param(resize(to_image(z), size, mode=mode))


def random_affine(b: int, scale: float, rotate: float, gen: torch.Generator) -> torch.Tensor:
    """b random zoom-and-rotate matrices [b, 2, 3] for :func:`apply_affine`: zoom uniform in
    [1 - scale, 1 + scale], angle uniform in [-rotate, rotate] degrees (drawn from ``gen``)."""
    u = torch.rand(b, 2, generator=gen) * 2 - 1  # [b, 2] in [-1, 1]
    zoom = 1 + scale * u[:, 0]
    ang = torch.deg2rad(rotate * u[:, 1])
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom  # sampling grid = inverse map: / zoom
    zero = torch.zeros_like(cos)
    return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


def apply_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] resampled through theta [B, 2, 3] about the centre (bilinear; borders
    reflected, so no constant frame appears for the classifier to latch on to)."""
    grid = tfn.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return tfn.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
