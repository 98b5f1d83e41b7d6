"""Data sets stored as one ``.npz``: ``images`` uint8 ``[N, H, W, C]`` (or ``[N, H, W]``),
``labels`` ``[N]``, optional ``class_names``, and optional ``images_test``/``labels_test`` for the
test split. Without any labels key the set is unlabelled (for unsupervised EGC)."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from egc.data.dataset import ImageDataset, one_line
from egc.errors import DataError

_EXPECTED = "expected keys 'images' uint8 [N,H,W,C] and 'labels' int [N]"


def _read(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    # Members are decompressed lazily, so a corrupt member only fails here, on first access.
    try:
        return npz[key]
    except ValueError as exc:  # object arrays need pickle, which is refused for safety
        raise DataError(f"{path}: key {key!r} cannot be read without pickle ({one_line(exc)}); "
                        "store plain arrays (e.g. np.array(names, dtype=str))") from exc
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{path}: key {key!r} is corrupt ({one_line(exc)})") from exc


def _check_labels(labels: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Validate a label array; returns it as int64 ``[N]``."""
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise DataError(f"{path}: {key!r} is {labels.dtype} {list(labels.shape)}; expected int [N]")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: {key!r} holds negative label {int(labels.min())}")
    return labels.astype(np.int64)


def _check_images(images: np.ndarray, n: int, key: str, path: Path) -> np.ndarray:
    """Validate an image array against ``n`` labels; returns it as uint8 ``[N, H, W, C]``."""
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {key!r} is {images.dtype}; expected uint8 (0..255)")
    if images.ndim == 3:
        images = images[..., None]  # [N, H, W] grey -> [N, H, W, 1]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{path}: {key!r} has shape {list(images.shape)}; expected [N,H,W,C] with C 1 or 3"
        )
    if images.shape[0] != n:
        raise DataError(f"{path}: {key!r} holds {images.shape[0]} images but {n} labels")
    if n == 0:
        raise DataError(f"{path}: {key!r} holds no images")
    return np.ascontiguousarray(images)


def _read_split(
    npz: np.lib.npyio.NpzFile, split: str, p: Path
) -> tuple[np.ndarray, dict[str, np.ndarray], str, np.ndarray | None]:
    """Validated images of ``split``, labels of every split (by key), the split's label key, and
    the raw ``class_names`` array if present."""
    keys = set(npz.files)
    if "images" in keys and not ({"labels", "labels_test"} & keys):  # unlabelled: images only
        image_key = "images_test" if split == "test" and "images_test" in keys else "images"
        images = _read(npz, image_key, p)
        images = _check_images(images, images.shape[0] if images.ndim else -1, image_key, p)
        return images, {}, "", None
    missing = [k for k in ("images", "labels") if k not in keys]
    if missing:
        raise DataError(f"{p}: missing key {missing[0]!r} (has {sorted(keys)}); {_EXPECTED}")
    has_test = {"images_test", "labels_test"} & keys
    if len(has_test) == 1:
        raise DataError(f"{p}: has {has_test.pop()!r} without its partner; expected both "
                        "'images_test' and 'labels_test' or neither")
    pairs = [("images", "labels")] + ([("images_test", "labels_test")] if has_test else [])
    # Labels of every split are read (they are small) so the class count agrees across
    # splits; only the requested split's images are decompressed.
    labels = {lk: _check_labels(_read(npz, lk, p), lk, p) for _, lk in pairs}
    image_key, label_key = pairs[-1] if split == "test" else pairs[0]
    images = _check_images(_read(npz, image_key, p), len(labels[label_key]), image_key, p)
    names_raw = _read(npz, "class_names", p) if "class_names" in keys else None
    return images, labels, label_key, names_raw


def load_npz(path: str | os.PathLike[str], split: str) -> ImageDataset:
    """Load ``split`` from an ``.npz`` file.

    Returns:
        ImageDataset with images uint8 ``[N, H, W, C]`` and labels int64 ``[N]``. Without a
        ``class_names`` key, classes are named "0".."K-1" with K = 1 + the largest label in either
        split (so both splits agree on the class count).
    """
    p = Path(path).expanduser()
    name = f"npz:{path}"
    if not p.is_file():
        raise DataError(f"{name}: no file {p}; {_EXPECTED}")
    # Open the file ourselves: np.load(path) leaks its handle when the zip turns out corrupt.
    try:
        handle = open(p, "rb")  # noqa: SIM115 - closed by the with-block below
    except OSError as exc:
        raise DataError(f"{p}: cannot open ({one_line(exc)})") from exc
    with handle:
        magic = handle.read(6)
        handle.seek(0)
        if not (magic.startswith(b"PK") or magic.startswith(b"\x93NUMPY")):  # zip archive / bare .npy
            raise DataError(f"{p}: not an .npz archive (no zip header); {_EXPECTED}")
        try:
            npz = np.load(handle, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{p}: not a readable .npz ({one_line(exc)}); {_EXPECTED}") from exc
        if not isinstance(npz, np.lib.npyio.NpzFile):  # a bare .npy loads as one array
            raise DataError(f"{p}: holds a single array, not an .npz archive; {_EXPECTED}")
        with npz:
            images, labels, label_key, names_raw = _read_split(npz, split, p)

    if not labels:  # no labels at all: an unlabelled set
        return ImageDataset(torch.from_numpy(images), torch.full((images.shape[0],), -1, dtype=torch.int64), [], name)
    top = max((int(lab.max()) for lab in labels.values() if lab.size), default=0)
    if names_raw is None:
        class_names = [str(i) for i in range(top + 1)]
    else:
        if names_raw.ndim != 1 or names_raw.dtype.kind not in "US":
            raise DataError(f"{p}: 'class_names' is {names_raw.dtype} {list(names_raw.shape)}; "
                            "expected a 1-D str array")
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_raw.tolist()]
        if top >= len(class_names):
            raise DataError(f"{p}: label {top} but only {len(class_names)} 'class_names'")
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels[label_key]),
        class_names=class_names,
        name=name,
    )
