"""Networks. ``build_net`` is the one place a config becomes a module (the kind says which network)."""

from torch import nn

from ..config import ModelConfig
from ..kinds import kind_of
from .autoencoder import KLAutoencoder
from .cnn import FastCNN
from .unet import EnergyUNet


def build_net(cfg: ModelConfig) -> nn.Module:
    """The UNet of kinds egc/classifier/ddpm/jem (on latents for a latent run), the fast CNN, or the KL autoencoder."""
    return kind_of(cfg.kind).build_net(cfg)


__all__ = ["EnergyUNet", "FastCNN", "KLAutoencoder", "build_net"]
