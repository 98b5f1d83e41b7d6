"""Train the independent judge classifier (FeatureCNN) and ship it in ``egc/zoo``.

This network only ever *judges* samples (conditional accuracy, Frechet distance, KID,
precision/recall in its feature space); it is never used to train or sample an EGC model, so a
generator cannot have been tuned against it.

Usage:
    python bench/train_feature_classifier.py --data fashion-mnist --epochs 5 --threads 1 \
        --out src/egc/zoo/fashioncnn.safetensors
    python bench/train_feature_classifier.py --data cifar10 --epochs 30 --width 64 --max-shift 4 --pad reflect \
        --hflip --threads 2 --out src/egc/zoo/cifarcnn.safetensors     # natural images: crops and flips

Prints one JSON line:
    {"benchmark": "train_feature_classifier", "test_accuracy": ..., "seconds": ..., "threads": ...}
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from egc.eval.features import FeatureCNN, save_feature_net

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "src" / "egc" / "zoo" / "fashioncnn.safetensors"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FALLBACK_ROOTS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}


def _read_idx_fallback(path: Path) -> np.ndarray:
    """Minimal idx reader: magic ``00 00 08 ndim``, big-endian uint32 dims, then uint8 data."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[0:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)


def _load_fallback(name: str, split: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Used only when ``egc.data`` is unavailable. Returns uint8 ``[N,H,W,1]``, int64 ``[N]``."""
    base = Path(root) if root else _FALLBACK_ROOTS[name]
    img_name, lab_name = _IDX_FILES[split]

    def find(stem: str) -> Path:
        for cand in (base / f"{stem}.gz", base / stem):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"{stem}(.gz) not found in {base}")

    images = _read_idx_fallback(find(img_name))[..., None]
    labels = _read_idx_fallback(find(lab_name)).astype(np.int64)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def load_split(name: str, split: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images float ``[N,C,H,W]`` in ``[-1,1]``, labels int64 ``[N]``, class names."""
    try:
        from egc.data import load_dataset, to_model_range
    except ImportError:
        images, labels = _load_fallback(name, split, root)
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x.contiguous(), labels, [str(i) for i in range(int(labels.max()) + 1)]
    ds = load_dataset(name, split, root=root)
    return to_model_range(ds.images), ds.labels, list(ds.class_names)


def random_translate(x: torch.Tensor, max_shift: int, gen: torch.Generator, pad: str = "black") -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in ``[-max_shift, max_shift]``.

    Args:
        x: ``[B, C, H, W]`` in ``[-1, 1]``.
        pad: what fills the uncovered pixels: "black" (-1, the background of (Fashion-)MNIST) or
            "reflect" (mirrored borders, the usual random-crop padding for natural images).
    Returns:
        ``[B, C, H, W]``.
    """
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0) if pad == "black" else F.pad(x, (p, p, p, p), mode="reflect")  # [B, C, H+2p, W+2p]
    off = torch.randint(0, 2 * p + 1, (b, 2), generator=gen)
    rows = off[:, 0:1] + torch.arange(h)  # [B, H]
    cols = off[:, 1:2] + torch.arange(w)  # [B, W]
    bidx = torch.arange(b)[:, None, None]
    # One gather for the whole batch: advanced indices give [B, H, W, C] (slice dim goes last).
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def accuracy(net: FeatureCNN, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    net.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / x.shape[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-shift", type=int, default=2)
    ap.add_argument("--hflip", action="store_true", help="random horizontal flips (natural images such as CIFAR-10)")
    ap.add_argument("--pad", choices=("black", "reflect"), default="black", help="fill of the shifted-in border")
    ap.add_argument("--name", default=None, help="judge name for metric keys (default: from --data)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images (smoke test)")
    ap.add_argument("--noise-sigma", type=float, default=0.0,
                    help="Gaussian noise augmentation: std on the [0, 1] pixel scale, added to every training image "
                         "(0 = none; a noise-trained classifier for CaG and randomized smoothing)")
    ap.add_argument("--role", default="independent judge; never used for EGC training or sampling",
                    help="what the network is for (kept in its metadata)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    x_train, y_train, class_names = load_split(args.data, "train", args.data_root)
    x_test, y_test, _ = load_split(args.data, "test", args.data_root)
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    n, c = x_train.shape[0], x_train.shape[1]

    net = FeatureCNN(c, len(class_names), width=args.width)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(n / args.batch_size)
    total = steps_per_epoch * args.epochs
    # One-cycle (warm-up then cosine decay to ~0) converges within few epochs, which is what the
    # time budget allows; ending at a tiny LR also settles BatchNorm statistics.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed)

    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(n, generator=gen)
        run_loss, t_ep = 0.0, time.perf_counter()
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch_size : (s + 1) * args.batch_size]
            xb = random_translate(x_train[idx], args.max_shift, gen, args.pad)
            if args.hflip:
                flip = torch.rand(xb.shape[0], generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            if args.noise_sigma > 0:  # sigma on [0, 1] pixels is 2 sigma on the network's [-1, 1] scale
                xb = xb + 2 * args.noise_sigma * torch.randn(xb.shape, generator=gen)
            loss = F.cross_entropy(net(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += loss.item()
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {run_loss / steps_per_epoch:.4f} "
            f"({time.perf_counter() - t_ep:.1f}s)",
            file=sys.stderr,
            flush=True,
        )

    test_acc = accuracy(net, x_test, y_test)
    seconds = time.perf_counter() - t0
    name = args.name or args.data.replace("-mnist", "").replace("-", "") + "cnn"
    meta = {
        "name": name,
        "dataset": args.data,
        "test_accuracy": round(test_acc, 5),
        "class_names": class_names,
        "image_shape": list(x_train.shape[1:]),  # [C, H, W] it was trained on
        "epochs": args.epochs,
        "augmentation": {"max_shift": args.max_shift, "pad": args.pad, "hflip": args.hflip, "noise_sigma": args.noise_sigma},
        "seed": args.seed,
        "train_seconds": round(seconds, 1),
        "train_images": n,
        "role": args.role,
    }
    save_feature_net(net, args.out, meta)
    print(
        json.dumps(
            {
                "benchmark": "train_feature_classifier",
                "test_accuracy": round(test_acc, 5),
                "seconds": round(seconds, 1),
                "threads": args.threads,
                "epochs": args.epochs,
                "out": str(args.out),
                "bytes": Path(args.out).stat().st_size,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
