"""Exponential moving average of the weights (the weights that inference uses)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Keeps float32 shadow copies; ``decay`` warms up as min(decay, (1 + n) / (10 + n)) so the
    average is not dominated by the random initialisation in short runs."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.float(), 1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, sd: dict[str, torch.Tensor], updates: int) -> None:
        self.shadow = {k: v.clone().float() for k, v in sd.items()}
        self.updates = updates
