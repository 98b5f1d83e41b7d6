"""``egc eval``'s metric ``gen``: the model's samples judged against the test images by an independent
judge network (fd / KID / precision / recall in its features, conditional accuracy; never called FID),
with the FID Inception-v3 (``--inception``) when given, and network-free naturalness statistics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from egc.errors import EgcError

from .testsets import norm_name

if TYPE_CHECKING:
    from egc.model import EGC

    from .judge import Judge
    from .settings import EvalContext, EvalSettings

# The shipped judge of each data set (bench/train_feature_classifier.py; test accuracy in each file's meta):
# fashioncnn 92.1 %, cifarcnn 83.0 % on the JPEG copy of CIFAR-10 (10 epochs, crops and flips, BENCHMARKS.md 4).
DEFAULT_JUDGES = {"fashion-mnist": "zoo:fashioncnn", "cifar10": "zoo:cifarcnn"}
INCEPTION_NOT_GIVEN = ("not computed: pass --inception WEIGHTS (pytorch-fid's pt_inception-2015-12-05-6726825d.pth) "
                       "for fid_inception / kid_inception; fd_<judge> and kid_<judge> are not FID")


def _judge_problem(judge: Judge, shape: tuple[int, int, int]) -> str | None:
    """Why ``judge`` cannot score images of ``shape`` (C, H, W), or None."""
    want = judge.meta.get("image_shape")
    if judge.net.in_ch != shape[0]:
        return f"judge {judge.name} takes {judge.net.in_ch}-channel images, the model makes {shape[0]}"
    if want is not None and tuple(want) != shape:
        return f"judge {judge.name} was trained on {tuple(want)} images, the model makes {shape}"
    if shape[1] < 16:
        return f"judge {judge.name} needs images of at least 16x16, the model makes {shape[1]}x{shape[2]}"
    return None


def resolve_judge(m: EGC, data_name: str, spec: str | None) -> tuple[Judge | None, str]:
    """(Judge or None, reason when None). An explicitly given judge that does not fit is an error."""
    from .judge import load_judge

    given = spec is not None
    spec = spec or DEFAULT_JUDGES.get(norm_name(data_name))
    if spec is None:
        return None, (f"no independent judge network for data set {data_name}; pass --judge FILE "
                      "(a network saved with egc.eval.save_feature_net)")
    judge = load_judge(spec)
    problem = _judge_problem(judge, m.image_shape)
    if problem:
        if given:
            raise EgcError(problem)
        return None, problem
    return judge, ""


def sample_grid_u8(images: torch.Tensor, labels: torch.Tensor, k: int, per_class: int = 10) -> tuple[torch.Tensor, int]:
    """(uint8 ``[R * per_class, H, W, C]``, nrow): up to ``per_class`` samples of each class, one row per class."""
    from egc.data import to_uint8

    if (labels < 0).all():  # unconditional
        sel = torch.arange(min(len(images), per_class * per_class))
        return to_uint8(images[sel]), per_class
    rows = []
    for c in range(k):
        idx = (labels == c).nonzero().flatten()[:per_class]
        if idx.numel():
            rows.append(torch.cat([images[idx], torch.ones(per_class - idx.numel(), *images.shape[1:])]))
    return to_uint8(torch.cat(rows)), per_class


def _draw_samples(m: EGC, s: EvalSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(images ``[n, C, H, W]`` in [-1, 1], labels ``[n]``): class-balanced with the guidance asked for
    (the model's own where None) when the model samples classes, else unconditional."""
    kw = dict(sampler=s.sampler, steps=s.steps, eta=s.eta, seed=s.seed, batch_size=s.batch_size, progress=not s.quiet)
    if m.conditional:
        return m.sample(s.n_samples, class_balanced=True, guidance=s.guidance, cfg=s.cfg, guidance_interval=s.guidance_interval, **kw)
    return m.sample(s.n_samples, **kw)


