"""A small, independent CNN used as the *judge* of generated samples.

The network is trained once (``bench/train_feature_classifier.py``) as a plain discriminative
classifier and shipped in ``egc/zoo``. It is never used by EGC training or sampling, so metrics
computed in its feature space (Frechet distance, KID, precision/recall, conditional accuracy)
measure the generator against a yardstick that it could not have been optimised against.

Weights are stored with safetensors; the constructor arguments and free-form metadata are JSON
strings in the safetensors header, so loading never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from egc.errors import CheckpointError

#: Value of the ``format`` header key; lets the loader reject unrelated safetensors files.
FEATURE_NET_FORMAT = "egc.feature_net.v1"


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """conv3x3 -> BN -> ReLU -> 2x2 max-pool: halves H and W.

    ``bias=False`` because the following BatchNorm has its own shift.
    """
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FeatureCNN(nn.Module):
    """Three conv blocks, adaptive pooling, a ``feat_dim`` penultimate layer and a linear head.

    Input: float ``[B, in_ch, H, W]`` in ``[-1, 1]`` with ``H, W >= 16``.
    Channel widths are ``width, 2*width, 4*width``; after three 2x poolings the map is
    ``[B, 4*width, H/8, W/8]`` and is adaptively average-pooled to a fixed 2x2 grid, so any input
    size >= 16 gives the same flattened size (2x2 instead of 1x1 keeps coarse layout, which
    matters for garments such as trousers vs. dresses).
    """

    def __init__(
        self, in_ch: int, num_classes: int, width: int = 32, feat_dim: int = 128
    ) -> None:
        super().__init__()
        if in_ch < 1 or num_classes < 2 or width < 1 or feat_dim < 1:
            raise ValueError(
                f"FeatureCNN: bad sizes in_ch={in_ch} num_classes={num_classes} "
                f"width={width} feat_dim={feat_dim}"
            )
        self.in_ch = in_ch
        self.num_classes = num_classes
        self.width = width
        self.feat_dim = feat_dim
        self.body = nn.Sequential(
            _conv_block(in_ch, width),
            _conv_block(width, 2 * width),
            _conv_block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        # Penultimate embedding. BN before the ReLU keeps the feature scale stable across
        # training runs, which keeps Frechet distances comparable between judge versions.
        self.embed = nn.Sequential(
            nn.Linear(4 * width * 4, feat_dim, bias=False),
            nn.BatchNorm1d(feat_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(feat_dim, num_classes)

    def config(self) -> dict[str, int]:
        """Constructor arguments, enough to rebuild the module before loading weights."""
        return {
            "in_ch": self.in_ch,
            "num_classes": self.num_classes,
            "width": self.width,
            "feat_dim": self.feat_dim,
        }

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_ch:
            raise ValueError(
                f"FeatureCNN expects [B,{self.in_ch},H,W] input, got {tuple(x.shape)}"
            )
        if x.shape[2] < 16 or x.shape[3] < 16:
            raise ValueError(f"FeatureCNN needs H, W >= 16, got {tuple(x.shape[2:])}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features.

        Args:
            x: float ``[B, in_ch, H, W]`` in ``[-1, 1]``.
        Returns:
            float ``[B, feat_dim]`` (non-negative: taken after the ReLU).
        """
        self._check_input(x)
        return self.embed(self.body(x))

    def classify_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` from features ``[B, feat_dim]``.

        Split out so that the judge can get features and predictions from one forward pass.
        """
        return self.head(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for input ``[B, in_ch, H, W]`` in ``[-1, 1]``."""
        return self.classify_features(self.features(x))


def save_feature_net(net: FeatureCNN, path: str | Path, meta: dict[str, Any]) -> None:
    """Write ``net`` to ``path`` as safetensors; ``meta`` must be JSON-serialisable.

    ``meta`` should carry at least ``name`` (used in metric names, e.g. ``"fashioncnn"``),
    ``dataset`` and ``test_accuracy``.
    """
    from safetensors.torch import save_file

    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ValueError("save_feature_net: meta['name'] must be a non-empty string")
    # safetensors refuses shared or non-contiguous storage; clone() gives each tensor its own.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    header = {
        "format": FEATURE_NET_FORMAT,
        "config": json.dumps(net.config(), sort_keys=True),
        "meta": json.dumps(meta, sort_keys=True),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=header)


def load_feature_net(path: str | Path) -> tuple[FeatureCNN, dict[str, Any]]:
    """Read a file written by :func:`save_feature_net`.

    Returns:
        ``(net, meta)`` with ``net`` on CPU in eval mode.
    Raises:
        CheckpointError: missing file, not a feature-net file, or weights that do not fit.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"feature network file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several error types for corrupt files
        raise CheckpointError(f"cannot read feature network {path}: {exc}") from exc
    if header.get("format") != FEATURE_NET_FORMAT:
        raise CheckpointError(
            f"{path} is not an egc feature network (format={header.get('format')!r})"
        )
    try:
        config = json.loads(header["config"])
        meta = json.loads(header.get("meta", "{}"))
        net = FeatureCNN(**config)
        net.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"feature network {path} is incompatible: {exc}") from exc
    net.eval()
    return net, meta
