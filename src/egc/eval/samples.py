"""Score any set of generated images (``egc eval --samples FILE.npz --data NAME``) exactly as the
generation metrics of ``egc eval`` score a checkpoint's samples: the data set's independent judge
(conditional accuracy, fd / KID / precision / recall in its features, never called FID) and the
network-free statistics of :mod:`egc.eval.naturalness`, both against the real test images.

So CaG images, a DDPM's samples or another project's outputs sit on one scoreboard.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egc.errors import DataError, EgcError

from .testsets import norm_name

SAMPLES_SCHEMA = "egc-eval-samples/1"


def load_samples_npz(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float [N, C, H, W] in [0, 1], labels int64 [N]) from an npz with ``images`` (uint8
    [N, H, W, C]) and ``labels`` (int [N]; -1 = unconditional), as ``egc cag --npz`` and
    ``egc sample --npz`` write them. One-line EgcError naming the file for anything else."""
    p = Path(path)
    if not p.is_file():
        raise EgcError(f"--samples {p}: file not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "images" not in z.files:
                raise EgcError(f"--samples {p}: no 'images' array (found: {', '.join(z.files) or 'none'})")
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else np.full(images.shape[0], -1, dtype=np.int64)
    except EgcError:
        raise
    except Exception as e:  # truncated, not a zip, pickled objects
        raise EgcError(f"--samples {p}: not a readable npz file ({type(e).__name__})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise EgcError(f"--samples {p}: images must be uint8 [N, H, W, C] with C 1 or 3, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise EgcError(f"--samples {p}: labels must be integers [N] with N = {images.shape[0]}, got {labels.dtype} {labels.shape}")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def reference_images(data: str, data_root: str | None = None, n_ref: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(real test images float [M, C, H, W] in [0, 1], labels [M]): a seeded subset of ``n_ref`` (None = all)."""
    from egc.data import load_dataset

    ds = load_dataset(data, "test", data_root)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    if n_ref is not None:
        idx = idx[:n_ref]
    return (ds.images[idx].permute(0, 3, 1, 2).float() / 255).contiguous(), ds.labels[idx].long()


def score_samples(images: torch.Tensor, labels: torch.Tensor, data: str, *, data_root: str | None = None,
                  judge: str | None = None, n_ref: int | None = None, seed: int = 0, batch_size: int = 250,
                  reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Judge and naturalness metrics of ``images`` (float [N, C, H, W] in [0, 1]) with requested
    ``labels`` (int64 [N], -1 = unconditional) against the test split of ``data``.

    ``n_ref`` real test images (a seeded subset; None = all) are the reference of every metric;
    ``reference`` = :func:`reference_images` (data, ...) passes them ready-made (a benchmark scoring many sets).
    """
    from .generation import DEFAULT_JUDGES
    from .judge import judge_samples, load_judge
    from .naturalness import naturalness

    t0 = time.perf_counter()
    real, real_y = reference if reference is not None else reference_images(data, data_root, n_ref, seed)
    shape = tuple(real.shape[1:])
    if tuple(images.shape[1:]) != shape:
        raise DataError(f"samples are {tuple(images.shape[1:])} (C, H, W) but {data}'s test images are {shape}")
    labels = torch.as_tensor(labels).long()
    conditional = bool((labels >= 0).all())
    k = int(real_y.max()) + 1
    if conditional and int(labels.max()) >= k:
        raise EgcError(f"sample label {int(labels.max())} out of range: {data} has classes 0..{k - 1}")
    out: dict[str, Any] = {"schema": SAMPLES_SCHEMA, "data": data, "n": int(images.shape[0]), "n_ref": int(real.shape[0]),
                           "conditional": conditional}
    spec = judge or DEFAULT_JUDGES.get(norm_name(data))
    if spec is None:
        out["judge"] = None
        out["judge_skipped"] = f"no independent judge for data set {data}; pass --judge FILE"
    else:
        j = load_judge(spec)
        kid_size = min(1000, images.shape[0], real.shape[0])
        res = judge_samples(j, images * 2 - 1, labels if conditional else torch.zeros_like(labels), real * 2 - 1,
                            batch_size=batch_size, seed=seed, kid_subset_size=kid_size)
        if not conditional:
            res.pop(f"cond_acc_{j.name}", None)
        res.pop("n", None)
        res.pop("n_ref", None)
        out.update(res)
        out["judge"] = j.name
        out["judge_note"] = f"fd/kid/precision/recall in the features of {j.name}, not Inception FID"
    out["naturalness"] = naturalness(images, labels if conditional else None, real, real_y if conditional else None, seed=seed)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
