"""The fast CNN baseline (model.kind "cnn"): the kind of classifier a practitioner trains on a CPU, in the
style of airbench (Jordan 2024, "94 % on CIFAR-10 in 3.29 seconds"): a conv stem, then three blocks of
[conv, max-pool, BatchNorm, GELU, conv, BatchNorm, GELU] at widths (w, 4w, 4w), a global max-pool and a
linear head whose output is scaled down (airbench's 1/9), trained with label smoothing, flips and
2-pixel translations. Not airbench itself: no whitening initialisation, no Lookahead, AdamW instead of
its tuned Nesterov SGD (the trainer's optimiser), and no test-time augmentation.

The network takes the UNet's call signature (x, t, labels) and ignores t and labels: it has no noise level
and no label input. It returns the class logits as a 1 x 1 logit map [B, K, 1, 1] (see forward).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig

# model.size -> stem/first-block width (airbench94: 64, i.e. blocks of 64, 256, 256)
CNN_WIDTHS = {"tiny": 8, "small": 64, "base": 96, "large": 128}


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        super().__init__(conv, nn.MaxPool2d(2, ceil_mode=True), nn.BatchNorm2d(cout), nn.GELU(), *_conv_bn(cout, cout))


class FastCNN(nn.Module):
    """x [B, C, H, W] in [-1, 1] -> logits [B, K]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = CNN_WIDTHS.get(cfg.size, cfg.channels)
        self.stem = nn.Sequential(*_conv_bn(cfg.in_channels, w))
        self.blocks = nn.Sequential(_Block(w, w), _Block(w, 4 * w), _Block(4 * w, 4 * w))
        self.head = nn.Linear(4 * w, cfg.num_classes, bias=False)
        self.scale = 1 / 9  # airbench's output scaling: keeps early logits small under label smoothing

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits as a 1 x 1 logit map [B, K, 1, 1]: the readers of the UNet's map (pooling, the logit energy)
        apply unchanged, and pooling one pixel returns it."""
        h = self.blocks(self.stem(x))
        return (self.head(h.amax(dim=(2, 3))) * self.scale)[:, :, None, None]
