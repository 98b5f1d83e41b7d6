"""MNIST and Fashion-MNIST from the four standard idx files (gzipped or not).

The idx format (LeCun et al.) is a 4-byte magic ``00 00 <dtype> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the raw array. It is parsed here directly rather than through a library so that
every way a file can be wrong is turned into one readable line.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from egc.data.dataset import ImageDataset, one_line
from egc.data.paths import describe, search_dirs
from egc.errors import DataError

_UBYTE = 0x08  # the idx dtype code for unsigned bytes; both images and labels use it

FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@dataclass(frozen=True)
class IdxSpec:
    """What differs between the idx-format data sets: class names, default folder, install hint."""

    class_names: list[str]
    default_dir: Path
    hint: str


IDX_SETS: dict[str, IdxSpec] = {
    "fashion-mnist": IdxSpec(
        FASHION_MNIST_CLASSES,
        Path("/usr/share/datasets/fashion-mnist"),
        "install with 'apt-get install dataset-fashion-mnist' or pass --data-root DIR",
    ),
    "mnist": IdxSpec(
        [str(d) for d in range(10)],
        Path("/usr/share/datasets/mnist"),
        "put the four MNIST idx files in one of those folders or pass --data-root DIR",
    ),
}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse one idx file of unsigned bytes with ``ndim`` dimensions.

    Returns:
        uint8 array of the shape stored in the header, e.g. ``[N, 28, 28]`` or ``[N]``.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read idx file ({one_line(exc)})") from exc
    # Sniff the gzip magic instead of trusting the extension: copies are often renamed.
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{path}: corrupt or truncated gzip ({one_line(exc)}); replace the file"
            ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] != ndim:
        raise DataError(
            f"{path}: not an idx{ndim} ubyte file (magic {raw[:4].hex() or 'empty'}, "
            f"expected 000008{ndim:02x}); replace the file"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header ({len(raw)} bytes); replace the file")
    dims = [int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header says {dims} = {expected} bytes but file holds {len(raw) - header} "
            "(truncated or corrupt); replace the file"
        )
    # copy(): frombuffer views the immutable bytes, and torch refuses non-writable arrays.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _idx_candidates(prefix: str, kind: str, ndim: int) -> list[str]:
    """File names tried for e.g. ``train-images-idx3-ubyte``: gz first, then plain, then the
    ``train-images.idx3-ubyte`` spelling that some mirrors use."""
    dash = f"{prefix}-{kind}-idx{ndim}-ubyte"
    dot = f"{prefix}-{kind}.idx{ndim}-ubyte"
    return [dash + ".gz", dash, dot + ".gz", dot]


def _first_existing(folder: Path, names: list[str]) -> Path | None:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


def load_idx_dataset(name: str, split: str, root: str | os.PathLike[str] | None) -> ImageDataset:
    """Load ``split`` ("train" or "test") of the idx data set ``name`` ("fashion-mnist"/"mnist").

    Returns:
        ImageDataset with images uint8 ``[N, 28, 28, 1]`` and labels int64 ``[N]``.
    """
    spec = IDX_SETS[name]
    prefix = "train" if split == "train" else "t10k"
    image_names = _idx_candidates(prefix, "images", 3)
    label_names = _idx_candidates(prefix, "labels", 1)
    dirs = search_dirs(name, root, [spec.default_dir])

    folder, images_path = next(
        ((d, p) for d in dirs if (p := _first_existing(d, image_names)) is not None), (None, None)
    )
    if folder is None or images_path is None:
        raise DataError(
            f"{name}: no idx files in {describe(dirs)} (looked for {image_names[0]}); {spec.hint}"
        )
    # Labels must come from the same folder as the images, or the pairing means nothing.
    labels_path = _first_existing(folder, label_names)
    if labels_path is None:
        raise DataError(
            f"{name}: {images_path} has no labels file beside it (looked for {label_names[0]}); "
            f"{spec.hint}"
        )

    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{name}: {labels_path} has {labels.shape[0]} labels but {images_path} has "
            f"{images.shape[0]} images"
        )
    if labels.size and int(labels.max()) >= len(spec.class_names):
        raise DataError(
            f"{name}: {labels_path} holds label {int(labels.max())}, "
            f"expected 0..{len(spec.class_names) - 1}"
        )
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(-1),  # grey: [N, H, W] -> [N, H, W, 1]
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=list(spec.class_names),
        name=name,
    )
