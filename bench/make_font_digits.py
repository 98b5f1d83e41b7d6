"""A ten-class 28 x 28 grey image set the project has never trained on: the digits 0-9 drawn in
the machine's TrueType fonts with random pose, size, stroke and blur, written as a class-folder tree
for ``--data folder:OUT`` (``OUT/{train,test}/<digit>/*.png``).

It stands in for "a folder of PNG images from a ten-class data set" a new user brings (issue 16,
item 5) on a machine that cannot download MNIST. Test images use the same fonts with their own
random draws (a held-out split of the distribution, not of the fonts). Deterministic for a seed.

    python bench/make_font_digits.py --out runs/font-digits [--train-per-class 3000] [--test-per-class 500]

Prints one JSON line: {"benchmark": "make_font_digits", "out": ..., "fonts": ..., "train": ..., "test": ...}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts")


def find_fonts() -> list[Path]:
    """Every TrueType font file of the machine, sorted (a fixed order for a fixed seed)."""
    out: list[Path] = []
    for d in FONT_DIRS:
        p = Path(d)
        if p.is_dir():
            out += [f for f in p.rglob("*.ttf") if f.is_file()]
    return sorted(out)


def render_digit(digit: int, font_path: Path, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """One white-on-black digit [size, size] uint8: drawn large, posed, then shrunk (anti-aliased)."""
    big = 4 * size
    font = ImageFont.truetype(str(font_path), int(big * rng.uniform(0.55, 0.85)))
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(0, 7))  # thin to bold strokes
    box = draw.textbbox((0, 0), str(digit), font=font, stroke_width=stroke)
    w, h = box[2] - box[0], box[3] - box[1]
    draw.text(((big - w) / 2 - box[0], (big - h) / 2 - box[1]), str(digit), fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    canvas = canvas.rotate(float(rng.uniform(-18, 18)), resample=Image.BILINEAR, translate=tuple(rng.uniform(-0.08, 0.08, 2) * big))
    # a shear, as handwriting slants
    k = float(rng.uniform(-0.25, 0.25))
    canvas = canvas.transform((big, big), Image.AFFINE, (1, k, -k * big / 2, 0, 1, 0), resample=Image.BILINEAR)
    img = canvas.resize((size, size), Image.LANCZOS)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.7))))
    return np.asarray(img, dtype=np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-per-class", type=int, default=3000)
    ap.add_argument("--test-per-class", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    fonts = find_fonts()
    if not fonts:
        raise SystemExit(f"make_font_digits.py: no .ttf fonts under {', '.join(FONT_DIRS)} (apt-get install fonts-dejavu-core)")
    if a.train_per_class < 1 or a.test_per_class < 1:
        raise SystemExit("make_font_digits.py: --train-per-class and --test-per-class must be >= 1")
    out = Path(a.out)
    counts = {}
    for split, n, seed in (("train", a.train_per_class, a.seed), ("test", a.test_per_class, a.seed + 1)):
        rng = np.random.default_rng(seed)
        for digit in range(10):
            d = out / split / str(digit)
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = render_digit(digit, fonts[int(rng.integers(len(fonts)))], rng)
                Image.fromarray(arr, "L").save(d / f"{i:05d}.png")
        counts[split] = 10 * n
    print(json.dumps({"benchmark": "make_font_digits", "out": str(out), "fonts": len(fonts), **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
