"""Tests for egc.data on tiny data sets written into tmp_path (no real data needed)."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import egc.data.cifar as cifar_mod
from egc.data import (
    CIFAR10_CLASSES,
    DEFAULT_FLIP,
    FASHION_MNIST_CLASSES,
    BatchLoader,
    ImageDataset,
    load_dataset,
    to_model_range,
    to_uint8,
)
from egc.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never touch the user's cache or pick up their data directory.
    monkeypatch.setenv("EGC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EGC_DATA", raising=False)


# ---------------------------------------------------------------------------------------------
# builders


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the idx format: 00 00 08 ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        arrays[prefix] = (images, labels)
    return arrays


def jpeg_bytes(colour: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_cifar_zip(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    """train: 2 cats (red), 1 ship (blue); test: 1 airplane (green). Members written unsorted."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("train/ship/0000.jpg", jpeg_bytes((0, 0, 255)))
        zf.writestr("train/cat/0001.jpg", jpeg_bytes((255, 0, 0)))
        zf.writestr("train/cat/0000.jpg", jpeg_bytes((255, 0, 0)))
        zf.writestr("test/airplane/0000.jpg", jpeg_bytes((0, 255, 0)))
        zf.writestr("__MACOSX/test/airplane/._0000.jpg", b"resource fork, not an image")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def cifar_batch(n: int, label: int) -> bytes:
    # Planes R=10, G=20, B=30 so a wrong CHW->HWC transpose is visible.
    data = np.concatenate([np.full((n, 1024), v, np.uint8) for v in (10, 20, 30)], axis=1)
    return pickle.dumps({b"data": data, b"labels": [label] * n, b"batch_label": b"x"}, protocol=2)


def write_cifar_tar(path: Path, members: dict[str, bytes] | None = None) -> Path:
    if members is None:
        members = {f"data_batch_{i}": cifar_batch(2, i) for i in range(1, 6)}
        members["test_batch"] = cifar_batch(3, 9)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_png(path: Path, size: tuple[int, int] = (6, 6), mode: str = "RGB", value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, colour).save(path)


def tiny_dataset(n: int = 10, size: int = 4) -> ImageDataset:
    # Each image is distinct and left-right asymmetric so flips and order are observable.
    images = torch.arange(n * size * size * 3, dtype=torch.int64).remainder(251)
    images = images.to(torch.uint8).reshape(n, size, size, 3)
    return ImageDataset(images, torch.arange(n) % 3, ["a", "b", "c"], "tiny")


