"""The ``egc cag`` subcommand: generate a grid of images of one class from a fixed classifier.

Wired into the main parser by ``add_cag_parser(sub)`` (``sub`` = the ``add_subparsers`` object of
``egc.cli.build_parser``); it sets ``fn=cmd_cag``, which returns the exit code and raises EgcError
for every user-facing problem (the main CLI prints it as one line).

    egc cag --classifier efficientnet-lite0 --target goldfish --n 8 --size 128 --out goldfish.png
    egc cag --classifier zoo:fashion-mnist --target 7 --n 10 --out sneakers.png --no-mask
    egc cag --classifier clip:ViT-B-32:/path/open_clip.bin --target "a red apple" --out apple.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..argtypes import nonneg_float as _nonneg_float
from ..argtypes import positive_int as _pos_int
from ..errors import EgcError


def _int_list(s: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{s}'") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got '{s}'")
    return vals


def add_cag_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``cag`` subcommand to an argparse subparsers object; returns its parser."""
    from .masks import MASK_FAMILIES, MASK_FILLS
    from .generate import CAG_PRECISIONS, PARAM_CHOICES

    p = subparsers.add_parser("cag", help="generate images of a class from a fixed classifier (classifier as generator)",
                              description="Optimise images so that a fixed classifier sees the target class (CaG). "
                                          "Each part (mask, progressive resolution, diversity, distribution prior) can be switched off.")
    p.add_argument("--classifier", required=True,
                   help="efficientnet-lite0|1|2, egc:SPEC or zoo:NAME (an EGC checkpoint's classifier head), "
                        "clip:ARCH:WEIGHTS (open_clip, local file), package.module:callable, or a TorchScript .pt file")
    p.add_argument("--target", required=True, help="class name or index (for clip:..., the text prompt)")
    p.add_argument("--n", type=_pos_int, default=8, help="number of images")
    p.add_argument("--size", type=_pos_int, help="final image size (default: the classifier's fixed or preferred size, at most 128)")
    p.add_argument("--view-size", type=_pos_int, help="size the classifier sees the image at (default: --size; "
                   "e.g. 224 for an ImageNet network generating 128 x 128 images)")
    p.add_argument("--param", choices=PARAM_CHOICES, help="what is optimised: a 1/f-weighted spectrum (fourier) or pixel logits; "
                   "auto (default): fourier from 64 px up, pixel below (measured: BENCHMARKS.md 6)")
    p.add_argument("--device", default="auto", help="auto (cuda when available, the default) | cpu | cuda[:N]: where the classifier runs")
    p.add_argument("--precision", choices=CAG_PRECISIONS, help="the classifier under bf16 autocast (bf16) or not (fp32, default: bf16 measured 0.94x on Lite0 here, BENCHMARKS.md 6)")
    p.add_argument("--out", default="cag.png", help="grid PNG path")
    p.add_argument("--npz", help="also write images (uint8 [N,H,W,C]) and labels (int64 [N]) here")
    p.add_argument("--steps", type=_int_list, help="steps per stage: one number, or one per stage (default 100)")
    p.add_argument("--stages", type=_int_list, help="stage sizes ending at --size (default: halving down to 32)")
    p.add_argument("--lr", type=_nonneg_float, help="Adam step size on the image logits (default 0.05)")
    p.add_argument("--batch-size", type=_pos_int, help="images optimised together (the diversity loss acts within a batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-family", choices=MASK_FAMILIES, help="random mask shape (default patches: beat pixels, BENCHMARKS.md 6)")
    p.add_argument("--mask-ratio", type=_nonneg_float, help="share of pixels hidden, in [0, 1) (default 0.3: as good as 0.6, more diverse)")
    p.add_argument("--mask-fill", choices=MASK_FILLS, help="what hidden pixels show (default noise; other fills not compared)")
    p.add_argument("--div-weight", type=_nonneg_float, help="weight of the diversity loss")
    p.add_argument("--bn-weight", type=_nonneg_float, help="weight of the batch-norm statistics prior")
    p.add_argument("--tv-weight", type=_nonneg_float, help="weight of the total-variation prior")
    p.add_argument("--jitter", type=int, help="largest random shift in pixels per step (0 = off)")
    p.add_argument("--zoom", type=_nonneg_float, help="random zoom per image and step, e.g. 0.15 = 0.85x..1.15x (0 = off)")
    p.add_argument("--rotate", type=_nonneg_float, help="random rotation per image and step, largest angle in degrees (0 = off)")
    p.add_argument("--noise", type=_nonneg_float, help="std of fresh Gaussian noise on the classifier's input at the first step "
                   "([0, 1] pixels; an EGC head sees it at its own matching timestep), annealed to --noise-end (0 = off)")
    p.add_argument("--noise-end", type=_nonneg_float, help="input-noise std at the last step (default 0)")
    p.add_argument("--stats-from", metavar="DATA", help="a data set with the classifier's classes (fashion-mnist, cifar10, folder:DIR, ...): "
                   "per-class feature statistics for the distribution loss and a per-class pixel Gaussian for --init data")
    p.add_argument("--stats-per-class", type=_pos_int, default=500, help="training images per class measured by --stats-from (default 500)")
    p.add_argument("--init", choices=("random", "data"), help="start from mid-grey noise (random) or from a draw of the class's "
                   "pixel Gaussian (data; needs --stats-from)")
    p.add_argument("--colour", choices=("rgb", "decorrelated"), help="optimise RGB channels, or decorrelated colour components "
                   "mixed into RGB by ImageNet's colour covariance (fourier parameterisation only)")
    p.add_argument("--no-mask", action="store_true", help="switch off the random masks")
    p.add_argument("--no-progressive", action="store_true", help="optimise at the final size only (same total steps)")
    p.add_argument("--no-div", action="store_true", help="switch off the diversity loss")
    p.add_argument("--no-dist", action="store_true", help="switch off the distribution prior (batch-norm statistics)")
    p.add_argument("--no-jitter", action="store_true", help="switch off the random shifts and mirror flips")
    p.add_argument("--no-fourier", action="store_true", help="optimise pixel logits instead of the 1/f-weighted spectrum")
    p.add_argument("--plain", action="store_true", help="plain gradient ascent: every part off")
    p.add_argument("--scale", type=_pos_int, default=1, help="upscale the grid for viewing")
    p.add_argument("--threads", type=_pos_int)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_cag)
    return p


