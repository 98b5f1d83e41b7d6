"""Image folders as users have them: ``PATH/<class>/**/<image>``, or ``PATH/{train,test}/<class>/...``
for separate splits. Images directly in PATH (or in PATH/train and PATH/test), with no class folders,
are an unlabelled set (for unsupervised EGC).

Anything Pillow reads, at any size and mode: every image goes through :class:`egc.data.prep.Prep`
(size chosen once for the whole folder, grey vs colour decided once, see :func:`load_folder`).
Unreadable files, files that are not images and hidden files/folders are skipped and counted; a
folder without ``test/`` gets a stratified, seeded held-out split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from egc.data.dataset import ImageDataset, one_line
from egc.data.images import GREY_MODES
from egc.data.prep import READABLE, Prep, auto_size
from egc.errors import DataError

_LAYOUT = ("expected PATH/<class>/<images> or PATH/train/<class>/... and PATH/test/<class>/... "
           "(or, unlabelled, the images directly in PATH)")
# Colour-mode images whose channels never differ by more than this are grey in content (JPEG's chroma
# noise moves grey pixels by a few levels).
_GREY_SPREAD = 8
_SHOWN = 3  # file names quoted in a "skipped" note


def _hidden(p: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(base).parts)


def _files_under(folder: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under ``folder``, sorted, hidden files and folders left out."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(f for f in found if f.is_file() and not _hidden(f, folder))
    return [f for f in files if f.suffix.lower() in READABLE], [f for f in files if f.suffix.lower() not in READABLE]


def _split_dirs(base: Path) -> dict[str, Path] | None:
    """``train/`` and ``test/`` when both exist, else None (one pool of images)."""
    if (base / "train").is_dir() and (base / "test").is_dir():
        return {"train": base / "train", "test": base / "test"}
    return None


def _class_listing(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Image files per class sub-folder (searched recursively) and the non-image files met."""
    per_class: dict[str, list[Path]] = {}
    other: list[Path] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        imgs, rest = _files_under(sub, recursive=True)
        other += rest
        if imgs:
            per_class[sub.name] = imgs
    return per_class, other


def holdout_split(files: list[Path], share: float, seed: int, group: int) -> tuple[list[Path], list[Path]]:
    """(train, test) of one class's files: round(share * n) of them to test (at most n - 1, so a class
    keeps a training image), chosen by a permutation seeded by (seed, group). Pure: the same files,
    share and seed always give the same split."""
    n = len(files)
    n_test = min(int(share * n + 0.5), n - 1) if share > 0 else 0
    order = np.random.default_rng([seed, group]).permutation(n)
    test = set(order[:n_test].tolist())
    return [f for i, f in enumerate(files) if i not in test], [f for i, f in enumerate(files) if i in test]


def _probe(files: list[Path]) -> tuple[dict[Path, tuple[str, tuple[int, int]]], list[tuple[Path, str]]]:
    """Header (mode, size) of each readable file, and (file, reason) of the unreadable ones."""
    ok: dict[Path, tuple[str, tuple[int, int]]] = {}
    bad: list[tuple[Path, str]] = []
    for f in files:
        try:
            with Image.open(f) as img:
                ok[f] = (img.mode, img.size)
        except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
            bad.append((f, one_line(exc)))
    return ok, bad


def _is_grey(headers: dict[Path, tuple[str, tuple[int, int]]]) -> tuple[bool, str]:
    """Grey or colour for the whole folder, and why: grey when every image is stored grey, or every
    colour-stored image has channels that agree (scans saved as RGB JPEG); colour at the first that
    does not."""
    colour = [f for f, (mode, _) in headers.items() if mode not in GREY_MODES]
    if not colour:
        return True, "every image is stored grey"
    for f in colour:
        try:
            with Image.open(f) as img:
                rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
        except Exception:  # unreadable at decode time: it is skipped later, it decides nothing here
            continue
        if int(np.abs(rgb - rgb[..., [1, 2, 0]]).max(initial=0)) > _GREY_SPREAD:
            return False, f"{f.name} is in colour"
    return True, f"the {len(colour)} colour-stored images are grey in content"


