"""What each ``model.kind`` is, can do and computes, as one small class per kind, looked up in one
registry (``kind_of``). Code asks the kind instead of comparing kind strings: its capabilities (class
attributes), its network (``build_net``, ``out_channels``), its training objective (``loss``), and, for
a network already read as an :class:`~egc.diffusion.energy.EnergyModel`, its logits' timestep
(``logits_t``), energy (``energy_of``) and noise prediction (``eps``). The EDM codebase wraps a network in a
preconditioner the same way.

    egc          the energy-based generative classifier: a time-conditioned UNet whose logit map is an
                 energy; classifies (forward) and samples by its input gradient (diffusion)
    classifier   the same UNet trained with cross-entropy on clean images only
    cnn          a small fast ResNet (airbench-style) classifier: what a practitioner trains on a CPU
    ddpm         the same UNet predicting eps directly: a plain diffusion model
    jem          the same UNet's clean-image logits as an energy E(x) = -logsumexp f(x), trained with
                 SGLD samples from a replay buffer (Grathwohl et al. 2020); samples by SGLD
    autoencoder  the frozen first stage of latent runs (not a classifier or generator itself)

This module is imported by the config, so the torch-side pieces are imported inside the methods
(config -> kinds -> diffusion -> config would otherwise be a cycle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from .config import ModelConfig
    from .diffusion.energy import EnergyModel


class ModelKind:
    """A model kind: capabilities as class attributes, behaviour as methods. The base class is a
    classifier-free, generator-free network; each kind overrides what it has."""

    name: ClassVar[str] = ""
    net: ClassVar[str] = "unet"  # "unet" | "cnn" | "autoencoder": which network build_net makes
    classifies: ClassVar[bool] = False  # class logits (predict_proba, egc classify)
    generates: ClassVar[bool] = False  # a sampler (egc sample)
    sampler: ClassVar[str] = "none"  # "diffusion" (eps through DDIM & co.) | "sgld" (Langevin on the logit energy) | "none"
    energy: ClassVar[str] = "none"  # "diffusion" (E(x_t, t | y), eps = grad E) | "logits" (-logsumexp of clean logits) | "none"
    noisy_logits: ClassVar[bool] = False  # logits at timesteps t >= 0 (else the clean head whatever t is asked)
    conditionings: ClassVar[tuple[str, ...]] = ("none",)  # model.conditioning values it accepts
    unconditional_ok: ClassVar[bool] = False  # trains without labels (unsupervised EGC, unconditional ddpm)
    pixels_only: ClassVar[bool] = False  # refuses latent space
    default_cfg: ClassVar[float] = 0.0  # sample.cfg when left automatic
    default_guidance_tmax: ClassVar[float] = 0.6  # sample.guidance_tmax when left automatic
    summary: ClassVar[str] = ""

    # ---- what it is -----------------------------------------------------------------------
    @property
    def first_stage(self) -> bool:
        """The autoencoder: trained by ``egc train`` but not loadable as a model."""
        return self.net == "autoencoder"

    @property
    def predicts_eps(self) -> bool:
        """A diffusion model whose network output is the noise prediction itself (ddpm)."""
        return self.sampler == "diffusion" and self.energy == "none"

    def out_channels(self, m: "ModelConfig") -> int:
        """Channels of the network's output map: class logits unless the kind says otherwise."""
        return m.num_classes

    def default_logit_scale(self, supervised: bool) -> float:
        return 1.0

    def build_net(self, m: "ModelConfig") -> "nn.Module":
        if m.backbone == "hybrid":
            from .nets.hybrid import HybridEnergyNet

            return HybridEnergyNet(m)
        from .nets.unet import EnergyUNet

        return EnergyUNet(m)

    # ---- what it trains on ------------------------------------------------------------------
    def loss(self) -> Callable[..., Any]:
        """The pure objective ``(em, lcfg, x0, y, gen=None, shard=(0, 1), **extras) -> LossParts``."""
        raise NotImplementedError(f"model.kind {self.name} has no loss")

    # ---- what it computes, given the network read as an energy model -------------------------
    def logits_t(self, t: "int | torch.Tensor") -> "int | torch.Tensor":
        """The timestep its logits are read at: t as asked, or the clean token for a clean-image head."""
        from .diffusion.energy import CLEAN_T

        return t if self.noisy_logits else CLEAN_T

    def energy_of(self, em: "EnergyModel", x: "torch.Tensor", t: "torch.Tensor", y: "torch.Tensor | None") -> "torch.Tensor":
        """E(x, t | y) [B] of network inputs x; y None: the marginal."""
        raise NotImplementedError(f"a {self.name} has no energy")

    def eps(self, em: "EnergyModel", x: "torch.Tensor", t: "torch.Tensor", y: "torch.Tensor | None",
            guidance: float, cfg: float) -> "torch.Tensor":
        """Guided noise prediction [B, C, H, W] of network inputs x_t."""
        raise NotImplementedError(f"a {self.name} predicts no noise")


