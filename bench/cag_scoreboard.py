"""CaG on the generation scoreboard: class-balanced images from a classifier, scored exactly as
``egc eval`` scores a generative model's samples (egc.eval.samples.score_samples: the data set's judge,
fd / KID / precision / recall in its features, never Inception FID) plus the network-free naturalness
statistics (power-spectrum distance, within-class diversity ratio, pixel-histogram distance) against
the real test images. Prints one JSON line per (generator, setting).

    python bench/cag_scoreboard.py --data cifar10 --generator cnn=runs/cag/cifar10-cnn.safetensors \\
        --setting "defaults:" --setting "noise:noise=0.5,steps=300" --n-per-class 100 --out runs/cag/board

A setting is NAME:KEY=VALUE,... (CaGConfig fields over egc cag's defaults for that classifier,
egc.cag.generate.recommended_config; real_stats=False keeps --stats-from's feature statistics out of the row).
--stats-from DATA measures per-class feature statistics (the distribution loss) and a per-class pixel
Gaussian (init=data) on DATA's training images. Control rows: --controls real (training images: the
ceiling of every statistic) and seeds (the pixel Gaussian's draws alone, no classifier: the floor that
init=data starts from).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egc.cag import generate, load_classifier
from egc.cag.generate import recommended_config
from egc.cag.stats import PixelPrior, check_classes, class_feature_stats, load_class_images
from egc.host import cpu_name

from cag import _number_or_text  # bench/cag.py: the same KEY=VALUE reading as its --set
from egc.eval.samples import reference_images, score_samples


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    over = {}
    for kv in filter(None, (p.strip() for p in rest.split(","))):
        k, _, v = kv.partition("=")
        over[k.strip()] = _number_or_text(v.strip())
    return name, over


class _Generator(argparse.Action):
    """--generator NAME=SPEC opens a group; the --setting flags after it belong to it."""

    def __call__(self, parser, ns, value, option_string=None):  # type: ignore[no-untyped-def]
        groups = list(getattr(ns, self.dest) or [])
        groups.append((value, []))
        setattr(ns, self.dest, groups)


class _Setting(argparse.Action):
    def __call__(self, parser, ns, value, option_string=None):  # type: ignore[no-untyped-def]
        groups = getattr(ns, "generator") or []
        if not groups:
            parser.error("--setting must follow the --generator it is for")
        groups[-1][1].append(value)


def save_npz(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    u8 = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    buf = io.BytesIO()
    np.savez(buf, images=u8, labels=labels.numpy().astype(np.int64))
    path.write_bytes(buf.getvalue())


def grid(path: Path, images: torch.Tensor, labels: torch.Tensor, k: int, per: int = 10) -> None:
    from egc.imageio import save_grid

    rows = [images[labels == c][:per] for c in range(k)]
    u8 = (torch.cat(rows) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    save_grid(u8, path, nrow=per, scale=2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--generator", action=_Generator, default=[], help="NAME=SPEC (any egc cag --classifier); the --setting flags "
                   "after it are its rows (none: one row at egc cag's defaults)")
    p.add_argument("--setting", action=_Setting, dest="generator", help="NAME:KEY=VALUE,... (CaGConfig fields) for the last --generator")
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--n-ref", type=int, default=None, help="real test images as the reference (default all)")
    p.add_argument("--stats-from", default=None, help="data set for feature statistics and the pixel prior")
    p.add_argument("--stats-per-class", type=int, default=500)
    p.add_argument("--controls", default="", help="comma list: real, seeds")
    p.add_argument("--out", default="runs/cag/board")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    real, real_y = reference_images(a.data, None, a.n_ref, a.seed)
    k = int(real_y.max()) + 1
    labels = torch.arange(k).repeat_interleave(a.n_per_class)
    common = {"bench": "cag_scoreboard", "data": a.data, "n": int(labels.numel()), "cpu": cpu_name(), "threads": a.threads}
    prior = None
    stats_x = stats_y = None
    stats_names: list[str] = []
    if a.stats_from:
        stats_x, stats_y, stats_names = load_class_images(a.stats_from, a.stats_per_class, a.seed)
        prior = PixelPrior.fit(stats_x, stats_y)

    def emit(row: dict[str, Any], images: torch.Tensor, tag: str) -> None:
        score = score_samples(images, labels, a.data, reference=(real, real_y), seed=a.seed)
        save_npz(out / f"{tag}.npz", images, labels)
        grid(out / f"{tag}.png", images, labels, k)
        print(json.dumps({**common, **row, **{kk: v for kk, v in score.items() if kk not in ("schema", "data", "n")}}), flush=True)

    for c in filter(None, a.controls.split(",")):
        if c == "real":
            from egc.data import load_dataset

            ds = load_dataset(a.data, "train")
            gen = torch.Generator().manual_seed(a.seed + 1)
            imgs = torch.cat([ds.images[(ds.labels == j).nonzero().flatten()][torch.randperm(int((ds.labels == j).sum()), generator=gen)[:a.n_per_class]]
                              for j in range(k)]).permute(0, 3, 1, 2).float() / 255
            emit({"generator": "real training images", "setting": "control"}, imgs, "control-real")
        elif c == "seeds":
            if prior is None:
                sys.exit("--controls seeds needs --stats-from")
            gen = torch.Generator().manual_seed(a.seed)
            imgs = torch.cat([prior.sample(j, a.n_per_class, gen) for j in range(k)])
            emit({"generator": "pixel Gaussian seeds alone", "setting": "control"}, imgs, "control-seeds")
        else:
            sys.exit(f"unknown control '{c}' (real, seeds)")

    for g, settings in a.generator:
        gname, _, spec = g.partition("=")
        clf = load_classifier(spec)
        size = clf.input_size or 32
        real_stats = None
        if stats_x is not None:
            check_classes(clf, stats_names, a.stats_from)
            real_stats = class_feature_stats(clf, stats_x, stats_y)
        for st in settings or ["defaults:"]:
            sname, over = parse_setting(st)
            use_stats = bool(over.pop("real_stats", True))  # real_stats=False: this row ignores --stats-from's feature statistics
            cfg = recommended_config(clf, size, seed=a.seed, **over).validate()
            row_prior = prior
            if prior is not None and cfg.parameterisation == "latent":  # a latent head starts from a Gaussian of its latents
                row_prior = PixelPrior.fit(torch.cat([clf.encode(stats_x[i:i + 250]) for i in range(0, len(stats_x), 250)]), stats_y)
            t0 = time.perf_counter()
            imgs = torch.cat([generate(clf, j, a.n_per_class, replace(cfg, seed=a.seed + 1000 * j),
                                       real_stats=real_stats[j] if real_stats is not None and use_stats else None, progress=False, prior=row_prior)
                              for j in range(k)])
            sec = time.perf_counter() - t0
            with torch.no_grad():
                own = torch.cat([clf(imgs[i:i + 250]).argmax(1) for i in range(0, imgs.shape[0], 250)])
            emit({"generator": gname, "spec": spec, "setting": sname, "overrides": over, "feature_stats": real_stats is not None and use_stats, "images_per_second": round(imgs.shape[0] / sec, 3),
                  "self_acc": round(float((own == labels).float().mean()), 4), "config": cfg.to_dict()}, imgs, f"{gname}-{sname}")


if __name__ == "__main__":
    main()
