"""Typed, validated configuration.

A run is described by one :class:`RunConfig` (model, diffusion, loss, training, data). It is read
from YAML, overridden by ``--set key=value`` (dotted keys, e.g. ``train.lr=1e-3``), validated, and
saved as JSON into the run folder and inside every checkpoint so a model can rebuild itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import ConfigError
from .kinds import AUTOENCODER, KINDS, kind_of

if TYPE_CHECKING:  # annotations only: the config is read without importing torch
    import torch

# The shared vocabulary of flags and config values (here, not in the modules that implement them, so the CLI
# can offer them without importing torch): samplers (diffusion/samplers.py checks its registry against this).
SAMPLER_NAMES = ("ddpm", "ddim", "dpm++2m")
# Inference precisions (egc sample/classify/eval, EGC.load); "auto" is resolved by model.resolve_precision.
PRECISIONS = ("auto", "bf16", "fp32")
PRECISION_HELP = "auto: bf16 on CPUs with native bf16 (AVX-512 BF16 or AMX), else fp32"

# Model sizes by name. "tiny" is for tests; "small" is the CPU default; "base"/"large" are GPU
# recipes (never trained here). in_channels/num_classes/image_size come from the data set.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention=False, patch=1, norm="group"),
    "small": dict(channels=48, channel_mult=(1, 2), num_res_blocks=2, attention=True, patch=2, norm="none"),
    "base": dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention=True, patch=1, norm="group"),
    "large": dict(channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3, attention=True, patch=1, norm="group"),
}
# model.backbone: "unet" (EnergyUNet, the released shape) | "hybrid" (nets/hybrid.py: the fast CNN's
# encoder with time conditioning, a global head and a light decoder). Sizes of the hybrid by the same
# names: channels is the stem width, channel_mult the blocks' (airbench94's small: 64 -> 64, 256, 256).
BACKBONES = ("unet", "hybrid")
HYBRID_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(channels=8, channel_mult=(1, 2), patch=1, norm="group", pool="mean", attention=False),
    "small": dict(channels=64, channel_mult=(1, 4, 4), patch=2, norm="group", pool="mean", attention=False),
    "base": dict(channels=96, channel_mult=(1, 4, 4), patch=1, norm="group", pool="mean", attention=False),
    "large": dict(channels=128, channel_mult=(1, 4, 4), patch=1, norm="group", pool="mean", attention=False),
}
NORMS = ("group", "none", "batch")  # "batch" only in the hybrid backbone (per-sample norms elsewhere)


ENERGY_PRIORS = ("none", "gaussian", "denoiser")
# What the network is trained as (``egc train --model``): "egc" = the energy-based generative
# classifier; the two baselines share its UNet, data, budgets and checkpoints: "classifier" = the
# pooled logit map trained with cross-entropy on clean images only (no diffusion loss, no double
# backprop), "ddpm" = the UNet with C output channels predicting eps directly (plain diffusion, MSE).
# What each kind is and can do: egc/kinds.py (the registry; jem and cnn there too). The frozen first stage
# of a latent run (``egc train --model autoencoder``) is a kind but not a classifier or generator.
MODEL_KINDS = tuple(k for k, v in KINDS.items() if not v.first_stage)
ALL_KINDS = tuple(KINDS)
AE_RECON = ("l1", "mse")
# How the class label enters the energy (model.conditioning), see diffusion/energy.py:
#   "none"      unconditional energy E(x_t); class information only through classifier guidance;
#   "embedding" the released form: a label embedding (K + 1 entries, the last the null label) added
#               to the time embedding, so E(x_t | y) is another forward pass per label;
#   "joint"     the paper's joint energy without any label input: E(x_t | y) = -sum_hw F_y (class y's
#               channel of the logit map), E(x_t | null) = -sum_hw logsumexp_k F_k, one forward for all.
CONDITIONINGS = ("none", "embedding", "joint")
TRAIN_PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class AutoencoderConfig:
    """Architecture of a KL autoencoder (model.ae). For kind "autoencoder" it describes the network
    trained; for a latent run it is copied from the autoencoder checkpoint (with the pixel shape) so
    the run's checkpoints can rebuild the frozen autoencoder they embed."""

    in_channels: int = 3  # pixel channels and size: set from the data
    image_size: int = 32
    latent_channels: int = 4
    downsample: int = 4  # 1, 2, 4, 8 or 16: 32x32x3 -> 8x8x4 with 4
    channels: int = 32  # width of the first level (doubled once, then x4 at most)
    num_res_blocks: int = 1

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample

    def validate(self) -> None:
        _check(self.downsample in (1, 2, 4, 8, 16), f"model.ae.downsample must be 1, 2, 4, 8 or 16, got {self.downsample}")
        _check(self.latent_channels >= 1 and self.in_channels >= 1, "model.ae.latent_channels >= 1 and model.ae.in_channels >= 1 required")
        _check(self.channels >= 4 and self.num_res_blocks >= 0, "model.ae.channels >= 4 and model.ae.num_res_blocks >= 0 required")
        _check(self.image_size % self.downsample == 0, f"model.ae.image_size {self.image_size} not divisible by model.ae.downsample {self.downsample}")