class EGCKind(ModelKind):
    name = "egc"
    classifies = generates = noisy_logits = unconditional_ok = True
    sampler = energy = "diffusion"
    conditionings = ("none", "embedding", "joint")
    summary = "energy-based generative classifier (the default)"

    def out_channels(self, m: "ModelConfig") -> int:
        """K logits, plus C denoiser channels with the denoiser prior."""
        return m.num_classes + (m.in_channels if m.energy_prior == "denoiser" else 0)

    def default_logit_scale(self, supervised: bool) -> float:
        return 10.0 if supervised else 1.0  # the released head's temperature; clusters train at 1

    def loss(self) -> Callable[..., Any]:
        from .diffusion import losses

        return losses.egc_loss

    def energy_of(self, em: "EnergyModel", x: "torch.Tensor", t: "torch.Tensor", y: "torch.Tensor | None") -> "torch.Tensor":
        return em.energy(x, t, y)

    def eps(self, em: "EnergyModel", x: "torch.Tensor", t: "torch.Tensor", y: "torch.Tensor | None",
            guidance: float, cfg: float) -> "torch.Tensor":
        return em.guided_eps(x, t, y, guidance, cfg)  # grad_x of the guided energy


class ClassifierKind(ModelKind):
    name = "classifier"
    classifies = True
    energy = "logits"
    summary = "the same UNet, cross-entropy on clean images only"

    def loss(self) -> Callable[..., Any]:
        from .diffusion import losses

        return losses.classifier_loss

    def energy_of(self, em: "EnergyModel", x: "torch.Tensor", t: "torch.Tensor", y: "torch.Tensor | None") -> "torch.Tensor":
        """-logsumexp of the clean logits (-logit_y with y); t is ignored: the head sees clean images only."""
        from .diffusion.energy import logit_energy

        logits = em.logits(x).float()
        return logit_energy(logits) if y is None else -logits.gather(1, y.view(-1, 1).to(logits.device))[:, 0]


class CNNKind(ClassifierKind):
    name = "cnn"
    net = "cnn"
    summary = "a small fast ResNet classifier (airbench-style)"

    def build_net(self, m: "ModelConfig") -> "nn.Module":
        from .nets.cnn import FastCNN

        return FastCNN(m)  # trained as the classifier is (its net returns a 1 x 1 logit map)


class JEMKind(ClassifierKind):
    name = "jem"
    generates = pixels_only = True
    sampler = "sgld"
    summary = "JEM: clean logits as an energy, SGLD samples from a replay buffer"

    def loss(self) -> Callable[..., Any]:
        """The pure loss given SGLD samples; train/jem.py keeps the replay buffer that supplies them."""
        from .diffusion import losses

        return losses.jem_loss


class DDPMKind(ModelKind):
    name = "ddpm"
    generates = unconditional_ok = True
    sampler = "diffusion"
    conditionings = ("none", "embedding")
    default_cfg = 1.0  # a conditional ddpm samples with classifier-free guidance 1 over the whole trajectory
    default_guidance_tmax = 1.0
    summary = "the same UNet predicting eps: a plain diffusion model"

    def out_channels(self, m: "ModelConfig") -> int:
        return m.in_channels  # eps itself

    def loss(self) -> Callable[..., Any]:
        from .diffusion import losses

        return losses.ddpm_loss

    def eps(self, em: "EnergyModel", x: "torch.Tensor", t: "torch.Tensor", y: "torch.Tensor | None",
            guidance: float, cfg: float) -> "torch.Tensor":
        """(1 + cfg) eps(x | y) - cfg eps(x | null); no classifier, so ``guidance`` does not apply."""
        import torch

        from .diffusion.energy import guided_direct_eps

        with torch.no_grad():  # the output is eps: no input gradient needed
            return guided_direct_eps(em.net, em.cfg, x, t, y, cfg)


class AutoencoderKind(ModelKind):
    name = "autoencoder"
    net = "autoencoder"
    unconditional_ok = True
    summary = "the KL autoencoder of latent runs"

    def build_net(self, m: "ModelConfig") -> "nn.Module":
        from .nets.autoencoder import KLAutoencoder

        return KLAutoencoder(m.ae)

    def loss(self) -> Callable[..., Any]:
        from .diffusion import losses

        return losses.autoencoder_loss


KINDS: dict[str, ModelKind] = {k.name: k for k in (EGCKind(), ClassifierKind(), CNNKind(), DDPMKind(), JEMKind(), AutoencoderKind())}
AUTOENCODER = "autoencoder"


def kind_of(name: str) -> ModelKind:
    """The registry entry of ``name``; KeyError for an unknown kind (config validation names the choices)."""
    return KINDS[name]
