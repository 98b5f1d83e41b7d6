"""Image files in and out: sample grids as PNG, output paths checked before work, image files collected."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.prep import READABLE
from .errors import EgcError



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


def collect_images(paths: list[str]) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted list of image files."""
    out: list[Path] = []
    for s in paths:
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in READABLE
                           and not any(part.startswith(".") for part in q.relative_to(p).parts))
            if not found:
                raise EgcError(f"no image files (png, jpg, bmp, gif, webp, tiff, ...) in folder {p}")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise EgcError(f"image not found: {p}")
    return out
