"""CaG benchmark: full CaG vs. plain gradient ascent vs. each part switched off, judged by a classifier
that played no part in generation. Prints one JSON line per (variant, configuration).

ImageNet variant: images from EfficientNet-Lite0 at 128 x 128 (shown to Lite0 at its native 224
unless --set view_size=N says otherwise) for ten distinct, easy ImageNet classes
(IMAGENET_CLASSES below), 8 per class, judged by EfficientNet-Lite2 (upsampled to its native 260):
top-1 / top-5 share in the target class; the generator's own top-1 on the clean images (the gap to
the judge is the adversarial part); seconds per image; diversity = mean pairwise cosine distance
(1 - cos) of the judge's penultimate features within a class, averaged over classes.

Fashion-MNIST variant: images from an EGC checkpoint's classifier head (default zoo:fashion-mnist)
and, if given, from a plain classifier (--fashion-classifier, any egc.cag.load_classifier spec),
judged by zoo:fashioncnn. With --real-stats K the distribution loss uses per-class feature
statistics of K real training images per class (needs the Fashion-MNIST data set); else it is the
data-free batch-norm prior (EGC's UNet has no BatchNorm, so there it is simply off).

    python bench/cag.py                         # everything (long: tens of minutes on 2 cores)
    python bench/cag.py --smoke                 # tiny settings, seconds: proves the script runs
    python bench/cag.py --skip-fashion --classes goldfish,zebra --n-per-class 4 --steps 50 --configs full,plain
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import io
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from egc.cag import PARTS, CaGConfig, default_view, generate, load_classifier, logits_and_features, plain_config, resize, resolve_class, without
from egc.errors import EgcError

#: Ten distinct ImageNet classes with strong colour / shape cues (index in ImageNet-1k).
IMAGENET_CLASSES = ["goldfish", "flamingo", "ladybug", "monarch", "zebra", "school bus", "jack-o'-lantern", "broccoli",
                    "strawberry", "volcano"]  # 1, 130, 301, 323, 340, 779, 607, 937, 949, 980
FASHION_CLASSES = list(range(10))
CONFIGS = ["full", "plain"] + [f"no-{p}" for p in PARTS]


def _number_or_text(v: str) -> Any:
    """A --set value as the CaGConfig field wants it: True/False, int, float, else the text."""
    if v in ("True", "False"):
        return v == "True"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def make_config(name: str, base: CaGConfig) -> CaGConfig:
    """The named configuration: full (= base), plain (every part off) or no-PART."""
    if name == "full":
        return base
    if name == "plain":
        return plain_config(base)
    if name.startswith("no-"):
        return without(base, name[3:])
    raise EgcError(f"unknown configuration '{name}' (choose from {', '.join(CONFIGS)})")


def mean_pairwise_cos_dist(feats: torch.Tensor) -> float:
    """Mean of 1 - cos over pairs i != j of features [N, D] (0 = identical directions)."""
    n = feats.shape[0]
    if n < 2:
        return 0.0
    f = torch.nn.functional.normalize(feats.float(), dim=1)
    sim = f @ f.T
    return float(1 - (sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def run_variant(variant: str, clf: Any, targets: list[int], judge_fn: Any, base: CaGConfig, configs: list[str], n: int,
                grids: Path | None, real_stats: dict[int, tuple[torch.Tensor, torch.Tensor]] | None, progress: bool,
                extra: dict[str, Any]) -> None:
    """Generate n images per target under each config, judge them, print one JSON line per config."""
    # Warm-up (one step on one image, untimed): the first call pays for allocator and kernel set-up,
    # which would otherwise be charged to whichever configuration runs first.
    generate(clf, targets[0], 1, replace(plain_config(base), steps=1, batch=1), progress=False)
    bn_active = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in getattr(clf, "modules", lambda: [])())
    for cname in configs:
        cfg = make_config(cname, base)
        judged_top1: list[float] = []
        judged_top5: list[float] = []
        self_top1: list[float] = []
        div: list[float] = []
        per_class: dict[str, float] = {}
        per_class_detail: dict[str, dict[str, float]] = {}
        seconds = 0.0
        images = []
        for k in targets:
            t0 = time.perf_counter()
            stats = real_stats.get(k) if real_stats else None
            x = generate(clf, k, n, cfg, real_stats=stats, progress=progress)  # [n, C, S, S] in [0, 1]
            seconds += time.perf_counter() - t0
            images.append(x)
            with torch.no_grad():
                # The generator's own verdict at the size it saw during generation (cfg.view).
                self_top1.append(float((clf(resize(x, cfg.view)).argmax(dim=1) == k).float().mean()))
                logits, feats = judge_fn(x)
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            judged_top1.append(float((top5[:, 0] == k).float().mean()))
            judged_top5.append(float((top5 == k).any(dim=1).float().mean()))
            div.append(mean_pairwise_cos_dist(feats))
            per_class[clf.class_names[k]] = round(judged_top1[-1], 3)
            per_class_detail[clf.class_names[k]] = {"top1": round(judged_top1[-1], 3), "top5": round(judged_top5[-1], 3),
                                                    "self_top1": round(self_top1[-1], 3), "div": round(div[-1], 4)}
        nat = {}
        if variant == "imagenet":  # no real images here: statistics that need none (egc.eval.naturalness)
            from egc.eval.naturalness import NATURAL_SLOPE, spectral_slope

            allx = torch.cat(images)
            mx, mn = allx.max(dim=1).values, allx.min(dim=1).values
            nat = {"spectral_slope": round(spectral_slope(allx), 3), "natural_slope": NATURAL_SLOPE,
                   "mean_saturation": round(float(((mx - mn) / mx.clamp_min(1e-6)).mean()), 4)}
            for jname, jfn in extra.pop("_more_judges", []):
                hits1 = hits5 = 0
                for kk, xk in zip(targets, images):
                    with torch.no_grad():
                        lk = jfn(xk)
                    t5 = lk.topk(5, dim=1).indices
                    hits1 += int((t5[:, 0] == kk).sum())
                    hits5 += int((t5 == kk).any(dim=1).sum())
                nat[f"{jname}_top1"] = round(hits1 / (len(targets) * n), 4)
                nat[f"{jname}_top5"] = round(hits5 / (len(targets) * n), 4)
        if grids is not None:
            from egc.imageio import save_grid

            grids.mkdir(parents=True, exist_ok=True)
            u8 = (torch.cat(images) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            tag = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(extra.get("generator", "")))  # one file per generator
            save_grid(u8, grids / f"{variant}-{tag}-{cname}.png", nrow=n)
        m = len(targets)
        print(json.dumps({
            "bench": "cag", "variant": variant, "config": cname, **extra, "size": cfg.size, "plan": cfg.plan(),
            "n_per_class": n, "n_classes": m, "judge_top1": round(sum(judged_top1) / m, 4), "judge_top5": round(sum(judged_top5) / m, 4),
            "self_top1": round(sum(self_top1) / m, 4), "diversity_cos_dist": round(sum(div) / m, 4),
            "sec_per_image": round(seconds / (m * n), 3), **nat, "per_class_judge_top1": per_class, "per_class": per_class_detail,
            "parts": {"mask": cfg.mask and f"{cfg.mask_family}:{cfg.mask_ratio}:{cfg.mask_fill}", "progressive": cfg.progressive,
                      "div": cfg.div_weight, "dist": cfg.dist_weight if real_stats else 0.0, "bn": cfg.bn_weight if bn_active else 0.0,
                      "jitter": cfg.shift, "flip": cfg.flip, "scale": cfg.scale, "rotate": cfg.rotate, "mask_ratio": cfg.mask_ratio,
                      "tv": cfg.tv_weight, "lr": cfg.lr, "view": cfg.view, "param": cfg.parameterisation, "precision": cfg.precision,
                      "noise": cfg.noise, "colour": cfg.colour},
        }), flush=True)


def imagenet(a: argparse.Namespace, base: CaGConfig, configs: list[str]) -> None:
    clf = load_classifier(a.generator)
    judge = load_classifier(a.judge)
    names = a.classes.split(",") if a.classes else IMAGENET_CLASSES
    targets = [resolve_class(clf, s) for s in names][: a.max_classes or None]

    def judge_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits_and_features(judge, resize(x, a.judge_size, mode="bicubic").clamp(0, 1))

    # Unless --set view_size=... says otherwise, the generator sees the image at its native size (224 for Lite0).
    view = default_view(clf, a.size, base.view_size)
    more = []
    for spec in filter(None, (a.judge2 or "").split(",")):  # more cross-network judges, each at its native size
        j2 = load_classifier(spec)

        def j2_fn(x: torch.Tensor, j2: Any = j2) -> torch.Tensor:
            return j2(resize(x, j2.preferred_size, mode="bicubic").clamp(0, 1))
        more.append((j2.name, j2_fn))
    extra = {"generator": clf.name, "judge": f"{judge.name}@{a.judge_size}", "classes": [clf.class_names[k] for k in targets], "_more_judges": more}
    for cname in configs:  # one line per configuration (the extra judges are consumed per line)
        run_variant("imagenet", clf, targets, judge_fn, replace(base, size=a.size, view_size=view), [cname], a.n_per_class, a.grids, None,
                    a.progress, dict(extra))


def _tiny_egc(folder: Path) -> str:
    """A 1-step tiny EGC at 28 x 28 on random data (smoke mode only, when the zoo model is missing)."""
    import numpy as np

    from egc.cli import main as egc_main

    rng = np.random.default_rng(0)
    npz = folder / "fake.npz"
    np.savez(npz, images=rng.integers(0, 255, size=(40, 28, 28, 1), dtype=np.uint8), labels=np.arange(40, dtype=np.int64) % 10)
    run = folder / "run"
    with contextlib.redirect_stdout(io.StringIO()):  # keep stdout to this script's JSON lines
        code = egc_main(["train", "--out", str(run), "--data", f"npz:{npz}", "--steps", "1", "--quiet", "--set", "model.size=tiny",
                         "--set", "train.batch_size=8", "--set", "train.sample_n=2", "--set", "train.sample_steps=2"])
    if code != 0:
        raise EgcError("could not train the tiny smoke-test EGC model")
    return f"egc:{run}"


def _fashion_real_stats(clf: Any, k_per_class: int, targets: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per-class (mean [D], std [D]) of clf's features on k real Fashion-MNIST training images."""
    from egc.cag import feature_stats
    from egc.data import load_dataset

    train = load_dataset("fashion-mnist", "train", None)
    out = {}
    for k in targets:
        idx = (train.labels == k).nonzero().flatten()[:k_per_class]
        x = train.images[idx].permute(0, 3, 1, 2).float() / 255  # uint8 [N, H, W, C] -> [N, C, H, W] in [0, 1]
        with torch.no_grad():
            feats = torch.cat([logits_and_features(clf, x[i:i + 100])[1] for i in range(0, len(x), 100)])
        out[k] = feature_stats(feats)
    return out


