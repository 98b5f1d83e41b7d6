"""The test images ``egc eval`` scores a model on: a seeded subset of a data set's test split, in the
model's pixel shape (the OOD sets are in ood.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from egc.errors import DataError

if TYPE_CHECKING:
    from egc.model import EGC


def norm_name(name: str) -> str:
    """A data set name as the judges and OOD sets are keyed ("FashionMNIST" -> "fashion-mnist", "cifar-10" -> "cifar10")."""
    return name.lower().replace("_", "-").replace("fashionmnist", "fashion-mnist").replace("cifar-10", "cifar10")


def load_test_set(m: EGC, name: str, root: str | None, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """(x ``[n, C, H, W]`` in [-1, 1], y ``[n]``, size of the full test set, which split that is): a seeded
    random subset of the test split (a folder's held-out share), in the model's shape, its class count checked."""
    from egc.data import load_data, load_dataset, to_model_range

    shape = m.image_shape
    own = m.config.data
    if name == own.name and root in (None, own.root):  # the model's own data, preprocessed and split as in training
        ds = load_data(own, "test", shape=shape)
    else:
        ds = load_dataset(name, "test", root, image_size=shape[1], channels=shape[0], fit=own.fit)
    got = (ds.channels, ds.image_size, ds.image_size)
    if got != shape:
        raise DataError(f"data set {name} has {got[0]}x{got[1]}x{got[2]} images but the model takes {shape[0]}x{shape[1]}x{shape[2]} (C x H x W)")
    k = m.config.model.num_classes
    if ds.num_classes != k and m.can_classify and m.supervised:
        raise DataError(f"data set {name} has {ds.num_classes} classes but the model has {k}")
    if len(ds) == 0:
        raise DataError(f"data set {name} has no test images")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    if n is not None:
        idx = idx[:n]
    return to_model_range(ds.images[idx]), ds.labels[idx], len(ds), ds.split_note
