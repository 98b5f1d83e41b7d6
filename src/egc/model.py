"""The inference-side EGC model: load a checkpoint, then classify, score, and sample.

    >>> from egc import EGC
    >>> m = EGC.load("zoo:fashion-mnist")
    >>> probs = m.predict_proba(x)            # x float [B, C, H, W] in [-1, 1]
    >>> imgs, labels = m.sample(20, class_balanced=True, steps=50)

The same class serves the baselines (``model.kind``, exposed as ``EGC.kind``): a "classifier"
checkpoint classifies (its energy is -logsumexp of the logits, an OOD score) but cannot generate;
a "ddpm" checkpoint samples unconditionally but has no classes. The other methods raise EgcError.

Latent checkpoints (``model.autoencoder``, see egc/autoencoder.py) carry their frozen autoencoder:
``logits``/``predict_proba``/``energy`` take pixel images and encode them first, ``sample`` returns
decoded pixel images, ``image_shape`` is the pixel shape; ``eps`` and ``score`` work on the scaled
latents of shape ``latent_shape`` (the space the diffusion model lives in).

Nothing here imports training code.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .autoencoder import Autoencoder, embedded_autoencoder
from .checkpoint import Checkpoint, load_checkpoint
from .config import AUTOENCODER, PRECISIONS, RunConfig
from .diffusion import energy as en
from .diffusion.samplers import SAMPLERS, run_sampler
from .diffusion.schedule import Schedule
from .errors import CheckpointError, EgcError
from .nets import build_net


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX tiles). Without it oneDNN
    emulates bf16 and autocast runs slower than fp32, so "auto" must not pick it there."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume nothing
        return False


def resolve_precision(precision: str) -> str:
    """"auto" | "bf16" | "fp32" -> the precision inference runs in. "auto" is bf16 on CPUs with native
    bf16, else fp32: on such a CPU bf16 classified the shipped fp32-trained model at equal accuracy and
    ECE 1.9x faster, and sampled at equal FD and conditional accuracy 1.7x faster (BENCHMARKS.md 3)."""
    if precision not in PRECISIONS:
        raise EgcError(f"precision must be auto, bf16 or fp32, got '{precision}'")
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


class EGC:
    """An EGC network (or a classifier / ddpm baseline, see ``kind``) with its config and noise schedule."""

    def __init__(self, net: torch.nn.Module, config: RunConfig, class_names: list[str] | None = None, precision: str = "auto",
                 autoencoder: Autoencoder | None = None) -> None:
        if config.model.kind == AUTOENCODER:
            raise EgcError("an autoencoder is not an EGC model: use it as model.autoencoder of a latent run (egc.autoencoder.load_autoencoder)")
        if config.model.latent and autoencoder is None:
            raise EgcError(f"a latent model (model.autoencoder {config.model.autoencoder}) needs its autoencoder")
        self.autoencoder = autoencoder if config.model.latent else None
        self.net = net.eval()
        self.config = config
        self.schedule = Schedule.make(config.diffusion.schedule, config.diffusion.steps)
        k = config.model.num_classes
        self.class_names = class_names if class_names and len(class_names) == k else [str(i) for i in range(k)]
        self.precision = resolve_precision(precision)
        self.kind = config.model.kind  # "egc" | "classifier" | "ddpm"
        for p in self.net.parameters():
            p.requires_grad_(False)

    @property
    def can_classify(self) -> bool:
        return self.kind in ("egc", "classifier")

    @property
    def can_generate(self) -> bool:
        return self.kind in ("egc", "ddpm")

    def _need(self, ok: bool, what: str) -> None:
        if not ok:
            if self.kind == "classifier":
                raise EgcError(f"a classifier checkpoint cannot generate (no {what}): it was trained with --model classifier")
            raise EgcError(f"a ddpm checkpoint cannot classify (no {what}): it was trained with --model ddpm, an unconditional diffusion model")

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, precision: str = "auto") -> "EGC":
        if ckpt.config.model.kind == AUTOENCODER:
            raise CheckpointError(f"{ckpt.path} is an autoencoder checkpoint (model.kind autoencoder): it cannot classify or sample; "
                                  "train a latent run on it with --set model.autoencoder=PATH")
        ae = embedded_autoencoder(ckpt) if ckpt.config.model.latent else None
        net = build_net(ckpt.config.model)
        weights = ckpt.inference_weights()
        try:
            net.load_state_dict(weights)
        except RuntimeError as e:  # torch's first line is a generic heading; the next names the first mismatch
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:160]
            raise CheckpointError(f"{ckpt.path}: weights do not fit the model its config describes ({detail})") from None
        return cls(net, ckpt.config, ckpt.meta.get("class_names"), precision, autoencoder=ae)

    @classmethod
    def load(cls, spec: str | Path, precision: str = "auto") -> "EGC":
        """From ``zoo:NAME``, a run folder (newest checkpoint) or a checkpoint file."""
        return cls.from_checkpoint(load_checkpoint(spec), precision)

    # ---- shapes and precision -------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the pixel images the model takes and makes (also for a latent model)."""
        return self.config.model.pixel_shape

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the network sees: the latents of a latent model, else the image shape."""
        m = self.config.model
        return (m.in_channels, m.image_size, m.image_size)

    def _net_input(self, x: torch.Tensor) -> torch.Tensor:
        """Checked pixel images -> the network's input (the scaled latents of a latent model)."""
        self.check_input(x)
        return self.autoencoder.encode(x) if self.autoencoder is not None else x

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise EgcError(f"input of shape {tuple(x.shape)} does not match the model's [B, {', '.join(map(str, self.image_shape))}]")

    def _t(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long)
        return t.expand(x.shape[0]).clone() if t.dim() == 0 else t

    # ---- forward direction: classification and energy -------------------------------------
    @torch.no_grad()
    def logits(self, x: torch.Tensor, t: int | torch.Tensor = en.CLEAN_T) -> torch.Tensor:
        """Classifier logits [B, K] for x [B, C, H, W] in [-1, 1] at timestep t (CLEAN_T = -1: clean image).

        A classifier baseline knows no timesteps (it was trained on clean images only): t is ignored.
        A latent model encodes x first (its posterior mean, scaled)."""
        self._need(self.can_classify, "class logits")
        x = self._net_input(x)
        if self.kind == "classifier":
            t = en.CLEAN_T
        with self._autocast():
            return en.classify(self.net, self.config.model, x, self._t(x, t)).float()

    def predict_proba(self, x: torch.Tensor, t: int | torch.Tensor = en.CLEAN_T) -> torch.Tensor:
        return torch.softmax(self.logits(x, t), dim=1)

    @torch.no_grad()
    def energy(self, x: torch.Tensor, t: int | torch.Tensor = 0) -> torch.Tensor:
        """E(x, t) [B]: lower means more likely under the model (log p(x) = -E + const).

        For a classifier baseline: -logsumexp of its clean-image logits (t ignored), an OOD score only.
        A latent model: the energy of the encoded (scaled) latents of x, read as x_t."""
        self._need(self.can_classify, "energy")
        if self.kind == "classifier":
            return en.logit_energy(self.logits(x))
        x = self._net_input(x)
        tt = self._t(x, t)
        with self._autocast():
            e, _ = en.energy_and_logits(self.net, self.config.model, x, tt, self.schedule.abar(tt))
        return e.float()

    # ---- backward direction: score and sampling --------------------------------------------
    def eps(self, x: torch.Tensor, t: int | torch.Tensor, y: torch.Tensor | None = None, guidance: float = 0.0) -> torch.Tensor:
        """Noise prediction [B, C, H, W] = grad_x E (plus the classifier term for labels y).

        A latent model works in its latent space here: x and the result have shape ``latent_shape``.

        A ddpm baseline predicts eps directly and is unconditional: labels y are an error."""
        self._need(self.can_generate, "noise prediction")
        tt = self._t(x, t)
        if self.kind == "ddpm":
            if y is not None:
                raise EgcError("a ddpm checkpoint is unconditional: it cannot sample or score a given class (no labels)")
            with torch.no_grad(), self._autocast():
                return en.direct_eps(self.net, x, tt).float()
        with self._autocast():
            return en.guided_eps(self.net, self.config.model, x, tt, self.schedule.abar(tt), y, guidance).float()

    def score(self, x: torch.Tensor, t: int | torch.Tensor, y: torch.Tensor | None = None, guidance: float = 1.0) -> torch.Tensor:
        """grad_x log p_t(x) (or of log p_t(x | y) with labels y) = -eps / sqrt(1 - abar_t).

        A latent model: the score of its scaled latents (x of shape ``latent_shape``)."""
        tt = self._t(x, t)
        return -self.eps(x, tt, y, guidance) / (1 - self.schedule.abar(tt)).sqrt().view(-1, 1, 1, 1)

    def sample(self, n: int, labels: torch.Tensor | list[int] | None = None, class_balanced: bool = False, sampler: str = "ddim",
               steps: int = 100, guidance: float | None = None, eta: float = 0.0, seed: int = 0, batch_size: int = 250,
               progress: bool = False, clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n images. Returns (images float [n, C, H, W] in [-1, 1], labels int64 [n], -1 = unconditional).
        A latent model samples latents and returns them decoded: pixel images of ``image_shape``.

        ``guidance`` None takes the model's own recommended scale (config train.guidance, set by
        ``egc export --guidance`` after measuring it). ``class_balanced`` asks for n/K of each class (n rounded down to a multiple of K is an error
        avoided by cycling classes); ``labels`` gives them explicitly; neither means unconditional.
        """
        self._need(self.can_generate, "sampler")
        if guidance is None:
            guidance = self.config.train.guidance
        if self.kind == "ddpm" and (labels is not None or class_balanced):
            raise EgcError("a ddpm checkpoint is unconditional: sample without labels or --class-balanced")
        k = self.config.model.num_classes
        if sampler not in SAMPLERS:
            raise EgcError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
        if n < 1:
            raise EgcError(f"number of samples must be >= 1, got {n}")
        if not 1 <= steps <= self.schedule.num_steps:
            raise EgcError(f"--steps must be in [1, {self.schedule.num_steps}], got {steps}")
        if labels is not None:
            y = torch.as_tensor(labels, dtype=torch.long).flatten()
            if y.numel() == 1 and n > 1:
                y = y.expand(n).clone()
            if y.numel() != n:
                raise EgcError(f"got {y.numel()} labels for {n} samples")
            bad = y[(y < 0) | (y >= k)]
            if bad.numel():
                raise EgcError(f"class id {int(bad[0])} out of range: this model has classes 0..{k - 1}")
        elif class_balanced:
            y = torch.arange(n) % k
            y = y.sort(stable=True).values if n % k == 0 else y
        else:
            y = None
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, *self.latent_shape), generator=gen)
        out = []
        for i in range(0, n, batch_size):
            yb = None if y is None else y[i:i + batch_size]
            fn = lambda x, t, yb=yb: self.eps(x, t, yb, guidance)  # noqa: E731
            # Latents are not confined to [-1, 1]: no clipping of the x0 estimate in latent space.
            z = run_sampler(sampler, fn, noise[i:i + batch_size], self.schedule.alphas_cumprod, steps, eta=eta,
                            clip=clip and self.autoencoder is None, gen=gen, progress=progress)
            out.append(self.autoencoder.decode(z) if self.autoencoder is not None else z)
        labels_out = y if y is not None else torch.full((n,), -1, dtype=torch.long)
        return torch.cat(out).clamp(-1, 1), labels_out
