"""Image files in and out: sample grids as PNG, single images read for classification."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import EgcError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [H', W', C] mosaic with ``nrow`` images per row."""
    n, h, w, c = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    arr = images.cpu().numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = arr[i]
    return grid


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename, so no half-written file is ever seen."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the parent is a file: there is no temporary file either
            pass
        raise EgcError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:  # KeyboardInterrupt: no temporary file is left behind
        tmp.unlink(missing_ok=True)
        raise


def _check_parent(p: Path, flag: str) -> None:
    a = p.parent
    while not a.exists() and a != a.parent:
        a = a.parent
    if not a.is_dir():
        raise EgcError(f"{flag} {p}: {a} is a file, not a folder")


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Fail before any work when ``path`` cannot become a file: empty, an existing folder, or under a file."""
    if not str(path).strip():
        raise EgcError(f"{flag}: the path is empty")
    p = Path(path)
    if p.is_dir():
        raise EgcError(f"{flag} {p} is a folder; give a file path")
    _check_parent(p, flag)
    return p


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Fail before any work when ``path`` cannot become a folder: empty, an existing file, or under a file."""
    if not str(path).strip():
        raise EgcError(f"{flag}: the path is empty")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise EgcError(f"{flag} {p} is a file, not a folder")
    _check_parent(p, flag)
    return p


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Save uint8 [N, H, W, C] images as a PNG grid (optionally upscaled for viewing)."""
    import io

    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """Read one image file as uint8 [H, W, C] matching the model's input (size x size, channels).

    A different size is an error (resizing silently would change what the model sees), and so is
    anything a conversion would lose: colour for a grey model, transparency, more than 8 bits.
    Grey images for a colour model are repeated over the 3 channels (nothing is lost).
    """
    p = Path(path)
    try:
        with Image.open(p) as im:
            arr = _pixels(im, channels, p)
    except FileNotFoundError:
        raise EgcError(f"image not found: {p}") from None
    except EgcError:
        raise
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError, struct.error, ...
        raise EgcError(f"cannot read image {p}: not a readable image file ({type(e).__name__})") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[0] != size or arr.shape[1] != size:
        raise EgcError(f"image {p} is {arr.shape[1]}x{arr.shape[0]}, the model expects {size}x{size}")
    return torch.from_numpy(arr.copy())


def _pixels(im: Image.Image, channels: int, p: Path) -> np.ndarray:
    """uint8 [H, W] (channels 1) or [H, W, 3] of an open image, refusing lossy conversions."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        raise EgcError(f"image {p} has {im.mode} pixels (16-bit or float); save it as 8-bit grey or RGB")
    if im.mode in ("LA", "PA", "RGBA", "La", "RGBa") or "transparency" in im.info:
        alpha = np.asarray(im.convert("RGBA"), dtype=np.uint8)[..., 3]
        if (alpha < 255).any():
            raise EgcError(f"image {p} has transparent pixels; the model takes opaque images (flatten it onto a background)")
    if channels != 1:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    if im.mode in ("1", "L", "LA", "La"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
        raise EgcError(f"image {p} is a colour ({im.mode}) image; this model takes grey images (convert it to grey first)")
    return np.ascontiguousarray(rgb[..., 0])


def collect_images(paths: list[str]) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted list of image files."""
    out: list[Path] = []
    for s in paths:
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise EgcError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise EgcError(f"image not found: {p}")
    return out
