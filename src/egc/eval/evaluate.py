"""``egc eval``: every metric of one checkpoint, as one JSON document (schema ``egc-eval/1``).

Each metric group is a function of a loaded model (``m = EGC.load(spec)``) and tensors; ``run_eval``
loads the model and data, runs the groups the model kind supports and records why the others were
skipped. Images are float ``[N, C, H, W]`` in the model range [-1, 1] unless a name says ``x01``
(pixel scale [0, 1], which the attacks use so that eps budgets are the usual ones).

Model interface used: ``m.kind`` ("egc" | "classifier" | "ddpm"), ``m.config`` (RunConfig),
``m.logits(x, t)``, ``m.energy(x)``, ``m.sample(...)``, ``m.net`` (for a differentiable forward,
because ``m.logits`` runs without gradients), ``m.schedule`` (its abar_t) and, for a latent model,
``m.autoencoder`` (its network sees scaled latents: attacks differentiate through the encoder, noisy
accuracy noises the latents, samples come back decoded).
"""

from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from egc.errors import DataError, EgcError

SCHEMA = "egc-eval/1"
METRICS = ("acc", "ece", "noisy_acc", "robust", "ood", "gen")
# Asked for by name only (not in "all"): dc = the diffusion classifier (Li et al.) read out of the model's
# conditional eps, at --dc-schedule, on the first --n-dc test images (hundreds of network evaluations an image).
OPT_IN_METRICS = ("dc",)
CLASSIFY_METRICS = ("acc", "ece", "noisy_acc", "robust", "ood")
OOD_DATASETS = ("cifar10", "mnist", "fashion-mnist")
OOD_NOISE = ("uniform", "gaussian")
# The shipped judge of each data set (bench/train_feature_classifier.py; test accuracy in each file's meta):
# fashioncnn 92.1 %, cifarcnn 83.0 % on the JPEG copy of CIFAR-10 (10 epochs, crops and flips, BENCHMARKS.md 4).
DEFAULT_JUDGES = {"fashion-mnist": "zoo:fashioncnn", "cifar10": "zoo:cifarcnn"}
INCEPTION_NOT_GIVEN = ("not computed: pass --inception WEIGHTS (pytorch-fid's pt_inception-2015-12-05-6726825d.pth) "
                       "for fid_inception / kid_inception; fd_<judge> and kid_<judge> are not FID")


@dataclass
class EvalSettings:
    """Everything that decides the numbers (stored in the JSON as ``settings``)."""

    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    data: str | None = None  # None: the data set the model was trained on
    data_root: str | None = None
    n_test: int | None = None  # None: the whole test set
    noise_t: list[int] = field(default_factory=lambda: [0, 100, 250, 500, 750])
    n_robust: int = 500
    eps_linf: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    eps_l2: list[float] = field(default_factory=lambda: [0.5, 1.5, 3.0])
    pgd_steps: int = 20
    restarts: int = 2
    sanity: bool = True
    sanity_n: int = 100
    square_queries: int = 500
    ood_sets: list[str] | None = None  # None: uniform, gaussian and every other installed data set
    n_samples: int = 1000
    dc_schedule: str = "K:5,3:10"  # the diffusion classifier's rounds KEEP:TRIALS (K = every class)
    n_dc: int = 100
    sampler: str | None = None  # None: the model's own sampling defaults (config sample.*), as egc sample
    steps: int | None = None
    eta: float | None = None  # DDIM's noise (None: the model's, with DDIM)
    guidance: float | None = None  # None: the model's recommended scale (sample.guidance)
    cfg: float | None = None  # classifier-free guidance; None: the model's recommended scale (sample.cfg)
    guidance_interval: tuple[float, float] | None = None  # (tmin, tmax) of t/T where guidance acts; None: the model's
    judge: str | None = None  # None: the default judge of the data set, if any
    inception: str | None = None  # pytorch-fid's Inception-v3 weights file: fid_inception, kid_inception
    batch_size: int = 250
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    out_dir: str | None = None
    quiet: bool = False


# ---------------------------------------------------------------------------------------- model glue
def model_config(m: Any):
    """The model's RunConfig (``m.config``; ``m.cfg`` on other versions of the API)."""
    cfg = getattr(m, "config", None) or getattr(m, "cfg", None)
    if cfg is None:
        raise EgcError("model has no config")
    return cfg


