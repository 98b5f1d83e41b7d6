"""An EGC network shaped for both jobs (``model.backbone: hybrid``): the fast CNN's encoder, time
conditioned, with a light decoder, whose output is still a per-pixel class-logit map F [B, K(+C), H, W].

Why this shape. The UNet is a weak classifier at CPU budgets (trained as a plain noisy-input
classifier it reaches 0.59 on CIFAR-10 in 10 minutes, the fast CNN 0.69) and its double backward is
expensive. The EGC paper's own ablation trains a ResNet (a classifier-shaped network) as an EGC and it
still generates, so this network keeps the classifier's path and adds only what a denoiser needs:

- an optional space-to-depth stem (model.patch, as in the UNet): the network runs at 1/p resolution
  and a pixel shuffle restores the full-resolution map; the input gradient flows through it;
- encoder: airbench-style blocks [conv, max-pool, norm, act, conv, norm, act] at widths
  (w, m1 w, m2 w, ...), each norm followed by a FiLM scale/shift from the time (and label) embedding;
- a global head: the deepest features, max-pooled over space, give class logits g [B, K]; g is added to
  every pixel of the K class channels, so the pooled logits (what classifies) are the CNN's head plus the
  decoder's mean, and the classifier path is the fast CNN's;
- a light decoder: each level projected to ``dec`` channels, upsampled and summed coarse-to-fine
  (a feature pyramid, no concatenation), one FiLM-conditioned 3x3 conv a level, giving per-pixel residual logits d and
  the denoiser channels at full resolution. The energy's input gradient (the eps) reaches every input
  pixel through the decoder's skips, not only through the max-pool's winners.

EGC's contract is untouched: the energy is -sum_hw logsumexp_k F (+ prior), eps = grad_x of it, the
classifier logits are pool_hw F; every sampler, guidance and eval path reads F as it reads the UNet's.
The last convolution and the head start at zero, so F = 0 and the energy is flat at step 0 (as in the UNet).

Normalisation (model.norm): "group" (GroupNorm; per-sample, so a sample's energy does not depend on its
batch), "none", or "batch" (the CNN's BatchNorm: fastest, but in training mode a sample's energy, and so
its eps, depends on the rest of the batch; eval uses running statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as tfn
from torch import nn

from ..config import ModelConfig
from .unet import TimeLabelEmbedding
from .unet import _norm as _unet_norm


def _norm(kind: str, ch: int) -> nn.Module:
    """The UNet's norms ("group", "none") plus the CNN's BatchNorm, which only this backbone allows."""
    return nn.BatchNorm2d(ch) if kind == "batch" else _unet_norm(kind, ch)


class _FiLMConv(nn.Module):
    """conv3x3 -> (optional max-pool) -> norm -> (1 + scale) * h + shift -> GELU."""

    def __init__(self, cin: int, cout: int, temb: int, norm: str, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none")
        self.pool = pool
        self.norm = _norm(norm, cout)
        self.film = nn.Linear(temb, 2 * cout)
        nn.init.zeros_(self.film.weight)  # start as the plain CNN block: the time enters as it is learned
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.pool:
            h = tfn.max_pool2d(h, 2, ceil_mode=True)
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        return tfn.gelu(self.norm(h) * (1 + scale) + shift)


class HybridEnergyNet(nn.Module):
    """(x [B, C, H, W], t [B], labels [B] or None) -> logit map F [B, K(+C), H, W], as EnergyUNet."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.channels
        self.embed = TimeLabelEmbedding(cfg)
        temb = self.embed.dim
        widths = [w * m for m in cfg.channel_mult]
        p = cfg.patch  # space-to-depth stem, as in the UNet: the whole network runs at 1/p resolution
        self.stem = _FiLMConv(cfg.in_channels * p * p, w, temb, cfg.norm, pool=False)
        self.blocks = nn.ModuleList()
        cur = w
        for wd in widths:
            self.blocks.append(nn.ModuleList([_FiLMConv(cur, wd, temb, cfg.norm, pool=True), _FiLMConv(wd, wd, temb, cfg.norm, pool=False)]))
            cur = wd
        k = cfg.num_classes
        self.head = nn.Linear(cur, k, bias=False)
        nn.init.zeros_(self.head.weight)
        dec = cfg.decoder_channels or max(16, w // 2)
        # one 1x1 lateral per level: the stem's full-resolution features and every block's output
        self.lateral = nn.ModuleList([nn.Conv2d(c, dec, 1) for c in [w, *widths]])
        self.smooth = nn.ModuleList([_FiLMConv(dec, dec, temb, "group" if cfg.norm == "batch" else cfg.norm, pool=False) for _ in widths])
        self.out = nn.Conv2d(dec, cfg.out_channels * p * p, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if not cfg.supervised:  # as in EnergyUNet: equal cluster channels would get equal gradients forever
            with torch.no_grad():
                self.out.weight[: k * p * p].normal_(0.0, 1e-2)
                self.head.weight.normal_(0.0, 1e-2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        size, p = x.shape[-2:], self.cfg.patch
        if p > 1:  # odd sizes (28 px at patch 4) are padded up and the map cropped back
            ph, pw = -size[0] % p, -size[1] % p
            x = tfn.pixel_unshuffle(tfn.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x, p)
        emb = self.embed(t, labels, x.shape[0], self.stem.conv.weight.dtype)
        h = self.stem(x, emb)
        feats = [h]
        for down, same in self.blocks:
            h = same(down(h, emb), emb)
            feats.append(h)
        g = self.head(h.amax(dim=(2, 3)))  # [B, K]: the CNN's global head
        u = self.lateral[-1](feats[-1])
        for lvl in range(len(feats) - 2, -1, -1):  # coarse to fine
            f = feats[lvl]
            u = tfn.interpolate(u, scale_factor=2.0, mode="nearest")[..., : f.shape[-2], : f.shape[-1]]
            u = self.smooth[lvl](u + self.lateral[lvl](f), emb)
        fmap = self.out(u)
        if p > 1:
            fmap = tfn.pixel_shuffle(fmap, p)
        fmap = fmap[..., : size[0], : size[1]]
        k = self.cfg.num_classes
        cls = fmap[:, :k] + g[:, :, None, None].to(fmap.dtype)
        return torch.cat([cls, fmap[:, k:]], dim=1) if fmap.shape[1] > k else cls
