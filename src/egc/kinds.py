"""What each ``model.kind`` is and can do, in one registry: code asks a :class:`ModelKind` (``kind_of``)
instead of comparing kind strings.

    egc          the energy-based generative classifier: a time-conditioned UNet whose logit map is an
                 energy; classifies (forward) and samples by its input gradient (diffusion)
    classifier   the same UNet trained with cross-entropy on clean images only
    cnn          a small fast ResNet (airbench-style) classifier: what a practitioner trains on a CPU
    ddpm         the same UNet predicting eps directly: a plain diffusion model
    jem          the same UNet's clean-image logits as an energy E(x) = -logsumexp f(x), trained with
                 SGLD samples from a replay buffer (Grathwohl et al. 2020); samples by SGLD
    autoencoder  the frozen first stage of latent runs (not a classifier or generator itself)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelKind:
    name: str
    net: str  # "unet" | "cnn" | "autoencoder": which network build_net makes
    classifies: bool  # class logits (predict_proba, egc classify)
    generates: bool  # a sampler (egc sample)
    sampler: str  # "diffusion" (eps through DDIM & co.) | "sgld" (Langevin on the logit energy) | "none"
    energy: str  # "diffusion" (E(x_t, t | y), eps = grad E) | "logits" (-logsumexp of clean logits) | "none"
    noisy_logits: bool  # logits at timesteps t >= 0 (else the clean head whatever t is asked)
    conditionings: tuple[str, ...]  # model.conditioning values it accepts
    unconditional_ok: bool  # trains without labels (unsupervised EGC, unconditional ddpm)
    summary: str

    @property
    def first_stage(self) -> bool:
        """The autoencoder: trained by ``egc train`` but not loadable as a model."""
        return self.net == "autoencoder"


KINDS: dict[str, ModelKind] = {k.name: k for k in (
    ModelKind("egc", "unet", True, True, "diffusion", "diffusion", True, ("none", "embedding", "joint"), True,
              "energy-based generative classifier (the default)"),
    ModelKind("classifier", "unet", True, False, "none", "logits", False, ("none",), False,
              "the same UNet, cross-entropy on clean images only"),
    ModelKind("cnn", "cnn", True, False, "none", "logits", False, ("none",), False,
              "a small fast ResNet classifier (airbench-style)"),
    ModelKind("ddpm", "unet", False, True, "diffusion", "none", False, ("none", "embedding"), True,
              "the same UNet predicting eps: a plain diffusion model"),
    ModelKind("jem", "unet", True, True, "sgld", "logits", False, ("none",), False,
              "JEM: clean logits as an energy, SGLD samples from a replay buffer"),
    ModelKind("autoencoder", "autoencoder", False, False, "none", "none", False, ("none",), True,
              "the KL autoencoder of latent runs"),
)}
AUTOENCODER = "autoencoder"


def kind_of(name: str) -> ModelKind:
    """The registry entry of ``name``; KeyError for an unknown kind (config validation names the choices)."""
    return KINDS[name]
