"""The ``egc eval`` and ``egc report`` subcommands (wired into ``egc.cli`` by ``add_eval_parsers``).

Bad input is an :class:`EgcError` (one line, exit 2 through ``egc.cli.main``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from egc.config import PRECISION_HELP, PRECISIONS, SAMPLER_NAMES
from egc.argtypes import nonneg_float, nonneg_int, positive_float, positive_int
from egc.errors import EgcError


def _floats(flag: str, s: str) -> list[float]:
    out = []
    for p in s.split(","):
        if not p.strip():
            continue
        try:
            v = float(p)
        except ValueError:
            raise EgcError(f"{flag}: expected comma-separated numbers, got '{s}'") from None
        if not (math.isfinite(v) and v >= 0):
            raise EgcError(f"{flag}: values must be finite and >= 0, got {p.strip()}")
        out.append(v)
    return out


def _ints(flag: str, s: str) -> list[int]:
    try:
        return [int(p) for p in s.split(",") if p.strip()]
    except ValueError:
        raise EgcError(f"{flag}: expected comma-separated integers, got '{s}'") from None


def _positive(flag: str, v: int | None) -> None:
    if v is not None and v < 1:
        raise EgcError(f"{flag} must be >= 1, got {v}")


def settings_from_args(a: argparse.Namespace):
    """EvalSettings from parsed ``egc eval`` flags (validated; EgcError on bad values)."""
    from ..config import parse_guidance_interval
    from .settings import EvalSettings, parse_metrics

    for flag, v in (("--n-test", a.n_test), ("--n-samples", a.n_samples), ("--n-dc", a.n_dc), ("--steps", a.steps), ("--pgd-steps", a.pgd_steps),
                    ("--restarts", a.restarts), ("--n-robust", a.n_robust), ("--square-queries", a.square_queries),
                    ("--sanity-n", a.sanity_n), ("--batch-size", a.batch_size), ("--threads", a.threads)):
        _positive(flag, v)
    for flag, v in (("--guidance", a.guidance), ("--cfg", a.cfg), ("--eta", a.eta)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise EgcError(f"{flag} must be finite and >= 0, got {v}")
    interval = None if a.guidance_interval is None else parse_guidance_interval(a.guidance_interval, "--guidance-interval")
    ood = None if a.ood_sets in (None, "auto") else [p.strip().lower() for p in a.ood_sets.split(",") if p.strip()]
    return EvalSettings(
        metrics=parse_metrics(a.metrics), data=a.data, data_root=a.data_root, n_test=a.n_test, noise_t=_ints("--noise-t", a.noise_t),
        n_robust=a.n_robust, eps_linf=_floats("--eps-linf", a.eps_linf), eps_l2=_floats("--eps-l2", a.eps_l2), pgd_steps=a.pgd_steps,
        restarts=a.restarts, sanity=not a.no_sanity, sanity_n=a.sanity_n, square_queries=a.square_queries, ood_sets=ood,
        n_samples=a.n_samples, dc_schedule=a.dc_schedule, n_dc=a.n_dc, sampler=a.sampler, steps=a.steps, guidance=a.guidance, cfg=a.cfg, guidance_interval=interval, eta=a.eta, judge=a.judge, inception=a.inception,
        batch_size=a.batch_size, seed=a.seed, precision=a.precision, device=a.device, out_dir=a.out_dir, quiet=a.quiet)


def cmd_eval(a: argparse.Namespace) -> int:
    from egc.imageio import check_output_dir, check_output_file

    from .evaluate import run_eval
    from .inception import WEIGHTS_HINT

    if (a.checkpoint is None) == (a.samples is None):
        raise EgcError("egc eval takes a checkpoint or --samples FILE.npz (one of the two)")
    if a.samples is not None:
        return _eval_samples(a)
    if a.inception is not None and not Path(a.inception).is_file():  # before loading anything (run_eval checks the contents)
        raise EgcError(f"--inception {a.inception}: Inception weights file not found; {WEIGHTS_HINT}")
    if a.out_dir is None and a.json is None and Path(a.checkpoint).is_dir():
        a.out_dir = str(Path(a.checkpoint) / "eval")  # a run folder keeps its evaluation beside it
    if a.out_dir is not None:
        check_output_dir(a.out_dir, "--out-dir")
    if a.json is None and a.out_dir is not None:
        a.json = str(Path(a.out_dir) / "eval.json")
    if a.json is not None:
        check_output_file(a.json, "--json")
    s = settings_from_args(a)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    _emit(run_eval(a.checkpoint, s), a.json)
    return 0


def _emit(doc: dict, json_path: str | None) -> None:
    """Print the result document and, with --json, write it there atomically."""
    from egc.imageio import atomic_write_bytes

    text = json.dumps(doc, indent=2, allow_nan=False)
    if json_path is not None:
        atomic_write_bytes(Path(json_path), (text + "\n").encode())
        print(f"wrote {json_path}", file=sys.stderr)
    print(text)


def _eval_samples(a: argparse.Namespace) -> int:
    """``egc eval --samples FILE.npz --data NAME``: judge and naturalness metrics of a set of images."""
    from egc.imageio import check_output_file

    from .samples import load_samples_npz, score_samples

    if not a.data:
        raise EgcError("--samples needs --data NAME: the data set whose test images are the reference")
    _positive("--n-test", a.n_test)
    if a.json is not None:
        check_output_file(a.json, "--json")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    images, labels = load_samples_npz(a.samples)
    doc = {"samples": str(a.samples), **score_samples(images, labels, a.data, data_root=a.data_root, judge=a.judge,
                                                      n_ref=a.n_test, seed=a.seed, batch_size=a.batch_size or 250)}
    from egc.host import cpu_name

    from .evaluate import _clean

    doc["cpu"] = cpu_name()
    _emit(_clean(doc), a.json)  # NaN (too few images for precision / recall) -> null
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report import write_report

    out = write_report(a.inputs, a.out, a.title)
    print(json.dumps({"report": str(out), "models": len(a.inputs)}))
    return 0


def cmd_certify(a: argparse.Namespace) -> int:
    """Randomized smoothing (Cohen et al. 2019) on a seeded subset of the model's test split."""
    import time

    import torch

    from egc.data import load_data, load_dataset, to_model_range
    from egc.host import cpu_name
    from egc.model import EGC

    from .smoothing import base_classifier, certified_accuracy, certify

    for flag, v in (("--n0", a.n0), ("--n", a.n), ("--n-test", a.n_test), ("--batch-size", a.batch_size)):
        _positive(flag, v)
    if not (0 < a.alpha < 1):
        raise EgcError(f"--alpha must be in (0, 1), got {a.alpha}")
    if not (math.isfinite(a.sigma) and a.sigma > 0):
        raise EgcError(f"--sigma must be > 0 (on [0, 1] pixels), got {a.sigma}")
    radii = _floats("--radii", a.radii)
    if a.threads:
        torch.set_num_threads(a.threads)
    m = EGC.load(a.checkpoint, precision=a.precision, device=a.device)
    base, how = base_classifier(m, a.sigma)
    c, h, _ = m.image_shape
    name = a.data or m.config.data.name
    ds = (load_data(m.config.data, "test", shape=m.image_shape) if name == m.config.data.name
          else load_dataset(name, "test", a.data_root, image_size=h, channels=c))
    if ds.num_classes != m.config.model.num_classes:
        raise EgcError(f"data set {name} has {ds.num_classes} classes but the model has {m.config.model.num_classes}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(a.seed))[:a.n_test]
    gen = torch.Generator().manual_seed(a.seed + 1)
    certs, t0 = [], time.perf_counter()
    from tqdm.auto import tqdm

    for i in tqdm(idx.tolist(), desc="certify", disable=a.quiet):
        x = to_model_range(ds.images[i:i + 1])[0]
        certs.append(certify(base, x, a.sigma, a.n0, a.n, a.alpha, m.config.model.num_classes, a.batch_size, gen))
    seconds = time.perf_counter() - t0
    labels = ds.labels[idx].tolist()
    doc = {"schema": "egc-certify/1", "checkpoint": a.checkpoint, "data": name, "test_split": ds.split_note, "n_test": len(certs),
           "sigma": a.sigma, "n0": a.n0, "n": a.n, "alpha": a.alpha, "base_classifier": how,
           "certified_accuracy": certified_accuracy(certs, labels, [0.0, *radii]),
           "abstain": sum(cc.label == -1 for cc in certs) / max(1, len(certs)),
           "evaluations_per_image": a.n0 + a.n, "ms_per_image": round(1000 * seconds / max(1, len(certs)), 1),
           "radius_units": "L2 on [0, 1] pixels", "cpu": cpu_name(), "precision": m.precision,
           "per_image": [{"index": int(i), "label": y, "pred": cc.label, "radius": round(cc.radius, 4), "p_lower": round(cc.p_lower, 5)}
                         for i, y, cc in zip(idx.tolist(), labels, certs)]}
    _emit(doc, a.json)
    return 0


def add_eval_parsers(sub) -> None:
    """Add ``eval``, ``certify`` and ``report`` to the ``egc`` subparsers ``sub``."""
    _add_eval(sub)
    _add_certify(sub)
    _add_report(sub)


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="accuracy, calibration, noisy accuracy, adversarial robustness, OOD detection and sample quality of a checkpoint")
    e.add_argument("checkpoint", nargs="?", help="checkpoint file, run folder, or zoo:NAME (or give --samples instead)")
    e.add_argument("--samples", metavar="FILE.npz", help="score these generated images instead of a checkpoint's (uint8 images [N,H,W,C], "
                   "labels [N] as egc cag --npz / egc sample --npz write them): judge metrics and network-free naturalness "
                   "statistics against --data's test images (--n-test of them)")
    e.add_argument("--data", help="test set (default: the data set the model was trained on)")
    e.add_argument("--data-root", help="where the data set lives")
    e.add_argument("--metrics", default="all", help="comma-separated: acc,ece,noisy_acc,robust,ood,gen (default all), and dc (the diffusion classifier) by name")
    e.add_argument("--n-test", type=positive_int, help="test images (a seeded random subset; default the whole test set)")
    e.add_argument("--noise-t", default="0,100,250,500,750", help="timesteps t for noisy accuracy")
    e.add_argument("--eps-linf", default="0.05,0.1,0.2", help="L-inf budgets, pixel scale [0, 1] ('' = none)")
    e.add_argument("--eps-l2", default="0.5,1.5,3", help="L2 budgets, pixel scale [0, 1] ('' = none)")
    e.add_argument("--pgd-steps", type=nonneg_int, default=20)
    e.add_argument("--restarts", type=nonneg_int, default=2, help="PGD random restarts (per-example worst case)")
    e.add_argument("--n-robust", type=positive_int, default=500, help="test images attacked (the first of the --n-test subset)")
    e.add_argument("--square-queries", type=nonneg_int, default=500, help="Square attack iterations for the gradient-masking check")
    e.add_argument("--sanity-n", type=positive_int, default=100, help="images for the attack sanity checks")
    e.add_argument("--no-sanity", action="store_true", help="skip the attack sanity checks")
    e.add_argument("--ood-sets", default="auto", help="uniform,gaussian,cifar10,mnist,fashion-mnist (default auto: noise and every other installed set)")
    e.add_argument("--n-samples", type=positive_int, default=1000, help="generated samples for the generation metrics (class-balanced)")
    e.add_argument("--dc-schedule", default="K:5,3:10", metavar="KEEP:TRIALS,...", help="metric dc (asked for by name: --metrics acc,dc): "
                   "the diffusion classifier's rounds (K = all classes; Li et al.: 10:50,5:450)")
    e.add_argument("--n-dc", type=positive_int, default=100, help="metric dc: test images it classifies (the first of the --n-test subset)")
    e.add_argument("--sampler", default=None, choices=SAMPLER_NAMES, help="default: the model's own (egc zoo lists it)")
    e.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the model's own)")
    e.add_argument("--guidance", type=nonneg_float, default=None, help="classifier guidance scale (default: the model's recommended scale)")
    e.add_argument("--cfg", type=nonneg_float, default=None, help="classifier-free guidance scale of a conditional model (default: the model's recommended scale)")
    e.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guidance acts only at sampler steps with LO <= t/T <= HI (default: the model's own)")
    e.add_argument("--eta", type=nonneg_float, default=None, help="DDIM noise, ddim only (default: the model's own: 1 pixel, 0 latent models)")
    e.add_argument("--device", default="auto", help="auto (cuda when available, the default) | cpu | cuda[:N]")
    e.add_argument("--judge", help="feature network for generation metrics (zoo:NAME or file; default zoo:fashioncnn for fashion-mnist, zoo:cifarcnn for cifar10)")
    e.add_argument("--inception", metavar="WEIGHTS", help="pytorch-fid's Inception-v3 weights file pt_inception-2015-12-05-6726825d.pth "
                   "(downloaded by you; egc never downloads): adds the standard fid_inception and kid_inception to the generation metrics")
    e.add_argument("--json", help="write the result here (default OUT_DIR/eval.json when there is an --out-dir)")
    e.add_argument("--out-dir", help="folder for eval.json, reliability.png and samples.png (default RUN/eval for a run folder)")
    e.add_argument("--batch-size", type=positive_int, default=250)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    e.add_argument("--threads", type=positive_int)
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(fn=cmd_eval)


def _add_certify(sub) -> None:
    c = sub.add_parser("certify", help="certified L2 robustness by randomized smoothing (EGC's noisy head needs no denoiser)")
    c.add_argument("checkpoint", help="checkpoint file, run folder, or zoo:NAME (pixel models: egc or classifier)")
    c.add_argument("--sigma", type=positive_float, default=0.25, help="smoothing noise on [0, 1] pixels (default 0.25)")
    c.add_argument("--n0", type=positive_int, default=100, help="noisy copies that pick the class (default 100)")
    c.add_argument("--n", type=positive_int, default=1000, help="noisy copies that bound its probability (Cohen et al.: 100,000; default 1,000 on a CPU)")
    c.add_argument("--alpha", type=positive_float, default=0.001, help="failure probability of the certificate (default 0.001)")
    c.add_argument("--radii", default="0.25,0.5", help="L2 radii (on [0, 1] pixels) to report certified accuracy at")
    c.add_argument("--n-test", type=positive_int, default=100, help="test images (a seeded random subset)")
    c.add_argument("--data", help="test set (default: the model's own, its held-out split for a folder)")
    c.add_argument("--data-root", help="where the data set lives")
    c.add_argument("--batch-size", type=positive_int, default=500)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", help="also write the result here")
    c.add_argument("--device", default="auto", help="auto (cuda when available, the default) | cpu | cuda[:N]")
    c.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    c.add_argument("--threads", type=positive_int)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(fn=cmd_certify)


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="one self-contained HTML page (or, for --out X.md, a Markdown table) comparing egc eval results")
    r.add_argument("inputs", nargs="+", metavar="RUN_OR_JSON", help="eval JSON files or folders holding eval.json (or eval/eval.json)")
    r.add_argument("--out", default="report.html", help="an .html page, or an .md file for the metric table as Markdown")
    r.add_argument("--title", default="egc evaluation")
    r.set_defaults(fn=cmd_report)
