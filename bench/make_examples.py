"""Write the real test images that ship beside a zoo model for ``egc demo`` and the web app:
the first PER_CLASS test images of every class of a data set, as egc/zoo/<data>-examples.npz
(uint8 images [N, H, W, C], int64 labels [N], class_names [K]), ordered class by class.

    python bench/make_examples.py cifar10 [--per-class 2] [--out src/egc/zoo/cifar10-examples.npz]

Prints one JSON line: {"benchmark": "make_examples", "data": ..., "out": ..., "n": ..., "bytes": ...}
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from egc.checkpoint import ZOO_DIR
from egc.data import load_dataset
from egc.errors import EgcError
from egc.imageio import atomic_write_bytes


def pick_examples(labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """Indices [K * per_class] of the first ``per_class`` images of each class, class by class."""
    out = []
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)[:per_class]
        if len(idx) < per_class:
            raise EgcError(f"class {k} has {len(idx)} test images, fewer than --per-class {per_class}")
        out.append(idx)
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a registered data set name (fashion-mnist, cifar10, ...)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--per-class", type=int, default=2)
    ap.add_argument("--out", default=None, help="default: src/egc/zoo/<data>-examples.npz")
    a = ap.parse_args(argv)
    if a.per_class < 1:
        raise SystemExit("make_examples.py: --per-class must be >= 1")
    try:
        ds = load_dataset(a.data, "test", a.data_root)
        labels = ds.labels.numpy()
        idx = pick_examples(labels, len(ds.class_names), a.per_class)
    except EgcError as e:
        raise SystemExit(f"make_examples.py: {e}")
    images = ds.images.numpy()[idx]  # uint8 [N, H, W, C]
    out = Path(a.out) if a.out else ZOO_DIR / f"{a.data}-examples.npz"
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images.astype(np.uint8), labels=labels[idx].astype(np.int64), class_names=np.array(list(ds.class_names)))
    atomic_write_bytes(out, buf.getvalue())
    print(json.dumps({"benchmark": "make_examples", "data": a.data, "out": str(out), "n": int(len(idx)), "bytes": out.stat().st_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
