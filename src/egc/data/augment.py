"""Label-preserving augmentation of a batch that is drawn per step (not per epoch like the loader's flips).

``random_shift`` is the classic CIFAR-10 crop ("pad 4, crop back"), with reflect padding so no black
border teaches the classifier a shortcut. The EGC recipe applies it to the clean-CE view only
(``loss.clean_shift``): the diffusion loss keeps the unshifted images, so no padded border enters
the distribution the energy learns (the released code likewise augments only the clean images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as tfn


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """x [B, C, H, W] -> [B, C, H, W]: each image translated by its own (dy, dx), uniform in
    [-max_shift, max_shift]^2, the uncovered edge filled by reflection. Offsets come from ``gen``
    (on its device, so a CPU generator gives the same shifts on any device); max_shift 0 returns x."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    if max_shift >= min(h, w):
        raise ValueError(f"shift {max_shift} must be smaller than the image ({h} x {w}) for reflect padding")
    dev = gen.device if gen is not None else x.device
    off = torch.randint(0, 2 * max_shift + 1, (2, b), generator=gen, device=dev).to(x.device)
    padded = tfn.pad(x, (max_shift,) * 4, mode="reflect")  # [B, C, H + 2s, W + 2s]
    rows = off[0][:, None] + torch.arange(h, device=x.device)  # [B, H]: the window's rows in padded
    cols = off[1][:, None] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()
