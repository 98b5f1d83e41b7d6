"""``load_dataset``: one entry point that maps a data set name to its loader."""

from __future__ import annotations

import os
from pathlib import Path

from egc.data.cifar import load_cifar10
from egc.data.dataset import ImageDataset, check_split
from egc.data.folder import load_folder
from egc.data.idx import IDX_SETS, load_idx_dataset
from egc.data.npz import load_npz
from egc.errors import DataError

# Whether random horizontal flips are a label-preserving augmentation for a set. Fashion-MNIST
# garments and MNIST digits are photographed/drawn in a canonical orientation (a flipped "2" is
# not a 2); CIFAR-10 objects face either way. Unknown sets default to False (the safe choice).
DEFAULT_FLIP: dict[str, bool] = {"fashion-mnist": False, "mnist": False, "cifar10": True}

_ALIASES = {
    "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
}  # fmt: skip
_ACCEPTED = "fashion-mnist, mnist, cifar10, folder:PATH (or a directory), npz:PATH (or FILE.npz)"


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike[str] | None = None
) -> ImageDataset:
    """Load ``split`` ("train" or "test") of the data set ``name``.

    Args:
        name: "fashion-mnist", "mnist", "cifar10", "folder:PATH" or a directory path,
            "npz:PATH" or a path ending ".npz".
        split: "train" or "test".
        root: where to look for the named sets (a folder, or for cifar10 also the archive
            itself); overrides ``$EGC_DATA`` and the defaults. Unused for folder/npz paths.

    Returns:
        ImageDataset with images uint8 ``[N, H, W, C]`` and labels int64 ``[N]``.

    Raises:
        DataError: one line naming what was expected where, for any missing or malformed data.
    """
    check_split(name, split)
    if name.startswith("folder:"):
        return load_folder(name[len("folder:") :], split)
    if name.startswith("npz:"):
        return load_npz(name[len("npz:") :], split)
    if name.endswith(".npz"):
        return load_npz(name, split)
    key = _ALIASES.get(name.lower(), name.lower())
    if key in IDX_SETS:
        return load_idx_dataset(key, split, root)
    if key == "cifar10":
        return load_cifar10(split, root)
    # Checked after the known names so a stray folder called "mnist" in the cwd cannot shadow it.
    if Path(name).expanduser().is_dir():
        return load_folder(name, split)
    raise DataError(f"unknown data set {name!r}; expected one of {_ACCEPTED}")
