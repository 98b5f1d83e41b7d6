"""Networks. ``build_net`` is the one place a config becomes a module."""

from ..config import ModelConfig
from .unet import EnergyUNet


def build_net(cfg: ModelConfig) -> EnergyUNet:
    return EnergyUNet(cfg)


__all__ = ["EnergyUNet", "build_net"]
