"""CIFAR-10 from a zip of JPEGs (``train/<class>/<NNNN>.jpg``) or the ``cifar-10-python.tar.gz``
release (pickled batches). Decoded arrays are cached (see :mod:`egc.data.cache`)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from egc.data.cache import Arrays, cached_arrays
from egc.data.dataset import ImageDataset, one_line
from egc.data.images import IMAGE_SUFFIXES, decode_stack
from egc.data.paths import describe, find_upwards, search_dirs
from egc.errors import DataError

CIFAR10_CLASSES: list[str] = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
_CLASS_INDEX = {c: i for i, c in enumerate(CIFAR10_CLASSES)}

ZIP_NAME = "cifar10-jpeg.zip"
TAR_NAME = "cifar-10-python.tar.gz"
SHARED_ZIP = f"shared/data/{ZIP_NAME}"
_HINT = f"pass --data-root with {ZIP_NAME}, {TAR_NAME} or a folder holding one, or set $EGC_DATA"


def find_cifar10(root: str | os.PathLike[str] | None) -> Path:
    """The archive to read: ``root`` itself if it is a file, else the first zip/tar found in
    ``root``, ``$EGC_DATA`` and finally any ``<ancestor>/shared/data/cifar10-jpeg.zip``."""
    if root is not None and Path(root).expanduser().is_file():
        return Path(root).expanduser()
    dirs = search_dirs("cifar10", root, [])
    for folder in dirs:
        for name in (ZIP_NAME, TAR_NAME):
            if (folder / name).is_file():
                return folder / name
    if root is None:
        shared = find_upwards(SHARED_ZIP)
        if shared:
            return shared[0]
    places = [describe(dirs)] if dirs else []
    if root is None:
        places.append(f"<ancestors of cwd and of the package>/{SHARED_ZIP}")
    raise DataError(f"cifar10: no {ZIP_NAME} or {TAR_NAME} in {', '.join(places)}; {_HINT}")


def _read_zip(path: Path, split: str) -> Arrays:
    """Decode ``<split>/<class>/*.jpg`` members (any leading folder allowed), class-major order."""
    try:
        with zipfile.ZipFile(path) as zf:
            members: list[str] = []
            for name in zf.namelist():
                parts = name.split("/")
                # Dot-files are macOS AppleDouble/metadata entries, not images.
                is_image = name.lower().endswith(IMAGE_SUFFIXES) and not parts[-1].startswith(".")
                if len(parts) < 3 or parts[-3] != split or not is_image:
                    continue
                if parts[-2] not in _CLASS_INDEX:
                    raise DataError(
                        f"{path}: {name} is in unknown class folder {parts[-2]!r}; "
                        f"expected one of {', '.join(CIFAR10_CLASSES)}"
                    )
                members.append(name)
            if not members:
                raise DataError(
                    f"{path}: no {split}/<class>/*.jpg entries; expected the {ZIP_NAME} layout"
                )
            # Sorting fixes the order whatever order the zip was written in.
            members.sort(key=lambda n: (_CLASS_INDEX[n.split("/")[-2]], n))
            images = decode_stack(members, zf.read, "RGB", str(path))
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise DataError(f"{path}: corrupt zip ({one_line(exc)}); replace the file") from exc
    labels = np.array([_CLASS_INDEX[n.split("/")[-2]] for n in members], dtype=np.int64)
    return images, labels


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    A pickle can run arbitrary code on load, and the tarball is a file the user handed us, so
    only the globals a CIFAR batch actually references are allowed.
    """

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        # Python 3 writes bytes at pickle protocol <= 2 as _codecs.encode(str, "latin1"): harmless.
        ("_codecs", "encode"),
    })  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        canonical = module.replace("numpy._core", "numpy.core", 1)
        if (canonical, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        # numpy 2 renamed numpy.core to numpy._core; the old name still works but warns.
        if canonical.startswith("numpy.core") and hasattr(np, "_core"):
            module = canonical.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _batch_arrays(raw: bytes, where: str) -> Arrays:
    """One pickled CIFAR batch -> images uint8 ``[n, 32, 32, 3]``, labels int64 ``[n]``."""
    try:
        # encoding="bytes": the release was pickled by Python 2, whose str keys are bytes here.
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # pickle raises UnpicklingError, EOFError, ValueError, KeyError...
        raise DataError(f"{where}: not a CIFAR batch pickle ({one_line(exc)})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:  # fmt: skip
        is_array = isinstance(data, np.ndarray)
        desc = f"{data.dtype} {list(data.shape)}" if is_array else type(data).__name__
        raise DataError(f"{where}: 'data' must be uint8 [n, 3072], got {desc}")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: 'labels' is not a list of ints ({one_line(exc)})") from exc
    if label_array.shape != (data.shape[0],):
        raise DataError(
            f"{where}: {label_array.size} labels for {data.shape[0]} images; expected one each"
        )
    if label_array.size and (label_array.min() < 0 or label_array.max() >= len(CIFAR10_CLASSES)):
        raise DataError(f"{where}: labels outside 0..9; expected CIFAR-10's ten classes")
    # Rows store the red plane, then green, then blue (1024 bytes each): CHW -> HWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), label_array


def _read_tar(path: Path, split: str) -> Arrays:
    """Read ``data_batch_1..5`` (train) or ``test_batch`` (test) from the python release."""
    wanted = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts: list[Arrays] = []
    try:
        with tarfile.open(path, "r:*") as tf:
            members = {PurePosixPath(m.name).name: m for m in tf.getmembers() if m.isfile()}
            for name in wanted:
                member = members.get(name)
                if member is None:
                    raise DataError(f"{path}: no {name} inside; expected the {TAR_NAME} release")
                handle = tf.extractfile(member)
                assert handle is not None  # isfile() members always have a handle
                parts.append(_batch_arrays(handle.read(), f"{path}:{member.name}"))
    except (tarfile.TarError, zlib.error, OSError, EOFError) as exc:
        raise DataError(
            f"{path}: not a readable zip or tar ({one_line(exc)}); "
            f"expected {ZIP_NAME} or {TAR_NAME}"
        ) from exc
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar10(split: str, root: str | os.PathLike[str] | None) -> ImageDataset:
    """Load ``split`` of CIFAR-10.

    Returns:
        ImageDataset with images uint8 ``[N, 32, 32, 3]`` (N = 50000 train / 10000 test for the
        full set) and labels int64 ``[N]`` in the standard CIFAR-10 class order.
    """
    source = find_cifar10(root)
    # Sniff the content, not the suffix: root may point at a renamed copy.
    is_zip = zipfile.is_zipfile(source)
    kind = "zip" if is_zip else "tar"
    images, labels = cached_arrays(
        source,
        f"cifar10-{kind}-{split}",
        lambda: _read_zip(source, split) if is_zip else _read_tar(source, split),
    )
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        class_names=list(CIFAR10_CLASSES),
        name="cifar10",
    )
