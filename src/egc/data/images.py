"""Decoding image files (PNG/JPEG, from disk or from bytes) into one uint8 array, with every
Pillow failure turned into a one-line :class:`DataError`."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from egc.data.dataset import one_line
from egc.errors import DataError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

# Modes with one intensity channel; anything else (RGB, RGBA, P, CMYK, ...) counts as colour.
GREY_MODES: frozenset[str] = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

Source = bytes | Path


def _open(source: Source) -> Image.Image:
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def probe_image(source: Source, where: str) -> tuple[str, tuple[int, int]]:
    """Mode and ``(width, height)`` from the header only (no pixel decoding, so it is cheap)."""
    try:
        with _open(source) as img:
            return img.mode, img.size
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, struct.error, ...
        raise DataError(f"{where}: unreadable image ({one_line(exc)})") from exc


def decode_image(source: Source, mode: str, where: str) -> np.ndarray:
    """Decode one image and convert it to ``mode`` ("L" or "RGB").

    Returns:
        uint8 ``[H, W, C]`` with C = 1 for "L" and 3 for "RGB".
    """
    try:
        with _open(source) as img:
            pixels = np.asarray(img.convert(mode), dtype=np.uint8)
    except Exception as exc:  # see probe_image: a truncated JPEG only fails here, at decode time
        raise DataError(f"{where}: unreadable image ({one_line(exc)})") from exc
    return pixels[..., None] if pixels.ndim == 2 else pixels


def decode_stack(
    names: Sequence[str], read: Callable[[str], Source], mode: str, where: str
) -> np.ndarray:
    """Decode ``names`` (in order) via ``read(name)`` into one array.

    Args:
        names: identifiers of the images, used in error messages as ``<where>/<name>``.
        read: returns the file path or the encoded bytes for a name.
        mode: "L" or "RGB", applied to every image so channels agree.
        where: the folder or archive, for error messages.

    Returns:
        uint8 ``[N, H, W, C]``; all images must share the first image's size.
    """
    if not names:
        raise DataError(f"{where}: no images found")
    out: np.ndarray | None = None
    for i, name in enumerate(names):
        pixels = decode_image(read(name), mode, f"{where}/{name}")
        if out is None:
            # Preallocate once: stacking a list of 60k small arrays would double peak memory.
            out = np.empty((len(names), *pixels.shape), dtype=np.uint8)
        elif pixels.shape != out.shape[1:]:
            raise DataError(
                f"{where}/{name}: image is {pixels.shape[1]}x{pixels.shape[0]} but "
                f"{names[0]} is {out.shape[2]}x{out.shape[1]}; all images must share one size"
            )
        out[i] = pixels
    assert out is not None
    return out
