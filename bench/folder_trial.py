"""A user's image folder as it really comes, made from a known data set so an independent judge can score
what a model trained on it draws (issue 32).

    # 10 classes x 1,000 Fashion-MNIST training images as a messy folder: sizes 20-64 px, some with margins
    # (other aspect ratios), PNG / JPEG / BMP / GIF / WebP / TIFF, grey, RGB, RGBA, palette and 16-bit
    # modes, one broken file, one text file and a hidden folder per class, no train/test split
    python bench/folder_trial.py make fashion-mnist runs/fm-folder --per-class 1000 --sizes 20,64
    # CIFAR-10 upscaled to 48-96 px (for --image-size 64)
    python bench/folder_trial.py make cifar10 runs/c10-folder64 --per-class 2000 --sizes 48,96
    # samples of a model trained on such a folder, brought back to the data set's own size (the same
    # preprocessing code, egc.data.Prep) and scored by the data set's judge against its real test images
    python bench/folder_trial.py judge runs/fm-folder-run/samples.npz --data fashion-mnist --model runs/fm-folder-run
    # font digits (bench/make_font_digits.py, train/ and test/), judged by a CNN trained on them
    python bench/folder_trial.py judge S.npz --data folder:runs/digits --judge runs/digitcnn.safetensors

Prints JSON. The judge never saw the folder or the model (zoo:fashioncnn / zoo:cifarcnn).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from egc.data import Prep, load_dataset  # noqa: E402
from egc.host import cpu_name  # noqa: E402

FORMATS = ("png-L", "jpg-RGB", "png-RGBA", "png-16", "gif-P", "bmp-RGB", "webp-RGB", "tiff-L")


def _save(img: Image.Image, path: Path, kind: str) -> None:
    fmt, mode = kind.split("-")
    if mode == "16":  # 16-bit grey PNG (values spread over 0..65535)
        arr = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(arr).save(path.with_suffix(".png"))
        return
    img = img.convert("RGB" if mode == "P" else mode)
    if mode == "P":
        img = img.quantize(256)
    img.save(path.with_suffix("." + fmt), **({"quality": 90} if fmt in ("jpg", "webp") else {}))


def make(a: argparse.Namespace) -> dict:
    ds = load_dataset(a.data, "train")
    rng = np.random.default_rng(a.seed)
    lo, hi = (int(v) for v in a.sizes.split(","))
    out = Path(a.out)
    counts: dict[str, int] = {}
    for k, name in enumerate(ds.class_names):
        idx = np.flatnonzero(ds.labels.numpy() == k)
        idx = rng.choice(idx, size=min(a.per_class, len(idx)), replace=False)
        d = out / name.replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(idx):
            arr = ds.images[i].numpy()
            img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
            s = int(rng.integers(lo, hi + 1))
            img = img.resize((s, s), Image.Resampling.BICUBIC)
            if rng.random() < 0.3:  # a margin on one axis: another aspect ratio, the object intact
                w, h = (s + int(rng.integers(2, s // 3 + 3)), s) if rng.random() < 0.5 else (s, s + int(rng.integers(2, s // 3 + 3)))
                canvas = Image.new(img.mode, (w, h), 0)
                canvas.paste(img, ((w - s) // 2, (h - s) // 2))
                img = canvas
            _save(img, d / f"{name[:4]}-{j:05d}", FORMATS[int(rng.integers(len(FORMATS)))])
        (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        (d / "Thumbs.db").write_bytes(b"not an image")
        (d / ".thumbnails").mkdir(exist_ok=True)
        (d / ".thumbnails" / "t.png").write_bytes(b"hidden")
        counts[name] = len(idx)
    return {"folder": str(out), "from": f"{a.data} train split", "per_class": counts, "sizes": [lo, hi], "formats": list(FORMATS)}


def judge(a: argparse.Namespace) -> dict:
    from egc.eval.samples import load_samples_npz, score_samples

    imgs, labels = load_samples_npz(a.npz)  # uint8 [N, H, W, C]
    ref = load_dataset(a.data, "test")
    if a.model:  # the model's class ids are its folder's sorted class names: map them to the reference's by name
        from egc.checkpoint import load_checkpoint

        norm = lambda n: str(n).lower().replace("/", "-")  # noqa: E731 (make writes "T-shirt/top" as "T-shirt-top")
        mine = load_checkpoint(a.model).meta["class_names"]
        theirs = [norm(n) for n in ref.class_names]
        if sorted(map(norm, mine)) != sorted(theirs):
            raise SystemExit(f"the model's classes {mine} are not {ref.class_names}")
        labels = torch.tensor([theirs.index(norm(mine[int(i)])) for i in labels])
    prep = Prep(ref.image_size, ref.channels, "crop")
    arr = (imgs * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # back to the uint8 [N, H, W, C] the npz held
    back = np.stack([prep.pixels(Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x))[0] for x in arr])
    back = torch.from_numpy(back).permute(0, 3, 1, 2).float() / 255  # score_samples takes [N, C, H, W] in [0, 1]
    res = score_samples(back, labels, a.data, judge=a.judge)
    return {"samples": a.npz, "sample_shape": list(arr.shape[1:]), "judged_at": prep.describe(), **res, "cpu": cpu_name()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("data")
    m.add_argument("out")
    m.add_argument("--per-class", type=int, default=1000)
    m.add_argument("--sizes", default="20,64", help="LO,HI: side lengths drawn uniformly")
    m.add_argument("--seed", type=int, default=0)
    j = sub.add_parser("judge")
    j.add_argument("npz")
    j.add_argument("--data", required=True)
    j.add_argument("--judge", help="a judge file (default: the data set's shipped judge)")
    j.add_argument("--model", help="the run that drew the samples: its class names are mapped to the data set's by name "
                   "(a folder's class ids follow its sorted folder names)")
    a = p.parse_args()
    print(json.dumps(make(a) if a.cmd == "make" else judge(a)))


if __name__ == "__main__":
    main()