def errmsg(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, "DataError messages must be one line"
    return msg


# ---------------------------------------------------------------------------------------------
# idx (Fashion-MNIST / MNIST)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loads_both_splits(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx_set(tmp_path / "fm", gz=gz)
    train = load_dataset("fashion-mnist", "train", root=str(tmp_path / "fm"))
    test = load_dataset("fashion-mnist", "test", root=tmp_path / "fm")
    assert train.images.shape == (6, 28, 28, 1) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == list(range(6))
    assert torch.equal(train.images[..., 0], torch.from_numpy(arrays["train"][0]))
    assert len(test) == 4
    assert train.class_names == FASHION_MNIST_CLASSES and train.class_names[0] == "T-shirt/top"
    assert (train.num_classes, train.image_size, train.channels) == (10, 28, 1)


def test_idx_found_via_env_and_env_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_set(tmp_path / "data" / "mnist")
    monkeypatch.setenv("EGC_DATA", str(tmp_path / "data"))
    ds = load_dataset("mnist", "test")
    assert len(ds) == 4 and ds.class_names == [str(d) for d in range(10)]
    write_idx_set(tmp_path / "flat")
    monkeypatch.setenv("EGC_DATA", str(tmp_path / "flat"))
    assert len(load_dataset("mnist")) == 6


def test_idx_missing_names_folder_file_and_install_hint(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    msg = errmsg(e)
    assert str(tmp_path / "nowhere") in msg and "train-images-idx3-ubyte.gz" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda b: b"\x00\x00\x09\x03" + b[4:], "not an idx3"),  # wrong dtype code in magic
        (lambda b: b[:-10], "truncated or corrupt"),  # data shorter than the header says
        (lambda b: gzip.compress(b)[:-20], "gzip"),  # truncated gz stream
        (lambda b: b"", "not an idx3"),
    ],
)
def test_idx_corrupt_images(tmp_path: Path, damage, needle: str) -> None:
    write_idx_set(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", root=tmp_path)
    msg = errmsg(e)
    assert str(f) in msg and needle in msg


def test_idx_label_problems(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DataError, match="5 labels but .* has 6 images"):
        load_dataset("mnist", root=tmp_path)
    labels.write_bytes(idx_bytes(np.full(6, 12, np.uint8)))
    with pytest.raises(DataError, match="label 12"):
        load_dataset("mnist", root=tmp_path)
    labels.unlink()
    with pytest.raises(DataError, match="no labels file") as e:
        load_dataset("mnist", root=tmp_path)
    assert "train-labels-idx1-ubyte" in errmsg(e)


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def test_cifar_zip_layout_labels_and_order(tmp_path: Path) -> None:
    zpath = write_cifar_zip(tmp_path / "cifar10-jpeg.zip")
    for root in (zpath, tmp_path):  # the archive itself or a folder holding it
        train = load_dataset("cifar10", "train", root=root)
        assert train.images.shape == (3, 8, 8, 3) and train.images.dtype == torch.uint8
        # class-major order: cat (3) before ship (8), whatever order the zip was written in
        assert train.labels.tolist() == [3, 3, 8]
        assert train.class_names == CIFAR10_CLASSES
        red = train.images[0].to(torch.int16)
        assert (red[..., 0] > 240).all() and (red[..., 2] < 15).all()
    test = load_dataset("cifar10", "test", root=zpath)
    assert test.labels.tolist() == [0] and test.name == "cifar10"


def test_cifar_cache_written_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zpath = write_cifar_zip(tmp_path / "cifar10-jpeg.zip")
    first = load_dataset("cifar10", root=zpath)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and all(n.endswith(".npy") for n in cached)
    assert not any(n.endswith(".tmp") for n in cached)

    def no_decoding(*_args: object) -> None:
        raise AssertionError("cache was not used")

    monkeypatch.setattr(cifar_mod, "_read_zip", no_decoding)
    second = load_dataset("cifar10", root=zpath)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    # A changed file (new size/mtime) is a new key, so it is decoded again.
    os.utime(zpath, ns=(0, 12345))
    with pytest.raises(AssertionError, match="cache was not used"):
        load_dataset("cifar10", root=zpath)


def test_cifar_cache_drops_the_entry_of_an_older_copy(tmp_path: Path) -> None:
    """A data file copied in afresh (a new mtime each session) replaces its cache entry instead of adding
    one more beside it; the other split's entry and another copy's entries stay."""
    zpath = write_cifar_zip(tmp_path / "cifar10-jpeg.zip")
    (tmp_path / "elsewhere").mkdir()
    other = write_cifar_zip(tmp_path / "elsewhere" / "cifar10-jpeg.zip")
    load_dataset("cifar10", root=zpath)
    load_dataset("cifar10", "test", root=zpath)
    load_dataset("cifar10", root=other)
    cache = tmp_path / "cache"
    before = sorted(p.name for p in cache.iterdir())
    assert len(before) == 6
    os.utime(zpath, ns=(0, 12345))
    again = load_dataset("cifar10", root=zpath)
    after = sorted(p.name for p in cache.iterdir())
    assert len(after) == 6 and sum("-12345-" in n for n in after) == 2
    assert sum("-test-" in n for n in after) == 2  # the test split's entry is another tag: kept
    assert again.labels.tolist() == [3, 3, 8]


def test_cifar_found_in_shared_beside_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared" / "data").mkdir(parents=True)
    write_cifar_zip(tmp_path / "shared" / "data" / "cifar10-jpeg.zip")
    (tmp_path / "repo" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "sub")
    assert len(load_dataset("cifar10", "test")) == 1


def test_cifar_tar_batches(tmp_path: Path) -> None:
    tpath = write_cifar_tar(tmp_path / "cifar-10-python.tar.gz")
    train = load_dataset("cifar10", "train", root=tmp_path)
    assert train.images.shape == (10, 32, 32, 3)
    assert train.labels.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert train.images[0, 5, 7].tolist() == [10, 20, 30]  # planes -> channels-last
    test = load_dataset("cifar10", "test", root=tpath)
    assert len(test) == 3 and test.labels.tolist() == [9, 9, 9]


def test_cifar_tar_refuses_code_in_pickle(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo should-not-run",))

    evil = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    tpath = write_cifar_tar(tmp_path / "c.tar.gz", {"test_batch": evil})
    with pytest.raises(DataError, match="refusing to load global") as e:
        load_dataset("cifar10", "test", root=tpath)
    assert "test_batch" in errmsg(e)


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", root=tmp_path / "empty")
    msg = errmsg(e)
    assert str(tmp_path / "empty") in msg and "cifar10-jpeg.zip" in msg and "--data-root" in msg

    tpath = write_cifar_tar(tmp_path / "t.tar.gz", {"test_batch": cifar_batch(1, 0)})
    with pytest.raises(DataError, match="no data_batch_1 inside") as e:
        load_dataset("cifar10", "train", root=tpath)

    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not an archive" * 10)
    with pytest.raises(DataError, match="not a readable zip or tar") as e:
        load_dataset("cifar10", root=garbage)
    assert str(garbage) in errmsg(e)

    bad_jpeg = write_cifar_zip(tmp_path / "bad.zip", {"train/dog/0007.jpg": b"\xff\xd8 not jpeg"})
    with pytest.raises(DataError, match="unreadable image") as e:
        load_dataset("cifar10", root=bad_jpeg)
    assert "train/dog/0007.jpg" in errmsg(e)

    odd_class = write_cifar_zip(tmp_path / "odd.zip", {"train/unicorn/0000.jpg": jpeg_bytes((1, 2, 3))})
    with pytest.raises(DataError, match="unknown class folder 'unicorn'"):
        load_dataset("cifar10", root=odd_class)

    other_size = write_cifar_zip(tmp_path / "size.zip", {"train/truck/0000.jpg": jpeg_bytes((1, 2, 3), 16)})
    with pytest.raises(DataError, match="all images must share one size") as e:
        load_dataset("cifar10", root=other_size)
    assert "train/truck/0000.jpg" in errmsg(e)


# ---------------------------------------------------------------------------------------------
# image folders


def test_folder_with_splits_rgb(tmp_path: Path) -> None:
    for split, counts in (("train", {"cats": 2, "dogs": 1}), ("test", {"dogs": 1})):
        for cls, n in counts.items():
            for i in range(n):
                write_png(tmp_path / "imgs" / split / cls / f"{i}.png", value=40 * i)
    train = load_dataset(f"folder:{tmp_path / 'imgs'}", "train")
    test = load_dataset(str(tmp_path / "imgs"), "test")  # a bare directory path works too
    assert train.images.shape == (3, 6, 6, 3) and train.class_names == ["cats", "dogs"]
    assert train.labels.tolist() == [0, 0, 1]
    # class ids agree across splits even though test has no cats
    assert test.class_names == ["cats", "dogs"] and test.labels.tolist() == [1]
    assert train.images[1, 0, 0].tolist() == [40, 0, 215]


def test_folder_without_splits_grey_and_mixed(tmp_path: Path) -> None:
    write_png(tmp_path / "g" / "a" / "x.png", mode="L", value=7)
    write_png(tmp_path / "g" / "b" / "y.PNG", mode="L", value=9)
    ds = load_dataset(f"folder:{tmp_path / 'g'}", "test")
    assert ds.images.shape == (2, 6, 6, 1) and ds.images[:, 0, 0, 0].tolist() == [7, 9]
    assert torch.equal(load_dataset(f"folder:{tmp_path / 'g'}", "train").images, ds.images)
    write_png(tmp_path / "g" / "b" / "z.jpg", mode="RGB", value=9)  # one colour image -> all RGB
    assert load_dataset(f"folder:{tmp_path / 'g'}").channels == 3


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in") as e:
        load_dataset(f"folder:{tmp_path / 'empty'}")
    assert str(tmp_path / "empty") in errmsg(e)

    with pytest.raises(DataError, match="is not a directory"):
        load_dataset(f"folder:{tmp_path / 'missing'}")

    # other sizes are not an error any more: both become the automatic size (and it is said)
    write_png(tmp_path / "sizes" / "a" / "0.png", size=(6, 6))
    write_png(tmp_path / "sizes" / "a" / "1.png", size=(5, 6))
    ds = load_dataset(f"folder:{tmp_path / 'sizes'}")
    assert len(ds) == 2 and ds.image_size == 16 and any("image size 16x16" in n for n in ds.notes)

    # an unreadable file is skipped and named; a folder with nothing readable is refused in one line
    write_png(tmp_path / "bad" / "a" / "0.png")
    (tmp_path / "bad" / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = load_dataset(f"folder:{tmp_path / 'bad'}")
    assert len(ds) == 1 and any("skipped 1 unreadable files (a/1.png" in n for n in ds.notes)
    (tmp_path / "bad" / "a" / "0.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 2 image files") as e:
        load_dataset(f"folder:{tmp_path / 'bad'}")
    assert "\n" not in str(e.value)

    # A truncated PNG passes the header probe and fails at decode time: skipped too, and said
    good = io.BytesIO()
    Image.new("RGB", (6, 6), (1, 2, 3)).save(good, format="PNG")
    write_png(tmp_path / "trunc" / "a" / "0.png")
    (tmp_path / "trunc" / "a" / "1.png").write_bytes(good.getvalue()[:-30])
    ds = load_dataset(f"folder:{tmp_path / 'trunc'}")
    assert len(ds) == 1 and any("failed to decode" in n and "a/1.png" in n for n in ds.notes)


# ---------------------------------------------------------------------------------------------
# npz


def test_npz_shapes_names_and_test_split(tmp_path: Path) -> None:
    images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    np.savez(tmp_path / "a.npz", images=images, labels=np.array([0, 1, 2, 1, 0]),
             class_names=np.array(["x", "y", "z"]))
    ds = load_dataset(str(tmp_path / "a.npz"), "test")  # no *_test keys: same arrays
    assert ds.images.shape == (5, 4, 4, 3) and torch.equal(ds.images, torch.from_numpy(images))
    assert ds.labels.dtype == torch.int64 and ds.class_names == ["x", "y", "z"]
    assert ds.name == f"npz:{tmp_path / 'a.npz'}"

    np.savez_compressed(tmp_path / "b.npz", images=np.zeros((4, 3, 3), np.uint8),
                        labels=np.array([0, 1, 0, 1], np.uint8),
                        images_test=np.ones((2, 3, 3), np.uint8), labels_test=np.array([3, 3]))
    train = load_dataset(f"npz:{tmp_path / 'b.npz'}", "train")
    test = load_dataset(f"npz:{tmp_path / 'b.npz'}", "test")
    assert train.images.shape == (4, 3, 3, 1) and test.images.shape == (2, 3, 3, 1)
    assert int(test.images.sum()) == 18 and test.labels.tolist() == [3, 3]
    # class count covers both splits, so train and test agree
    assert train.class_names == test.class_names == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"labels": np.zeros(2, int)}, "missing key 'images'"),
        ({"images": np.zeros((2, 3, 3, 5), np.uint8)}, "C 1 or 3"),  # unlabelled (no 'labels'): the images are still checked
        ({"images": np.zeros((2, 3, 3, 3), np.float32), "labels": np.zeros(2, int)}, "expected uint8"),
        ({"images": np.zeros((2, 3, 3, 3), np.uint8), "labels": np.zeros(3, int)}, "2 images but 3 labels"),
        ({"images": np.zeros((2, 3, 3, 5), np.uint8), "labels": np.zeros(2, int)}, "C 1 or 3"),
        ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.zeros(2, float)}, "expected int"),
        ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.array([0, 4]),
          "class_names": np.array(["a", "b"])}, "only 2 'class_names'"),
        ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.zeros(2, int),
          "images_test": np.zeros((1, 3, 3), np.uint8)}, "without its partner"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, needle: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as e:
        load_dataset(str(path))
    msg = errmsg(e)
    assert needle in msg and str(path) in msg


