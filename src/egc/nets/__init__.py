"""Networks. ``build_net`` is the one place a config becomes a module."""

from torch import nn

from ..config import AUTOENCODER, ModelConfig
from .autoencoder import KLAutoencoder
from .unet import EnergyUNet


def build_net(cfg: ModelConfig) -> nn.Module:
    """The UNet of kinds egc/classifier/ddpm (on latents for a latent run), or the KL autoencoder."""
    if cfg.kind == AUTOENCODER:
        return KLAutoencoder(cfg.ae)
    return EnergyUNet(cfg)


__all__ = ["EnergyUNet", "KLAutoencoder", "build_net"]
