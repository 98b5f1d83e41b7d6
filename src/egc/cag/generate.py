"""CaG: generate images of a class by optimising the input of a fixed classifier (papers.md, sec. 2).

One loop, every part switchable by :class:`CaGConfig`::

    z  (unconstrained, at stage size s)        x = image(z) in (0, 1): sigmoid of pixel logits, or of a
                                               1/f-weighted spectrum (param fourier, param.py;
                                               the default "auto" picks it from 64 px up)
    x_S  = resize(x, S)                        progressive resolution (schedule.py)
    x_j  = roll(x_S, random shift <= jitter)   translation jitter (DeepDream-style), random mirror (flip)
    x_v  = resize(x_j, V)                      the classifier's view size V (default V = S)
    x_m  = apply_mask(x_v, random_mask(...))   mask-based stochastic reconstruction g (masks.py)
    L    = L_cls(f(x_m), c) + w_div L_div(h(x_m)) + w_dist L_dist(h(x_m); mu_c, sigma_c)
           + w_bn L_bn + w_tv TV(x)            (losses.py)
    z   <- Adam step on dL/dz                  (the gradient through egc.diffusion.energy.input_grad)

``plain_gradient_ascent`` is the same loop with every part off (one stage at S, pixel logits, no mask,
no jitter, no priors): the adversarial-noise baseline the paper starts from. It keeps ``view_size``,
which is how the classifier is applied rather than a part of the method.

How the defaults were chosen (BENCHMARKS.md section 6), on EfficientNet-Lite0 at 128 px judged by
Lite2, 5 ImageNet classes x 4 images, same seed: the Fourier parameterisation (judge top-1 0.05 ->
0.20 at equal time) and showing the classifier its native 224 px (``view_size``, set by the CLI and
the benchmark through :func:`default_view`; 0.05 -> 0.35, 2.8x the time) were the two changes that
mattered, and together gave 0.65. Earlier small tuning runs set the batch-norm prior weight (1.0)
and the shift (an eighth of the image); zoom/rotation, a lower learning rate with total variation,
and larger shifts did not measurably help. Masks (3 classes x 4): patches beat per-pixel masks (judge
top-1 0.83 vs 0.33; no mask 0.17) and hiding 60 % was no better than 30 % (0.75), so patches / 0.3 /
noise stays; the cutout and grid families and the other fills were not compared. On Fashion-MNIST
(28 px, judged by an independent CNN) the spectrum lost to pixel logits (0.16 vs 0.26), hence
``param = "auto"``: the spectrum from 64 px up, pixels below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from tqdm import tqdm

from ..diffusion.energy import input_grad
from ..errors import ConfigError, EgcError
from .adapters import noisy_logits_and_features
from .losses import CLASS_LOSSES, BNStatsRecorder, batchnorm_layers, class_loss, distribution_loss, diversity_loss, total_variation
from .masks import MASK_FAMILIES, MASK_FILLS, apply_mask, random_mask
from .param import COLOURS, PARAMS, init_param, param_image, upsample
from .schedule import apply_affine, random_affine, resize, resolution_schedule, to_param

#: The parts that can be switched off one at a time (the ablation in bench/cag.py).
PARTS: tuple[str, ...] = ("mask", "progressive", "div", "dist", "jitter", "tv", "fourier")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
#: param "auto" optimises the 1/f spectrum for final sizes from here up, pixel logits below.
FOURIER_MIN_SIZE = 64
#: What ``CaGConfig.precision`` accepts (no "auto", unlike egc.config.PRECISIONS: bf16 measured slower for CaG here).
CAG_PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
#: Where the images start: near mid-grey with seeded noise, or drawn from a per-class Gaussian of real
#: images (egc.cag.stats.PixelPrior, Santurkar et al. 2019's seed; needs a prior).
INITS: tuple[str, ...] = ("random", "data")
#: What ``CaGConfig.param`` accepts: a parameterisation, or "auto" (see CaGConfig.parameterisation).
PARAM_CHOICES: tuple[str, ...] = ("auto", *PARAMS, "latent")


@dataclass
class CaGConfig:
    """Everything the CaG loop does. How the defaults were chosen: see the module docstring.

    ``steps`` counts steps *per stage* (an int, or one per stage); with ``progressive`` off the
    single stage gets their sum, so ablations spend the same budget. ``stages`` None means sizes
    halving from ``size`` down to 32 (128 -> 32, 64, 128). ``dist_weight`` needs per-class feature
    statistics (``real_stats`` of :func:`generate`); without them the term is inactive and
    ``bn_weight`` (the DeepInversion batch-norm prior, the data-free stand-in) is the distribution
    prior. ``jitter`` is the largest random shift in pixels at the final size (None: an eighth of
    it, 16 px at 128; see :meth:`shift`); ``flip`` mirrors the
    batch left-right at random each step; ``scale`` (relative zoom, e.g. 0.1 = 0.9x..1.1x) and
    ``rotate`` (degrees) draw a random zoom and rotation per image and step. All four are the
    "jitter" part: transformations the object must survive, which an adversarial pattern does not.
    ``param`` is what the optimiser moves: per-pixel logits, or a 1/f**``fourier_decay``-weighted
    spectrum (param.py), which favours smooth layouts over pixel-level patterns; "auto" (the default)
    takes the spectrum from FOURIER_MIN_SIZE up and pixels below (see :attr:`parameterisation`).
    ``view_size`` is the size the classifier sees the (jittered) image at, None = ``size``: a 128 x 128
    image shown to an ImageNet network at its native 224 keeps objects at the scale its filters and
    batch-norm statistics know, and the upsampling leaves no room for pixel-level adversarial patterns.
    ``noise`` is the std (on [0, 1] pixels) of fresh Gaussian noise on the classifier's input at the
    first step, annealed linearly to ``noise_end`` at the last: the gradient is then that of the
    classifier smoothed over the noise, which cannot follow pixel-level adversarial patterns (an EGC
    head sees the noise at its own matching timestep, as it was trained). ``init`` "data" starts each
    image from a per-class Gaussian of real images (``prior`` of :func:`generate`). ``colour``
    "decorrelated" optimises decorrelated colour components of the spectrum (param.COLOURS; fourier only).
    """

    size: int = 128
    steps: int | tuple[int, ...] = 100
    stages: tuple[int, ...] | None = None
    progressive: bool = True
    upsample: str = "bicubic"
    lr: float = 0.05
    optimizer: str = "adam"
    cls_loss: str = "ce"
    mask: bool = True
    mask_family: str = "patches"
    mask_ratio: float = 0.3
    mask_fill: str = "noise"
    mask_patch: int | None = None
    div_weight: float = 0.1
    dist_weight: float = 1.0
    bn_weight: float = 1.0
    tv_weight: float = 0.0
    jitter: int | None = None
    flip: bool = True
    scale: float = 0.0
    rotate: float = 0.0
    init_std: float = 0.1
    param: str = "auto"
    fourier_decay: float = 1.0
    view_size: int | None = None
    precision: str = "fp32"  # "bf16": the classifier's forward and backward under bf16 autocast
    seed: int = 0
    batch: int = 8
    noise: float = 0.0
    noise_end: float = 0.0
    init: str = "random"
    colour: str = "rgb"

    def validate(self) -> "CaGConfig":
        """Raise ConfigError (an EgcError) naming the bad field; returns self for chaining."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(self.size >= 8, f"cag size must be >= 8, got {self.size}")
        need(self.lr > 0, f"cag lr must be > 0, got {self.lr}")
        need(self.optimizer in OPTIMIZERS, f"cag optimizer '{self.optimizer}' unknown (choose from {', '.join(OPTIMIZERS)})")
        need(self.cls_loss in CLASS_LOSSES, f"cag class loss '{self.cls_loss}' unknown (choose from {', '.join(CLASS_LOSSES)})")
        need(self.mask_family in MASK_FAMILIES, f"mask family '{self.mask_family}' unknown (choose from {', '.join(MASK_FAMILIES)})")
        need(self.mask_fill in MASK_FILLS, f"mask fill '{self.mask_fill}' unknown (choose from {', '.join(MASK_FILLS)})")
        need(0 <= self.mask_ratio < 1, f"mask ratio must be in [0, 1), got {self.mask_ratio}")
        need(self.mask_patch is None or self.mask_patch >= 1, f"mask patch must be >= 1, got {self.mask_patch}")
        need(self.upsample in ("bilinear", "bicubic"), f"upsample must be 'bilinear' or 'bicubic', got '{self.upsample}'")
        for k in ("div_weight", "dist_weight", "bn_weight", "tv_weight", "init_std"):
            need(getattr(self, k) >= 0, f"cag {k} must be >= 0, got {getattr(self, k)}")
        need(0 <= self.shift < self.size, f"jitter must be in [0, size), got {self.jitter}")
        need(0 <= self.scale < 1, f"cag scale must be in [0, 1), got {self.scale}")
        need(0 <= self.rotate <= 180, f"cag rotate must be in [0, 180] degrees, got {self.rotate}")
        need(self.batch >= 1, f"cag batch must be >= 1, got {self.batch}")
        need(self.param in PARAM_CHOICES, f"cag parameterisation '{self.param}' unknown (choose from {', '.join(PARAM_CHOICES)})")
        need(self.fourier_decay >= 0, f"cag fourier_decay must be >= 0, got {self.fourier_decay}")
        need(self.view_size is None or self.view_size >= 8, f"cag view size must be >= 8, got {self.view_size}")
        need(self.precision in CAG_PRECISIONS, f"cag precision '{self.precision}' unknown (choose from {', '.join(CAG_PRECISIONS)})")
        need(self.noise >= 0 and self.noise_end >= 0, f"cag noise must be >= 0, got {self.noise} -> {self.noise_end}")
        need(self.colour in COLOURS, f"cag colour '{self.colour}' unknown (choose from {', '.join(COLOURS)})")
        need(self.colour == "rgb" or self.parameterisation == "fourier",
             f"cag colour '{self.colour}' needs the fourier parameterisation (final size {self.size} picks {self.parameterisation})")
        need(self.init in INITS, f"cag init '{self.init}' unknown (choose from {', '.join(INITS)})")
        need(self.init != "data" or self.parameterisation in ("pixel", "latent"),
             f"cag init 'data' needs the pixel parameterisation (final size {self.size} picks {self.parameterisation}; set param pixel)")
        self.plan()  # stage / step errors
        return self

    @property
    def view(self) -> int:
        """The size the classifier sees: ``view_size``, or ``size`` when it is None."""
        return self.size if self.view_size is None else self.view_size

    @property
    def parameterisation(self) -> str:
        """The parameterisation run: ``param``, with "auto" resolved by the final size. Measured: the
        spectrum won at 128 px on ImageNet (judge top-1 0.20 vs 0.05 at view 128, 0.65 vs 0.35 at
        view 224) and lost at 28 px on Fashion-MNIST (0.16 vs 0.26 for the EGC head, 0.10 vs 0.15 for a
        plain classifier; BENCHMARKS.md section 6); the threshold between, 64, is not measured."""
        if self.param != "auto":
            return self.param  # "latent": a latent EGC head's own latents (checked against the classifier by generate)
        return "fourier" if self.size >= FOURIER_MIN_SIZE else "pixel"

    @property
    def shift(self) -> int:
        """The largest random shift in pixels: ``jitter``, or size // 8 when it is None."""
        return self.size // 8 if self.jitter is None else self.jitter

    def plan(self) -> list[tuple[int, int]]:
        """The (stage size, steps) list this config runs."""
        steps = self.steps if isinstance(self.steps, int) else tuple(self.steps)
        return resolution_schedule(self.size, self.stages, steps, self.progressive)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def without(cfg: CaGConfig, *parts: str) -> CaGConfig:
    """A copy of ``cfg`` with the named parts (from PARTS) switched off."""
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ConfigError(f"unknown CaG part(s) {', '.join(bad)} (choose from {', '.join(PARTS)})")
    off: dict[str, Any] = {}
    for p in parts:
        if p == "mask":
            off["mask"] = False
        elif p == "progressive":
            off["progressive"] = False
        elif p == "div":
            off["div_weight"] = 0.0
        elif p == "dist":  # both forms of the distribution prior: real statistics and batch norm
            off["dist_weight"] = 0.0
            off["bn_weight"] = 0.0
        elif p == "jitter":
            off["jitter"] = 0
            off["flip"] = False
            off["scale"] = 0.0
            off["rotate"] = 0.0
        elif p == "tv":
            off["tv_weight"] = 0.0
        elif p == "fourier":  # back to per-pixel logits (RGB: colour mixing needs the spectrum)
            off["param"] = "pixel"
            off["colour"] = "rgb"
    return replace(cfg, **off)


