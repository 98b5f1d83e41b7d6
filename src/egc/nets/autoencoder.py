"""A small KL autoencoder (the first stage of latent EGC, as in latent diffusion), sized for a CPU.

encoder: conv -> [res blocks, stride-2 conv] x log2(downsample) -> res block -> 2 * latent channels
         (posterior mean and log-variance of a diagonal Gaussian q(z | x))
decoder: the mirror image, with nearest-neighbour upsampling + conv.
32x32x3 images with downsample 4 and 4 latent channels give 8x8x4 latents. ``forward(x, noise)``
returns (reconstruction, mean, logvar) with z = mean + std * noise (z = mean when noise is None);
the loss is in diffusion/losses.py (``autoencoder_loss``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import AutoencoderConfig


def _gn(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4) or 1, ch)


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_gn(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1), _gn(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class KLAutoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        levels = int(round(math.log2(cfg.downsample)))
        chs = [cfg.channels * min(2**i, 4) for i in range(levels + 1)]
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)]
        for i in range(levels):
            enc += [_Res(chs[i], chs[i]) for _ in range(cfg.num_res_blocks)]
            enc.append(nn.Conv2d(chs[i], chs[i + 1], 3, stride=2, padding=1))
        enc += [_Res(chs[-1], chs[-1]), _gn(chs[-1]), nn.SiLU(), nn.Conv2d(chs[-1], 2 * cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, chs[-1], 3, padding=1), _Res(chs[-1], chs[-1])]
        for i in reversed(range(levels)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(chs[i + 1], chs[i], 3, padding=1)]
            dec += [_Res(chs[i], chs[i]) for _ in range(cfg.num_res_blocks)]
        dec += [_gn(chs[0]), nn.SiLU(), nn.Conv2d(chs[0], cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] in [-1, 1] -> (mean, logvar), each [B, latent_channels, H/f, W/f]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.encode(x)
        z = mean if noise is None else mean + (0.5 * logvar).exp() * noise
        return self.decode(z), mean, logvar