def test_npz_unreadable_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(DataError, match="not a readable .npz") as e:
        load_dataset(str(junk))
    assert str(junk) in errmsg(e)
    with pytest.raises(DataError, match="no file"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")
    obj = tmp_path / "obj.npz"
    np.savez(obj, images=np.zeros((1, 2, 2), np.uint8), labels=np.zeros(1, int),
             class_names=np.array(["a", None], dtype=object))
    with pytest.raises(DataError, match="'class_names' cannot be read without pickle"):
        load_dataset(str(obj))


def test_unknown_name_and_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="unknown split 'valid'"):
        load_dataset("cifar10", "valid")


# ---------------------------------------------------------------------------------------------
# pixel range


def test_model_range_round_trip() -> None:
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(2, 16, 16, 3).contiguous()
    x = to_model_range(u)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert torch.equal(to_uint8(x), u)
    # small perturbations round back; out-of-range values clamp instead of wrapping
    assert torch.equal(to_uint8(x + 0.003), u)
    assert to_uint8(torch.tensor([-3.0, 3.0]).reshape(1, 2, 1, 1)).flatten().tolist() == [0, 255]
    with pytest.raises(ValueError):
        to_model_range(u.float())


# ---------------------------------------------------------------------------------------------
# BatchLoader


def take(loader: BatchLoader, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(k)]