def parts_off(cfg: CaGConfig) -> list[str]:
    """The PARTS that ``cfg`` has switched off (the inverse of :func:`without`, kept beside it)."""
    off = {
        "mask": not cfg.mask,
        "progressive": not cfg.progressive,
        "div": cfg.div_weight == 0,
        "dist": cfg.dist_weight == 0 and cfg.bn_weight == 0,
        "jitter": cfg.shift == 0 and not cfg.flip and cfg.scale == 0 and cfg.rotate == 0,
        "tv": cfg.tv_weight == 0,
        "fourier": cfg.parameterisation != "fourier",
    }
    return [p for p in PARTS if off[p]]


def plain_config(cfg: CaGConfig | None = None) -> CaGConfig:
    """``cfg`` with every part off: plain gradient ascent on the class loss, same budget."""
    return without(cfg or CaGConfig(), *PARTS)


def default_view(classifier: Any, size: int, view_size: int | None = None) -> int | None:
    """The view size the CLI and the benchmark use: ``view_size`` when the user gave one, else the
    classifier's preferred (training) size when it takes any size and prefers a larger one than
    ``size``, else None (= size). Measured on EfficientNet-Lite0 at 128 px (BENCHMARKS.md section 6):
    viewing at its native 224 raised the share a different network recognises several-fold."""
    if view_size is not None:
        return view_size
    if getattr(classifier, "input_size", None) is not None:
        return None
    preferred = getattr(classifier, "preferred_size", None)
    return int(preferred) if preferred is not None and preferred > size else None