def _skipped(what: str, items: list[tuple[Path, str]] | list[Path], base: Path) -> str:
    names = [str((i[0] if isinstance(i, tuple) else i).relative_to(base)) for i in items]
    shown = ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
    first = f"; first: {items[0][1]}" if items and isinstance(items[0], tuple) else ""
    return f"skipped {len(names)} {what} ({shown}{first})"


def _shape(headers: dict[Path, tuple[str, tuple[int, int]]], size: int, channels: int, notes: list[str]) -> tuple[int, int]:
    """The square size and channel count: the asked ones, else decided from the headers (said in ``notes``)."""
    if size == 0:
        size, why = auto_size([s for _, s in headers.values()])
        notes.append(f"image size {size}x{size}: {why} (set it with --image-size)")
    if channels == 0:
        grey, why = _is_grey(headers)
        channels = 1 if grey else 3
        notes.append(f"{'grey' if grey else 'colour'}: {why}")
    return size, channels


def _check_classes(name: str, base: Path, groups: list[str], chosen: dict[str, list[Path]], kept: set[int], split_dirs: bool) -> None:
    """Refuse a train split in which a class has no usable image (the model would never see it)."""
    for gi, c in enumerate(groups):
        if gi not in kept and (chosen[c] or not split_dirs):
            lost = [str(f.relative_to(base)) for f in chosen[c]][:_SHOWN]
            raise DataError(f"{name}: class {c!r} has no usable image ({', '.join(lost) or 'none'} unreadable); "
                            "add readable images or remove the class folder")


def load_folder(path: str | os.PathLike[str], split: str, size: int = 0, channels: int = 0, fit: str = "crop",
                holdout: float = 0.0, holdout_seed: int = 0) -> ImageDataset:
    """Load ``split`` ("train" or "test") of an image folder.

    Args:
        size: side of the square images (0: decided from the data, :func:`egc.data.prep.auto_size`).
        channels: 1 or 3 (0: grey when every image is grey in content, else RGB).
        fit: "crop" or "pad" (:class:`egc.data.prep.Prep`).
        holdout: without ``train/`` + ``test/`` folders, this share of every class is the test split
            and never part of the train split (0: both splits are all the images, said in ``split_note``).
        holdout_seed: seeds which images are held out.

    Class names are the sorted class folder names over both splits, and size and channels are decided
    over both splits, so a class id and the image shape mean the same in train and test.

    Returns:
        ImageDataset with images uint8 ``[N, size, size, C]``; ``notes`` say what was skipped or chosen.
    """
    base = Path(path).expanduser()
    name = f"folder:{path}"
    if not base.is_dir():
        raise DataError(f"{name}: {base} is not a directory; {_LAYOUT}")
    dirs = _split_dirs(base)
    pools, class_names = _pools(base, dirs, name)
    groups = class_names or [""]
    chosen, split_note, notes = _choose(pools, dirs, groups, split, holdout, holdout_seed, base)
    every = sorted({f for per_class, _ in pools.values() for files in per_class.values() for f in files})
    if not every:
        raise DataError(f"{name}: no images in {base}; {_LAYOUT}")
    headers, unreadable = _probe(every)
    other = sorted({f for _, rest in pools.values() for f in rest})
    if unreadable:
        notes.append(_skipped("unreadable files", unreadable, base))
    if other:
        notes.append(_skipped("files that are not images", other, base))
    if not headers:
        raise DataError(f"{name}: none of the {len(every)} image files in {base} is readable ({unreadable[0][0].name}: {unreadable[0][1]})")
    size, channels = _shape(headers, size, channels, notes)
    files = [(f, gi) for gi, c in enumerate(groups) for f in chosen[c] if f in headers]
    prep = Prep(size, channels, fit)
    images, keep, late, resized = _decode(files, prep)
    if late:
        notes.append(_skipped(f"files that failed to decode ({split} split)", late, base))
    if resized:
        notes.append(f"{resized} of {len(keep)} {split} images resized to {prep.describe()}")
    if class_names and split == "train":  # a class with nothing to learn from would be a class the model never saw
        _check_classes(name, base, groups, chosen, {files[i][1] for i in keep}, bool(dirs))
    if not keep:
        raise DataError(f"{name}: no usable images in the {split} split of {base} ({len(unreadable) + len(late)} unreadable); {_LAYOUT}")
    idx = np.array(keep)
    labels = np.array([files[i][1] for i in keep], dtype=np.int64) if class_names else np.full(len(keep), -1, dtype=np.int64)
    return ImageDataset(torch.from_numpy(images[idx]), torch.from_numpy(labels), class_names, name, split_note=split_note,
                        files=[str(files[i][0].relative_to(base)) for i in keep], notes=notes)


