"""Random masks for CaG's mask-based stochastic reconstruction g (papers.md, section 2, part 1).

At every optimisation step part of the image is hidden before the classifier sees it, so the input
gradient has to explain the class from whatever stays visible; a single adversarial pixel pattern
can no longer carry the logit. The paper does not publish the mask shape, ratio or fill, so every
one of them is a parameter here.

Families (``ratio`` = share of pixels hidden, per image):

- ``"cutout"``:  one square of area ~ ratio * H * W at a random position (fully inside).
- ``"patches"``: random squares of side ``patch`` (default ~ H // 8, see below), possibly overlapping,
  added until at least ``ratio`` of the pixels is hidden (overshoot < one square).
- ``"grid"``:    the image cut into ``patch`` x ``patch`` cells; exactly round(ratio * cells) random
  cells hidden (MAE-style patch dropout). Exact share when ``patch`` divides H and W (the default
  patch is the largest divisor of H and W that is <= min(H, W) // 8).
- ``"pixels"``:  exactly round(ratio * H * W) random pixels hidden (pixel dropout).

Fills (what a hidden pixel shows the classifier): ``"noise"`` (uniform in [0, 1]), ``"mean"`` (the
image's per-channel mean), ``"zero"`` (black), ``"blur"`` (a box-blurred copy of the image).

The defaults in :class:`egc.cag.generate.CaGConfig` (patches, 0.3, noise) are a starting point, not a
measured optimum: ``bench/cag.py --mask FAMILY:RATIO:FILL`` is the sweep that would settle them (not
run to completion on the 2-core machine; see the module docstring of ``generate``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tfn

from ..errors import ConfigError

MASK_FAMILIES: tuple[str, ...] = ("cutout", "patches", "grid", "pixels")
MASK_FILLS: tuple[str, ...] = ("noise", "mean", "zero", "blur")


def _check(family: str, ratio: float) -> None:
    if family not in MASK_FAMILIES:
        raise ConfigError(f"unknown mask family '{family}' (choose from {', '.join(MASK_FAMILIES)})")
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mask ratio must be in [0, 1), got {ratio}")


def random_mask(shape: tuple[int, ...] | torch.Size, family: str, ratio: float, gen: torch.Generator | None = None,
                patch: int | None = None) -> torch.Tensor:
    """A random mask, bool [B, 1, H, W], True = hidden, for images of ``shape`` [B, C, H, W].

    ``gen`` (a CPU torch.Generator) makes it reproducible; the mask is built on the CPU, so move it
    with ``.to(x.device)`` (``apply_mask`` does). ``patch`` is the square / cell side in pixels for
    "patches" and "grid" (default: the largest divisor of H and W that is <= min(H, W) // 8).
    """
    _check(family, ratio)
    b, h, w = int(shape[0]), int(shape[-2]), int(shape[-1])
    if ratio == 0.0:
        return torch.zeros(b, 1, h, w, dtype=torch.bool)
    p = patch if patch is not None else _default_patch(h, w)
    return _FAMILY_MASKS[family](b, h, w, ratio, p, gen)


def _pixels_mask(b: int, h: int, w: int, ratio: float, p: int, gen: torch.Generator | None) -> torch.Tensor:
    """Exactly round(ratio * H * W) random pixels per image (``p`` unused)."""
    k = round(ratio * h * w)
    # argsort of uniform noise = a uniform random permutation per row; its first k are hidden.
    idx = torch.rand(b, h * w, generator=gen).argsort(dim=1)[:, :k]
    flat = torch.zeros(b, h * w, dtype=torch.bool)
    flat.scatter_(1, idx, True)
    return flat.view(b, 1, h, w)


def _grid_mask(b: int, h: int, w: int, ratio: float, p: int, gen: torch.Generator | None) -> torch.Tensor:
    """Exactly round(ratio * cells) random p x p cells per image."""
    gh, gw = math.ceil(h / p), math.ceil(w / p)
    k = round(ratio * gh * gw)
    idx = torch.rand(b, gh * gw, generator=gen).argsort(dim=1)[:, :k]
    cells = torch.zeros(b, gh * gw, dtype=torch.bool)
    cells.scatter_(1, idx, True)
    # Each cell becomes a p x p block; the last row / column of cells is cropped when p does
    # not divide the size.
    big = cells.view(b, 1, gh, gw).repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
    return big[:, :, :h, :w].contiguous()


def _cutout_mask(b: int, h: int, w: int, ratio: float, p: int, gen: torch.Generator | None) -> torch.Tensor:
    """One square of area ~ ratio * H * W per image, fully inside (``p`` unused)."""
    mask = torch.zeros(b, 1, h, w, dtype=torch.bool)
    side = max(1, min(h, w, round(math.sqrt(ratio * h * w))))
    ys = torch.randint(0, h - side + 1, (b,), generator=gen)
    xs = torch.randint(0, w - side + 1, (b,), generator=gen)
    for i in range(b):
        mask[i, 0, ys[i]:ys[i] + side, xs[i]:xs[i] + side] = True
    return mask


def _patches_mask(b: int, h: int, w: int, ratio: float, p: int, gen: torch.Generator | None) -> torch.Tensor:
    """p x p squares at random positions until the hidden share reaches the ratio.

    A square may hang over the border (its centre is uniform over the image), so edges are hidden as
    often as the middle. Vectorised: centres are scattered as points and grown into p x p squares by a
    max-pool; k starts below the count that covers ``ratio`` on average (1 - exp(-k p^2 / HW) = ratio),
    then images still short get more squares per round, so the share ends in [ratio, ratio + p^2 / HW)."""
    hw = h * w
    k0 = max(1, int(0.8 * -math.log(1 - ratio) * hw / (p * p)))
    centres = torch.zeros(b, hw)
    centres.scatter_(1, torch.randint(0, hw, (b, k0), generator=gen), 1.0)

    def grow(c: torch.Tensor) -> torch.Tensor:
        # A p x p max-pool done as 1 x p then p x 1 (separable: 2p instead of p^2 per pixel).
        sq = tfn.max_pool2d(c.view(b, 1, h, w), kernel_size=(1, p), stride=1, padding=(0, p // 2))
        sq = tfn.max_pool2d(sq, kernel_size=(p, 1), stride=1, padding=(p // 2, 0))
        return sq[:, :, :h, :w] > 0  # even p gives one extra row / column: crop it

    mask = grow(centres)
    for _ in range(4 * hw):  # bound: each round adds a square at least to every short image
        deficit = ratio - mask.flatten(1).float().mean(dim=1)  # [b]
        if not bool((deficit > 0).any()):
            break
        # Half the squares the deficit needs (at least one): converges in a few rounds and keeps
        # the overshoot below one square.
        count = torch.where(deficit > 0, (0.5 * deficit * hw / (p * p)).floor().clamp(min=1), torch.zeros(()))  # [b]
        m = int(count.max())
        idx = torch.randint(0, hw, (b, m), generator=gen)
        valid = (torch.arange(m)[None, :] < count[:, None]).float()  # [b, m]
        centres.scatter_reduce_(1, idx, valid, reduce="amax")
        mask = grow(centres)
    return mask


_FAMILY_MASKS = {"pixels": _pixels_mask, "grid": _grid_mask, "cutout": _cutout_mask, "patches": _patches_mask}


def _default_patch(h: int, w: int) -> int:
    """The largest side <= min(H, W) // 8 that divides both H and W (so grid cells tile exactly)."""
    p = max(1, min(h, w) // 8)
    while p > 1 and (h % p or w % p):
        p -= 1
    return p


def box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """Box blur of x [B, C, H, W] with an odd k x k window and reflected borders -> [B, C, H, W]."""
    k = max(1, k | 1)
    if k == 1:
        return x
    r = k // 2
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    return tfn.avg_pool2d(tfn.pad(x, (r, r, r, r), mode=mode), k, stride=1)


def apply_mask(x: torch.Tensor, mask: torch.Tensor, fill: str, gen: torch.Generator | None = None) -> torch.Tensor:
    """Hide the masked pixels of x [B, C, H, W] (values in [0, 1]) behind ``fill`` -> [B, C, H, W].

    ``mask`` is bool or float [B, 1, H, W] (1 = hidden). Gradients flow to the visible pixels (and,
    for "mean" and "blur", through the fill into the pixels it was computed from).
    """
    if fill not in MASK_FILLS:
        raise ConfigError(f"unknown mask fill '{fill}' (choose from {', '.join(MASK_FILLS)})")
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0] or mask.shape[-2:] != x.shape[-2:]:
        raise ConfigError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(x.shape)}")
    m = mask.to(device=x.device, dtype=x.dtype)
    if fill == "zero":
        return x * (1 - m)
    if fill == "noise":
        noise = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        fill_values = noise
    elif fill == "mean":
        fill_values = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    else:  # "blur": a window of ~1/4 of the image keeps only the coarse colour layout
        fill_values = box_blur(x, max(3, x.shape[-1] // 4))
    return x * (1 - m) + fill_values * m