#: The timestep an EGC head's input noise starts from in :func:`recommended_config` (annealed to clean).
EGC_NOISE_T = 600


def recommended_config(classifier: Any, size: int, **over: Any) -> CaGConfig:
    """The configuration ``egc cag`` and the web page use for ``classifier`` unless told otherwise
    (``over``: CaGConfig fields the user set).

    A classifier with a noisy head (an EGC model: ``forward_noisy``) is driven through it, noise annealed
    from its timestep EGC_NOISE_T to clean, without masks (the noise already hides detail), 300 steps, a
    diversity weight of 0.5: on zoo:fashion-mnist (100 images) annealed noise took an independent judge
    from 20 % to 79 % in class and the spectrum distance from 0.53 to 0.25; 150 steps gave 67 % / 0.49,
    and diversity 0.5 added 3 points and variety (BENCHMARKS.md 6, the CaG scoreboard). Other classifiers
    keep the paper's parts as measured on ImageNet (module docstring)."""
    base: dict[str, Any] = {"size": size}
    timestep_for = getattr(classifier, "timestep_for", None)
    if timestep_for is not None and getattr(classifier, "forward_noisy", None) is not None:
        ac = classifier.model.schedule.alphas_cumprod
        sigma = float(((1 - ac[EGC_NOISE_T]) / ac[EGC_NOISE_T]).sqrt()) / 2
        base.update(noise=round(sigma, 4), noise_end=0.0, mask=False, steps=300, batch=10, div_weight=0.5)
        if getattr(classifier, "latent_shape", None) is not None:  # a latent model: move its latents, decode them
            base.update(param="latent", progressive=False)
    base.update(over)
    return CaGConfig(**base)