@dataclass
class ModelConfig:
    kind: str = "egc"
    size: str = "small"
    backbone: str = "unet"  # BACKBONES; the size's architecture fields follow it (HYBRID_SIZES)
    decoder_channels: int = 0  # hybrid backbone: width of its light decoder (0 = half the stem width, >= 16)
    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 28
    channels: int = 48
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention: bool = True
    patch: int = 2
    norm: str = "none"  # "group" | "none": GroupNorm costs ~40 % of a double-backprop step on CPU
    dropout: float = 0.0
    pool: str = "attention"  # how F is pooled into class logits: "attention" (as released) | "mean"
    # Classifier logits = logit_scale * pool_hw F: > 1 lets the class channels stay small in the energy,
    # whose gradient is the eps, for the same classifier confidence, and the CE weights can come down
    # (BENCHMARKS.md 7: with 10 and CE 0.1 / 0.02 both the eps fit and the classifier beat scale 1 with
    # 0.5 / 0.1). 0 = automatic: 10 for a supervised EGC, 1 (as released) for every other kind.
    logit_scale: float = 0.0
    # Class-independent term added to every logit (see diffusion/energy.py): "none" = as released,
    # "gaussian" = exact energy of Gaussian data, "denoiser" = that plus a learned denoiser residual.
    # (energy_prior and sigma_data matter for kind "egc" only.)
    energy_prior: str = "denoiser"  # the measured best (BENCHMARKS.md 2); "gaussian" / "none" (as released) remain
    # Standard deviation of the data the energy prior assumes; 0 = automatic: 0.5 for pixels in [-1, 1],
    # 1.0 for a latent run (its latents are scaled to unit variance by model.latent_scale).
    sigma_data: float = 0.0
    # CONDITIONINGS, or "auto": "joint" for a supervised EGC (the measured best, BENCHMARKS.md 7), "none" for
    # the baselines (the ddpm stays unconditional unless asked: "embedding"; a classifier has no energy).
    conditioning: str = "auto"
    # False: trained without labels (unsupervised EGC, the diffusion loss only): the K channels are
    # clusters the model found. K = model.clusters (0: the data's class count if it has labels, else 10).
    supervised: bool = True
    clusters: int = 0
    # Latent runs (kinds egc/classifier/ddpm): a trained autoencoder (checkpoint file or run folder of
    # ``egc train --model autoencoder``, or a latent model such as zoo:cifar10, whose embedded
    # autoencoder is shared). Images are encoded (posterior mean) and multiplied by
    # latent_scale (0 = measure 1/std of the latents when a new run starts; then recorded here).
    # in_channels/image_size are then the latent shape; model.ae holds the autoencoder's architecture.
    autoencoder: str | None = None
    latent_scale: float = 0.0
    # "auto": a new run without model.autoencoder picks pixels or latents from its data (train/stages.py:
    # colour images of 32 px and more train on latents, with a shipped or a freshly trained autoencoder);
    # "pixel" | "latent" force it. Saved runs record what was chosen.
    space: str = "auto"
    ae: AutoencoderConfig = field(default_factory=AutoencoderConfig)

    @property
    def latent(self) -> bool:
        """True for a network that runs on the latents of a frozen autoencoder."""
        return self.kind != AUTOENCODER and bool(self.autoencoder)

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images a user gives and gets (the latent shape is in_channels/image_size)."""
        if self.latent:
            return (self.ae.in_channels, self.ae.image_size, self.ae.image_size)
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def out_channels(self) -> int:
        """Channels of the network's output map: K logits (+ C denoiser channels); C eps channels for ddpm."""
        return kind_of(self.kind).out_channels(self)

    def validate(self) -> None:
        _check(self.kind in ALL_KINDS, f"model.kind '{self.kind}' unknown (choose from {', '.join(ALL_KINDS)})")
        _check(self.size in MODEL_SIZES or self.size == "custom", f"model.size '{self.size}' unknown (choose from {', '.join(MODEL_SIZES)})")
        _check(self.in_channels >= 1 and self.num_classes >= 2, "model.in_channels >= 1 and model.num_classes >= 2 required")
        _check(self.channels >= 4 and len(self.channel_mult) >= 1, "model.channels >= 4 and a non-empty model.channel_mult required")
        _check(self.patch in (1, 2, 4), f"model.patch must be 1, 2 or 4, got {self.patch}")
        k = kind_of(self.kind)
        _check(k.net != "unet" or self.backbone != "unet" or self.image_size % self.patch == 0, f"model.image_size {self.image_size} not divisible by model.patch {self.patch}")
        _check(self.backbone in BACKBONES, f"model.backbone '{self.backbone}' unknown (choose from {', '.join(BACKBONES)})")
        _check(self.backbone == "unet" or k.net == "unet", f"model.backbone {self.backbone} is for the UNet kinds, not model.kind {self.kind}")
        _check(self.decoder_channels >= 0, f"model.decoder_channels must be >= 0 (0 = automatic), got {self.decoder_channels}")
        norms = NORMS if self.backbone == "hybrid" else ("group", "none")
        _check(self.norm in norms, f"model.norm must be one of {', '.join(norms)} with model.backbone {self.backbone}, got '{self.norm}'")
        _check(self.pool in ("attention", "mean"), f"model.pool must be 'attention' or 'mean', got '{self.pool}'")
        _check(self.logit_scale >= 0, f"model.logit_scale must be > 0 (0 = automatic), got {self.logit_scale}")
        diffusion_energy = k.energy == "diffusion"  # an EGC
        if self.logit_scale == 0:
            self.logit_scale = k.default_logit_scale(self.supervised)
        _check(self.conditioning in CONDITIONINGS + ("auto",), f"model.conditioning must be auto or one of {', '.join(CONDITIONINGS)}, got '{self.conditioning}'")
        if self.conditioning == "auto":
            self.conditioning = "joint" if "joint" in k.conditionings and self.supervised else "none"
        if self.conditioning not in k.conditionings:
            _check(self.conditioning != "joint" or "embedding" not in k.conditionings,
                   f"model.conditioning joint needs class logits: a {self.kind} takes the label as an embedding (model.conditioning=embedding)")
            _check(False, f"model.conditioning applies to kinds {', '.join(n for n, v in KINDS.items() if len(v.conditionings) > 1)}, not {self.kind}")
        _check(self.clusters >= 0 and self.clusters != 1, f"model.clusters must be 0 (automatic) or >= 2, got {self.clusters}")
        _check(self.supervised or (diffusion_energy and self.conditioning == "none"),
               "model.supervised=false (unsupervised EGC) needs model.kind egc with model.conditioning none")
        _check(self.energy_prior in ENERGY_PRIORS, f"model.energy_prior must be one of {', '.join(ENERGY_PRIORS)}, got '{self.energy_prior}'")
        _check(0 <= self.dropout < 1 and self.sigma_data >= 0, "model.dropout in [0, 1) and model.sigma_data >= 0 (0 = automatic) required")
        if self.sigma_data == 0:
            self.sigma_data = 1.0 if self.latent else 0.5
        _check(self.space in ("auto", "pixel", "latent"), f"model.space must be auto, pixel or latent, got '{self.space}'")
        _check(self.latent_scale >= 0, f"model.latent_scale must be >= 0 (0 = measure it), got {self.latent_scale}")
        _check(not (self.kind == AUTOENCODER and self.autoencoder), "model.autoencoder is for latent runs (kind egc, classifier or ddpm); "
                                                                     "a model.kind autoencoder run trains one")
        self.ae.validate()


