"""The EGC network: a time-conditioned UNet whose output is a per-pixel class-logit map.

F(x_t, t) has shape [B, K, H, W]. The energy and the classifier logits are *derived* from F
elsewhere (``egc.diffusion.energy``); the network itself only maps (x, t) -> F, so ``forward``
never changes what it returns with a mode flag.

Design choices for a CPU (measured in bench/ and BENCHMARKS.md):
- ``patch``: an optional strided stem (space-to-depth) that runs the whole UNet at half resolution
  and restores full resolution with a pixel shuffle at the end. The energy still sums over every
  input pixel, and the input gradient flows through the stem, so F stays a per-pixel map.
- SiLU everywhere: double backpropagation needs a non-zero, smooth second derivative.
- the last conv is zero-initialised, so F = 0, the energy is flat and eps_hat = 0 at the start.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tfn
from torch import nn

from ..config import ModelConfig


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def time_label_embedding(mod: nn.Module, t: torch.Tensor, labels: torch.Tensor | None, b: int, dtype: torch.dtype) -> torch.Tensor:
    """The conditioning vector [B, temb] of a network holding ``cfg``, ``time_mlp``, ``clean_token`` and
    ``label_emb`` (EnergyUNet, TimeLabelEmbedding): sinusoidal t (the clean token where t < 0) through
    the MLP, plus the label embedding (K = null; None = all null) with model.conditioning "embedding"."""
    temb = timestep_embedding(t.clamp(min=0), mod.cfg.channels)
    temb = torch.where((t < 0)[:, None], mod.clean_token[None].to(temb.dtype), temb)
    emb = mod.time_mlp(temb.to(dtype))
    if mod.label_emb is not None:
        if labels is None:
            labels = torch.full((b,), mod.cfg.num_classes, dtype=torch.long, device=t.device)
        emb = emb + mod.label_emb(labels).to(emb.dtype)
    elif labels is not None:
        raise ValueError("this network takes no label input (model.conditioning is not 'embedding')")
    return emb


class TimeLabelEmbedding(nn.Module):
    """The time (+ label) embedding of EnergyUNet as a module of its own, for other backbones:
    (t [B], labels [B] or None) -> [B, dim] with dim = 4 * model.channels."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, self.dim), nn.SiLU(), nn.Linear(self.dim, self.dim))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, self.dim) if cfg.conditioning == "embedding" else None
        self.clean_token = nn.Parameter(torch.randn(ch) * 0.5)  # t < 0: a clean input (see EnergyUNet)

    def forward(self, t: torch.Tensor, labels: torch.Tensor | None, b: int, dtype: torch.dtype) -> torch.Tensor:
        return time_label_embedding(self, t, labels, b, dtype)


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(8, ch // 4) or 1, ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(kind)


class ResBlock(nn.Module):
    """norm -> SiLU -> conv -> (+ time scale/shift) -> norm -> SiLU -> conv, with a residual path."""

    def __init__(self, cin: int, cout: int, temb: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(norm, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, 2 * cout)
        self.norm2 = _norm(norm, cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        # Start each block as (nearly) the identity so a deep energy network is well conditioned.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(tfn.silu(self.norm1(x)))
        scale, shift = self.temb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(tfn.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the spatial positions of the lowest level."""

    def __init__(self, ch: int, norm: str) -> None:
        super().__init__()
        self.norm = _norm(norm, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # [B, HW, HW]
        o = (v @ a.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.out(o)


class EnergyUNet(nn.Module):
    """UNet (x [B, C, H, W], t [B]) -> per-pixel class-logit map F [B, K, H, W].

    With ``energy_prior = "denoiser"`` the map carries C more channels (a denoiser output that
    ``diffusion/energy.py`` turns into a class-independent logit term): [B, K + C, H, W].
    The baselines reuse it unchanged but for the output width (``ModelConfig.out_channels``):
    ``kind = "classifier"`` reads the K-channel map as logits only, ``kind = "ddpm"`` outputs eps [B, C, H, W].
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch, p = cfg.channels, cfg.patch
        temb = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        # model.conditioning "embedding": a label embedding (K entries + the null label, index K)
        # added to the time embedding, so it scales and shifts every residual block (as the released
        # code's label embedding does; its cross-attention to a single label token reduces to a
        # per-label bias at the attention layer, which this FiLM path already contains).
        self.label_emb = nn.Embedding(cfg.num_classes + 1, temb) if cfg.conditioning == "embedding" else None
        # t < 0 means "clean input": the clean-image classification loss gets its own learned time
        # input instead of t = 0, because training the t = 0 logit map for clean classification
        # pulls its energy gradient (the eps prediction at the last sampling steps) far off.
        self.clean_token = nn.Parameter(torch.randn(ch) * 0.5)
        self.stem = nn.Conv2d(cfg.in_channels * p * p, ch, 3, padding=1)
        widths = [ch * m for m in cfg.channel_mult]
        self.down = nn.ModuleList()
        skips = [ch]
        cur = ch
        for level, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.down.append(ResBlock(cur, w, temb, cfg.norm, cfg.dropout))
                cur = w
                skips.append(cur)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.mid = nn.ModuleList([ResBlock(cur, cur, temb, cfg.norm, cfg.dropout)])
        if cfg.attention:
            self.mid.append(Attention(cur, cfg.norm))
        self.mid.append(ResBlock(cur, cur, temb, cfg.norm, cfg.dropout))
        self.up = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(ResBlock(cur + skips.pop(), w, temb, cfg.norm, cfg.dropout))
                cur = w
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out_norm = _norm(cfg.norm, cur)
        self.out = nn.Conv2d(cur, cfg.out_channels * p * p, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if not cfg.supervised:
            # Unsupervised EGC: with a zero output every cluster channel gets the same gradient forever
            # (logsumexp weighs equal channels equally); a small random start lets them differ.
            with torch.no_grad():
                self.out.weight[: cfg.num_classes * p * p].normal_(0.0, 1e-2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, H, W] in model range, t [B] timesteps (float or int; < 0 = clean), labels [B] int64 in
        0..K (K = null; only with model.conditioning "embedding", None = all null) -> F [B, K(+C), H, W]."""
        p = self.cfg.patch
        size = x.shape[-2:]
        if p > 1:
            x = tfn.pixel_unshuffle(x, p)
        emb = time_label_embedding(self, t, labels, x.shape[0], self.stem.weight.dtype)
        h = self.stem(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb)
        for m in self.up:
            if isinstance(m, ResBlock):
                skip = hs.pop()
                if skip.shape[-2:] != h.shape[-2:]:  # odd sizes (7 -> 4 -> 8): crop back
                    h = h[..., : skip.shape[-2], : skip.shape[-1]]
                h = m(torch.cat([h, skip], dim=1), emb)
            else:
                h = m(h)
        f = self.out(tfn.silu(self.out_norm(h)))
        if p > 1:
            f = tfn.pixel_shuffle(f, p)
        return f[..., : size[0], : size[1]]