def model_kind(m: Any) -> str:
    return getattr(m, "kind", "egc")


def image_shape(m: Any) -> tuple[int, int, int]:
    """(C, H, W) of the pixel images the model takes: for a latent model the autoencoder's, not its net's."""
    mc = model_config(m).model
    return tuple(getattr(mc, "pixel_shape", (mc.in_channels, mc.image_size, mc.image_size)))


def _autoencoder(m: Any):
    """The frozen autoencoder of a latent model (``m.autoencoder``), else None."""
    return getattr(m, "autoencoder", None)


def _latents(m: Any, x: torch.Tensor) -> torch.Tensor:
    """Pixels [B, C, H, W] in [-1, 1] -> what m's network sees: the scaled posterior mean of a latent
    model (differentiable, unlike ``Autoencoder.encode``, so attacks go through the encoder), else x."""
    ae = _autoencoder(m)
    return x if ae is None else ae.encode_differentiable(x)


def _noisy_logits(m: Any) -> bool:
    """Whether the model's head reads noisy inputs at timesteps (EGC), not only clean images."""
    from egc.kinds import kind_of

    return kind_of(model_kind(m)).noisy_logits


def model_logits_fn(m: Any, t: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Differentiable ``x01 [B, C, H, W] in [0, 1] -> logits [B, K]``: the computation of ``m.logits``
    (clean token by default, the model's precision), which itself runs under ``no_grad``."""
    from egc.diffusion import energy as en

    mc = model_config(m).model
    tt = en.CLEAN_T if t is None or not _noisy_logits(m) else int(t)
    autocast = getattr(m, "_autocast", None)

    def fn(x01: torch.Tensor) -> torch.Tensor:
        x = _latents(m, x01 * 2 - 1)  # a latent model's prediction path starts at its encoder
        with autocast() if autocast is not None else contextlib.nullcontext():
            return en.classify(m.net, mc, x, torch.full((x.shape[0],), tt, dtype=torch.long, device=x.device)).float()

    return fn


def _bar(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, leave=False, dynamic_ncols=True, file=sys.stderr)


@torch.no_grad()
def batched_logits(m: Any, x: torch.Tensor, t: int | None = None, batch_size: int = 250, quiet: bool = True, desc: str = "classify") -> torch.Tensor:
    """``m.logits`` over ``x`` ``[N, C, H, W]`` in [-1, 1] -> float ``[N, K]``."""
    out = []
    with _bar(x.shape[0], desc, quiet) as bar:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            out.append(m.logits(xb) if t is None else m.logits(xb, t))
            bar.update(xb.shape[0])
    return torch.cat(out).float()


@torch.no_grad()
def energy_scores(m: Any, x: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """OOD score ``[N]`` (higher = more OOD): ``m.energy(x)`` (t = 0) for EGC, -logsumexp(logits) for a classifier."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        if not _noisy_logits(m):  # the classifier baselines and jem: the logit energy of the clean head
            out.append(-torch.logsumexp(m.logits(xb).float(), dim=1))
        else:
            out.append(m.energy(xb).float())
    return torch.cat(out)


def noise_schedule_abar(m: Any, t: int) -> float:
    """abar_t of the model's schedule (``m.schedule``, else rebuilt from the config as the model does)."""
    sched = getattr(m, "schedule", None)
    if sched is None:
        from egc.diffusion.schedule import Schedule

        d = model_config(m).diffusion
        sched = Schedule.make(d.schedule, d.steps)
    return float(sched.abar(torch.tensor([t]))[0])


@torch.no_grad()
def _net_logits(m: Any, z: torch.Tensor, t: int, batch_size: int) -> torch.Tensor:
    """Logits [N, K] of the network itself on its own inputs z (a latent model's noisy latents) at t."""
    from egc.diffusion import energy as en

    mc = model_config(m).model
    autocast = getattr(m, "_autocast", None)
    out = []
    for i in range(0, z.shape[0], batch_size):
        zb = z[i:i + batch_size]
        with autocast() if autocast is not None else contextlib.nullcontext():
            out.append(en.classify(m.net, mc, zb, torch.full((zb.shape[0],), t, dtype=torch.long)).float())
    return torch.cat(out)


def noisy_accuracy(m: Any, x: torch.Tensor, y: torch.Tensor, ts: list[int], seed: int = 0, batch_size: int = 250,
                   quiet: bool = True) -> dict[str, float]:
    """``{str(t): accuracy of m.logits(x_t, t)}`` with x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps, one
    fixed noise draw per t; x ``[N, C, H, W]`` in [-1, 1], y ``[N]``. (A classifier baseline ignores t
    and sees x_t as a clean image.) A latent model is noised where it was trained to be: x is encoded
    once and the noise added to the latents."""
    latent = _autoencoder(m) is not None
    if latent:
        with torch.no_grad():
            x = torch.cat([_latents(m, x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    out: dict[str, float] = {}
    for t in ts:
        a = noise_schedule_abar(m, t)
        g = torch.Generator().manual_seed(seed + 1000 + t)
        xt = math.sqrt(a) * x + math.sqrt(1 - a) * torch.randn(x.shape, generator=g)
        if latent:
            pred = _net_logits(m, xt, t, batch_size).argmax(dim=1)
        else:
            pred = batched_logits(m, xt, t, batch_size, quiet, f"noisy t={t}").argmax(dim=1)
        out[str(t)] = float((pred == y).double().mean())
    return out


# ---------------------------------------------------------------------------------------- data
def _norm_name(name: str) -> str:
    return name.lower().replace("_", "-").replace("fashionmnist", "fashion-mnist").replace("cifar-10", "cifar10")


def cluster_purity(clusters: torch.Tensor, y: torch.Tensor) -> float:
    """Share of images whose cluster's most common true label is their own: sum over clusters of the
    largest label count, over N (clusters, y int64 [N]). 1 = every cluster holds one class."""
    if y.numel() == 0:
        return float("nan")
    k = int(clusters.max()) + 1
    c = int(y.max()) + 1
    counts = torch.zeros(k, c, dtype=torch.long)
    counts.index_put_((clusters.long(), y.long()), torch.ones_like(y, dtype=torch.long), accumulate=True)
    return float(counts.max(dim=1).values.sum()) / y.numel()


def load_test_set(m: Any, name: str, root: str | None, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """(x ``[n, C, H, W]`` in [-1, 1], y ``[n]``, size of the full test set, which split that is): a seeded
    random subset of the test split (a folder's held-out share), in the model's shape, its class count checked."""
    from egc.data import load_data, load_dataset, to_model_range

    shape = image_shape(m)
    own = model_config(m).data
    if name == own.name and root in (None, own.root):  # the model's own data, preprocessed and split as in training
        ds = load_data(own, "test", shape=shape)
    else:
        ds = load_dataset(name, "test", root, image_size=shape[1], channels=shape[0], fit=own.fit)
    got = (ds.channels, ds.image_size, ds.image_size)
    if got != shape:
        raise DataError(f"data set {name} has {got[0]}x{got[1]}x{got[2]} images but the model takes {shape[0]}x{shape[1]}x{shape[2]} (C x H x W)")
    k = model_config(m).model.num_classes
    if ds.num_classes != k and getattr(m, "can_classify", True) and getattr(m, "supervised", True):
        raise DataError(f"data set {name} has {ds.num_classes} classes but the model has {k}")
    if len(ds) == 0:
        raise DataError(f"data set {name} has no test images")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    if n is not None:
        idx = idx[:n]
    return to_model_range(ds.images[idx]), ds.labels[idx], len(ds), ds.split_note


def ood_sets(m: Any, data_name: str, names: list[str] | None, n: int, root: str | None, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({key: images ``[n', C, H, W]`` in [-1, 1]}, {name: why skipped}) for the requested OOD sets."""
    from egc.data import load_dataset

    from .ood import convert_images, gaussian_noise, ood_set_key, uniform_noise

    c, s, _ = image_shape(m)
    own = _norm_name(data_name)
    wanted = names if names is not None else [*OOD_NOISE, *(d for d in OOD_DATASETS if d != own)]
    sets: dict[str, torch.Tensor] = {}
    notes: dict[str, str] = {}
    for name in wanted:
        if name == "uniform":
            sets["uniform_noise"] = uniform_noise(n, (c, s, s), seed)
        elif name == "gaussian":
            sets["gaussian_noise"] = gaussian_noise(n, (c, s, s), seed + 1)
        else:
            ds, err = None, ""
            for r in dict.fromkeys([None, root]):  # the default locations first, then --data-root
                try:
                    ds = load_dataset(name, "test", r)
                    break
                except DataError as e:
                    err = str(e)
            if ds is None:
                notes[name] = f"not available ({err})"
                continue
            idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
            sets[ood_set_key(_norm_name(name), ds.channels, c)] = convert_images(ds.images[idx], c, s)
    return sets, notes


# ---------------------------------------------------------------------------------------- generation
def resolve_judge(m: Any, data_name: str, spec: str | None):
    """(Judge or None, reason when None). An explicitly given judge that does not fit is an error."""
    from .judge import load_judge

    given = spec is not None
    spec = spec or DEFAULT_JUDGES.get(_norm_name(data_name))
    if spec is None:
        return None, (f"no independent judge network for data set {data_name}; pass --judge FILE "
                      "(a network saved with egc.eval.save_feature_net)")
    judge = load_judge(spec)
    shape = image_shape(m)
    want = judge.meta.get("image_shape")
    problem = None
    if judge.net.in_ch != shape[0]:
        problem = f"judge {judge.name} takes {judge.net.in_ch}-channel images, the model makes {shape[0]}"
    elif want is not None and tuple(want) != shape:
        problem = f"judge {judge.name} was trained on {tuple(want)} images, the model makes {shape}"
    elif shape[1] < 16:
        problem = f"judge {judge.name} needs images of at least 16x16, the model makes {shape[1]}x{shape[2]}"
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


def generation_metrics(m: Any, judge, test_x: torch.Tensor, s: EvalSettings, inception=None) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """(metrics, samples ``[n, C, H, W]`` in [-1, 1], labels ``[n]``): class-balanced samples (EGC) or
    unconditional ones (ddpm) judged in the judge's feature space against ``test_x`` (when there is a
    judge) and, with the FID Inception-v3 ``inception``, ``fid_inception`` / ``kid_inception`` on the
    same samples and reference images."""
    from .judge import judge_samples

    conditional = bool(getattr(m, "conditional", True))
    kw = dict(sampler=s.sampler, steps=s.steps, eta=s.eta, seed=s.seed, batch_size=s.batch_size, progress=not s.quiet)
    if conditional:
        if s.guidance_interval is not None:  # only when asked: other versions of the API have no such argument
            kw["guidance_interval"] = s.guidance_interval
        imgs, labels = m.sample(s.n_samples, class_balanced=True, guidance=s.guidance, cfg=s.cfg, **kw)
    else:
        imgs, labels = m.sample(s.n_samples, **kw)
    kid_size = min(1000, s.n_samples, test_x.shape[0])
    res: dict[str, Any] = {}
    if judge is not None:
        judged_labels = labels if conditional else torch.zeros_like(labels)
        res = judge_samples(judge, imgs, judged_labels, test_x, batch_size=s.batch_size, seed=s.seed, kid_subset_size=kid_size)
        if not conditional:
            res.pop(f"cond_acc_{judge.name}", None)
    res["judge"] = None if judge is None else judge.name
    smp = getattr(model_config(m), "sample", None)  # the sampler as run: given settings, else the model's defaults
    if smp is not None:
        sampler = s.sampler or getattr(smp, "sampler", "ddim")
        res["sampler"] = {"name": sampler, "steps": s.steps or getattr(smp, "steps", 50),
                          "eta": (getattr(smp, "eta", 0.0) if s.eta is None else s.eta) if sampler == "ddim" else None}
    if inception is not None:
        from .inception import inception_metrics

        res.update(inception_metrics(inception, imgs, test_x, batch_size=min(s.batch_size, 50), kid_subset_size=kid_size, seed=s.seed))
        res["inception_weights"] = dict(inception.source)
    res.setdefault("n", int(imgs.shape[0]))
    res.setdefault("n_ref", int(test_x.shape[0]))
    return res, imgs, labels


# ---------------------------------------------------------------------------------------- the whole run
def load_inception_flag(path: str | None):
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


def parse_metrics(spec: str) -> list[str]:
    names = [p.strip().lower() for p in spec.split(",") if p.strip()]
    if not names:
        raise EgcError("--metrics: no metric given")
    if names == ["all"]:
        return list(METRICS)
    aliases = {"accuracy": "acc", "noisy": "noisy_acc", "noisy_accuracy": "noisy_acc", "generation": "gen", "ood_auroc": "ood"}
    out = []
    for n in names:
        n = aliases.get(n, n)
        if n not in METRICS + OPT_IN_METRICS:
            raise EgcError(f"--metrics: unknown metric '{n}' (choose from {', '.join(METRICS + OPT_IN_METRICS)} or all)")
        if n not in out:
            out.append(n)
    return out


def _clean(v: Any) -> Any:
    """NaN / inf -> None, floats to 6 significant digits, tuples -> lists, recursively: the JSON stays standard."""
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, torch.Tensor):
        return _clean(v.tolist())
    return v


@dataclass
class _Ctx:
    """What every metric step of ``run_eval`` reads (the model, the test images, the settings) and
    writes (metrics, skipped reasons, artifacts, wall times)."""

    m: Any
    s: EvalSettings
    checkpoint: str
    data_name: str
    x: torch.Tensor
    y: torch.Tensor
    out_dir: Path | None
    split_note: str = ""  # which images the test figures are on (a folder's held-out share, ...)
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def wants(self, name: str) -> bool:
        return name in self.s.metrics and name not in self.skipped


def _check_settings(cfg: Any, s: EvalSettings) -> None:
    if any(t < 0 or t >= cfg.diffusion.steps for t in s.noise_t):
        raise EgcError(f"--noise-t values must be in [0, {cfg.diffusion.steps - 1}], got {','.join(map(str, s.noise_t))}")
    if s.ood_sets is not None:
        bad = [n for n in s.ood_sets if n not in (*OOD_NOISE, *OOD_DATASETS)]
        if bad:
            raise EgcError(f"--ood-sets: unknown set '{bad[0]}' (choose from {', '.join((*OOD_NOISE, *OOD_DATASETS))})")


def _skips(c: _Ctx) -> None:
    """Why each requested metric that does not apply to this model or data is skipped (asked of the model)."""
    m, kind = c.m, model_kind(c.m)
    can_classify = bool(m.can_classify)
    can_generate = bool(m.can_generate)
    supervised = bool(getattr(m, "supervised", True))
    labelled = bool(c.y.numel()) and bool((c.y >= 0).all())
    for name in c.s.metrics:
        if name in CLASSIFY_METRICS and not can_classify:
            c.skipped[name] = f"a {kind} model does not classify"
        elif name in ("ece", "noisy_acc", "robust") and not supervised:
            c.skipped[name] = "an unsupervised model's classes are clusters, not labels (see cluster_purity)"
        elif name in ("acc", "ece", "noisy_acc", "robust") and not labelled:
            c.skipped[name] = f"the test images of {c.data_name} have no labels"
        if name == "gen" and not can_generate:
            c.skipped[name] = f"a {kind} model does not generate"
        if name == "dc" and not (m.conditional and m.kind_info.sampler == "diffusion"):
            c.skipped[name] = f"the diffusion classifier needs a class-conditional diffusion model; this is a {kind} model"


def _diffusion_classifier(c: _Ctx) -> None:
    """metric dc: accuracy of the diffusion classifier on the first n_dc test images, with its cost."""
    from .diffusion_classifier import diffusion_classify, evaluations, model_eps, parse_schedule

    tick = time.perf_counter()
    k = model_config(c.m).model.num_classes
    rounds = parse_schedule(c.s.dc_schedule.replace("K", str(k)), k)
    eps, space = model_eps(c.m)
    x, y = c.x[:c.s.n_dc], c.y[:c.s.n_dc]
    pred, _ = diffusion_classify(eps, space(x), k, c.m.schedule.alphas_cumprod, rounds, seed=c.s.seed)
    c.wall["dc"] = time.perf_counter() - tick
    c.metrics["diffusion_classifier"] = {"accuracy": float((pred.cpu() == y).double().mean()), "n": int(x.shape[0]), "schedule": c.s.dc_schedule,
                                         "evaluations_per_image": evaluations(rounds), "ms_per_image": round(1000 * c.wall["dc"] / x.shape[0], 1)}


def _accuracy_and_calibration(c: _Ctx) -> None:
    from egc.imageio import atomic_write_bytes

    from .calibration import ece_from_bins, reliability_bins, reliability_diagram_png

    if any(c.wants(n) for n in ("acc", "ece", "ood")):
        tick = time.perf_counter()
        c.logits = batched_logits(c.m, c.x, None, c.s.batch_size, c.s.quiet)
        c.wall["classify"] = time.perf_counter() - tick
    if c.wants("acc") and not getattr(c.m, "supervised", True):
        pred = c.logits.argmax(dim=1)
        c.metrics["cluster_purity"] = cluster_purity(pred, c.y)
        c.metrics["clusters_used"] = int(pred.unique().numel())
    elif c.wants("acc"):
        c.metrics["accuracy"] = float((c.logits.argmax(dim=1) == c.y).double().mean())
    if c.wants("ece"):
        bins = reliability_bins(torch.softmax(c.logits, dim=1), c.y)
        c.metrics["ece"] = ece_from_bins(bins)
        c.metrics["reliability"] = {"bins": len(bins["count"]), **bins}
        if c.out_dir is not None:
            p = c.out_dir / "reliability.png"
            atomic_write_bytes(p, reliability_diagram_png(bins, title=Path(str(c.checkpoint)).name))
            c.artifacts["reliability_png"] = str(p)
    if c.wants("noisy_acc"):
        tick = time.perf_counter()
        c.metrics["noisy_accuracy"] = noisy_accuracy(c.m, c.x, c.y, c.s.noise_t, c.s.seed, c.s.batch_size, c.s.quiet)
        c.wall["noisy_acc"] = time.perf_counter() - tick


def _robustness(c: _Ctx) -> None:
    from .attacks import robust_accuracy_curve, sanity_checks

    s, m = c.s, c.m
    tick = time.perf_counter()
    fn = model_logits_fn(m)
    x01, yr = (c.x[:s.n_robust] + 1) / 2, c.y[:s.n_robust]
    with torch.no_grad():  # the differentiable path must be the deployed one
        k8 = min(8, x01.shape[0])  # --n-robust may be below 8
        ref = batched_logits(m, c.x[:k8], None, s.batch_size)
        mismatch = float((fn(x01[:k8]) - ref).abs().max())
    rb: dict[str, Any] = {"n": int(x01.shape[0]), "steps": s.pgd_steps, "restarts": s.restarts, "attack": "pgd-ce",
                          "t": "clean" if model_kind(m) == "egc" else "n/a"}
    bs = min(s.batch_size, 100)
    for norm, eps_list in (("linf", s.eps_linf), ("l2", s.eps_l2)):
        if eps_list:
            curve = robust_accuracy_curve(fn, x01, yr, norm, eps_list, s.pgd_steps, s.restarts, bs, s.seed, progress=not s.quiet)
            rb[norm] = {f"{e:g}": a for e, a in curve.items()}
    if s.sanity and s.eps_linf:
        n_s = min(s.sanity_n, x01.shape[0])
        mid = sorted(s.eps_linf)[len(s.eps_linf) // 2]
        sanity = sanity_checks(fn, x01[:n_s], yr[:n_s], mid, s.pgd_steps, s.restarts, s.square_queries, bs, s.seed)
        sanity["attack_path_max_abs_diff"] = mismatch
        rb["sanity"] = sanity
    else:
        rb["sanity"] = {"skipped": "--no-sanity" if not s.sanity else "no L-inf eps given", "attack_path_max_abs_diff": mismatch}
    c.metrics["robust"] = rb
    c.wall["robust"] = time.perf_counter() - tick


def _out_of_distribution(c: _Ctx) -> None:
    from .ood import auroc

    s, m = c.s, c.m
    tick = time.perf_counter()
    sets, notes = ood_sets(m, c.data_name, s.ood_sets, c.x.shape[0], s.data_root, s.seed)
    e_in = energy_scores(m, c.x, s.batch_size)
    msp_in = -torch.softmax(c.logits, dim=1).max(dim=1).values
    ood: dict[str, Any] = {}
    ood_msp: dict[str, Any] = {}
    for key, xo in sets.items():
        ood[key] = auroc(e_in, energy_scores(m, xo, s.batch_size))
        ood_msp[key] = auroc(msp_in, -torch.softmax(batched_logits(m, xo, None, s.batch_size), dim=1).max(dim=1).values)
    c.metrics["ood_auroc"] = ood
    c.metrics["ood_auroc_msp"] = ood_msp
    if notes:
        c.metrics["ood_notes"] = notes
    c.wall["ood"] = time.perf_counter() - tick


def _generation(c: _Ctx, inception: Any) -> None:
    from egc.imageio import save_grid

    s, m = c.s, c.m
    cfg = model_config(m)
    tick = time.perf_counter()
    judge, why = resolve_judge(m, c.data_name, s.judge)
    if judge is None and inception is None:
        c.skipped["gen"] = why
    else:
        gen, imgs, labels = generation_metrics(m, judge, c.x, s, inception)
        if judge is None:
            gen["judge_skipped"] = why
        if inception is None:
            gen["inception"] = INCEPTION_NOT_GIVEN
        gen["guidance"] = None if not m.can_classify else (cfg.sample.guidance if s.guidance is None else s.guidance)
        gen["cfg"] = cfg.sample.cfg if s.cfg is None else s.cfg
        own = (getattr(cfg.sample, "guidance_tmin", 0.0), getattr(cfg.sample, "guidance_tmax", 1.0))
        gen["guidance_interval"] = list(s.guidance_interval or own)
        if imgs.shape[1:] == c.x.shape[1:]:  # network-free statistics against the same test images
            from .naturalness import naturalness

            real_y = c.y if bool((labels >= 0).all()) else None
            gen["naturalness"] = naturalness(((imgs + 1) / 2).clamp(0, 1), labels if real_y is not None else None,
                                             ((c.x + 1) / 2).clamp(0, 1), real_y, seed=s.seed)
        c.metrics["generation"] = gen
        if c.out_dir is not None:
            u8, nrow = sample_grid_u8(imgs, labels, cfg.model.num_classes)
            c.artifacts["samples_png"] = str(save_grid(u8, c.out_dir / "samples.png", nrow=nrow, scale=2))
    c.wall["gen"] = time.perf_counter() - tick


def run_eval(checkpoint: str, s: EvalSettings, model: Any = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` and return the ``egc-eval/1`` document; PNGs go to ``s.out_dir`` when set."""
    t_start = time.perf_counter()
    inception = load_inception_flag(s.inception)  # before the model: a bad file fails at once
    if model is None:
        from egc.model import EGC

        model = EGC.load(checkpoint, precision=s.precision, device=s.device)
    m = model
    kind = model_kind(m)
    cfg = model_config(m)
    data_name = s.data or cfg.data.name
    _check_settings(cfg, s)
    tick = time.perf_counter()
    x, y, n_full, split_note = load_test_set(m, data_name, s.data_root, s.n_test, s.seed)
    c = _Ctx(m, s, checkpoint, data_name, x, y, Path(s.out_dir) if s.out_dir else None, split_note)
    c.wall["load"] = time.perf_counter() - tick
    _skips(c)
    _accuracy_and_calibration(c)
    if c.wants("robust"):
        _robustness(c)
    if c.wants("ood"):
        _out_of_distribution(c)
    if c.wants("gen"):
        _generation(c, inception)
    if c.wants("dc"):
        _diffusion_classifier(c)
    wall, metrics, skipped, artifacts = c.wall, c.metrics, c.skipped, c.artifacts
    wall["total"] = time.perf_counter() - t_start

    settings = asdict(s)
    from egc.host import cpu_name

    settings.update(data=data_name, torch=torch.__version__, threads=torch.get_num_threads(), python=platform.python_version(), cpu=cpu_name(),
                    precision=getattr(m, "precision", s.precision))
    ckpt_file = None
    with contextlib.suppress(Exception):
        from egc.checkpoint import resolve

        ckpt_file = str(resolve(checkpoint))
    doc = {
        "schema": SCHEMA,
        "checkpoint": str(checkpoint),
        "checkpoint_file": ckpt_file,
        "kind": kind,
        "data": data_name,
        "n_test": int(x.shape[0]),
        "test_split": c.split_note,
        "n_test_full": n_full,
        "metrics": metrics,
        "skipped": skipped,
        "artifacts": artifacts,
        "wall_time_s": {k2: round(v, 3) for k2, v in wall.items()},
        "settings": settings,
    }
    return _clean(doc)