def generation_metrics(m: EGC, judge: Judge | None, test_x: torch.Tensor, s: EvalSettings, inception: Any = None
                       ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """(metrics, samples ``[n, C, H, W]`` in [-1, 1], labels ``[n]``): class-balanced samples (EGC) or
    unconditional ones (ddpm) judged in the judge's feature space against ``test_x`` (when there is a
    judge) and, with the FID Inception-v3 ``inception``, ``fid_inception`` / ``kid_inception`` on the
    same samples and reference images."""
    from .judge import judge_samples

    conditional = m.conditional
    imgs, labels = _draw_samples(m, s)
    kid_size = min(1000, s.n_samples, test_x.shape[0])
    res: dict[str, Any] = {}
    if judge is not None:
        judged_labels = labels if conditional else torch.zeros_like(labels)
        res = judge_samples(judge, imgs, judged_labels, test_x, batch_size=s.batch_size, seed=s.seed, kid_subset_size=kid_size)
        if not conditional:
            res.pop(f"cond_acc_{judge.name}", None)
    res["judge"] = None if judge is None else judge.name
    smp = m.config.sample  # the sampler as run: given settings, else the model's defaults
    sampler, steps = s.sampler or smp.sampler, s.steps or smp.steps
    if m.kind_info.sampler == "sgld":  # jem: Langevin on the logit energy, not a diffusion sampler
        res["sampler"] = {"name": "sgld", "steps": steps, "start": ("the run's replay buffer (for class y: entries the model classifies as y)"
                                                             if m.sgld_buffer is not None else "uniform noise")}
    else:
        res["sampler"] = {"name": sampler, "steps": steps, "eta": (smp.eta if s.eta is None else s.eta) if sampler == "ddim" else None}
    if inception is not None:
        from .inception import inception_metrics

        res.update(inception_metrics(inception, imgs, test_x, batch_size=min(s.batch_size, 50), kid_subset_size=kid_size, seed=s.seed))
        res["inception_weights"] = dict(inception.source)
    res.setdefault("n", int(imgs.shape[0]))
    res.setdefault("n_ref", int(test_x.shape[0]))
    return res, imgs, labels


def load_inception_flag(path: str | None) -> Any:
    """The FID Inception-v3 of ``--inception PATH`` (None without the flag); a one-line EgcError
    starting with ``--inception`` for a missing or foreign file."""
    if path is None:
        return None
    from .inception import load_inception

    try:
        net = load_inception(path, device="cuda" if torch.cuda.is_available() else "cpu")
    except EgcError as e:
        raise EgcError(f"--inception {e}") from None
    return net


def _settings_used(c: EvalContext, gen: dict[str, Any], why: str, inception: Any) -> None:
    """The judge's and Inception's absence, and the guidance the samples were drawn with, into ``gen``."""
    s, m, cfg = c.s, c.m, c.m.config
    if why:
        gen["judge_skipped"] = why
    if inception is None:
        gen["inception"] = INCEPTION_NOT_GIVEN
    gen["guidance"] = None if not m.can_classify else (cfg.sample.guidance if s.guidance is None else s.guidance)
    gen["cfg"] = cfg.sample.cfg if s.cfg is None else s.cfg
    gen["guidance_interval"] = list(s.guidance_interval or (cfg.sample.guidance_tmin, cfg.sample.guidance_tmax))


def generation(c: EvalContext, inception: Any) -> None:
    """metric gen: sample, judge (and/or Inception), naturalness against the test images, the sample grid."""
    from egc.imageio import save_grid

    s, m = c.s, c.m
    tick = time.perf_counter()
    judge, why = resolve_judge(m, c.data_name, s.judge)
    if judge is None and inception is None:
        c.skipped["gen"] = why
    else:
        gen, imgs, labels = generation_metrics(m, judge, c.x, s, inception)
        _settings_used(c, gen, why if judge is None else "", inception)
        if imgs.shape[1:] == c.x.shape[1:]:  # network-free statistics against the same test images
            from .naturalness import naturalness

            real_y = c.y if bool((labels >= 0).all()) else None
            gen["naturalness"] = naturalness(((imgs + 1) / 2).clamp(0, 1), labels if real_y is not None else None,
                                             ((c.x + 1) / 2).clamp(0, 1), real_y, seed=s.seed)
        c.metrics["generation"] = gen
        if c.out_dir is not None:
            u8, nrow = sample_grid_u8(imgs, labels, m.config.model.num_classes)
            c.artifacts["samples_png"] = str(save_grid(u8, c.out_dir / "samples.png", nrow=nrow, scale=2))
    c.wall["gen"] = time.perf_counter() - tick
