"""Image folders: ``PATH/<class>/*.png|jpg|jpeg``, or ``PATH/{train,test}/<class>/...`` for
separate splits. Images directly in PATH (or in PATH/train and PATH/test), with no class folders,
are an unlabelled set (for unsupervised EGC)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from egc.data.dataset import ImageDataset
from egc.data.images import GREY_MODES, IMAGE_SUFFIXES, decode_stack, probe_image
from egc.errors import DataError

_LAYOUT = ("expected PATH/<class>/*.png|jpg|jpeg or PATH/train/<class>/... and PATH/test/<class>/... "
           "(or, unlabelled, the images directly in PATH)")


def _split_dirs(base: Path) -> dict[str, Path]:
    """Per-split folders: ``train/`` and ``test/`` when both exist, else ``base`` for both."""
    if (base / "train").is_dir() and (base / "test").is_dir():
        return {"train": base / "train", "test": base / "test"}
    return {"train": base, "test": base}


def _list_images(folder: Path) -> dict[str, list[Path]]:
    """Image files per class sub-folder (hidden folders skipped, files sorted for a fixed order)."""
    found: dict[str, list[Path]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if files:
            found[sub.name] = files
    return found


def _common_mode(files: list[Path], name: str) -> str:
    """"L" if every image is grey, else "RGB", after checking that all share one size."""
    modes: set[str] = set()
    first: tuple[Path, tuple[int, int]] | None = None
    for f in files:
        mode, size = probe_image(f, str(f))
        modes.add(mode)
        if first is None:
            first = (f, size)
        elif size != first[1]:
            raise DataError(f"{name}: {f} is {size[0]}x{size[1]} but {first[0]} is {first[1][0]}x{first[1][1]}; all images must share one size")
    return "L" if modes <= GREY_MODES else "RGB"


def _load_unlabelled(loose: dict[str, list[Path]], split: str, name: str) -> ImageDataset:
    """Images without class folders: labels -1, no class names."""
    files = loose[split] or loose["train"]
    mode = _common_mode(sorted({f for fs in loose.values() for f in fs}), name)
    images = decode_stack([str(f) for f in files], lambda r: Path(r), mode, name)
    return ImageDataset(torch.from_numpy(images), torch.full((len(files),), -1, dtype=torch.int64), [], name)


def load_folder(path: str | os.PathLike[str], split: str) -> ImageDataset:
    """Load ``split`` of an image folder.

    Class names are the sorted class folder names over *both* splits, so a class id means the
    same class in train and test even if one split lacks a class. Colour mode and size are
    decided over both splits too, so the two splits always have the same shape.

    Returns:
        ImageDataset with images uint8 ``[N, H, W, C]`` (C = 1 if every image is grey, else 3).
    """
    base = Path(path).expanduser()
    name = f"folder:{path}"
    if not base.is_dir():
        raise DataError(f"{name}: {base} is not a directory; {_LAYOUT}")
    dirs = _split_dirs(base)
    try:
        listing = {s: _list_images(d) for s, d in dirs.items()}
    except OSError as exc:
        raise DataError(f"{name}: cannot list {base} ({exc.strerror}); {_LAYOUT}") from exc
    class_names = sorted({c for per_class in listing.values() for c in per_class})
    if not class_names:
        loose = {s: sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES) for s, d in dirs.items()}
        if loose["train"] or loose["test"]:
            return _load_unlabelled(loose, split, name)
        raise DataError(f"{name}: no images in {base}; {_LAYOUT}")
    if not listing[split]:
        raise DataError(f"{name}: no images in {dirs[split]}; {_LAYOUT}")

    # Header probes are cheap (no pixel decoding), so both splits are checked before decoding.
    all_files = sorted(
        {f for per_class in listing.values() for files in per_class.values() for f in files}
    )
    mode = _common_mode(all_files, name)

    split_dir = dirs[split]
    rel = [str(f.relative_to(split_dir)) for c in class_names for f in listing[split].get(c, [])]
    images = decode_stack(rel, lambda r: split_dir / r, mode, str(split_dir))
    labels = np.array(
        [i for i, c in enumerate(class_names) for _ in listing[split].get(c, [])], dtype=np.int64
    )
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), class_names, name)