def _check_target(classifier: Any, target: int) -> None:
    k = len(classifier.class_names)
    if not isinstance(target, int) or not 0 <= target < k:
        raise EgcError(f"target class {target!r} out of range: classifier {classifier.name} has classes 0..{k - 1}")


def _check_size(classifier: Any, cfg: CaGConfig) -> None:
    need = getattr(classifier, "input_size", None)
    if need is not None and cfg.view != need:
        what = f"view size {cfg.view_size}" if cfg.view_size is not None else f"size {cfg.size}"
        raise EgcError(f"classifier {classifier.name} takes {need}x{need} images; {what} does not fit")


def noise_at(cfg: CaGConfig, k: int, total: int) -> float:
    """The input-noise std at step k of ``total`` (linear from cfg.noise to cfg.noise_end)."""
    if total <= 1:
        return float(cfg.noise_end if cfg.noise == 0 else cfg.noise)
    return float(cfg.noise + (cfg.noise_end - cfg.noise) * k / (total - 1))


def _step(objective: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, opt: torch.optim.Optimizer, bar: tqdm,
          terms: dict[str, torch.Tensor]) -> None:
    """One optimiser step on z along the input gradient of ``objective`` (egc.diffusion.energy.input_grad)."""
    _, grad = input_grad(objective, z)
    opt.zero_grad(set_to_none=True)
    z.grad = grad
    opt.step()
    bar.update(1)
    if bar.n % 10 == 0:
        bar.set_postfix({k: round(float(v.detach()), 3) for k, v in terms.items()}, refresh=False)


