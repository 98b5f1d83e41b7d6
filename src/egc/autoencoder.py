"""The frozen autoencoder of latent runs (inference side; no training code is imported here).

A latent run (``model.autoencoder: PATH_OR_RUN`` with kind egc, classifier or ddpm) trains its UNet
on z = latent_scale * mean(q(z | x)) of a KL autoencoder trained with ``egc train --model
autoencoder``. The autoencoder's weights travel inside every checkpoint of the run (tensors
``ae.*``, its architecture in ``model.ae`` of the config, the scale in ``model.latent_scale``), so
a latent checkpoint is self-contained: the autoencoder file is only read when the run starts.

    >>> ae = load_autoencoder("runs/ae")          # an autoencoder run folder or checkpoint
    >>> z = ae.encode(x)                          # x [B, C, H, W] in [-1, 1] -> scaled latents
    >>> x_rec = ae.decode(z)                      # back to pixels in [-1, 1]
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import Checkpoint, load_checkpoint
from .config import AUTOENCODER, AutoencoderConfig
from .errors import CheckpointError, EgcError
from .nets.autoencoder import KLAutoencoder

AE_PREFIX = "ae"  # tensor-name prefix of the embedded autoencoder in a latent run's checkpoints


class Autoencoder:
    """A frozen KL autoencoder with the latent scale of the run that uses it (1.0 until measured)."""

    def __init__(self, net: KLAutoencoder, scale: float = 1.0) -> None:
        self.net = net.eval()
        self.scale = float(scale)
        for p in self.net.parameters():
            p.requires_grad_(False)

    @property
    def config(self) -> AutoencoderConfig:
        return self.net.cfg

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.in_channels, c.image_size, c.image_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.latent_channels, c.latent_size, c.latent_size)

    def to(self, device: torch.device | str) -> "Autoencoder":
        self.net.to(device)
        return self

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device

    def check_pixels(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.pixel_shape:
            raise EgcError(f"input of shape {tuple(x.shape)} does not match the autoencoder's [B, {', '.join(map(str, self.pixel_shape))}]")

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels [B, C, H, W] in [-1, 1] -> scale * posterior mean [B, c, h, w] (float32, on x's device)."""
        return self.encode_differentiable(x)

    def encode_differentiable(self, x: torch.Tensor) -> torch.Tensor:
        """``encode`` with the graph kept, so input gradients pass through the (frozen) encoder: CaG
        optimises pixels against a latent model's classifier head."""
        self.check_pixels(x)
        w = next(self.net.parameters())  # the encoder's dtype (float32 as shipped) and device
        mean, _ = self.net.encode(x.to(device=w.device, dtype=w.dtype))
        return (mean * self.scale).to(x.device)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, c, h, w] -> pixels [B, C, H, W] clamped to [-1, 1]."""
        return self.net.decode(z.float().to(self._device()) / self.scale).clamp(-1, 1).to(z.device)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()


def _build(cfg: AutoencoderConfig, weights: dict[str, torch.Tensor], path: Path | None, what: str) -> KLAutoencoder:
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's RNG alone
        net = KLAutoencoder(cfg)
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:160]
        raise CheckpointError(f"{path}: {what} weights do not fit the autoencoder its config describes ({detail})") from None
    return net


def load_autoencoder(spec: str | Path) -> Autoencoder:
    """A trained autoencoder from its checkpoint file or run folder (EMA weights when present), or the
    autoencoder embedded in a latent model's checkpoint (e.g. ``zoo:cifar10``).

    Anything else (a missing path, a foreign file, weights that do not fit, a checkpoint on pixels) is
    one EgcError line, prefixed with the setting that named it."""
    try:
        return _load_autoencoder(spec)
    except CheckpointError as e:
        raise CheckpointError(f"model.autoencoder: {e}") from None


def _load_autoencoder(spec: str | Path) -> Autoencoder:
    ck = load_checkpoint(spec)
    if ck.config.model.kind == AUTOENCODER:
        return Autoencoder(_build(ck.config.model.ae, ck.inference_weights(), ck.path, "autoencoder"))
    if ck.config.model.latent:
        # A latent model carries its frozen autoencoder: a new run can share it (same latents, so
        # runs compare at equal autoencoder) even when the autoencoder's own run folder is gone.
        # The scale is left to the new run, which measures its own (unit-variance latents).
        ae = embedded_autoencoder(ck)
        ae.scale = 1.0
        return ae
    raise CheckpointError(f"{ck.path} is a model.kind '{ck.config.model.kind}' checkpoint on pixels, not an autoencoder "
                          "(train one with: egc train --model autoencoder, or name a latent model to share its autoencoder)")


def embedded_autoencoder(ck: Checkpoint) -> Autoencoder:
    """The frozen autoencoder embedded in a latent run's checkpoint (``ae.*`` tensors), with its scale."""
    m = ck.config.model
    weights = ck.group(AE_PREFIX)
    if not weights:
        raise CheckpointError(f"{ck.path}: a latent checkpoint (model.autoencoder {m.autoencoder}) without the autoencoder's 'ae.' weights")
    if m.latent_scale <= 0:
        raise CheckpointError(f"{ck.path}: a latent checkpoint without its model.latent_scale")
    if (m.in_channels, m.image_size) != (m.ae.latent_channels, m.ae.latent_size):
        raise CheckpointError(f"{ck.path}: the network's input {m.in_channels}x{m.image_size}x{m.image_size} is not the autoencoder's latent "
                              f"{m.ae.latent_channels}x{m.ae.latent_size}x{m.ae.latent_size}")
    return Autoencoder(_build(m.ae, weights, ck.path, "embedded autoencoder"), m.latent_scale)


@torch.no_grad()
def measure_latent_scale(ae: Autoencoder, x: torch.Tensor, batch_size: int = 256) -> float:
    """1 / std of the (unscaled) posterior means of images x [N, C, H, W] in [-1, 1], as latent
    diffusion does to give the diffusion model unit-variance data."""
    old, ae.scale = ae.scale, 1.0
    try:
        z = torch.cat([ae.encode(x[i:i + batch_size]).flatten() for i in range(0, len(x), batch_size)])
    finally:
        ae.scale = old
    std = float(z.double().std())
    if not (std > 1e-8 and std == std and std != float("inf")):
        raise EgcError(f"cannot measure the latent scale: the autoencoder's latents have standard deviation {std:g}")
    return 1.0 / std