def test_loader_batches_and_epochs() -> None:
    ds = tiny_dataset(10)
    loader = BatchLoader(ds, batch_size=5, seed=0, flip=False)
    (x1, y1), (x2, y2) = take(loader, 2)
    assert x1.shape == (5, 3, 4, 4) and x1.dtype == torch.float32 and y1.dtype == torch.int64
    # one epoch visits every image exactly once
    seen = to_uint8(torch.cat([x1, x2]))
    assert sorted(map(bytes, seen.numpy())) == sorted(map(bytes, ds.images.numpy()))
    next(loader)
    assert (loader.epoch, loader.position) == (1, 5)
    partial = BatchLoader(ds, 4, 0, False, drop_last=False)
    sizes = [len(y) for _, y in take(partial, 4)]
    assert sizes == [4, 4, 2, 4] and partial.batches_per_epoch == 3


def test_loader_deterministic_and_seed_dependent() -> None:
    ds = tiny_dataset(12)
    a = take(BatchLoader(ds, 4, seed=7, flip=True), 6)
    b = take(BatchLoader(ds, 4, seed=7, flip=True), 6)
    c = take(BatchLoader(ds, 4, seed=8, flip=True), 6)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_loader_resume_is_exact(k: int) -> None:
    ds = tiny_dataset(10)
    original = BatchLoader(ds, 4, seed=3, flip=True)  # 2 batches/epoch: k crosses epochs
    take(original, k)
    state = original.state_dict()
    # survive a JSON round trip, as a checkpoint's metadata would
    state = json.loads(json.dumps({**state, "generator_state": state["generator_state"].tolist()}))
    resumed = BatchLoader(ds, 4, seed=999, flip=True)
    resumed.load_state_dict(state)
    for (xo, yo), (xr, yr) in zip(take(original, 5), take(resumed, 5)):
        assert torch.equal(xo, xr) and torch.equal(yo, yr)
    assert (resumed.epoch, resumed.position) == (original.epoch, original.position)