def fashion(a: argparse.Namespace, base: CaGConfig, configs: list[str]) -> None:
    from egc.checkpoint import load_checkpoint
    from egc.eval.judge import load_judge

    judge = load_judge("zoo:fashioncnn")
    judge.net.eval()

    def judge_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = judge.net.features(x * 2 - 1)  # the judge takes [-1, 1]
        return judge.net.classify_features(feats), feats

    specs = [a.fashion_egc] + ([a.fashion_classifier] if a.fashion_classifier else [])
    tmp = None
    for spec in specs:
        try:
            if spec.startswith("zoo:"):
                load_checkpoint(spec)  # a clear "not in the zoo" before anything else
            clf = load_classifier(spec)
        except EgcError as e:
            if a.smoke and spec == a.fashion_egc:
                tmp = tempfile.TemporaryDirectory()
                spec = _tiny_egc(Path(tmp.name))
                clf = load_classifier(spec)
            else:
                print(json.dumps({"bench": "cag", "variant": "fashion", "generator": spec, "skipped": str(e)}), flush=True)
                continue
        targets = FASHION_CLASSES[: a.max_classes or None]
        stats = None
        if a.real_stats:
            try:
                stats = _fashion_real_stats(clf, a.real_stats, targets)
            except EgcError as e:
                print(json.dumps({"bench": "cag", "variant": "fashion", "generator": spec, "note": f"no real statistics: {e}"}), flush=True)
        size = clf.input_size or 28
        fb = replace(base, size=size, stages=(size // 2, size) if size % 2 == 0 else None, jitter=None if base.jitter is None else min(base.jitter, size // 8),
                     mask_patch=None, view_size=None)
        run_variant("fashion", clf, targets, judge_fn, fb, configs, a.n_per_class, a.grids, stats, a.progress,
                    {"generator": clf.name, "judge": judge.name, "real_stats_per_class": a.real_stats or 0})
    if tmp is not None:
        tmp.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny settings (2 classes, 2 images, 2 steps per stage, 64 px, full + plain)")
    p.add_argument("--configs", help=f"comma-separated subset of {','.join(CONFIGS)} (default: all)")
    p.add_argument("--generator", default="efficientnet-lite0")
    p.add_argument("--judge", default="efficientnet-lite2")
    p.add_argument("--judge-size", type=int, default=260, help="the judge sees images resized to this size")
    p.add_argument("--judge2", default="", help="comma-separated further ImageNet judges (each at its native size), e.g. efficientnet-lite1")
    p.add_argument("--classes", help="comma-separated ImageNet class names (default: the ten in IMAGENET_CLASSES)")
    p.add_argument("--max-classes", type=int, default=0, help="use only the first K classes (0 = all)")
    p.add_argument("--n-per-class", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=100, help="steps per stage")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a CaGConfig field for every configuration (repeatable), e.g. --set bn_weight=1 --set jitter=16")
    p.add_argument("--mask", help="FAMILY:RATIO:FILL for the mask part (default: CaGConfig's), e.g. pixels:0.5:mean; for the mask sweep")
    p.add_argument("--skip-imagenet", action="store_true")
    p.add_argument("--skip-fashion", action="store_true")
    p.add_argument("--fashion-egc", default="zoo:fashion-mnist", help="EGC checkpoint whose classifier head generates")
    p.add_argument("--fashion-classifier", help="a plain classifier spec (TorchScript .pt, module:callable, egc:RUN) to compare")
    p.add_argument("--real-stats", type=int, default=0, help="Fashion: real training images per class for the distribution loss")
    p.add_argument("--grids", type=Path, help="folder for one PNG grid per (variant, configuration)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; --smoke uses 1)")
    p.add_argument("--progress", action="store_true", help="tqdm bars")
    a = p.parse_args()
    configs = a.configs.split(",") if a.configs else list(CONFIGS)
    if a.smoke:
        configs = a.configs.split(",") if a.configs else ["full", "plain"]
        a.max_classes, a.n_per_class, a.steps, a.size, a.judge_size, a.batch = a.max_classes or 2, 2, 2, 64, 64, 2
        a.threads = a.threads or 1
    if a.threads:
        torch.set_num_threads(a.threads)
    for c in configs:
        make_config(c, CaGConfig())  # unknown names fail before any work
    over: dict[str, Any] = {"lr": a.lr} if a.lr else {}
    if a.mask:
        try:
            family, ratio, fill = a.mask.split(":")
            over.update(mask_family=family, mask_ratio=float(ratio), mask_fill=fill)
        except ValueError:
            raise SystemExit(f"--mask: expected FAMILY:RATIO:FILL (e.g. patches:0.3:noise), got '{a.mask}'") from None
    fields = [f.name for f in dataclasses.fields(CaGConfig)]
    for item in a.set:
        key, _, val = item.partition("=")
        if key not in fields or not val:
            raise SystemExit(f"--set: expected FIELD=VALUE with FIELD one of {', '.join(fields)}, got '{item}'")
        over[key] = _number_or_text(val)
    base = CaGConfig(steps=a.steps, batch=a.batch, seed=a.seed, **over)
    try:
        base.validate()
    except EgcError as e:
        raise SystemExit(f"--mask/--set: {e}") from None
    t0 = time.perf_counter()
    try:
        if not a.skip_imagenet:
            imagenet(a, base, configs)
        if not a.skip_fashion:
            fashion(a, base, configs)
    except EgcError as e:
        print(json.dumps({"bench": "cag", "error": str(e)}), flush=True)
        raise SystemExit(2) from None
    print(json.dumps({"bench": "cag", "done": True, "seconds": round(time.perf_counter() - t0, 1), "smoke": a.smoke}), flush=True)


if __name__ == "__main__":
    main()
