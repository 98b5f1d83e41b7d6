"""Preprocessing: any image a user has (any size, aspect ratio, mode, 8 or 16 bits, EXIF-rotated)
into the square uint8 image a model takes. Training data and every later input (``egc classify``,
``egc eval``, ``egc serve``, CaG, ``EGC.preprocess``) go through the same :class:`Prep`, whose
settings are saved with the model (config ``data.image_size``, ``data.fit`` and the model's channels).

The rule, in the order applied:
1. EXIF orientation is applied (a phone photo stands the way it was taken).
2. The mode becomes 8-bit grey ("L") or RGB: 16-bit and 32-bit grey are scaled (not clipped) to 8 bits,
   an alpha channel is dropped (as ``PIL.Image.convert`` and torchvision's folders do), colour becomes
   grey by ITU-R 601 luma for a grey model, grey is repeated over three channels for a colour model.
3. ``fit="crop"``: the shorter side is resized to ``size`` (bicubic, antialiased when shrinking) and the
   centre ``size x size`` is kept; ``fit="pad"``: the longer side is resized to ``size`` and the image is
   centred on black. An image already ``size x size`` is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

FITS = ("crop", "pad")
# Every suffix Pillow can open (png, jpg, bmp, gif, webp, tiff, ppm, ...).
READABLE: frozenset[str] = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
# Sizes an automatic choice snaps to: all divisible by 4 (a latent model's autoencoder downsamples by 4)
# and by the UNet's patch 2. The automatic choice stops at 64: on a 2-core CPU a pixel EGC step at 64 px
# costs ~5x one at 28 px, and larger images are better served by the latent path at an explicit size.
SNAP_SIZES: tuple[int, ...] = (16, 24, 28, 32, 48, 64)
AUTO_MAX = 64
# Modes with one intensity channel and more than 8 bits: scaled to 8 bits by their range, not clipped.
_DEEP_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def normalise_mode(img: Image.Image, grey: bool) -> tuple[Image.Image, list[str]]:
    """EXIF orientation applied and the mode made "L" (``grey``) or "RGB"; returns (image, what was done)."""
    notes: list[str] = []
    if img.getexif().get(0x0112, 1) not in (0, 1):  # 0x0112: the EXIF orientation tag
        img = ImageOps.exif_transpose(img)
        notes.append("EXIF orientation applied")
    if img.mode in _DEEP_GREY:
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if img.mode == "F" and arr.max(initial=0) <= 1.0 else 255.0 if arr.max(initial=0) <= 255 else 65535.0
        img = Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
        if top != 255.0:
            notes.append(f"{'float' if top == 1.0 else '16-bit'} pixels scaled to 8 bits")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow wants palette transparency expanded before dropping it
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        notes.append("alpha channel dropped")
    want = "L" if grey else "RGB"
    if img.mode != want:
        if grey and img.mode not in ("1", "L", "LA", "La"):
            notes.append("colour converted to grey")
        img = img.convert(want)
    return img, notes


def fit_size(img: Image.Image, size: int, fit: str = "crop") -> Image.Image:
    """``img`` as ``size x size`` by ``fit`` ("crop" or "pad", see the module docstring)."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    if fit == "crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))
    if fit == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        canvas = Image.new(img.mode, (size, size), 0)
        canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
        return canvas
    raise ValueError(f"fit must be one of {FITS}, got {fit!r}")


@dataclass(frozen=True)
class Prep:
    """What a model does to an image before it sees it: ``size x size``, ``channels`` (1 or 3), ``fit``."""

    size: int
    channels: int
    fit: str = "crop"

    def __post_init__(self) -> None:
        if self.fit not in FITS or self.channels not in (1, 3) or self.size < 1:
            raise ValueError(f"Prep(size={self.size}, channels={self.channels}, fit={self.fit!r}) is not valid")

    def pixels(self, img: Image.Image) -> tuple[np.ndarray, list[str]]:
        """uint8 ``[size, size, channels]`` of an open image, and what was changed (empty when nothing)."""
        img, notes = normalise_mode(img, self.channels == 1)
        if img.size != (self.size, self.size):
            notes.append(f"resized from {img.size[0]}x{img.size[1]} ({self.describe_fit()})")
            img = fit_size(img, self.size, self.fit)
        arr = np.asarray(img, dtype=np.uint8)
        return (arr[..., None] if arr.ndim == 2 else arr), notes

    def describe_fit(self) -> str:
        return "shorter side resized, centre crop" if self.fit == "crop" else "longer side resized, padded with black"

    def describe(self) -> str:
        return f"{self.size}x{self.size} {'grey' if self.channels == 1 else 'RGB'} ({self.describe_fit()})"


def auto_size(sides: list[tuple[int, int]]) -> tuple[int, str]:
    """The training size for images of (width, height) ``sides`` when none was asked for, and why.

    One square size shared by all: that size (nothing is resized). Otherwise the median shorter side
    snapped down to :data:`SNAP_SIZES` (at most :data:`AUTO_MAX`), so most images are shrunk, not
    blown up, and the model stays affordable on a CPU."""
    if not sides:
        raise ValueError("no image sizes")
    if len(set(sides)) == 1 and sides[0][0] == sides[0][1]:
        return sides[0][0], f"every image is {sides[0][0]}x{sides[0][0]}"
    shorter = sorted(min(w, h) for w, h in sides)
    median = shorter[len(shorter) // 2]
    fits = [s for s in SNAP_SIZES if s <= median]
    size = fits[-1] if fits else SNAP_SIZES[0]
    why = f"sizes vary ({shorter[0]}-{max(max(s) for s in sides)} px); median shorter side {median} px"
    if median > AUTO_MAX:
        why += f", capped at {AUTO_MAX} (ask for more with --image-size)"
    return size, why
