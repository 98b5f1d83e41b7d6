"""``load_dataset``: one entry point that maps a data set name to its loader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from egc.data.cifar import load_cifar10
from egc.data.dataset import ImageDataset, check_split
from egc.data.folder import load_folder
from egc.data.idx import IDX_SETS, load_idx_dataset
from egc.data.npz import load_npz
from egc.data.prep import Prep
from egc.errors import DataError

if TYPE_CHECKING:
    from egc.config import DataConfig

# Whether random horizontal flips are a label-preserving augmentation for a set. Fashion-MNIST
# garments and MNIST digits are photographed/drawn in a canonical orientation (a flipped "2" is
# not a 2); CIFAR-10 objects face either way. Unknown sets default to False (the safe choice).
DEFAULT_FLIP: dict[str, bool] = {"fashion-mnist": False, "mnist": False, "cifar10": True}

_ALIASES = {
    "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
}  # fmt: skip
_ACCEPTED = "fashion-mnist, mnist, cifar10, folder:PATH (or a directory), npz:PATH (or FILE.npz)"


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike[str] | None = None, *, image_size: int = 0, channels: int = 0,
    fit: str = "crop", holdout: float = 0.0, holdout_seed: int = 0,
) -> ImageDataset:
    """Load ``split`` ("train" or "test") of the data set ``name``.

    Args:
        name: "fashion-mnist", "mnist", "cifar10", "folder:PATH" or a directory path,
            "npz:PATH" or a path ending ".npz".
        split: "train" or "test".
        root: where to look for the named sets (a folder, or for cifar10 also the archive
            itself); overrides ``$EGC_DATA`` and the defaults. Unused for folder/npz paths.
        image_size, channels, fit: the preprocessing (:class:`egc.data.prep.Prep`); 0 keeps the set's
            own size / channels (a folder of mixed sizes or modes decides them, see load_folder).
        holdout, holdout_seed: a folder without test/: the share of each class held out as its test
            split (0: train and test are both all of its images).

    Returns:
        ImageDataset with images uint8 ``[N, H, W, C]`` and labels int64 ``[N]``.

    Raises:
        DataError: one line naming what was expected where, for any missing or malformed data.
    """
    check_split(name, split)
    folder = dict(size=image_size, channels=channels, fit=fit, holdout=holdout, holdout_seed=holdout_seed)
    if name.startswith("folder:"):
        return load_folder(name[len("folder:") :], split, **folder)
    if name.startswith("npz:") or name.endswith(".npz"):
        ds = load_npz(name[len("npz:") :] if name.startswith("npz:") else name, split)
    else:
        key = _ALIASES.get(name.lower(), name.lower())
        if key in IDX_SETS:
            ds = load_idx_dataset(key, split, root)
        elif key == "cifar10":
            ds = load_cifar10(split, root)
        # Checked after the known names so a stray folder called "mnist" in the cwd cannot shadow it.
        elif Path(name).expanduser().is_dir():
            return load_folder(name, split, **folder)
        else:
            raise DataError(f"unknown data set {name!r}; expected one of {_ACCEPTED}")
    ds.split_note = ds.split_note or f"the {split} split of {ds.name}"
    return reshape_dataset(ds, image_size or ds.image_size, channels or ds.channels, fit)


def reshape_dataset(ds: ImageDataset, size: int, channels: int, fit: str = "crop") -> ImageDataset:
    """``ds`` with every image through :class:`Prep` (size, channels, fit); ``ds`` itself when it already fits."""
    if (ds.image_size, ds.channels) == (size, channels):
        return ds
    prep = Prep(size, channels, fit)
    arr = ds.images.numpy()
    out = np.empty((len(ds), size, size, channels), dtype=np.uint8)
    for i in range(len(ds)):
        out[i] = prep.pixels(Image.fromarray(arr[i, ..., 0] if ds.channels == 1 else arr[i]))[0]
    note = f"{len(ds)} {ds.name} images made {prep.describe()} (stored {ds.image_size}x{ds.image_size}, {ds.channels} channel(s))"
    return ImageDataset(torch.from_numpy(out), ds.labels, ds.class_names, ds.name, ds.split_note, ds.files, [*ds.notes, note])


def load_data(data: "DataConfig", split: str, shape: tuple[int, int, int] | None = None) -> ImageDataset:
    """``split`` of the data a run's config names, preprocessed as the config says; ``shape`` (C, H, W of a
    model's images) forces channels and size, so a model always gets images of its own shape."""
    c, h = (shape[0], shape[1]) if shape is not None else (0, data.image_size)
    return load_dataset(data.name, split, data.root, image_size=h, channels=c, fit=data.fit, holdout=data.holdout,
                        holdout_seed=data.holdout_seed)