def _config(a: argparse.Namespace, size: int, clf: Any = None) -> Any:
    from .generate import PARTS, recommended_config, without

    over: dict[str, Any] = {"seed": a.seed}
    if a.steps is not None:
        over["steps"] = a.steps[0] if len(a.steps) == 1 else a.steps
    for flag, key in ((a.stages, "stages"), (a.lr, "lr"), (a.batch_size, "batch"), (a.mask_family, "mask_family"),
                      (a.mask_ratio, "mask_ratio"), (a.mask_fill, "mask_fill"), (a.div_weight, "div_weight"),
                      (a.bn_weight, "bn_weight"), (a.tv_weight, "tv_weight"), (a.jitter, "jitter"),
                      (a.zoom, "scale"), (a.rotate, "rotate"), (a.view_size, "view_size"), (a.param, "param"),
                      (a.precision, "precision"), (a.noise, "noise"), (a.noise_end, "noise_end"), (a.init, "init"), (a.colour, "colour")):
        if flag is not None:
            over[key] = flag
    cfg = recommended_config(clf, size, **over)
    flags = (("mask", a.no_mask), ("progressive", a.no_progressive), ("div", a.no_div), ("dist", a.no_dist), ("jitter", a.no_jitter), ("fourier", a.no_fourier))
    off = [part for part, flag in flags if flag]
    if a.plain:
        off = list(PARTS)
    return without(cfg, *off).validate()


def _check_outputs(a: argparse.Namespace) -> None:
    """Refuse bad output paths before the optimisation: a bad path should not cost a run."""
    from ..imageio import check_output_file

    if a.npz and Path(a.npz).suffix != ".npz":
        raise EgcError(f"--npz path must end in .npz, got {a.npz}")
    if Path(a.out).suffix.lower() != ".png":
        raise EgcError(f"--out must be a .png path, got {a.out}")
    check_output_file(a.out)
    if a.npz:
        check_output_file(a.npz, "--npz")


