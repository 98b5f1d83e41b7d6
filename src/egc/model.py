"""The inference-side EGC model: load a checkpoint, then classify, score, and sample.

    >>> from egc import EGC
    >>> m = EGC.load("zoo:fashion-mnist")
    >>> probs = m.predict_proba(x)            # x float [B, C, H, W] in [-1, 1]
    >>> probs = m.predict_proba(["a.jpg", "b.png"])  # or files / PIL images of any size: m.preprocess
    >>> imgs, labels = m.sample(20, class_balanced=True, steps=50)

``logits`` runs without gradients; ``differentiable_logits`` (pixels in [-1, 1]) and ``logits_fn`` (pixels
in [0, 1], for attacks and CaG) are the same computation with the graph kept.

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
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

import torch

from .autoencoder import Autoencoder, embedded_autoencoder
from .checkpoint import JEM_PREFIX, Checkpoint, load_checkpoint
from .config import RunConfig, SampleConfig
from .diffusion import energy as en
from .diffusion.samplers import SAMPLERS, run_sampler
from .diffusion.schedule import Schedule
from .device import native_bf16, resolve_channels_last, resolve_device, resolve_precision  # noqa: F401 (re-exported)
from .errors import CheckpointError, EgcError
from .kinds import ModelKind, kind_of
from .nets import build_net

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from .data.prep import Prep

    ImageLike = Union[str, Path, Image.Image, np.ndarray]


class EGC:
    """An EGC network (or a classifier / ddpm baseline, see ``kind``) with its config and noise schedule."""

    def __init__(self, net: torch.nn.Module, config: RunConfig, class_names: list[str] | None = None, precision: str = "auto",
                 autoencoder: Autoencoder | None = None) -> None:
        if kind_of(config.model.kind).first_stage:
            raise EgcError("an autoencoder is not an EGC model: use it as model.autoencoder of a latent run (egc.autoencoder.load_autoencoder)")
        if config.model.latent and autoencoder is None:
            raise EgcError(f"a latent model (model.autoencoder {config.model.autoencoder}) needs its autoencoder")
        self.autoencoder = autoencoder if config.model.latent else None
        self.net = net.eval()
        self.config = config
        self.schedule = Schedule.make(config.diffusion.schedule, config.diffusion.steps)
        k = config.model.num_classes
        self.class_names = class_names if class_names and len(class_names) == k else [str(i) for i in range(k)]
        self.kind = config.model.kind  # a name in egc/kinds.py: ask kind_info (or can_classify, ...) what it can do
        self.precision = resolve_precision(precision, self.device)
        self.energy_model = en.EnergyModel(self.net, config.model, self.schedule)
        # jem: the run's persistent SGLD replay buffer [N, C, H, W] in [-1, 1], where the checkpoint has one
        # (a training checkpoint; `egc export` drops it): JEM's samples continue those chains
        self.sgld_buffer: torch.Tensor | None = None
        self._buffer_pred: tuple[torch.Tensor, torch.Tensor] | None = None  # (buffer, the model's class per entry), when needed
        for p in self.net.parameters():
            p.requires_grad_(False)

    # ---- what this model can do (ask these, not the kind string) ---------------------------
    @property
    def kind_info(self) -> ModelKind:
        """What this kind of model is and can do (egc/kinds.py)."""
        return kind_of(self.kind)

    @property
    def can_classify(self) -> bool:
        """Class logits / probabilities: EGC (clusters, if unsupervised), jem and the classifier baselines."""
        return self.kind_info.classifies

    @property
    def can_generate(self) -> bool:
        """A sampler: EGC and ddpm (diffusion), jem (SGLD)."""
        return self.kind_info.generates

    @property
    def has_energy(self) -> bool:
        """An energy E(x) (for the classifier baselines: -logsumexp of their logits, an OOD score only)."""
        return self.kind_info.energy != "none"

    @property
    def supervised(self) -> bool:
        """False for an unsupervised EGC: its K classes are clusters it found, not the data's labels."""
        return self.config.model.supervised

    @property
    def conditional(self) -> bool:
        """Whether samples of a requested class can be drawn (EGC of any conditioning through its
        energy and classifier head; a ddpm only with a label input)."""
        m = self.config.model
        if self.kind_info.classifies:
            return self.can_generate and m.supervised
        return self.can_generate and m.conditioning == "embedding"

    @property
    def device(self) -> torch.device:
        """Where the network's weights live (inputs are moved here)."""
        p = next(self.net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> "EGC":
        """Move the network (and a latent model's autoencoder) to ``device``; returns self."""
        dev = resolve_device(device)
        self.net.to(dev)
        if self.autoencoder is not None:
            self.autoencoder.to(dev)
        return self

    def _need(self, ok: bool, what: str) -> None:
        if not ok:
            if self.can_classify:
                raise EgcError(f"a {self.kind} checkpoint cannot generate (no {what}): it was trained with --model {self.kind}")
            raise EgcError(f"a {self.kind} checkpoint cannot classify (no {what}): it was trained with --model {self.kind}, a diffusion model without a classifier")

    def _need_classes(self, hint: str) -> None:
        """Class labels were asked for: only a model that can sample classes (``conditional``) takes them."""
        if self.conditional:
            return
        if not self.can_classify:
            raise EgcError(f"a {self.kind} checkpoint is unconditional: {hint}")
        raise EgcError(f"an unsupervised EGC model has clusters, not classes: {hint}")

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, precision: str = "auto", device: str | torch.device = "cpu") -> "EGC":
        if kind_of(ckpt.config.model.kind).first_stage:
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
        dev = resolve_device(device)
        net.to(dev)
        if ae is not None:
            ae.to(dev)
        m = cls(net, ckpt.config, ckpt.meta.get("class_names"), precision, autoencoder=ae)
        buf = ckpt.group(JEM_PREFIX).get("buffer") if m.kind_info.sampler == "sgld" else None
        if buf is not None:
            if buf.dim() != 4 or tuple(buf.shape[1:]) != m.latent_shape:
                # a buffer that does not fit would silently turn "samples from the replay buffer" into samples
                # from somewhere else: refuse it, naming both shapes
                raise CheckpointError(f"{ckpt.path}: jem replay buffer has shape {tuple(buf.shape)}, "
                                      f"the model's images are {m.latent_shape}")
            m.sgld_buffer = buf.float()
        return m

    @classmethod
    def load(cls, spec: str | Path, precision: str = "auto", device: str | torch.device = "cpu") -> "EGC":
        """From ``zoo:NAME``, a run folder (newest checkpoint) or a checkpoint file, onto ``device``
        ("auto": cuda when available, else cpu)."""
        return cls.from_checkpoint(load_checkpoint(spec), precision, device)

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
        x = x.to(self.device)
        return self.autoencoder.encode(x) if self.autoencoder is not None else x

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def prep(self) -> "Prep":
        """The preprocessing the model was trained with (size, channels, crop or pad): what
        :meth:`preprocess` applies to any image."""
        from .data.prep import Prep

        c, h, _ = self.image_shape
        return Prep(h, c, self.config.data.fit)

    def preprocess(self, images: "ImageLike | Sequence[ImageLike]", notes: list[list[str]] | None = None) -> torch.Tensor:
        """Image files, PIL images or uint8 arrays ``[H, W(, C)]`` of any size and mode -> float ``[B, C, H, W]``
        in [-1, 1] for this model, through its training preprocessing (:class:`egc.data.prep.Prep`: EXIF
        orientation, mode, resize and crop or pad). ``notes``, when given, receives what was changed per image
        (e.g. "resized from 40x31 (shorter side resized, centre crop)"). An unreadable file is an EgcError
        naming it."""
        from PIL import Image

        from .data import to_model_range

        items = [images] if isinstance(images, (str, Path, Image.Image)) or (hasattr(images, "ndim") and images.ndim in (2, 3)) else list(images)
        if not items:
            raise EgcError("no images given")
        prep, out = self.prep, []
        for item in items:
            try:
                if isinstance(item, Image.Image):
                    arr, changed = prep.pixels(item)
                elif isinstance(item, (str, Path)):
                    with Image.open(item) as img:
                        arr, changed = prep.pixels(img)
                else:
                    a = item.numpy() if torch.is_tensor(item) else item
                    if getattr(a, "dtype", None) != "uint8" or a.ndim not in (2, 3):
                        raise EgcError(f"an image array must be uint8 [H, W] or [H, W, C], got {getattr(a, 'dtype', type(a).__name__)} {list(getattr(a, 'shape', []))}")
                    arr, changed = prep.pixels(Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a))
            except FileNotFoundError:
                raise EgcError(f"image not found: {item}") from None
            except EgcError:
                raise
            except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
                raise EgcError(f"cannot read image {item if isinstance(item, (str, Path)) else 'given'}: not a readable image ({type(e).__name__})") from None
            out.append(torch.from_numpy(arr.copy()))
            if notes is not None:
                notes.append(changed)
        return to_model_range(torch.stack(out))

    def _as_input(self, x: "torch.Tensor | ImageLike | Sequence[ImageLike]") -> torch.Tensor:
        """A float batch as given, anything else (files, PIL images, uint8 arrays) through :meth:`preprocess`."""
        return x if torch.is_tensor(x) and x.is_floating_point() else self.preprocess(x)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise EgcError(f"input of shape {tuple(x.shape)} does not match the model's [B, {', '.join(map(str, self.image_shape))}]")

    def _t(self, x: torch.Tensor, t: int | torch.Tensor, noisy: bool = False) -> torch.Tensor:
        """Timesteps [B] int64 on x's device, checked where they are given (a meta tensor has no values):
        in [0, T-1], or CLEAN_T (the clean token) unless ``noisy``."""
        t = torch.as_tensor(t, dtype=torch.long)
        if t.device.type != "meta":
            lo = 0 if noisy else en.CLEAN_T
            if bool(((t < lo) | (t >= self.schedule.num_steps)).any()):
                if noisy and bool((t == en.CLEAN_T).any()):
                    raise EgcError("eps/score need a noise level: t must be in [0, T-1], not the clean token")
                raise EgcError(f"timestep out of range: t must be in [0, {self.schedule.num_steps - 1}] (or {en.CLEAN_T} = clean image)")
        t = t.to(x.device)
        return t.expand(x.shape[0]).clone() if t.dim() == 0 else t

    def _labels(self, y: torch.Tensor | list[int] | None, n: int) -> torch.Tensor | None:
        """Checked class ids [n] int64 on the model's device (None stays None)."""
        if y is None:
            return None
        y = torch.as_tensor(y, dtype=torch.long).flatten()
        if y.numel() == 1 and n > 1:
            y = y.expand(n).clone()
        if y.numel() != n:
            raise EgcError(f"got {y.numel()} labels for {n} samples")
        k = self.config.model.num_classes
        if y.device.type != "meta":  # checked where the values are (a meta tensor has none)
            bad = y[(y < 0) | (y >= k)]
            if bad.numel():
                raise EgcError(f"class id {int(bad[0])} out of range: this model has classes 0..{k - 1}")
        return y.to(self.device)

    # ---- forward direction: classification and energy -------------------------------------
    @torch.no_grad()
    def logits(self, x: "torch.Tensor | ImageLike | Sequence[ImageLike]", t: int | torch.Tensor = en.CLEAN_T) -> torch.Tensor:
        """Classifier logits [B, K] for x [B, C, H, W] in [-1, 1] at timestep t (CLEAN_T = -1: clean image).
        x may also be image files, PIL images or uint8 arrays of any size: they go through :meth:`preprocess`.

        A classifier baseline knows no timesteps (it was trained on clean images only): t is ignored.
        A latent model encodes x first (its posterior mean, scaled). The computation is
        :meth:`differentiable_logits`, here without gradients."""
        self._need(self.can_classify, "class logits")
        return self.differentiable_logits(self._as_input(x), t)

    def differentiable_logits(self, x: torch.Tensor, t: int | torch.Tensor = en.CLEAN_T) -> torch.Tensor:
        """Classifier logits [B, K] float32 for pixel images x [B, C, H, W] in [-1, 1], with the graph kept so
        input gradients pass (attacks, CaG): the one pixel-space path to the logits, which :meth:`logits`
        runs under no_grad. A latent model's pixels go through its frozen encoder (differentiably); the
        network runs in the model's precision (bf16 autocast or not); t defaults to the clean token, and a
        kind with a clean-image head only (classifier, cnn, jem) ignores it (``kind_info.noisy_logits``)."""
        self._need(self.can_classify, "class logits")
        self.check_input(x)
        x = x.to(self.device)
        z = self.autoencoder.encode_differentiable(x) if self.autoencoder is not None else x
        return self.net_logits(z, self.kind_info.logits_t(t))

    def logits_fn(self, t: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """:meth:`differentiable_logits` on the pixel scale [0, 1] (where attack budgets are usually
        quoted): ``fn(x01 [B, C, H, W] in [0, 1]) -> logits [B, K]`` at t (None: the clean token)."""
        tt = en.CLEAN_T if t is None else t
        return lambda x01: self.differentiable_logits(x01 * 2 - 1, tt)

    def net_logits(self, z: torch.Tensor, t: int | torch.Tensor = en.CLEAN_T) -> torch.Tensor:
        """Classifier logits [B, K] float32 of the network's own input z [B, c, h, w] (a latent model's scaled
        latents, else pixels in [-1, 1]) at timestep t exactly as given, in the model's precision, with
        the graph kept: for inputs already in the network's space (noisy latents, a latent CaG's z).
        Pixel images take :meth:`differentiable_logits`, which also applies the clean-head rule."""
        self._need(self.can_classify, "class logits")
        z = z.to(self.device)
        with self._autocast():
            return self.energy_model.logits(z, self._t(z, t)).float()

    def predict_proba(self, x: "torch.Tensor | ImageLike | Sequence[ImageLike]", t: int | torch.Tensor = en.CLEAN_T) -> torch.Tensor:
        """Class probabilities [B, K] (softmax of :meth:`logits`; images of any size are preprocessed)."""
        return torch.softmax(self.logits(x, t), dim=1)

    @torch.no_grad()
    def energy(self, x: torch.Tensor, t: int | torch.Tensor = 0, y: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """E(x, t | y) [B]: lower means more likely under the model. At t >= 0,
        log p(x_t) = -E / sqrt(1 - abar_t) + const (the convention of diffusion/energy.py); at
        t = CLEAN_T (-1) it is the clean token's logit energy -sum_hw logsumexp F, an unnormalised
        log-density without a noise level. y: class ids for the class-conditional energy (None: the
        null label, i.e. the marginal).

        For the classifier baselines and jem: -logsumexp of the clean-image logits (or -logit_y with y; t
        ignored): jem's trained energy, an OOD score only for the classifiers.
        A latent model: the energy of the encoded (scaled) latents of x, read as x_t."""
        self._need(self.has_energy, "energy")
        x = self._net_input(self._as_input(x))
        tt = self._t(x, t)
        with self._autocast():
            e = self.kind_info.energy_of(self.energy_model, x, tt, self._labels(y, x.shape[0]))
        return e.float()

    # ---- backward direction: score and sampling --------------------------------------------
    def eps(self, x: torch.Tensor, t: int | torch.Tensor, y: torch.Tensor | None = None, guidance: float = 0.0, cfg: float = 0.0) -> torch.Tensor:
        """Guided noise prediction [B, C, H, W] = grad_x E_g, with (diffusion/energy.py)
        E_g = (1 + cfg) E(x_t | y) - cfg E(x_t | null) - guidance sqrt(1 - abar_t) log p(y | x_t).
        y None: the null energy's gradient (unconditional).

        A latent model works in its latent space here: x and the result have shape ``latent_shape``.
        A ddpm baseline predicts eps directly: (1 + cfg) eps(x | y) - cfg eps(x | null) if it has a
        label input; labels given to an unconditional ddpm are an error."""
        x, tt, y = self._eps_inputs(x, t, y)
        return self._guided_eps(x, tt, y, guidance, cfg)

    def _eps_inputs(self, x: torch.Tensor, t: int | torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """eps/score arguments checked and placed on the model's device: (x, t [B], y [B] or None)."""
        self._need(self.kind_info.sampler == "diffusion", "noise prediction")
        x = x.to(self.device)
        tt = self._t(x, t, noisy=True)
        if y is not None:
            self._need_classes("it cannot sample or score a given class (no labels)")
            y = self._labels(y, x.shape[0])
        return x, tt, y

    def _guided_eps(self, x: torch.Tensor, tt: torch.Tensor, y: torch.Tensor | None, guidance: float, cfg: float) -> torch.Tensor:
        """:meth:`eps` on checked inputs (the samplers' inner loop calls this: no per-step checks)."""
        with self._autocast():
            return self.kind_info.eps(self.energy_model, x, tt, y, guidance, cfg).float()

    def _sample_sgld(self, n: int, y: torch.Tensor | None, steps: int, gen: torch.Generator, batch_size: int) -> torch.Tensor:
        """jem: SGLD on E(x) = -logsumexp f(x) (or -f_y(x) for labels y), ``steps`` steps with the run's
        jem.sgld_* settings, from entries of the run's replay buffer when the checkpoint carries it (how JEM
        draws its samples: the chains it trained on, continued), else from uniform noise; images
        [n, C, H, W] in [-1, 1] on the CPU. For labels y the start is a buffer entry the model itself
        classifies as y, as JEM's released evaluation draws class-conditional samples (its buffer is one
        unconditional chain), and -f_y steers from there."""
        from .sgld import sgld

        jc = self.config.jem
        out = []
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            yb = None if y is None else y[i:i + b]
            if self.sgld_buffer is not None:
                x0 = self.sgld_buffer[self._buffer_rows(yb, b, gen)].to(self.device)
            else:
                x0 = (torch.rand((b, *self.latent_shape), generator=gen) * 2 - 1).to(self.device)
            yd = None if yb is None else yb.to(self.device)
            out.append(sgld(self.net_logits, x0, steps, jc.sgld_step_size, jc.sgld_noise, jc.sgld_clip, y=yd, gen=gen).cpu())
        return torch.cat(out)

    def _buffer_rows(self, y: torch.Tensor | None, b: int, gen: torch.Generator) -> torch.Tensor:
        """Indices [b] of replay-buffer entries to start SGLD from: any entry, or for labels y [b] one the
        model classifies as y (any entry when it classifies none as y)."""
        buf = self.sgld_buffer
        assert buf is not None
        if y is None:
            return torch.randint(0, buf.shape[0], (b,), generator=gen)
        if self._buffer_pred is None or self._buffer_pred[0] is not buf:  # once per buffer
            with torch.no_grad():
                pred = torch.cat([self.net_logits(buf[j:j + 250]).argmax(1).cpu() for j in range(0, buf.shape[0], 250)])
            self._buffer_pred = (buf, pred)
        pred = self._buffer_pred[1]
        rows = torch.empty(b, dtype=torch.long)
        for c in y.unique():  # sorted: the same draws for the same seed
            pool = (pred == c).nonzero()[:, 0]
            if pool.numel() == 0:
                pool = torch.arange(buf.shape[0])
            sel = y == c
            rows[sel] = pool[torch.randint(0, pool.numel(), (int(sel.sum()),), generator=gen)]
        return rows

    def score(self, x: torch.Tensor, t: int | torch.Tensor, y: torch.Tensor | None = None, guidance: float = 0.0, cfg: float = 0.0) -> torch.Tensor:
        """grad_x log p_t(x) (or of the guided log p_t(x | y) with labels y) = -eps / sqrt(1 - abar_t) of
        :meth:`eps` with the same arguments (so the same defaults: no guidance), for t in [0, T-1] (the
        clean token has no noise level: an error). The paper's pure class score grad log p(x_t) + grad log
        p(y | x_t) is ``guidance=1`` of an unconditional (model.conditioning none) EGC.

        A latent model: the score of its scaled latents (x of shape ``latent_shape``)."""
        x, tt, y = self._eps_inputs(x, t, y)
        eps = self._guided_eps(x, tt, y, guidance, cfg)
        return -eps / (1 - self.schedule.abar(tt)).sqrt().view(-1, 1, 1, 1).to(eps)

    def sample(self, n: int, labels: torch.Tensor | list[int] | None = None, class_balanced: bool = False, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None, eta: float | None = None, seed: int = 0, batch_size: int = 250,
               progress: bool = False, clip: bool = True, cfg: float | None = None,
               callback: Callable[[int, int, torch.Tensor], None] | None = None,
               guidance_interval: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n images. Returns (images float [n, C, H, W] in [-1, 1], labels int64 [n], -1 = unconditional).
        A latent model samples latents and returns them decoded: pixel images of ``image_shape``.

        ``sampler``, ``steps``, ``eta`` (DDIM's noise), ``guidance`` (classifier guidance s) and ``cfg``
        (classifier-free guidance w) None take the model's own measured defaults (config sample.*, recorded by
        ``egc export`` after measuring them; eta only with DDIM). ``guidance_interval`` (tmin, tmax): both guidances act only at steps with
        tmin <= t / T <= tmax, the plain conditional energy elsewhere (None: the model's sample.guidance_tmin
        / tmax). ``class_balanced`` asks for n/K of each class (cycling classes when n is not a
        multiple of K); ``labels`` gives them explicitly; neither means unconditional (the null label).
        Images come back on the CPU; the noise is drawn on a CPU generator, so a seed gives the same
        images on any device (up to the device's arithmetic).

        ``callback(step, total, x0_hat)`` is called after every sampler step of every batch with the
        current estimate of the batch's images (decoded pixels in [-1, 1] on the CPU, a latent model's
        included); raising from it stops sampling (cancellation) and the exception propagates.
        """
        self._need(self.can_generate, "sampler")
        sampler, steps, eta, guidance, cfg, interval = self._sampling(n, sampler, steps, eta, guidance, cfg, guidance_interval)
        y = self._sample_labels(labels, class_balanced, n)
        gen = torch.Generator().manual_seed(seed)
        labels_out = y if y is not None else torch.full((n,), -1, dtype=torch.long)
        if self.kind_info.sampler == "sgld":
            return self._sample_sgld(n, y, steps, gen, batch_size), labels_out
        # a mask only when the interval leaves some step out and there is guidance to leave out
        masked = not (interval.guidance_tmin <= 0 and interval.guidance_tmax >= 1) and (guidance != 0 or cfg != 0)
        noise = torch.randn((n, *self.latent_shape), generator=gen)
        out = []
        for i in range(0, n, batch_size):
            yb = None if y is None else y[i:i + batch_size].to(self.device)

            # Labels were checked above and the sampler's timesteps are in range: no per-step checks.
            def fn(x: torch.Tensor, t: torch.Tensor, yb: torch.Tensor | None = yb) -> torch.Tensor:
                if not masked:
                    return self._guided_eps(x, t, yb, guidance, cfg)
                # per-row scales, zero outside the interval: decided on the device, no read-back per step
                on = interval.guided_mask(t, self.schedule.num_steps)
                return self._guided_eps(x, t, yb, guidance * on, cfg * on)

            # Latents are not confined to [-1, 1]: no clipping of the x0 estimate in latent space.
            z = run_sampler(sampler, fn, noise[i:i + batch_size].to(self.device), self.schedule.alphas_cumprod, steps, eta=eta,
                            clip=clip and self.autoencoder is None, gen=gen, progress=progress, callback=self._decoded(callback))
            with torch.no_grad():
                out.append((self.autoencoder.decode(z) if self.autoencoder is not None else z).float().cpu())
        return torch.cat(out).clamp(-1, 1), labels_out

    def _sampling(self, n: int, sampler: str | None, steps: int | None, eta: float | None, guidance: float | None, cfg: float | None,
                  guidance_interval: tuple[float, float] | None) -> tuple[str, int, float | None, float, float, SampleConfig]:
        """The sampler settings of :meth:`sample`: None takes the model's own (config sample.*); checked."""
        defaults = self.config.sample
        sampler = defaults.sampler if sampler is None else sampler
        if eta is None and sampler == "ddim":
            eta = defaults.eta  # the model's DDIM noise goes with DDIM only (the other samplers have none)
        if eta is not None and eta == -1:  # automatic (a config whose space was never decided): the space's default
            eta = 0.0 if self.autoencoder is not None else 1.0
        steps = min(defaults.steps, self.schedule.num_steps) if steps is None else steps
        guidance = defaults.guidance if guidance is None else guidance
        cfg = defaults.cfg if cfg is None else cfg
        interval = defaults
        if guidance_interval is not None:
            lo, hi = (float(v) for v in guidance_interval)
            interval = dataclasses.replace(interval, guidance_tmin=lo, guidance_tmax=hi)
            interval.validate()  # a ConfigError (an EgcError): one line naming the values
        if sampler not in SAMPLERS:
            raise EgcError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
        if n < 1:
            raise EgcError(f"number of samples must be >= 1, got {n}")
        if not 1 <= steps <= self.schedule.num_steps:
            raise EgcError(f"--steps must be in [1, {self.schedule.num_steps}], got {steps}")
        if eta is not None and sampler != "ddim":
            raise EgcError(f"--eta is DDIM's noise: sampler {sampler} has none (ddpm is eta 1, dpm++2m deterministic)")
        return sampler, steps, eta, guidance, cfg, interval

    def _sample_labels(self, labels: torch.Tensor | list[int] | None, class_balanced: bool, n: int) -> torch.Tensor | None:
        """The n requested labels [n] on the CPU (class-balanced: sorted by class when K divides n), or None."""
        if labels is None and not class_balanced:
            return None
        self._need_classes("sample without labels or --class-balanced")
        if labels is not None:
            return self._labels(labels, n).cpu()
        k = self.config.model.num_classes
        y = torch.arange(n) % k
        return y.sort(stable=True).values if n % k == 0 else y

    def _decoded(self, callback: Callable[[int, int, torch.Tensor], None] | None) -> Callable[[int, int, torch.Tensor], None] | None:
        """The sampler's per-step callback: ``callback`` given the x0 estimate as pixels in [-1, 1] on the CPU."""
        if callback is None:
            return None

        def cb(step: int, total: int, x0: torch.Tensor) -> None:
            with torch.no_grad():
                img = self.autoencoder.decode(x0) if self.autoencoder is not None else x0
            callback(step, total, img.float().clamp(-1, 1).cpu())

        return cb