def _class_and_feature_terms(logits: torch.Tensor, feats: torch.Tensor, target: int, kind: str, cfg: CaGConfig,
                             real_stats: tuple[torch.Tensor, torch.Tensor] | None, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """L_cls + w_div L_div + w_dist L_dist for one batch's logits [b, K] and features [b, D] (fp32 math);
    each term is also kept in ``terms`` for the progress bar."""
    logits, feats = logits.float(), feats.float()
    loss = class_loss(logits, target, kind)
    terms["cls"] = loss.detach()
    terms["p"] = torch.softmax(logits.detach(), dim=1)[:, target].mean()
    if cfg.div_weight > 0 and feats.shape[0] > 1:
        terms["div"] = diversity_loss(feats)
        loss = loss + cfg.div_weight * terms["div"]
    if cfg.dist_weight > 0 and real_stats is not None:
        terms["dist"] = distribution_loss(feats, real_stats[0], real_stats[1])
        loss = loss + cfg.dist_weight * terms["dist"]
    return loss


def _classifier_view(x: torch.Tensor, size_final: int, view: int, shift: tuple[int, int], mirror: bool, warp: torch.Tensor | None,
                     mask: torch.Tensor | None, fill: str, gen: torch.Generator) -> torch.Tensor:
    """What the classifier sees of x [b, C, s, s]: the final-size image [b, C, S, S] jittered (shift, mirror),
    at the view size [b, C, V, V], warped and masked. Only the mask's noise fill draws from ``gen``."""
    xs = resize(x, size_final)  # jitter acts on the final image
    if shift != (0, 0):
        xs = torch.roll(xs, shifts=shift, dims=(2, 3))
    if mirror:
        xs = xs.flip(3)
    xs = resize(xs, view)
    if warp is not None:
        xs = apply_affine(xs, warp.to(xs.device))
    if mask is not None:
        xs = apply_mask(xs, mask, fill, gen)
    return xs


def _generate_batch(classifier: Any, target: int, b: int, cfg: CaGConfig, real_stats: tuple[torch.Tensor, torch.Tensor] | None,
                    gen: torch.Generator, bar: tqdm, recorder: BNStatsRecorder | None, device: torch.device,
                    on_step: Callable[[torch.Tensor], None] | None = None, prior: Any = None) -> torch.Tensor:
    """b images [b, C, S, S] in [0, 1] of class ``target`` (one batch of :func:`generate`)."""
    plan = cfg.plan()
    c, size_final, view = int(classifier.channels), cfg.size, cfg.view
    kind = "logit" if len(classifier.class_names) == 1 else cfg.cls_loss  # CE is flat for K = 1
    # Start near mid-grey with a little seeded noise: the samples of a batch must differ, or the
    # diversity loss has no direction to push them in.
    param = cfg.parameterisation
    if param == "latent":
        return _generate_latent_batch(classifier, target, b, cfg, real_stats, gen, bar, device, on_step, prior)
    if cfg.init == "data":
        z = to_param(resize(prior.sample(target, b, gen), plan[0][0])).to(device)  # [b, C, s, s]
    else:
        z = init_param(param, b, c, plan[0][0], cfg.init_std, gen).to(device)
    total, k_step = sum(n for _, n in plan), 0
    for stage, (s, steps) in enumerate(plan):
        if stage > 0:
            z = upsample(param, z, s, cfg.upsample, cfg.fourier_decay)
        z = z.detach().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=cfg.lr) if cfg.optimizer == "adam" else torch.optim.SGD([z], lr=cfg.lr)
        for _ in range(steps):
            terms: dict[str, torch.Tensor] = {}
            # The shift and the mask are drawn here, once per step; the noise fill is drawn inside
            # the objective, which input_grad also calls exactly once, so the stream stays seeded.
            shift = tuple(int(v) for v in torch.randint(-cfg.shift, cfg.shift + 1, (2,), generator=gen)) if cfg.shift else (0, 0)
            mirror = cfg.flip and bool(torch.randint(0, 2, (1,), generator=gen))
            warp = random_affine(b, cfg.scale, cfg.rotate, gen) if (cfg.scale or cfg.rotate) else None
            mask = random_mask((b, c, view, view), cfg.mask_family, cfg.mask_ratio, gen, cfg.mask_patch) if cfg.mask else None
            sigma = noise_at(cfg, k_step, total)
            k_step += 1

            def objective(zz: torch.Tensor) -> torch.Tensor:
                x = param_image(param, zz, cfg.fourier_decay, cfg.colour)  # [b, C, s, s]
                xs = _classifier_view(x, size_final, view, shift, mirror, warp, mask, cfg.mask_fill, gen)
                if recorder is not None:
                    recorder.reset()
                # Only the classifier runs under autocast; the image, the losses and Adam stay fp32.
                with torch.autocast(xs.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                    logits, feats = noisy_logits_and_features(classifier, xs, sigma, gen)
                loss = _class_and_feature_terms(logits, feats, target, kind, cfg, real_stats, terms)
                if recorder is not None:
                    terms["bn"] = recorder.loss()
                    loss = loss + cfg.bn_weight * terms["bn"]
                if cfg.tv_weight > 0:
                    terms["tv"] = total_variation(x)
                    loss = loss + cfg.tv_weight * terms["tv"]
                return loss

            _step(objective, z, opt, bar, terms)
            if on_step is not None:
                with torch.no_grad():
                    on_step(param_image(param, z.detach(), cfg.fourier_decay, cfg.colour).cpu())
    return param_image(param, z.detach(), cfg.fourier_decay, cfg.colour)


def _generate_latent_batch(classifier: Any, target: int, b: int, cfg: CaGConfig, real_stats: tuple[torch.Tensor, torch.Tensor] | None,
                           gen: torch.Generator, bar: tqdm, device: torch.device, on_step: Callable[[torch.Tensor], None] | None,
                           prior: Any) -> torch.Tensor:
    """b images of ``target`` from a latent EGC head, optimising its latents (param "latent").

    Pixels optimised through the encoder leave the set of images the decoder can make (saturated colour
    patterns, measured); here the head's own latents move and the image is their decoding. Masks,
    jitter and progressive resolution act on pixels and are not used; noise, the diversity and the
    distribution terms are. A start drawn from ``prior`` (init "data") must be a prior of latents."""
    shape = tuple(classifier.latent_shape)
    if cfg.init == "data":
        z = prior.sample(target, b, gen).to(device)
        if tuple(z.shape[1:]) != shape:
            raise EgcError(f"the prior draws {tuple(z.shape[1:])} but the latents are {shape}: fit it on encoded images")
    else:
        z = torch.randn(b, *shape, generator=gen).to(device)  # unit-scaled latents: a draw from the diffusion's prior
    z.requires_grad_(True)
    kind = "logit" if len(classifier.class_names) == 1 else cfg.cls_loss
    opt = torch.optim.Adam([z], lr=cfg.lr) if cfg.optimizer == "adam" else torch.optim.SGD([z], lr=cfg.lr)
    total = sum(n for _, n in cfg.plan())
    for k in range(total):
        sigma = noise_at(cfg, k, total)
        terms: dict[str, torch.Tensor] = {}

        def objective(zz: torch.Tensor) -> torch.Tensor:
            with torch.autocast(zz.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                logits, feats = classifier.forward_latent(zz, sigma, gen)
            return _class_and_feature_terms(logits, feats, target, kind, cfg, real_stats, terms)

        _step(objective, z, opt, bar, terms)
        if on_step is not None:
            on_step(classifier.decode(z.detach()).cpu())
    return classifier.decode(z.detach())


def _check_request(classifier: Any, target: int, n: int, cfg: CaGConfig, real_stats: tuple[torch.Tensor, torch.Tensor] | None,
                   prior: Any) -> None:
    """One-line errors for a request :func:`generate` cannot serve."""
    if n < 1:
        raise EgcError(f"number of images must be >= 1, got {n}")
    _check_target(classifier, target)
    _check_size(classifier, cfg)
    if cfg.parameterisation == "latent" and getattr(classifier, "latent_shape", None) is None:
        raise EgcError(f"cag param 'latent' needs a latent EGC model's head; classifier {classifier.name} takes pixels")
    if cfg.init == "data" and prior is None:
        raise EgcError("cag init 'data' needs a prior of real images (egc cag --stats-from DATA)")
    if real_stats is not None and (len(real_stats) != 2 or real_stats[0].dim() != 1 or real_stats[0].shape != real_stats[1].shape):
        raise EgcError("real_stats must be (mean [D], std [D]) of the classifier's features")


def generate(classifier: Any, target: int, n: int, cfg: CaGConfig | None = None,
             real_stats: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = True,
             callback: Callable[[int, int, torch.Tensor], None] | None = None, prior: Any = None) -> torch.Tensor:
    """n images of class ``target`` from ``classifier`` (see :mod:`egc.cag.adapters`).

    Args:
        classifier: images in [0, 1] [B, C, S, S] -> logits [B, K] (a :class:`Classifier`).
        target: class index (resolve names with :func:`egc.cag.adapters.resolve_class`).
        n: number of images; made in batches of ``cfg.batch`` (diversity acts within a batch).
        cfg: the loop's settings (validated here); None = defaults.
        real_stats: (mu_c [D], sigma_c [D]) of the classifier's features on real images of the
            target class, for the distribution loss; None = data-free (batch-norm prior only).
        progress: show a tqdm bar.
        callback: None, or ``callback(step, total, images)`` called after every optimisation step with
            the steps done so far (over all batches), their total, and the current batch's images
            (float [b, C, s, s] in [0, 1] on the CPU, s = the stage size); raising from it stops the run
            (cancellation) and the exception propagates. It draws no random numbers: the images are
            the same with or without it.
        prior: an :class:`egc.cag.stats.PixelPrior` of real images; needed by ``cfg.init == "data"``.
    The classifier is used as it is (adapters put their networks in eval mode; a module in train
    mode would normalise with batch statistics and apply dropout).
    Returns:
        float [n, C, S, S] in [0, 1]. The same (classifier, target, n, cfg) gives the same images
        bit for bit on the same machine (one torch.Generator seeded with ``cfg.seed``).
    """
    cfg = (cfg or CaGConfig()).validate()
    _check_request(classifier, target, n, cfg, real_stats, prior)
    try:
        device = next(classifier.parameters()).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    use_bn = cfg.bn_weight > 0 and isinstance(classifier, torch.nn.Module) and bool(batchnorm_layers(classifier))
    gen = torch.Generator().manual_seed(cfg.seed)
    total = sum(s for _, s in cfg.plan()) * ((n + cfg.batch - 1) // cfg.batch)
    on_step = None
    if callback is not None:
        done = [0]

        def on_step(images: torch.Tensor) -> None:
            done[0] += 1
            callback(done[0], total, images)
    out: list[torch.Tensor] = []
    with tqdm(total=total, disable=not progress, desc=f"cag {getattr(classifier, 'name', '')}", leave=False) as bar:
        recorder = BNStatsRecorder(classifier) if use_bn else None
        if recorder is not None:
            recorder.__enter__()
        try:
            for i in range(0, n, cfg.batch):
                b = min(cfg.batch, n - i)
                out.append(_generate_batch(classifier, target, b, cfg, real_stats, gen, bar, recorder, device, on_step, prior))
        finally:
            if recorder is not None:
                recorder.__exit__(None, None, None)
    return torch.cat(out).cpu()


def plain_gradient_ascent(classifier: Any, target: int, n: int, cfg: CaGConfig | None = None, progress: bool = True) -> torch.Tensor:
    """The baseline: :func:`generate` with every part off (same steps, lr, optimiser and seed)."""
    return generate(classifier, target, n, plain_config(cfg), None, progress)
