"""The in-memory data set type and the pixel-range conversions every model uses.

Data sets are small enough (at most a few hundred MB of uint8) to live in memory as one tensor, so
there is no per-item ``__getitem__`` machinery: batches are gathered with one index operation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from egc.errors import DataError

SPLITS: tuple[str, ...] = ("train", "test")


def check_split(name: str, split: str) -> None:
    """Raise :class:`DataError` unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise DataError(f"{name}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def one_line(exc: BaseException) -> str:
    """The message of a library exception flattened to one line, for embedding in a DataError."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class ImageDataset:
    """An image data set held in memory, labelled or not.

    Attributes:
        images: uint8 ``[N, H, W, C]`` with ``C`` = 1 (grey) or 3 (RGB); channels-last because that
            is how every source format stores pixels, and it is 4x smaller than float.
        labels: int64 ``[N]``, each in ``[0, num_classes)``; all -1 for an unlabelled set.
        class_names: one name per class id; empty for an unlabelled set (``labeled`` False).
        name: the name the set was loaded under (``"cifar10"``, ``"folder:/path"``, ...).
        split_note: which images these are, for every figure measured on them ("the test split",
            "held out: 10 % of each class of ...", "the training images themselves").
        files: the image files, in order (folders only), relative to the folder.
        notes: what loading did that a user should hear about (skipped files, the size chosen, ...).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str
    split_note: str = ""
    files: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Every loader builds through here, so a malformed set fails at load time with its name
        # rather than later inside a network with a shape error.
        imgs, labels = self.images, self.labels
        if imgs.dtype != torch.uint8 or imgs.ndim != 4 or imgs.shape[-1] not in (1, 3):
            raise DataError(
                f"{self.name}: images must be uint8 [N, H, W, C] with C in (1, 3), "
                f"got {imgs.dtype} {list(imgs.shape)}"
            )
        if imgs.shape[1] != imgs.shape[2]:
            raise DataError(
                f"{self.name}: images are {imgs.shape[2]}x{imgs.shape[1]} (width x height); "
                "egc models take square images"
            )
        if labels.dtype != torch.int64 or labels.ndim != 1 or labels.shape[0] != imgs.shape[0]:
            raise DataError(
                f"{self.name}: labels must be int64 [{imgs.shape[0]}] to match the images, "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        if not self.class_names:  # unlabelled: every label is -1
            if labels.numel() and bool((labels != -1).any()):
                raise DataError(f"{self.name}: labels given but no class names")
            return
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(self.class_names)):
            raise DataError(
                f"{self.name}: labels span [{int(labels.min())}, {int(labels.max())}] "
                f"but there are {len(self.class_names)} classes"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labeled(self) -> bool:
        """False for images without labels (a folder without class folders, an npz without 'labels')."""
        return bool(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """Height ``H`` of the images (all supported sets are square)."""
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])


def to_model_range(images_uint8_nhwc: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` in [0, 255] -> float32 ``[N, C, H, W]`` in [-1, 1].

    [-1, 1] is the range diffusion models assume for data (the noise schedule is scaled to it).
    """
    x = images_uint8_nhwc
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 [N, H, W, C], got {x.dtype} {list(x.shape)}")
    # contiguous(): convolutions on a permuted (channels-last strided) view are slower on CPU.
    return (x.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0).contiguous()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_model_range`: float ``[N, C, H, W]`` in [-1, 1] -> uint8
    ``[N, H, W, C]``.

    Values are clamped first because samplers overshoot [-1, 1] slightly, and rounded (not
    truncated) so ``to_uint8(to_model_range(u)) == u`` exactly.
    """
    if not x.is_floating_point() or x.ndim != 4:
        raise ValueError(f"expected float [N, C, H, W], got {x.dtype} {list(x.shape)}")
    pixels = ((x.detach().to(torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