Pools = dict[str, tuple[dict[str, list[Path]], list[Path]]]  # pool ("train" | "test" | "all") -> (files per class, non-images)


def _pools(base: Path, dirs: dict[str, Path] | None, name: str) -> tuple[Pools, list[str]]:
    """The listing of each pool (train/ and test/, or the folder itself) and the class names over both;
    no class folders: one unnamed group of the images directly in the pool's folder."""
    try:
        pools = {s: _class_listing(d) for s, d in dirs.items()} if dirs else {"all": _class_listing(base)}
        class_names = sorted({c for per_class, _ in pools.values() for c in per_class})
        if not class_names:  # unlabelled: the images directly in the folder(s)
            pools = {s: ({"": _files_under(d, False)[0]}, _files_under(d, False)[1]) for s, d in (dirs or {"all": base}).items()}
    except OSError as exc:
        raise DataError(f"{name}: cannot list {base} ({exc.strerror}); {_LAYOUT}") from exc
    return pools, class_names


def _choose(pools: Pools, dirs: dict[str, Path] | None, groups: list[str], split: str, holdout: float, holdout_seed: int,
            base: Path) -> tuple[dict[str, list[Path]], str, list[str]]:
    """(the split's files per class, which images they are, notes): the split's own folder, or the
    held-out share (or, with holdout 0, all images for both splits)."""
    if dirs:
        return {c: pools[split][0].get(c, []) for c in groups}, f"{dirs[split]} ({split}/ folder)", []
    per_class, chosen, notes = pools["all"][0], {}, []
    for i, c in enumerate(groups):
        train_files, test_files = holdout_split(per_class.get(c, []), holdout, holdout_seed, i)
        chosen[c] = train_files if holdout == 0 else test_files if split == "test" else train_files  # no share held out: both are all
        if holdout > 0 and len(per_class.get(c, [])) == 1:
            notes.append(f"class {c!r} has one image: it trains, none is held out")
    note = (f"held out: {holdout:.0%} of each class of {base} (seed {holdout_seed}), never trained on" if holdout > 0 and split == "test"
            else f"{base} less the {holdout:.0%} held out" if holdout > 0
            else f"all images of {base} (no test/ folder and data.holdout 0: test figures are on training images)")
    return chosen, note, notes


def _decode(files: list[tuple[Path, int]], prep: Prep) -> tuple[np.ndarray, list[int], list[tuple[Path, str]], int]:
    """(uint8 [N, S, S, C] with a row per file, the rows that decoded, (file, why) of those that did not, how
    many were resized). A truncated file passes the header probe and fails only here."""
    images = np.empty((len(files), prep.size, prep.size, prep.channels), dtype=np.uint8)
    keep: list[int] = []
    late: list[tuple[Path, str]] = []
    resized = 0
    for i, (f, _) in enumerate(files):
        try:
            with Image.open(f) as img:
                images[i], changed = prep.pixels(img)
        except Exception as exc:
            late.append((f, one_line(exc)))
            continue
        resized += any(n.startswith("resized") for n in changed)
        keep.append(i)
    return images, keep, late, resized
