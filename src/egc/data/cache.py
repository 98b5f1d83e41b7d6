"""A disk cache of decoded ``(images, labels)`` arrays, so slow decoding (60k JPEGs, ~10 s) is
paid once per source file rather than once per run."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from egc.data.dataset import one_line
from egc.data.paths import cache_dir

# Bump when the decoded layout changes, so stale caches from older code are never read.
_FORMAT = 1

Arrays = tuple[np.ndarray, np.ndarray]


# An entry's name: the decoded tag, the source's size and mtime, a hash of its path, the cache format.
_KEY = "{tag}-{size}-{mtime}-{where}-v{fmt}"


def _where(source: Path) -> str:
    return hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:10]


def _key(source: Path, tag: str) -> str:
    # Size + mtime detect a replaced file without hashing 65+ MB; the path hash keeps two copies
    # that happen to agree on both apart.
    st = source.stat()
    return _KEY.format(tag=tag, size=st.st_size, mtime=st.st_mtime_ns, where=_where(source), fmt=_FORMAT)


def _drop_stale(folder: Path, source: Path, tag: str, key: str) -> None:
    """Delete the entries of the same tag and source path made from an older version of the file (or by
    an older cache format). A source that is copied in afresh gets a new mtime each time (a shared data
    folder restored per session): without this the cache grew by the whole decoded data set each time."""
    same_source = _KEY.format(tag=re.escape(tag), size=r"\d+", mtime=r"\d+", where=_where(source), fmt=r"\d+")
    stale = re.compile(same_source + r"\.(images|labels)\.npy")
    for p in folder.iterdir():
        if stale.fullmatch(p.name) and not p.name.startswith(key + "."):
            try:
                p.unlink(missing_ok=True)  # a reader that opened it keeps its data (np.load reads it whole)
            except OSError:
                pass  # someone else's file in a shared cache: leaving it costs only disk


def _load(images_path: Path, labels_path: Path) -> Arrays | None:
    """Both arrays if a complete, well-formed cache entry exists, else None (rebuild)."""
    if not (images_path.is_file() and labels_path.is_file()):
        return None
    try:
        images = np.load(images_path, allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # a damaged cache is only a miss: the source is still there
    ok = (
        images.dtype == np.uint8 and images.ndim == 4
        and labels.dtype == np.int64 and labels.shape == images.shape[:1]
    )  # fmt: skip
    return (images, labels) if ok else None


def _save_atomic(array: np.ndarray, path: Path) -> None:
    # Write beside the target and rename: os.replace is atomic, so a concurrent reader or a
    # killed writer never leaves a half-written .npy under the final name.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache dir may be shared via $EGC_CACHE
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_arrays(source: Path, tag: str, build: Callable[[], Arrays]) -> Arrays:
    """Return ``build()``'s ``(images uint8 [N,H,W,C], labels int64 [N])``, via the cache.

    Args:
        source: the file the arrays are decoded from; its size and mtime key the entry.
        tag: what was decoded from it, e.g. ``"cifar10-zip-train"``.
        build: decodes the arrays on a cache miss.
    """
    folder = cache_dir()
    key = _key(source, tag)
    images_path, labels_path = folder / f"{key}.images.npy", folder / f"{key}.labels.npy"
    hit = _load(images_path, labels_path)
    if hit is not None:
        return hit
    images, labels = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Labels first: _load needs both files, so a crash between the two writes is a miss.
        _save_atomic(labels, labels_path)
        _save_atomic(images, images_path)
        _drop_stale(folder, source, tag, key)
    except OSError as exc:
        # An unwritable cache only costs time on the next run; it must not stop this one.
        warnings.warn(f"egc: not caching {tag} in {folder} ({one_line(exc)})", stacklevel=2)
    return images, labels
