"""The ``egc`` command: thin subcommands that parse, load, and call the library.

Every user-facing problem is an :class:`EgcError` and is printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .config import MODEL_SIZES, PRECISION_HELP, PRECISIONS, SAMPLER_NAMES
from .argtypes import interval as _interval
from .argtypes import nonneg_float as _nonneg_float
from .argtypes import positive_float as _positive_float
from .argtypes import positive_int as _positive_int
from .errors import EgcError

DEVICE_HELP = "auto (cuda when available, the default) | cpu | cuda[:N]: where the network runs"


INTERVAL_HELP = ("LO,HI: guidance (both kinds) acts only at sampler steps with LO <= t/T <= HI, the plain conditional "
                 "energy elsewhere (default: the model's own, 0,1 = every step unless measured otherwise)")


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line errors of the rest of the CLI (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _set_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def cmd_train(a: argparse.Namespace) -> int:
    from .config import load_config
    from .train.stages import train_run

    overrides = list(a.set or [])
    for flag, key in ((a.model, "model.kind"), (a.model_size, "model.size"), (a.data, "data.name"), (a.data_root, "data.root"), (a.steps, "train.steps"),
                      (a.minutes, "train.minutes"), (a.batch_size, "train.batch_size"), (a.lr, "train.lr"), (a.seed, "train.seed"),
                      (a.threads, "train.threads"), (a.device, "train.device"), (a.image_size, "data.image_size"), (a.fit, "data.fit"),
                      (a.holdout, "data.holdout")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    base = a.config
    if a.resume and base is None:
        # Resuming without --config continues the run's own resolved config; flags still override it.
        saved = Path(a.out) / "config.yaml"
        base = saved if saved.is_file() else None
    from .imageio import check_output_dir

    check_output_dir(a.out)
    cfg = load_config(base, overrides)
    if a.resume and a.model_size is not None:  # the architecture of a run comes from its checkpoint
        from .checkpoint import latest_in, load_checkpoint

        found = latest_in(Path(a.out))
        have = load_checkpoint(found).config.model.size if found is not None else a.model_size
        if have != a.model_size:
            raise EgcError(f"--resume: {found} is a model size '{have}' run; --model-size {a.model_size} cannot change it (drop the flag or use another --out)")
    if a.resume and (a.image_size is not None or a.fit is not None or a.holdout is not None):
        raise EgcError("--resume: a run's preprocessing and held-out split are fixed when it starts (drop --image-size / --fit / --holdout)")
    summary = train_run(cfg, a.out, resume=a.resume, quiet=a.quiet, stop_after_minutes=a.stop_after)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line (rank 0's)
        print(json.dumps(summary))
    return 0


def _load(spec: str, precision: str, device: str = "cpu"):
    from .model import EGC

    return EGC.load(spec, precision=precision, device=device)


def cmd_sample(a: argparse.Namespace) -> int:
    import numpy as np

    from .data import to_uint8
    from .imageio import atomic_write_bytes, check_output_file, save_grid

    if a.npz is not None and Path(a.npz).suffix != ".npz":
        raise EgcError(f"--npz path must end in .npz, got {a.npz}")
    check_output_file(a.out)  # before any work: a bad output path should not cost a sampling run
    if a.npz is not None:
        check_output_file(a.npz, "--npz")
    _set_threads(a.threads)
    m = _load(a.checkpoint, a.precision, a.device)
    labels = None
    if a.label is not None:
        labels = [_class_id(m, s) for s in a.label.split(",")]
        if len(labels) == 1:
            labels = labels * a.n
    imgs, y = m.sample(a.n, labels=labels, class_balanced=a.class_balanced, sampler=a.sampler, steps=a.steps, guidance=a.guidance,
                       eta=a.eta, seed=a.seed, batch_size=a.batch_size, progress=not a.quiet, cfg=a.cfg,
                       guidance_interval=a.guidance_interval)
    u8 = to_uint8(imgs)
    k = m.config.model.num_classes
    nrow = a.n // k if a.class_balanced and a.n % k == 0 and a.n // k > 1 else None
    out = save_grid(u8, a.out, nrow=nrow, scale=a.scale)
    smp = m.config.sample
    sampler = a.sampler or smp.sampler
    result = {"grid": str(out), "n": a.n, "sampler": sampler, "steps": a.steps or min(smp.steps, m.schedule.num_steps),
              "eta": (smp.eta if a.eta is None else a.eta) if sampler == "ddim" else None,
              "guidance": m.config.sample.guidance if a.guidance is None else a.guidance, "cfg": m.config.sample.cfg if a.cfg is None else a.cfg,
              "guidance_interval": list(a.guidance_interval or (m.config.sample.guidance_tmin, m.config.sample.guidance_tmax)),
              "device": str(m.device), "precision": m.precision}
    if a.npz:
        import io

        buf = io.BytesIO()
        np.savez(buf, images=u8.numpy(), labels=y.numpy().astype(np.int64))
        try:
            atomic_write_bytes(Path(a.npz), buf.getvalue())
        except BaseException:
            out.unlink(missing_ok=True)  # all outputs or none
            raise
        result["npz"] = a.npz
    print(json.dumps(result))
    return 0


def _class_id(m, s: str) -> int:
    from .classes import class_index

    return class_index(m.class_names, s.strip(), "this model")


def cmd_classify(a: argparse.Namespace) -> int:
    import torch

    from .imageio import collect_images

    _set_threads(a.threads)
    m = _load(a.checkpoint, a.precision, a.device)
    files = collect_images(a.images)
    notes: list[list[str]] = []
    x = m.preprocess(files, notes=notes)  # the model's training preprocessing, whatever the files' size and mode
    if a.method == "diffusion":
        return _classify_diffusion(a, m, files, x)
    probs = torch.cat([m.predict_proba(x[i:i + 256]) for i in range(0, len(x), 256)])
    energy = torch.cat([m.energy(x[i:i + 256]) for i in range(0, len(x), 256)])
    topk = min(a.top_k, probs.shape[1])
    rows = []
    for f, p, e, changed in zip(files, probs, energy, notes):
        v, i = p.topk(topk)
        rows.append({"image": str(f), "energy": round(float(e), 4), "preprocessed": changed,
                     "top": [{"class": int(j), "name": m.class_names[int(j)], "prob": round(float(q), 4)} for q, j in zip(v, i)]})
    if any(notes):
        resized = sum(any(n.startswith("resized") for n in ns) for ns in notes)
        print(f"egc classify: {resized} of {len(files)} image(s) resized to the model's {m.prep.describe()}"
              + (f"; other conversions: {', '.join(sorted({n for ns in notes for n in ns if not n.startswith('resized')}))}"
                 if any(n for ns in notes for n in ns if not n.startswith("resized")) else ""), file=sys.stderr)
    if a.json:
        print(json.dumps(rows, indent=None))
    else:
        for r in rows:
            tops = ", ".join(f"{t['name']} {t['prob']:.3f}" for t in r["top"])
            print(f"{r['image']}: {tops}  (energy {r['energy']:.2f})")
    return 0


def _classify_diffusion(a: argparse.Namespace, m, files: list, x) -> int:
    """``egc classify --method diffusion``: Li et al.'s pruned ELBO classifier on the model's conditional eps."""
    import time

    from .eval.diffusion_classifier import diffusion_classify, evaluations, model_eps, parse_schedule

    k = m.config.model.num_classes
    rounds = parse_schedule(a.dc_schedule.replace("K", str(k)), k)
    eps, space = model_eps(m)
    t0 = time.perf_counter()
    pred, err = diffusion_classify(eps, space(x), k, m.schedule.alphas_cumprod, rounds, seed=a.seed)
    ms = 1000 * (time.perf_counter() - t0) / len(files)
    rows = [{"image": str(f), "method": "diffusion", "class": int(p), "name": m.class_names[int(p)], "evaluations": evaluations(rounds),
             "ms": round(ms, 1), "errors": {m.class_names[j]: round(float(v), 5) for j, v in enumerate(e) if v != float("inf")}}
            for f, p, e in zip(files, pred, err)]
    if a.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['image']}: {r['name']}  (diffusion classifier, {r['evaluations']} network evaluations, {r['ms']:.0f} ms)")
    return 0


def cmd_zoo(a: argparse.Namespace) -> int:
    """What ships in egc/zoo: the models (zoo:NAME) with their data set and sampling defaults, and the judges."""
    from .checkpoint import ZOO_DIR, load_checkpoint, zoo_models
    from .eval.judge import load_judge

    models = zoo_models()
    rows = []
    for name in models:
        ck = load_checkpoint(f"zoo:{name}")
        c, smp = ck.config, ck.config.sample
        card = ZOO_DIR / f"{name}.md"
        rows.append({"name": f"zoo:{name}", "role": "model", "kind": c.model.kind, "data": c.data.name,
                     "image_shape": list(c.model.pixel_shape), "latent": bool(c.model.latent), "conditioning": c.model.conditioning,
                     "steps": ck.step, "sampler": smp.sampler, "sample_steps": smp.steps, "eta": smp.eta, "guidance": smp.guidance, "cfg": smp.cfg, "guidance_interval": [smp.guidance_tmin, smp.guidance_tmax],
                     "mb": round((ZOO_DIR / f"{name}.safetensors").stat().st_size / 2**20, 1),
                     "card": str(card) if card.is_file() else None})
    for q in sorted(ZOO_DIR.glob("*.safetensors")):
        if q.stem in models:
            continue
        try:
            j = load_judge(f"zoo:{q.stem}")
        except EgcError:
            continue
        rows.append({"name": f"zoo:{q.stem}", "role": "judge", "data": j.meta.get("dataset"), "image_shape": j.meta.get("image_shape"),
                     "test_accuracy": j.meta.get("test_accuracy"), "mb": round(q.stat().st_size / 2**20, 1)})
    if a.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        shape = "x".join(map(str, r["image_shape"] or []))
        if r["role"] == "model":
            iv = r["guidance_interval"]
            print(f"{r['name']:<20} {r['kind']} on {r['data']} ({shape}{', latent' if r['latent'] else ''}), {r['steps']} steps, "
                  f"samples with {r['sampler']} {r['sample_steps']} (eta {r['eta']:g}), s {r['guidance']:g} w {r['cfg']:g} at t/T {iv[0]:g}-{iv[1]:g}; {r['mb']} MB; card: {r['card'] or '-'}")
        else:
            print(f"{r['name']:<20} judge for {r['data']} ({shape}), test accuracy {r['test_accuracy']}; {r['mb']} MB")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    import torch

    from .checkpoint import export_weights
    from .imageio import check_output_file

    check_output_file(a.out)
    out = export_weights(a.checkpoint, a.out, dtype=torch.float16 if a.half else torch.float32, guidance=a.guidance, cfg=a.cfg,
                         guidance_interval=a.guidance_interval, sampler=a.sampler, steps=a.steps, eta=a.eta)
    print(json.dumps({"weights": str(out), "bytes": out.stat().st_size}))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo
    from .imageio import check_output_dir

    check_output_dir(a.out)
    _set_threads(a.threads)
    summary = run_demo(a.out, a.checkpoint, quick=a.quick, device=a.device)
    print(json.dumps(summary, indent=2))
    return 0


def _add_train(sub: Any) -> None:
    """The `egc train` subcommand."""
    t = sub.add_parser("train", help="train an EGC model")
    t.add_argument("--config", help="YAML config (see configs/)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. --set train.lr=1e-3 (repeatable)")
    t.add_argument("--out", required=True, help="run folder (config, log.csv, checkpoints/, samples/)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.add_argument("--model", metavar="KIND", help="egc (default) | classifier | ddpm | jem: the EGC model or a baseline on the same UNet; "
                   "cnn: a small fast ResNet classifier; autoencoder: the KL autoencoder of latent runs (egc/kinds.py lists them)")
    t.add_argument("--model-size", choices=list(MODEL_SIZES))
    t.add_argument("--data", help="fashion-mnist | mnist | cifar10 | folder:PATH | npz:PATH")
    t.add_argument("--data-root", help="where the data set lives (default: $EGC_DATA or the system location)")
    t.add_argument("--image-size", type=_positive_int, metavar="N", help="train on N x N images (data.image_size; default: the images' own "
                   "size when they share one square size, else their median shorter side snapped to 16-64 px)")
    t.add_argument("--fit", choices=["crop", "pad"], help="how other sizes become square (data.fit): crop = shorter side to N and a centre "
                   "crop (default), pad = longer side to N on black")
    t.add_argument("--holdout", type=_nonneg_float, metavar="SHARE", help="a folder without test/: share of each class held out as its "
                   "test split, never trained on (data.holdout, default 0.1)")
    t.add_argument("--steps", type=_positive_int, help="total optimiser steps")
    t.add_argument("--minutes", type=_nonneg_float, help="total training time budget")
    t.add_argument("--stop-after", type=_positive_float, metavar="MINUTES", help="train this many minutes now, then checkpoint and stop; "
                   "the learning-rate schedule still follows the whole --minutes/--steps budget, and --resume continues")
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument("--lr", type=_nonneg_float)
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=_positive_int)
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: cuda when available, else cpu (under torchrun: one GPU per process)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)


def _add_sample(sub: Any) -> None:
    """The `egc sample` subcommand."""
    s = sub.add_parser("sample", help="generate images (unconditional or class-conditional)")
    s.add_argument("checkpoint", help="checkpoint file, run folder, or zoo:NAME")
    s.add_argument("--n", type=_positive_int, default=100)
    s.add_argument("--label", help="class id(s) or name(s), comma-separated; one value applies to all")
    s.add_argument("--class-balanced", action="store_true", help="n/K samples of each class")
    s.add_argument("--sampler", default=None, choices=SAMPLER_NAMES, help="default: the model's own (egc zoo shows it)")
    s.add_argument("--steps", type=_positive_int, default=None, help="sampler steps (default: the model's own, 50 for new models)")
    s.add_argument("--guidance", type=_nonneg_float, default=None, help="classifier guidance s from the model's (null-label) classifier head "
                   "(default: the model's recommended scale)")
    s.add_argument("--cfg", type=_nonneg_float, default=None, help="classifier-free guidance w: (1 + w) E(x|y) - w E(x|null), for models with "
                   "model.conditioning embedding or joint (default: the model's recommended scale)")
    s.add_argument("--guidance-interval", type=_interval, default=None, metavar="LO,HI", help=INTERVAL_HELP)
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--eta", type=_nonneg_float, default=None, help="DDIM noise, ddim only: 0 deterministic, 1 = DDPM's variance "
                   "(default: the model's own; 1 for pixel models, 0 for latent ones)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=_positive_int, default=250)
    s.add_argument("--out", default="samples.png", help="grid PNG path")
    s.add_argument("--scale", type=_positive_int, default=2, help="upscale the grid for viewing")
    s.add_argument("--npz", help="also write images (uint8 [N,H,W,C]) and labels (int64 [N]) here")
    s.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    s.add_argument("--threads", type=_positive_int)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_sample)


def _add_classify(sub: Any) -> None:
    """The `egc classify` subcommand."""
    c = sub.add_parser("classify", help="top-k classes and energy of images")
    c.add_argument("checkpoint")
    c.add_argument("images", nargs="+", help="image files or folders")
    c.add_argument("--top-k", type=_positive_int, default=3)
    c.add_argument("--device", default="auto", help=DEVICE_HELP)
    c.add_argument("--json", action="store_true")
    c.add_argument("--method", choices=["head", "diffusion"], default="head", help="head: the model's classifier (one forward pass; default); "
                   "diffusion: Li et al.'s diffusion classifier on the model's class-conditional eps (EGC or a conditional ddpm)")
    c.add_argument("--dc-schedule", default="K:20,3:40", metavar="KEEP:TRIALS,...", help="--method diffusion: score the best KEEP classes on "
                   "TRIALS new (t, eps) pairs per round (K = all classes; Li et al.: 10:50,5:450, 2,750 evaluations an image); default K:20,3:40")
    c.add_argument("--seed", type=int, default=0, help="--method diffusion: seeds its (t, eps) pairs")
    c.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    c.add_argument("--threads", type=_positive_int)
    c.set_defaults(fn=cmd_classify)


def _add_export(sub: Any) -> None:
    """The `egc export` subcommand."""
    e = sub.add_parser("export", help="write a checkpoint's EMA weights + config as a small inference file")
    e.add_argument("checkpoint")
    e.add_argument("--out", required=True)
    e.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    e.add_argument("--guidance", type=_nonneg_float, help="record this measured classifier-guidance scale as the model's default for sampling")
    e.add_argument("--cfg", type=_nonneg_float, help="record this measured classifier-free guidance scale as the model's default for sampling")
    e.add_argument("--guidance-interval", type=_interval, metavar="LO,HI", help="record this measured guidance interval (fractions t/T) as the model's default")
    e.add_argument("--sampler", choices=SAMPLER_NAMES, help="record this sampler as the model's default")
    e.add_argument("--steps", type=_positive_int, help="record this many sampler steps as the model's default")
    e.add_argument("--eta", type=_nonneg_float, help="record this DDIM noise as the model's default")
    e.set_defaults(fn=cmd_export)


def _add_zoo(sub: Any) -> None:
    """The `egc zoo` subcommand."""
    z = sub.add_parser("zoo", help="list the models and judges that ship with egc (zoo:NAME)")
    z.add_argument("--json", action="store_true", help="one JSON list instead of lines")
    z.set_defaults(fn=cmd_zoo)


def _add_demo(sub: Any) -> None:
    """The `egc demo` subcommand."""
    d = sub.add_parser("demo", help="classify real test images and draw a class-balanced grid with the shipped model")
    d.add_argument("--out", default="egc-demo", help="output folder")
    d.add_argument("--checkpoint", "--model", dest="checkpoint", default="zoo:fashion-mnist",
                   help="zoo:NAME, run folder or checkpoint file of a model of a data set whose demo images ship "
                        "(egc/zoo/<data set>-examples.npz); default zoo:fashion-mnist")
    d.add_argument("--quick", action="store_true", help="fewer samples and steps (for tests)")
    d.add_argument("--device", default="auto", help=DEVICE_HELP)
    d.add_argument("--threads", type=_positive_int)
    d.set_defaults(fn=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="egc", description="Energy-based generative classifiers: one network that classifies and generates.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_add_train, _add_sample, _add_classify, _add_export, _add_zoo, _add_demo):
        add(sub)
    from .cag.cli import add_cag_parser  # CaG needs none of the EGC training code

    add_cag_parser(sub)
    from .eval.cli import add_eval_parsers  # evaluation imports inference code only

    add_eval_parsers(sub)
    from .serve.cli import add_serve_parser  # the web app imports its server library only when run
    add_serve_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    # Subnormal floats in trained weights make CPU convolutions and their gradients ~2x slower.
    torch.set_flush_denormal(True)
    try:
        return args.fn(args)
    except EgcError as e:
        print(f"egc {args.cmd}: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment (a full disk, a vanished folder) where no EgcError names it yet
        where = f" ({e.filename})" if e.filename else ""
        print(f"egc {args.cmd}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"egc {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