def test_loader_rejects_mismatched_state() -> None:
    state = BatchLoader(tiny_dataset(10), 4, 0, False).state_dict()
    with pytest.raises(ConfigError, match="batch_size"):
        BatchLoader(tiny_dataset(10), 5, 0, False).load_state_dict(state)
    with pytest.raises(ConfigError, match="exceeds"):
        BatchLoader(tiny_dataset(3), 4, 0, False)


def test_loader_flip() -> None:
    ds = tiny_dataset(32)
    plain = take(BatchLoader(ds, 8, seed=1, flip=False), 4)
    flipped = take(BatchLoader(ds, 8, seed=1, flip=True), 4)
    n_flipped = 0
    for (xp, yp), (xf, yf) in zip(plain, flipped):
        assert torch.equal(yp, yf)  # same order whether or not flips are on
        for a, b in zip(xp, xf):
            if torch.equal(a, b):
                continue
            assert torch.equal(a.flip(-1), b), "a changed image must be the horizontal mirror"
            n_flipped += 1
    assert 4 <= n_flipped <= 28  # about half of 32
    # without flips the batch is exactly the source images
    x0 = to_uint8(plain[0][0])
    assert all(any(torch.equal(img, src) for src in ds.images) for img in x0)


def test_default_flip() -> None:
    assert DEFAULT_FLIP == {"fashion-mnist": False, "mnist": False, "cifar10": True}
    assert DEFAULT_FLIP.get("folder:/x", False) is False
