"""``egc demo``: the shipped model classifies real test images and draws a class-balanced grid.

Needs no network and no data set: the model and 20 real test images of its data set ship inside the
package (``egc/zoo/<data set>-examples.npz``).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .checkpoint import ZOO_DIR
from .data import to_model_range, to_uint8
from .errors import EgcError
from .imageio import atomic_write_bytes, save_grid
from .model import EGC


def examples_file(data_name: str) -> Path | None:
    """The package's real test images for models of the registered data set ``data_name``:
    egc/zoo/<name>-examples.npz (uint8 images [N, H, W, C], int64 labels [N], class_names [K]);
    None for a user's own data (``folder:``, ``npz:``)."""
    name = data_name.strip().lower()
    if not name or ":" in name or "/" in name or "\\" in name:
        return None
    return ZOO_DIR / f"{name}-examples.npz"


def _annotated(images: np.ndarray, truth: list[str], pred: list[str], probs: list[float], scale: int = 4) -> Image.Image:
    """A strip of upscaled images with 'prediction (p)' and the true class under each."""
    n, h, w, _ = images.shape
    cols = min(n, 10)
    rows = (n + cols - 1) // cols
    cw, chh = max(w * scale, 96), h * scale + 30
    canvas = Image.new("RGB", (cols * cw, rows * chh), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = Image.fromarray(images[i, ..., 0] if images.shape[-1] == 1 else images[i]).resize((w * scale, h * scale), Image.NEAREST)
        x0, y0 = c * cw + (cw - w * scale) // 2, r * chh
        canvas.paste(tile, (x0, y0))
        ok = pred[i] == truth[i]
        draw.text((c * cw + 2, y0 + h * scale + 1), f"{pred[i][:13]} {probs[i]:.2f}", fill=(0, 110, 0) if ok else (190, 0, 0))
        draw.text((c * cw + 2, y0 + h * scale + 14), f"true: {truth[i][:10]}", fill=(90, 90, 90))
    return canvas


def run_demo(out: str | Path, checkpoint: str = "zoo:fashion-mnist", quick: bool = False, device: str = "auto") -> dict:
    out = Path(out)
    t0 = time.time()
    model = EGC.load(checkpoint, device=device)
    data = model.config.data.name
    examples = examples_file(data)
    if examples is None or not examples.is_file():
        raise EgcError(f"{checkpoint}: no demo images ship for its data set '{data}'; the demo runs models of the "
                       "shipped data sets (zoo:fashion-mnist)")
    with np.load(examples) as z:
        images, labels, names = z["images"], z["labels"], [str(s) for s in z["class_names"]]
    if tuple(images.shape[1:]) != (model.image_shape[1], model.image_shape[2], model.image_shape[0]):
        raise EgcError(f"{checkpoint} expects {model.image_shape} images; the demo's {data} images are {tuple(images.shape[1:])} (H, W, C)")
    x = to_model_range(torch.from_numpy(images))
    logits = model.logits(x).cpu()
    pred = logits.argmax(dim=1)  # from the logits: a saturated softmax can tie where the logits do not
    p = torch.softmax(logits, dim=1).gather(1, pred[:, None])[:, 0]
    correct = int((pred == torch.from_numpy(labels)).sum())
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    _annotated(images, [names[i] for i in labels], [model.class_names[int(i)] for i in pred], p.tolist()).save(buf, format="PNG")
    atomic_write_bytes(out / "classified.png", buf.getvalue())
    t1 = time.time()
    k = model.config.model.num_classes
    # The model's own measured sampling defaults (config sample.*: DDIM 50 with eta 1 for zoo:fashion-mnist);
    # --quick only shortens the run for tests.
    smp = model.config.sample
    per_class, steps = (2, 10) if quick else (10, min(smp.steps, model.schedule.num_steps))
    eta = smp.eta if smp.sampler == "ddim" else None
    imgs, ys = model.sample(per_class * k, class_balanced=True, steps=steps, seed=0, progress=not quick)
    save_grid(to_uint8(imgs), out / "samples.png", nrow=per_class, scale=3)
    # The model judges its own samples too (a consistency check, not an independent measure).
    self_acc = float((model.logits(imgs).argmax(1).cpu() == ys).float().mean())
    summary = {
        "checkpoint": checkpoint,
        "precision": model.precision,  # "auto" resolved: bf16 on CPUs with native bf16
        "device": str(model.device),
        "classified": {"images": len(labels), "correct": correct, "file": str(out / "classified.png")},
        "samples": {"n": int(len(ys)), "sampler": smp.sampler, "steps": steps, "eta": eta, "guidance": model.config.sample.guidance, "cfg": model.config.sample.cfg, "file": str(out / "samples.png"),
                    "rows": "one row per class: " + ", ".join(model.class_names), "self_classified_as_requested": round(self_acc, 3)},
        "seconds": {"classify": round(t1 - t0, 1), "sample": round(time.time() - t1, 1)},
    }
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    return summary