@dataclass
class DiffusionConfig:
    schedule: str = "ldm-linear"
    steps: int = 1000

    def validate(self) -> None:
        from .diffusion.schedule import SCHEDULES

        _check(self.schedule in SCHEDULES, f"diffusion.schedule '{self.schedule}' unknown (choose from {', '.join(SCHEDULES)})")
        _check(self.steps >= 2, f"diffusion.steps must be >= 2, got {self.steps}")


@dataclass
class LossConfig:
    # The loss follows model.kind (diffusion/losses.py); a legacy ``loss.kind: egc`` is ignored (_upgrade).
    # w in  mse + w * mean(sqrt(abar_t) * CE(x_t)); the released 0.005 is for ImageNet latents. With the
    # automatic model.logit_scale 10 the classifier learns fast enough at 0.1 (BENCHMARKS.md 7: 45 minutes
    # on Fashion-MNIST, fd_fashioncnn 13.0 -> 5.1 with the sampling defaults below and test accuracy
    # 0.870 -> 0.878, against scale 1 with 0.5 / 0.1); configs that pin logit_scale 1 keep 0.5 (BENCHMARKS.md 2).
    noisy_ce_weight: float = 0.1
    # The clean-image CE (through the clean token) slows the eps fit most: at 1.0 its gradient sets Adam's
    # step and the eps-MSE after 300 steps is 1.35x that at 0.1 (BENCHMARKS.md 7, "what is in the way");
    # 0.02 with logit scale 10 (above). The shipped zoo:fashion-mnist was trained with 1.0 (v1), 0.1 (v2).
    clean_ce_weight: float = 0.02
    # Early boost of both CE weights: x ce_boost at step 0, falling linearly to x 1 at step ce_boost_steps
    # (kind egc). Without it the head of a short run sits at chance for its first ~550 steps on a messy
    # digit folder while the eps fit takes Adam's steps; with the weights 5x it leaves chance by step ~250
    # (BENCHMARKS.md 9). Long runs end on the weights above. 1 = off (checkpoints written before it).
    ce_boost: float = 5.0
    ce_boost_steps: int = 1500
    clean_fraction: float = 0.25  # share of the batch also used for the clean CE term
    # Random translation of up to this many pixels (reflect padding) of the clean-CE view only (EGC; the
    # classifier baseline: its whole batch), as the released code augments its clean images; the
    # diffusion loss keeps the unshifted images. Latent runs shift pixels before encoding. 0 = off.
    clean_shift: int = 0
    label_smoothing: float = 0.2  # of the noisy CE (egc) and of the classifier baseline's CE
    # kinds classifier and cnn: Gaussian noise of this std (on [0, 1] pixels) added to every training image,
    # the base classifier of randomized smoothing (Cohen et al. 2019; egc certify). 0 = off.
    noise_sigma: float = 0.0
    # Conditional models (model.conditioning != none): share of the diffusion loss's labels replaced
    # by the null label, so one network learns E(x | y) and E(x | null) (0.1 as released).
    null_prob: float = 0.1
    # Share of the training steps that fit eps through the energy's input gradient (double backprop,
    # ~2.4x a ddpm step on CPU); the other steps fit only the first-order eps of the denoiser channels
    # (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar), one backward, ddpm-priced (model.energy_prior
    # "denoiser" only). Sampling always uses the energy's gradient. 1 = every step (the EGC objective).
    # Measured at equal time (10 min, Fashion-MNIST, BENCHMARKS.md 7): 0.5 and 0.25 give 1.33x / 1.53x
    # the steps but a worse energy eps-MSE and worse samples (fd 47.9 -> 59.6 at 0.25): keep 1.
    energy_step_share: float = 1.0
    # kind "autoencoder": recon ("l1" | "mse", per-element mean) + kl_weight * KL (per latent element mean)
    recon: str = "l1"
    kl_weight: float = 1e-4

    def validate(self) -> None:
        _check(self.recon in AE_RECON, f"loss.recon must be l1 or mse, got '{self.recon}'")
        _check(0 <= self.kl_weight <= 1, f"loss.kl_weight must be in [0, 1], got {self.kl_weight}")
        _check(self.noisy_ce_weight >= 0 and self.clean_ce_weight >= 0, "loss weights must be >= 0")
        _check(math.isfinite(self.ce_boost) and self.ce_boost >= 1, f"loss.ce_boost must be a number >= 1 (1 = off), got {self.ce_boost}")
        _check(self.ce_boost_steps >= 0, f"loss.ce_boost_steps must be >= 0, got {self.ce_boost_steps}")
        _check(0 <= self.clean_fraction <= 1, f"loss.clean_fraction must be in [0, 1], got {self.clean_fraction}")
        _check(0 <= self.clean_shift <= 16, f"loss.clean_shift must be an integer in [0, 16] (pixels), got {self.clean_shift}")
        _check(0 <= self.noise_sigma <= 2, f"loss.noise_sigma must be in [0, 2] (on [0, 1] pixels), got {self.noise_sigma}")
        _check(0 <= self.label_smoothing < 1, f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(0 <= self.null_prob <= 1, f"loss.null_prob must be in [0, 1], got {self.null_prob}")
        _check(0 < self.energy_step_share <= 1, f"loss.energy_step_share must be in (0, 1], got {self.energy_step_share}")


@dataclass
class JEMConfig:
    """model.kind jem (Grathwohl et al. 2020): loss = CE(f(x), y) + energy_weight * (E(x_data) - E(x_sgld)),
    E(x) = -logsumexp f(x), x_sgld from a persistent replay buffer. Defaults: JEM's published values
    (papers.md 4); init "data" + sgld_clip > 0 is JEM++'s stabiliser (informative start, proximal steps)."""

    buffer_size: int = 10000
    reinit: float = 0.05  # share of each SGLD batch restarted from the init distribution
    sgld_steps: int = 20
    sgld_step_size: float = 1.0
    sgld_noise: float = 0.01
    sgld_clip: float = 0.0  # > 0: JEM++'s proximal SGLD, each step's change bounded per pixel (on [-1, 1])
    init: str = "uniform"  # "uniform" on [-1, 1] (JEM) | "data": per-class Gaussians of the training images (JEM++)
    energy_weight: float = 1.0
    # std of Gaussian noise added to the training images (on [-1, 1]) for both of JEM's terms: its released
    # recipe's --sigma .03, which keeps the data distribution smooth for the energy
    data_noise: float = 0.03
    # |E(x_data) - E(x_sgld)| above this is a diverged step: handled like a non-finite loss (train.nonfinite)
    diverge_at: float = 1e4

    def validate(self) -> None:
        _check(self.buffer_size >= 1 and self.sgld_steps >= 1, "jem.buffer_size and jem.sgld_steps must be >= 1")
        _check(0 <= self.reinit <= 1, f"jem.reinit must be in [0, 1], got {self.reinit}")
        _check(self.sgld_step_size >= 0 and self.sgld_noise >= 0 and self.sgld_clip >= 0, "jem.sgld_step_size, sgld_noise, sgld_clip must be >= 0")
        _check(self.init in ("uniform", "data"), f"jem.init must be uniform or data, got '{self.init}'")
        _check(self.energy_weight >= 0 and self.diverge_at > 0, "jem.energy_weight >= 0 and jem.diverge_at > 0 required")
        _check(0 <= self.data_noise <= 1, f"jem.data_noise must be in [0, 1] (std on [-1, 1] pixels), got {self.data_noise}")


@dataclass
class TrainConfig:
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # "constant" | "cosine" (over the step budget, when one is set)
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    steps: int = 0  # 0 = no step budget
    minutes: float = 0.0  # 0 = no time budget
    seed: int = 0
    # "auto": bf16 autocast where bf16 is native (CPUs with AVX-512 BF16 or AMX, CUDA GPUs that support
    # it), fp32 elsewhere: on an AVX2-only CPU emulated bf16 made a training step 13x slower (BENCHMARKS.md 1).
    precision: str = "auto"  # "auto" | "bf16" | "fp32"
    device: str = "auto"  # "auto" (cuda when available, else cpu) | "cpu" | "cuda"; the run's processes all use it
    # Memory format of the training step: "auto" = channels_last exactly on CPUs with AMX tiles (a
    # Sapphire Rapids host: 1.74x over fp32 with it, 1.21x without; AVX-512 BF16 hosts: 1.0x, so
    # contiguous there, and on GPUs, where it was not measured), "true" | "false" to force it.
    channels_last: str = "auto"
    threads: int = 0  # 0 = torch default
    # EGC kind only: run the forward + input gradient through torch.compile (torch.func.grad form,
    # since AOTAutograd refuses autograd.grad's double backward); compiling costs minutes at the
    # first step and counts against train.minutes. One process only; falls back to eager on failure.
    compile: bool = False
    # Trained weights drift into subnormal floats that x86 handles ~2x slower in the double backward
    # (measured: 1.02 -> 0.50 s per step at step 2,500); flushing values below ~1e-38 to zero changes nothing a model can use.
    flush_denormal: bool = True
    log_every: int = 20
    ckpt_every: int = 500
    ckpt_minutes: float = 10.0
    keep_ckpts: int = 2
    sample_n: int = 50  # grid at each checkpoint (class-balanced)
    sample_steps: int = 50
    # A non-finite loss or gradient: "skip" the step, or "rollback" to the last checkpoint this run
    # wrote or resumed from, with the learning rate multiplied by rollback_lr_factor (cumulative,
    # saved in checkpoints). After max_nonfinite skips or rollbacks in a row (without getting past
    # the failing step) training stops with an error.
    nonfinite: str = "skip"
    rollback_lr_factor: float = 0.5
    max_nonfinite: int = 5

    def validate(self) -> None:
        _check(self.nonfinite in ("skip", "rollback"), f"train.nonfinite must be skip or rollback, got '{self.nonfinite}'")
        _check(0 < self.rollback_lr_factor <= 1, f"train.rollback_lr_factor must be in (0, 1], got {self.rollback_lr_factor}")
        _check(self.max_nonfinite >= 1, f"train.max_nonfinite must be >= 1, got {self.max_nonfinite}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.lr_schedule in ("constant", "cosine"), f"train.lr_schedule must be constant or cosine, got '{self.lr_schedule}'")
        _check(0 <= self.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        _check(self.steps >= 0 and self.minutes >= 0, "train.steps and train.minutes must be >= 0")
        flag = str(self.channels_last).strip().lower()
        self.channels_last = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(flag, flag)
        _check(self.channels_last in ("auto", "true", "false"), f"train.channels_last must be auto, true or false, got '{self.channels_last}'")
        _check(self.precision in TRAIN_PRECISIONS, f"train.precision must be auto, bf16 or fp32, got '{self.precision}'")
        _check(self.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got '{self.device}'")
        _check(self.grad_clip >= 0 and self.threads >= 0, "train.grad_clip and train.threads must be >= 0")
        _check(self.ckpt_every >= 1 and self.keep_ckpts >= 1 and self.log_every >= 1, "train.ckpt_every, keep_ckpts, log_every must be >= 1")
        _check(self.sample_n >= 0 and self.sample_steps >= 1, "train.sample_n >= 0 and train.sample_steps >= 1 required")


def _interval_ok(lo: float, hi: float) -> bool:
    """The guidance interval's rule: 0 <= lo <= hi <= 1 (fractions t / T of the noise schedule)."""
    return 0 <= lo <= hi <= 1


def parse_guidance_interval(text: str, flag: str, sep: str = ",") -> tuple[float, float]:
    """(lo, hi) from 'LO<sep>HI' (a flag or config value); ConfigError naming ``flag`` otherwise."""
    try:
        lo, hi = (float(v) for v in text.split(sep))
    except ValueError:
        raise ConfigError(f"{flag}: expected LO{sep}HI (two numbers in [0, 1]), got '{text}'") from None
    _check(_interval_ok(lo, hi), f"{flag}: expected 0 <= LO <= HI <= 1, got '{text}'")
    return lo, hi


@dataclass
class SampleConfig:
    """A model's sampling defaults (the grids drawn during training, ``egc sample``, ``EGC.sample``);
    ``egc export --guidance/--cfg`` records measured values here."""

    # classifier guidance s: the classifier term of the (null-label) head. s 30, w 0, guidance only at
    # t / T <= 0.6: the best measured for the default recipe after 45 minutes on Fashion-MNIST (0.985 of the
    # requested class, fd_fashioncnn 5.1, recall 0.43 on 1,000 samples, against 1.00 / 9.4 / 0.22 at the
    # earlier default s 100, w 1 at every step; BENCHMARKS.md 7). ``egc export --guidance/--cfg`` records
    # a model's own measured values.
    guidance: float = 30.0
    # classifier-free guidance w: (1 + w) E(x | y) - w E(x | null) (conditional models; no effect on an
    # unconditional energy). -1 = automatic: 0 for an EGC (w 1 and 2 helped only without classifier
    # guidance, BENCHMARKS.md 7), 1 for a ddpm (the conditional ddpm's best).
    cfg: float = -1.0
    # guidance interval: both guidances act only at sampler steps with guidance_tmin <= t / T <= guidance_tmax
    # (T = diffusion.steps); elsewhere the plain conditional energy alone. In the spirit of Kynkaenniemi et
    # al. (2024): guidance at the noisiest steps pulls every sample of a class toward one mode (low recall),
    # at the least noisy ones it only sharpens. tmax -1 = automatic: 0.6 for an EGC, 1 for a ddpm (not
    # measured there). Checkpoints written before the interval existed keep [0, 1].
    guidance_tmin: float = 0.0
    guidance_tmax: float = -1.0
    # The sampler a plain ``egc sample`` / ``EGC.sample`` / the page / the demo runs (flags still win).
    # DDIM 50: the shipped models' cards were measured there. eta -1 = automatic: 1 (DDPM's variance) for a
    # pixel model, 0 for a latent one: zoo:fashion-mnist keeps 96.0 % of its samples in the requested class
    # at eta 1 against 85.9 % at eta 0 (fd_fashioncnn 2.4 vs 5.8); zoo:cifar10 99.4 / 99.2 % with fd_cifarcnn
    # 7.2 at eta 1 and 6.0 at eta 0 (its card). Checkpoints written before these fields keep DDIM 100, eta 0.
    sampler: str = "ddim"
    steps: int = 50
    eta: float = -1.0

    def validate(self) -> None:
        from .diffusion.samplers import SAMPLERS

        _check(self.sampler in SAMPLERS, f"sample.sampler must be one of {', '.join(SAMPLERS)}, got '{self.sampler}'")
        _check(self.steps >= 1, f"sample.steps must be >= 1, got {self.steps}")
        _check(math.isfinite(self.eta) and (self.eta >= 0 or self.eta == -1), f"sample.eta must be finite and >= 0 (DDIM's noise; -1 = automatic), got {self.eta}")
        _check(math.isfinite(self.guidance) and self.guidance >= 0, f"sample.guidance must be finite and >= 0, got {self.guidance}")
        _check(math.isfinite(self.cfg) and self.cfg >= 0, f"sample.cfg must be finite and >= 0, got {self.cfg}")
        _check(_interval_ok(self.guidance_tmin, self.guidance_tmax),
               f"sample.guidance_tmin/tmax must satisfy 0 <= tmin <= tmax <= 1, got {self.guidance_tmin}, {self.guidance_tmax}")

    def guided_mask(self, t: "torch.Tensor", num_steps: int) -> "torch.Tensor":
        """1.0 where the guidances act at timesteps t [B] of a num_steps schedule (the guidance interval),
        else 0.0; float32 [B] on t's device."""
        frac = t.float() / num_steps
        return ((frac >= self.guidance_tmin) & (frac <= self.guidance_tmax)).float()


FITS = ("crop", "pad")


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    root: str | None = None
    flip: bool | None = None  # None = the data set's default
    # Preprocessing, saved with the model and applied to any image it is later given (egc classify / eval /
    # serve / cag, EGC.preprocess): images become image_size x image_size by "crop" (shorter side resized to
    # image_size, centre crop) or "pad" (longer side resized, black borders). 0 = automatic, decided when a
    # run starts and then recorded: the images' own size when they all share one square size, else their
    # median shorter side snapped down to a common size (at most 64; data/prep.py says why).
    image_size: int = 0
    fit: str = "crop"
    # A folder without test/: this share of every class (stratified, seeded by holdout_seed, not by
    # train.seed, so runs with other seeds hold out the same images) is the test split, never trained on.
    holdout: float = 0.1
    holdout_seed: int = 0

    def validate(self) -> None:
        _check(bool(self.name), "data.name must not be empty")
        _check(self.image_size == 0 or 8 <= self.image_size <= 1024, f"data.image_size must be 0 (automatic) or in [8, 1024], got {self.image_size}")
        _check(self.fit in FITS, f"data.fit must be crop or pad, got '{self.fit}'")
        _check(0 <= self.holdout < 1, f"data.holdout must be in [0, 1), got {self.holdout}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    jem: JEMConfig = field(default_factory=JEMConfig)

    def validate(self) -> "RunConfig":
        kind = kind_of(self.model.kind) if self.model.kind in KINDS else None
        if kind is not None and self.sample.cfg == -1:  # the automatic sampling defaults of the kind (SampleConfig)
            self.sample.cfg = kind.default_cfg
        if kind is not None and self.sample.guidance_tmax == -1:
            self.sample.guidance_tmax = kind.default_guidance_tmax
        # eta's default follows the space; "auto" space is decided when training starts (train/stages.py), so
        # eta stays automatic (-1) until then: a run that turns latent must not keep the pixel default.
        if self.sample.eta == -1 and (self.model.latent or self.model.space != "auto"):
            self.sample.eta = 0.0 if self.model.latent else 1.0
        for f in fields(self):
            getattr(self, f.name).validate()
        _check(self.loss.energy_step_share == 1 or kind is None or kind.energy != "diffusion" or self.model.energy_prior == "denoiser",
               f"loss.energy_step_share {self.loss.energy_step_share} needs model.energy_prior denoiser (the first-order steps fit its "
               f"denoiser channels), got '{self.model.energy_prior}'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """A saved config (checkpoints). Fields it lacks were added later: they take the value that
        reproduces what the saving release did (LEGACY), not today's default."""
        cfg = cls()
        for sec, key, value in LEGACY:
            setattr(getattr(cfg, sec), key, value)
        _merge(cfg, _upgrade(d), "")
        return cfg


# Fields added after checkpoints were first written, with the value their absence means.
LEGACY: tuple[tuple[str, str, Any], ...] = (
    ("model", "conditioning", "none"),
    ("model", "supervised", True),
    ("model", "clusters", 0),
    ("sample", "cfg", 0.0),
    ("model", "sigma_data", 0.5),
    ("model", "logit_scale", 1.0),
    ("sample", "guidance_tmax", 1.0),
    ("sample", "steps", 100),
    ("sample", "eta", 0.0),
    ("data", "holdout", 0.0),
    ("model", "space", "pixel"),
    ("loss", "ce_boost", 1.0),
)


def _upgrade(d: Any) -> Any:
    """Read configs of older releases. ``train.guidance`` (an inference default kept in the train
    section before) moves to ``sample.guidance``. Configs written before model.kind existed: their
    ``loss.kind`` could only be "egc" and is dropped (model.kind then decides, "egc" unless given), so
    ``--config old.yaml --model ddpm`` works; any other ``loss.kind`` value points the user to model.kind."""
    if isinstance(d, dict) and isinstance(d.get("train"), dict) and "guidance" in d["train"]:
        train = dict(d["train"])
        sample = dict(d.get("sample") or {})
        sample.setdefault("guidance", train.pop("guidance"))
        d = {**d, "train": train, "sample": sample}
    if not isinstance(d, dict) or not isinstance(d.get("loss"), dict) or "kind" not in d["loss"]:
        return d
    loss = dict(d["loss"])
    legacy = loss.pop("kind")
    if str(legacy) != "egc":
        raise ConfigError(f"loss.kind '{legacy}': the kind of model is now model.kind (egc train --model {legacy})")
    return {**d, "loss": loss}


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the type of the field's current value."""
    if isinstance(current, bool) or current is None and isinstance(value, bool):
        if isinstance(value, str):
            low = value.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            if low in ("none", "null") and current is None:
                return None
            raise ConfigError(f"{key}: expected true/false, got '{value}'")
        return bool(value) if value is not None else None
    if isinstance(current, tuple):
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a list of integers, got '{value}'") from None
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        try:
            num = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got '{value}'") from None
        if not math.isfinite(num):
            raise ConfigError(f"{key}: expected a finite number, got '{value}'")
        if isinstance(current, int):
            if num != int(num):
                raise ConfigError(f"{key}: expected an integer, got '{value}'")
            return int(num)
        return num
    if current is None and (value is None or str(value).lower() in ("none", "null")):
        return None  # only optional fields (data.root, data.flip) accept a null
    if value is None:
        raise ConfigError(f"{key}: a value is required")
    return str(value)


def _merge(obj: Any, d: dict[str, Any], prefix: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or 'top'}' must be a mapping")
    names = {f.name for f in fields(obj)}
    for k, v in d.items():
        key = prefix + k
        if k not in names:
            raise ConfigError(f"unknown config key '{key}'")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            _merge(cur, v, key + ".")
        else:
            setattr(obj, k, _coerce(v, cur, key))


def apply_size(cfg: RunConfig, size: str, backbone: str = "unet") -> None:
    """Fill the architecture fields of ``cfg.model`` from the named size of the backbone."""
    if size not in MODEL_SIZES:
        raise ConfigError(f"model size '{size}' unknown (choose from {', '.join(MODEL_SIZES)})")
    if backbone not in BACKBONES:
        raise ConfigError(f"model.backbone '{backbone}' unknown (choose from {', '.join(BACKBONES)})")
    cfg.model.size = size
    cfg.model.backbone = backbone
    for k, v in (HYBRID_SIZES if backbone == "hybrid" else MODEL_SIZES)[size].items():
        setattr(cfg.model, k, v)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """YAML file (optional) + ``key=value`` overrides -> validated RunConfig.

    A ``model.size`` given anywhere first fills the architecture from MODEL_SIZES, so later explicit
    architecture keys still win.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {p} cannot be read: {getattr(e, 'strerror', None) or e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p} must be a mapping of sections (model:, train:, ...), not a {type(raw).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, val = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(val) if val.strip() else val
    raw = _upgrade(raw)
    cfg = RunConfig()
    msec = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    size, backbone = msec.get("size"), str(msec.get("backbone", "unet"))
    if backbone != "unet" and size is None:
        size = cfg.model.size  # a hybrid without a size: the default size of that backbone, not the UNet's fields
    if size is not None and size != "custom":
        apply_size(cfg, str(size), backbone)
    _merge(cfg, raw, "")
    return cfg.validate()
