"""The ``egc eval`` and ``egc report`` subcommands (wired into ``egc.cli`` by ``add_eval_parsers``).

Bad input is an :class:`EgcError` (one line, exit 2 through ``egc.cli.main``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from egc.config import PRECISION_HELP, PRECISIONS
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
    from .evaluate import EvalSettings, parse_metrics

    for flag, v in (("--n-test", a.n_test), ("--n-samples", a.n_samples), ("--steps", a.steps), ("--pgd-steps", a.pgd_steps),
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
        n_samples=a.n_samples, sampler=a.sampler, steps=a.steps, guidance=a.guidance, cfg=a.cfg, guidance_interval=interval, eta=a.eta, judge=a.judge, inception=a.inception,
        batch_size=a.batch_size, seed=a.seed, precision=a.precision, device=a.device, out_dir=a.out_dir, quiet=a.quiet)


def cmd_eval(a: argparse.Namespace) -> int:
    from egc.imageio import atomic_write_bytes, check_output_dir, check_output_file

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


def add_eval_parsers(sub) -> None:
    """Add ``eval`` and ``report`` to the ``egc`` subparsers ``sub``."""
    e = sub.add_parser("eval", help="accuracy, calibration, noisy accuracy, adversarial robustness, OOD detection and sample quality of a checkpoint")
    e.add_argument("checkpoint", nargs="?", help="checkpoint file, run folder, or zoo:NAME (or give --samples instead)")
    e.add_argument("--samples", metavar="FILE.npz", help="score these generated images instead of a checkpoint's (uint8 images [N,H,W,C], "
                   "labels [N] as egc cag --npz / egc sample --npz write them): judge metrics and network-free naturalness "
                   "statistics against --data's test images (--n-test of them)")
    e.add_argument("--data", help="test set (default: the data set the model was trained on)")
    e.add_argument("--data-root", help="where the data set lives")
    e.add_argument("--metrics", default="all", help="comma-separated: acc,ece,noisy_acc,robust,ood,gen (default all)")
    e.add_argument("--n-test", type=int, help="test images (a seeded random subset; default the whole test set)")
    e.add_argument("--noise-t", default="0,100,250,500,750", help="timesteps t for noisy accuracy")
    e.add_argument("--eps-linf", default="0.05,0.1,0.2", help="L-inf budgets, pixel scale [0, 1] ('' = none)")
    e.add_argument("--eps-l2", default="0.5,1.5,3", help="L2 budgets, pixel scale [0, 1] ('' = none)")
    e.add_argument("--pgd-steps", type=int, default=20)
    e.add_argument("--restarts", type=int, default=2, help="PGD random restarts (per-example worst case)")
    e.add_argument("--n-robust", type=int, default=500, help="test images attacked (the first of the --n-test subset)")
    e.add_argument("--square-queries", type=int, default=500, help="Square attack iterations for the gradient-masking check")
    e.add_argument("--sanity-n", type=int, default=100, help="images for the attack sanity checks")
    e.add_argument("--no-sanity", action="store_true", help="skip the attack sanity checks")
    e.add_argument("--ood-sets", default="auto", help="uniform,gaussian,cifar10,mnist,fashion-mnist (default auto: noise and every other installed set)")
    e.add_argument("--n-samples", type=int, default=1000, help="generated samples for the generation metrics (class-balanced)")
    e.add_argument("--sampler", default="ddim", choices=["ddpm", "ddim", "dpm++2m"])
    e.add_argument("--steps", type=int, default=50, help="sampler steps")
    e.add_argument("--guidance", type=float, default=None, help="classifier guidance scale (default: the model's recommended scale)")
    e.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale of a conditional model (default: the model's recommended scale)")
    e.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guidance acts only at sampler steps with LO <= t/T <= HI (default: the model's own)")
    e.add_argument("--eta", type=float, default=None, help="DDIM noise (default 0: deterministic; 1 = DDPM variance); ddim only")
    e.add_argument("--device", default="auto", help="auto (cuda when available, the default) | cpu | cuda[:N]")
    e.add_argument("--judge", help="feature network for generation metrics (zoo:NAME or file; default zoo:fashioncnn for fashion-mnist, zoo:cifarcnn for cifar10)")
    e.add_argument("--inception", metavar="WEIGHTS", help="pytorch-fid's Inception-v3 weights file pt_inception-2015-12-05-6726825d.pth "
                   "(downloaded by you; egc never downloads): adds the standard fid_inception and kid_inception to the generation metrics")
    e.add_argument("--json", help="write the result here (default OUT_DIR/eval.json when there is an --out-dir)")
    e.add_argument("--out-dir", help="folder for eval.json, reliability.png and samples.png (default RUN/eval for a run folder)")
    e.add_argument("--batch-size", type=int, default=250)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    e.add_argument("--threads", type=int)
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("report", help="one self-contained HTML page (or, for --out X.md, a Markdown table) comparing egc eval results")
    r.add_argument("inputs", nargs="+", metavar="RUN_OR_JSON", help="eval JSON files or folders holding eval.json (or eval/eval.json)")
    r.add_argument("--out", default="report.html", help="an .html page, or an .md file for the metric table as Markdown")
    r.add_argument("--title", default="egc evaluation")
    r.set_defaults(fn=cmd_report)