def _real_stats(a: argparse.Namespace, clf: Any, cfg: Any, size: int, target: int, is_text: bool) -> tuple[Any, Any]:
    """(the target class's real feature statistics, the pixel prior of --init data) from --stats-from, or Nones."""
    if not a.stats_from:
        if cfg.init == "data":
            raise EgcError("--init data needs --stats-from DATA (the images the class Gaussian is fitted to)")
        return None, None
    if is_text:
        raise EgcError("--stats-from needs a classifier with classes, not a text prompt")
    from .stats import PixelPrior, check_classes, class_feature_stats, load_class_images

    sx, sy, names = load_class_images(a.stats_from, a.stats_per_class, a.seed, image_size=size)  # made the size generated here
    check_classes(clf, names, a.stats_from)
    if tuple(sx.shape[-2:]) != (size, size):
        raise EgcError(f"--stats-from {a.stats_from} has {sx.shape[-1]}x{sx.shape[-2]} images but the images made here are {size}x{size}")
    mine = sy == target  # only the target's statistics are used: do not run the classifier on the other classes
    real_stats = class_feature_stats(clf, sx[mine], sy[mine], view=cfg.view)[target]
    prior = None
    if cfg.init == "data":  # a latent head (param latent) starts from a Gaussian of its own latents
        prior = PixelPrior.fit(clf.encode(sx) if cfg.parameterisation == "latent" else sx, sy)
    return real_stats, prior


def _write_outputs(a: argparse.Namespace, u8: Any, target: int) -> None:
    """The grid PNG and (with --npz) the images uint8 [n, S, S, C] and labels: all outputs or none."""
    import io

    import numpy as np

    from ..imageio import atomic_write_bytes, save_grid

    grid = save_grid(u8, a.out, scale=a.scale)
    if not a.npz:
        return
    buf = io.BytesIO()
    np.savez(buf, images=u8.numpy(), labels=np.full(a.n, target, dtype=np.int64))
    try:
        atomic_write_bytes(Path(a.npz), buf.getvalue())
    except BaseException:
        grid.unlink(missing_ok=True)
        raise


def cmd_cag(a: argparse.Namespace) -> int:
    """Run ``egc cag``: write the grid (and npz), print one JSON line; 0 on success."""
    from dataclasses import replace

    import torch

    from .adapters import load_classifier, resolve_class
    from .generate import default_view, generate, parts_off
    from .schedule import resize
    from .text import prompt_classes

    if a.threads:
        torch.set_num_threads(a.threads)
    _check_outputs(a)
    is_text = a.classifier.strip().lower().startswith("clip:")
    clf = load_classifier(a.classifier, prompts=prompt_classes(a.target) if is_text else None)
    from egc.device import resolve_device

    clf = clf.to(resolve_device(a.device))  # generate() works where the classifier's weights are
    target = 0 if is_text else resolve_class(clf, a.target)
    size = a.size or clf.input_size or min(128, clf.preferred_size)
    cfg = _config(a, size, clf)
    # Unless --view-size says otherwise, an ImageNet network sees a 128 x 128 image at its own 224.
    cfg = replace(cfg, view_size=default_view(clf, size, a.view_size))
    real_stats, prior = _real_stats(a, clf, cfg, size, target, is_text)
    t0 = time.perf_counter()
    imgs = generate(clf, target, a.n, cfg, real_stats=real_stats, progress=not a.quiet, prior=prior).cpu()  # [n, C, S, S] in [0, 1]
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        probs = torch.softmax(clf(resize(imgs, cfg.view)).float(), dim=1)  # the generating classifier's own view, clean images
    u8 = (imgs * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # [n, S, S, C]
    _write_outputs(a, u8, target)
    print(json.dumps({
        "out": str(a.out), "npz": a.npz, "classifier": clf.name, "target": clf.class_names[target], "target_index": target,
        "n": a.n, "size": size, "view_size": cfg.view, "plan": cfg.plan(), "seconds": round(seconds, 2), "seconds_per_image": round(seconds / a.n, 3),
        "self_target_prob": round(float(probs[:, target].mean()), 4),
        "self_top1": round(float((probs.argmax(dim=1) == target).float().mean()), 4),
        "parts_off": parts_off(cfg),
    }))
    return 0
