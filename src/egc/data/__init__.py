"""Image data sets: loading (idx, CIFAR-10 zip/tar, image folders, npz), pixel-range conversion
and a resumable random batch iterator.

    ds = load_dataset("fashion-mnist", "train")       # images uint8 [N, 28, 28, 1]
    loader = BatchLoader(ds, batch_size=128, seed=0, flip=DEFAULT_FLIP.get(ds.name, False))
    x, y = next(loader)                               # x float32 [128, 1, 28, 28] in [-1, 1]
"""

from egc.data.cifar import CIFAR10_CLASSES
from egc.data.dataset import ImageDataset, to_model_range, to_uint8
from egc.data.idx import FASHION_MNIST_CLASSES
from egc.data.loader import BatchLoader
from egc.data.prep import Prep
from egc.data.registry import DEFAULT_FLIP, load_data, load_dataset

__all__ = [
    "BatchLoader",
    "CIFAR10_CLASSES",
    "DEFAULT_FLIP",
    "FASHION_MNIST_CLASSES",
    "ImageDataset",
    "Prep",
    "load_data",
    "load_dataset",
    "to_model_range",
    "to_uint8",
]
