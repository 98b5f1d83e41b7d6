"""Calibration of a classifier's top-1 confidence: expected calibration error and reliability diagrams.

ECE (Naeini et al. 2015; Guo et al. 2017): split the top-1 confidences into ``n_bins`` equal-width
bins over [0, 1]; ECE = sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)|. Bin b holds confidences in
(b / n_bins, (b + 1) / n_bins], the first bin also holds 0.

The reliability diagram is drawn with Pillow only (no plotting library), so it is a few kB of PNG
that an HTML report can embed.
"""

from __future__ import annotations

import io

import numpy as np
import torch

DEFAULT_BINS = 15


def _check(probs: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    p = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu").long().reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[0] == 0:
        raise ValueError(f"calibration: expected probs [N, K] and labels [N] with N >= 1, got {tuple(p.shape)} and {tuple(y.shape)}")
    if not torch.isfinite(p).all():
        raise ValueError("calibration: probabilities contain NaN or inf")
    conf, pred = p.max(dim=1)
    return conf.numpy(), (pred == y).double().numpy()


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_BINS) -> dict[str, list[float] | list[int]]:
    """Per-bin statistics of top-1 confidence.

    Args:
        probs: float ``[N, K]`` class probabilities (rows sum to 1).
        labels: int ``[N]`` true classes.
        n_bins: number of equal-width bins over [0, 1].
    Returns:
        ``{"edges": [n_bins + 1], "confidence": [n_bins], "accuracy": [n_bins], "count": [n_bins]}``;
        confidence and accuracy are the bin means (NaN for an empty bin).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = _check(probs, labels)
    # ceil(conf * n) - 1 puts conf in (b/n, (b+1)/n] into bin b; conf = 0 goes to bin 0.
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    s_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    s_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, s_conf / np.maximum(count, 1), np.nan)
        mean_acc = np.where(count > 0, s_acc / np.maximum(count, 1), np.nan)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": mean_acc.tolist(),
        "count": count.astype(int).tolist(),
    }


def ece_from_bins(bins: dict) -> float:
    """ECE from :func:`reliability_bins` output."""
    count = np.asarray(bins["count"], dtype=np.float64)
    n = count.sum()
    if n == 0:
        raise ValueError("ece: no samples")
    gap = np.abs(np.nan_to_num(np.asarray(bins["accuracy"], dtype=np.float64)) - np.nan_to_num(np.asarray(bins["confidence"], dtype=np.float64)))
    return float((count / n * gap).sum())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_BINS) -> float:
    """Top-1 ECE in [0, 1] of ``probs`` ``[N, K]`` against ``labels`` ``[N]`` (``n_bins`` equal-width bins)."""
    return ece_from_bins(reliability_bins(probs, labels, n_bins))


def reliability_diagram_png(bins: dict, title: str = "", size: int = 320) -> bytes:
    """A reliability diagram as PNG bytes: per-bin accuracy bars against the diagonal.

    Bars are the accuracy of each non-empty bin; the red outline above or below a bar is its gap
    to the bin's mean confidence; the dashed line is perfect calibration. The ECE goes in the title.
    """
    from PIL import Image, ImageDraw, ImageFont

    edges = np.asarray(bins["edges"], dtype=np.float64)
    acc = np.asarray(bins["accuracy"], dtype=np.float64)
    conf = np.asarray(bins["confidence"], dtype=np.float64)
    count = np.asarray(bins["count"])
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, top, right, bottom = 40, 24, size - 12, size - 36
    w, h = right - left, bottom - top

    def px(u: float, v: float) -> tuple[float, float]:
        return left + u * w, bottom - v * h

    for g in np.linspace(0, 1, 6):  # grid and tick labels
        d.line([px(0, g), px(1, g)], fill=(230, 230, 230))
        d.line([px(g, 0), px(g, 1)], fill=(230, 230, 230))
        d.text((left - 28, px(0, g)[1] - 6), f"{g:.1f}", fill="black", font=font)
        d.text((px(g, 0)[0] - 8, bottom + 4), f"{g:.1f}", fill="black", font=font)
    for i in range(len(count)):
        if count[i] == 0:
            continue
        x0, x1 = px(edges[i], 0)[0] + 1, px(edges[i + 1], 0)[0] - 1
        d.rectangle([x0, px(0, acc[i])[1], x1, bottom], fill=(70, 110, 200), outline=(40, 60, 140))
        y_a, y_c = px(0, acc[i])[1], px(0, conf[i])[1]
        d.rectangle([x0, min(y_a, y_c), x1, max(y_a, y_c)], outline=(210, 40, 40))
    # dashed diagonal
    for s in np.arange(0, 1, 0.04):
        d.line([px(s, s), px(min(s + 0.02, 1), min(s + 0.02, 1))], fill="black", width=1)
    d.rectangle([left, top, right, bottom], outline="black")
    label = title or ""
    if count.sum() > 0:
        label = f"{label}  ECE {ece_from_bins(bins):.3f}".strip()
    d.text((left, 7), label, fill="black", font=font)
    d.text((left + w // 2 - 30, size - 16), "confidence", fill="black", font=font)
    d.text((left + 4, top + 4), "accuracy", fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
