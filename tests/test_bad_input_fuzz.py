"""Malformed input to every command (train, sample, classify, export, demo, cag, eval, report).

Each case must exit != 0 with exactly one stderr line that names the problem, no traceback, and no
output file (or temporary file) left behind. The cases run in-process through ``egc.cli.main``
(an exception escaping main is what a user would see as a traceback); the full-disk cases run in a
subprocess with a small RLIMIT_FSIZE (SIGXFSZ ignored, so a write past the limit raises EFBIG).

Run with ``-s`` to see how many inputs were tried per command and how many gave a clean error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from egc.checkpoint import latest_in
from egc.cli import main

from .conftest import TINY, make_npz

FAST = [s for s in TINY if not s.startswith("train.sample_n")] + ["train.sample_n=0"]
TALLY: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # command -> [tried, clean]


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (a decompression bomb for a large size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def _rewrite_meta(src: Path, dst: Path, edit=None, tensors_edit=None) -> Path:
    with safe_open(str(src), framework="pt") as f:
        md = dict(f.metadata())
    t = load_file(str(src))
    if edit:
        edit(md)
    if tensors_edit:
        tensors_edit(t)
    save_file(t, str(dst), metadata=md)
    return dst


@pytest.fixture(scope="module")
def E(tmp_path_factory):
    """Every malformed input, built once."""
    d = tmp_path_factory.mktemp("fuzz")
    e = SimpleNamespace(d=d)
    e.npz = make_npz(d / "tiny.npz")
    e.run = d / "run"
    assert main(["train", "--out", str(e.run), "--data", f"npz:{e.npz}", "--steps", "2", "--quiet", *_sets(FAST)]) == 0
    e.ckpt = latest_in(e.run)
    e.run28 = d / "run28"  # a 28x28 grey model: what the demo's images need
    assert main(["train", "--out", str(e.run28), "--data", f"npz:{make_npz(d / 'tiny28.npz', size=28)}", "--steps", "1", "--quiet", *_sets(FAST)]) == 0

    def as_fashion(md: dict) -> None:  # the demo shows the shipped test images of the model's own data set
        c = json.loads(md["config"])
        c["data"]["name"] = "fashion-mnist"
        md["config"] = json.dumps(c)

    e.fm28 = _rewrite_meta(latest_in(e.run28), d / "fm28.safetensors", edit=as_fashion)
    raw = e.ckpt.read_bytes()
    (d / "text.safetensors").write_text("this is not a checkpoint\n")
    (d / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    (d / "noise.safetensors").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "hugeheader.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    (d / "empty.safetensors").write_bytes(b"")
    save_file({"w": torch.zeros(3)}, str(d / "foreign.safetensors"))
    save_file({"w": torch.zeros(3)}, str(d / "foreign.pt"))
    _rewrite_meta(e.ckpt, d / "wrongsize.safetensors", edit=lambda md: md.update(config=md["config"].replace('"channels": 8', '"channels": 16')))
    _rewrite_meta(e.ckpt, d / "future.safetensors", edit=lambda md: md.update(version="99"))
    _rewrite_meta(e.ckpt, d / "badconfig.safetensors", edit=lambda md: md.update(config="{not json"))
    _rewrite_meta(e.ckpt, d / "nan.safetensors", tensors_edit=lambda t: t[next(k for k in t if k.startswith("ema."))].fill_(float("nan")))
    (d / "afile").write_text("a regular file\n")
    assert main(["eval", str(e.ckpt), "--data", f"npz:{e.npz}", "--metrics", "acc", "--quiet", "--json", str(d / "good-eval.json")]) == 0
    (d / "emptydir").mkdir()
    (d / "tmponly").mkdir()
    (d / "tmponly" / ".step-0000003.safetensors.tmp4242").write_bytes(raw[:100])
    (d / "notes.txt").write_text("hello\n")
    (d / "config.txt").write_text("model: [unclosed\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    # images (the tiny model takes 8x8 grey)
    img = d / "img"
    img.mkdir()
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(img / "ok.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(img / "big.png")
    good = (img / "ok.png").read_bytes()
    (img / "trunc.png").write_bytes(good[:40])
    (img / "text.png").write_text("not an image\n")
    (img / "empty.png").write_bytes(b"")
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(img / "colour.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 0
    Image.fromarray(rgba, "RGBA").save(img / "transparent.png")
    Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(img / "deep16.png")
    (img / "bomb.png").write_bytes(_png_header_only(40000, 40000))
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(img / "ok.jpg")
    (img / "trunc.jpg").write_bytes((img / "ok.jpg").read_bytes()[:60])
    (d / "noimgs").mkdir()
    (d / "noimgs" / "readme.md").write_text("no images here\n")
    (d / "onebad").mkdir()
    shutil.copy(img / "ok.png", d / "onebad" / "a.png")
    shutil.copy(img / "trunc.png", d / "onebad" / "b.png")
    # data sets
    (d / "trunc.npz").write_bytes(e.npz.read_bytes()[:300])
    (d / "text.npz").write_text("not an npz\n")
    rng = np.random.default_rng(1)
    np.savez(d / "float.npz", images=rng.random((12, 8, 8, 1)).astype(np.float32), labels=np.arange(12) % 3)
    np.savez(d / "twochan.npz", images=rng.integers(0, 255, (12, 8, 8, 2)).astype(np.uint8), labels=np.arange(12) % 3)
    np.savez(d / "oob.npz", images=rng.integers(0, 255, (12, 8, 8, 1)).astype(np.uint8), labels=np.arange(12) % 5, class_names=np.array(["a", "b", "c"]))
    np.savez(d / "nonsquare.npz", images=rng.integers(0, 255, (12, 8, 6, 1)).astype(np.uint8), labels=np.arange(12) % 3)
    np.savez(d / "nolabels.npz", images=rng.integers(0, 255, (12, 8, 8, 1)).astype(np.uint8))
    np.savez(d / "oneclass.npz", images=rng.integers(0, 255, (12, 8, 8, 1)).astype(np.uint8), labels=np.zeros(12, np.int64))
    np.savez(d / "empty.npz", images=np.zeros((0, 8, 8, 1), np.uint8), labels=np.zeros(0, np.int64))
    for name, files in (("mixed", {"a/x.png": 8, "b/y.png": 16}), ("badpng", {"a/x.png": 8, "b/y.png": -1}), ("textpng", {"a/x.png": 8, "b/y.png": -2})):
        for rel, size in files.items():
            p = d / name / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if size == -1:
                p.write_bytes(good[:40])
            elif size == -2:
                p.write_text("text\n")
            else:
                Image.fromarray(np.zeros((size, size), np.uint8)).save(p)
    return e


def _train(e, tmp, *extra, data=None, out=None):
    return ["train", "--out", str(out or tmp / "out"), "--data", data or f"npz:{e.npz}", "--steps", "1", "--quiet", *_sets(FAST), *extra]


def _sample(e, tmp, *extra, ckpt=None):
    return ["sample", str(ckpt or e.run), "--n", "2", "--steps", "2", "--quiet", "--out", str(tmp / "g.png"), *extra]


def _classify(e, tmp, *images, ckpt=None, extra=()):
    return ["classify", str(ckpt or e.run), *[str(i) for i in images], *extra]


def _export(e, tmp, ckpt=None, out=None):
    return ["export", str(ckpt or e.run), "--out", str(out or tmp / "w.safetensors")]


def _demo(e, tmp, *extra, ckpt=None, out=None):
    return ["demo", "--quick", "--checkpoint", str(ckpt or e.fm28), "--out", str(out or tmp / "demo"), *extra]


def _cag(e, tmp, *extra, clf=None, target="c1"):
    return ["cag", "--classifier", clf or f"egc:{e.run}", "--target", target, "--n", "2", "--steps", "1", "--quiet", "--out", str(tmp / "c.png"), *extra]


def _eval(e, tmp, *extra, ckpt=None):
    return ["eval", str(ckpt or e.ckpt), "--data", f"npz:{e.npz}", "--metrics", "acc", "--quiet", "--json", str(tmp / "eval.json"), *extra]


def _rep(e, tmp, *inputs, out=None):
    return ["report", *[str(i) for i in inputs], "--out", str(out or tmp / "r.html")]


def _resume_copy(e, tmp, corrupt) -> Path:
    run = tmp / "rrun"
    shutil.copytree(e.run, run)
    corrupt(latest_in(run))
    return run


# name -> (argv builder(e, tmp), words the error must contain (any of them, case-insensitive), outputs that must not exist)
CASES = {
    # ---- train
    "train-npz-truncated": (lambda e, t: _train(e, t, data=f"npz:{e.d / 'trunc.npz'}"), ["trunc.npz"], ["out/checkpoints"]),
    "train-npz-not-npz": (lambda e, t: _train(e, t, data=f"npz:{e.d / 'text.npz'}"), ["text.npz"], ["out/checkpoints"]),
    "train-npz-float-images": (lambda e, t: _train(e, t, data=f"npz:{e.d / 'float.npz'}"), ["uint8"], ["out/checkpoints"]),
    "train-npz-2-channels": (lambda e, t: _train(e, t, data=f"npz:{e.d / 'twochan.npz'}"), ["c 1 or 3"], ["out/checkpoints"]),
    "train-npz-label-out-of-range": (lambda e, t: _train(e, t, data=f"npz:{e.d / 'oob.npz'}"), ["label 4"], ["out/checkpoints"]),
    "train-npz-non-square-images": (lambda e, t: _train(e, t, data=f"npz:{e.d / 'nonsquare.npz'}"), ["8x6", "square"], ["out/checkpoints"]),
    # images without labels train an unsupervised EGC; a classifier cannot use them
    "train-npz-missing-labels": (lambda e, t: _train(e, t, "--model", "classifier", data=f"npz:{e.d / 'nolabels.npz'}"), ["labels"], ["out/checkpoints"]),
    "train-npz-one-class": (lambda e, t: _train(e, t, data=f"npz:{e.d / 'oneclass.npz'}"), ["class"], ["out/checkpoints"]),
    "train-npz-no-images": (lambda e, t: _train(e, t, data=f"npz:{e.d / 'empty.npz'}"), ["empty.npz", "no images"], ["out/checkpoints"]),
    "train-npz-missing-file": (lambda e, t: _train(e, t, data=f"npz:{e.d / 'nowhere.npz'}"), ["nowhere.npz"], ["out/checkpoints"]),
    "train-folder-empty": (lambda e, t: _train(e, t, data=f"folder:{e.d / 'emptydir'}"), ["no images"], ["out/checkpoints"]),
    "train-folder-truncated-png": (lambda e, t: _train(e, t, data=f"folder:{e.d / 'badpng'}"), ["y.png"], ["out/checkpoints"]),
    "train-folder-text-as-png": (lambda e, t: _train(e, t, data=f"folder:{e.d / 'textpng'}"), ["y.png"], ["out/checkpoints"]),
    "train-unknown-dataset": (lambda e, t: _train(e, t, data="imagenet-22k"), ["imagenet-22k"], ["out"]),
    "train-config-missing": (lambda e, t: _train(e, t, "--config", str(e.d / "none.yaml")), ["none.yaml"], ["out"]),
    "train-config-not-yaml": (lambda e, t: _train(e, t, "--config", str(e.d / "config.txt")), ["config.txt"], ["out"]),
    "train-config-not-mapping": (lambda e, t: _train(e, t, "--config", str(e.d / "list.yaml")), ["mapping"], ["out"]),
    "train-set-unknown-key": (lambda e, t: _train(e, t, "--set", "train.speed=3"), ["train.speed"], ["out"]),
    "train-set-lr-nan": (lambda e, t: _train(e, t, "--set", "train.lr=nan"), ["train.lr"], ["out"]),
    "train-set-lr-negative": (lambda e, t: _train(e, t, "--set", "train.lr=-1"), ["train.lr"], ["out"]),
    "train-set-ckpt-every-inf": (lambda e, t: _train(e, t, "--set", "train.ckpt_every=.inf"), ["train.ckpt_every"], ["out"]),
    "train-set-not-key-value": (lambda e, t: _train(e, t, "--set", "train.lr"), ["key=value"], ["out"]),
    "train-steps-0": (lambda e, t: _train(e, t, "--steps", "0"), ["--steps"], ["out"]),
    "train-steps-negative": (lambda e, t: _train(e, t, "--steps=-5"), ["--steps"], ["out"]),
    "train-minutes-nan": (lambda e, t: _train(e, t, "--minutes", "nan"), ["--minutes"], ["out"]),
    "train-minutes-inf": (lambda e, t: _train(e, t, "--minutes", "inf"), ["--minutes"], ["out"]),
    "train-batch-size-0": (lambda e, t: _train(e, t, "--batch-size", "0"), ["--batch-size"], ["out"]),
    "train-lr-nan": (lambda e, t: _train(e, t, "--lr", "nan"), ["--lr"], ["out"]),
    "train-threads-0": (lambda e, t: _train(e, t, "--threads", "0"), ["--threads"], ["out"]),
    "train-unknown-model-size": (lambda e, t: _train(e, t, "--model-size", "huge"), ["huge"], ["out"]),
    "train-unknown-model-kind": (lambda e, t: _train(e, t, "--model", "gan"), ["gan"], ["out"]),
    "train-out-under-a-file": (lambda e, t: _train(e, t, out=e.d / "afile" / "run"), ["afile"], []),
    "train-out-is-a-file": (lambda e, t: _train(e, t, out=e.d / "afile"), ["afile"], []),
    "train-resume-nothing": (lambda e, t: _train(e, t, "--resume"), ["no checkpoint"], ["out"]),
    "train-resume-truncated-ckpt": (lambda e, t: _train(e, t, "--resume", out=_resume_copy(e, t, lambda p: p.write_bytes(p.read_bytes()[:5000]))),
                                    ["step-0000002.safetensors"], []),
    "train-resume-foreign-ckpt": (lambda e, t: _train(e, t, "--resume", out=_resume_copy(e, t, lambda p: shutil.copy(e.d / "foreign.safetensors", p))),
                                  ["not an egc checkpoint"], []),
    "train-resume-other-model-size": (lambda e, t: _train(e, t, "--resume", "--model-size", "small", out=_resume_copy(e, t, lambda p: None)),
                                      ["tiny"], []),
    # ---- sample
    "sample-ckpt-text-file": (lambda e, t: _sample(e, t, ckpt=e.d / "text.safetensors"), ["text.safetensors"], ["g.png"]),
    "sample-ckpt-truncated": (lambda e, t: _sample(e, t, ckpt=e.d / "trunc.safetensors"), ["trunc.safetensors"], ["g.png"]),
    "sample-ckpt-random-bytes": (lambda e, t: _sample(e, t, ckpt=e.d / "noise.safetensors"), ["noise.safetensors"], ["g.png"]),
    "sample-ckpt-huge-header": (lambda e, t: _sample(e, t, ckpt=e.d / "hugeheader.safetensors"), ["hugeheader.safetensors"], ["g.png"]),
    "sample-ckpt-empty-file": (lambda e, t: _sample(e, t, ckpt=e.d / "empty.safetensors"), ["empty.safetensors"], ["g.png"]),
    "sample-ckpt-foreign-safetensors": (lambda e, t: _sample(e, t, ckpt=e.d / "foreign.safetensors"), ["not an egc checkpoint"], ["g.png"]),
    "sample-ckpt-other-model-size": (lambda e, t: _sample(e, t, ckpt=e.d / "wrongsize.safetensors"), ["do not fit"], ["g.png"]),
    "sample-ckpt-future-version": (lambda e, t: _sample(e, t, ckpt=e.d / "future.safetensors"), ["version 99"], ["g.png"]),
    "sample-ckpt-bad-config": (lambda e, t: _sample(e, t, ckpt=e.d / "badconfig.safetensors"), ["invalid config"], ["g.png"]),
    "sample-ckpt-nan-weights": (lambda e, t: _sample(e, t, ckpt=e.d / "nan.safetensors"), ["nan"], ["g.png"]),
    "sample-ckpt-missing": (lambda e, t: _sample(e, t, ckpt=e.d / "none.safetensors"), ["none.safetensors"], ["g.png"]),
    "sample-ckpt-empty-folder": (lambda e, t: _sample(e, t, ckpt=e.d / "emptydir"), ["emptydir"], ["g.png"]),
    "sample-ckpt-folder-with-tmp-only": (lambda e, t: _sample(e, t, ckpt=e.d / "tmponly"), ["tmponly"], ["g.png"]),
    "sample-zoo-unknown": (lambda e, t: _sample(e, t, ckpt="zoo:imagenet-9000"), ["imagenet-9000"], ["g.png"]),
    "sample-n-0": (lambda e, t: _sample(e, t, "--n", "0"), ["--n"], ["g.png"]),
    "sample-n-negative": (lambda e, t: _sample(e, t, "--n=-3"), ["--n"], ["g.png"]),
    "sample-n-not-a-number": (lambda e, t: _sample(e, t, "--n", "many"), ["--n"], ["g.png"]),
    "sample-steps-0": (lambda e, t: _sample(e, t, "--steps", "0"), ["--steps"], ["g.png"]),
    "sample-steps-beyond-schedule": (lambda e, t: _sample(e, t, "--steps", "5000"), ["--steps"], ["g.png"]),
    "sample-guidance-nan": (lambda e, t: _sample(e, t, "--guidance", "nan"), ["--guidance"], ["g.png"]),
    "sample-guidance-inf": (lambda e, t: _sample(e, t, "--guidance", "inf"), ["--guidance"], ["g.png"]),
    "sample-guidance-negative": (lambda e, t: _sample(e, t, "--guidance=-1"), ["--guidance"], ["g.png"]),
    "sample-eta-nan": (lambda e, t: _sample(e, t, "--eta", "nan"), ["--eta"], ["g.png"]),
    "sample-batch-size-0": (lambda e, t: _sample(e, t, "--batch-size", "0"), ["--batch-size"], ["g.png"]),
    "sample-scale-0": (lambda e, t: _sample(e, t, "--scale", "0"), ["--scale"], ["g.png"]),
    "sample-unknown-sampler": (lambda e, t: _sample(e, t, "--sampler", "euler"), ["--sampler"], ["g.png"]),
    "sample-label-out-of-range": (lambda e, t: _sample(e, t, "--label", "7"), ["class id 7"], ["g.png"]),
    "sample-label-negative": (lambda e, t: _sample(e, t, "--label=-1"), ["class id -1"], ["g.png"]),
    "sample-label-unknown-name": (lambda e, t: _sample(e, t, "--label", "giraffe"), ["giraffe"], ["g.png"]),
    "sample-label-empty": (lambda e, t: _sample(e, t, "--label", ""), ["class"], ["g.png"]),
    "sample-label-count-mismatch": (lambda e, t: _sample(e, t, "--label", "0,1,2"), ["3 labels for 2 samples"], ["g.png"]),
    "sample-out-under-a-file": (lambda e, t: _sample(e, t, "--out", str(e.d / "afile" / "g.png")), ["afile"], []),
    "sample-out-is-a-folder": (lambda e, t: _sample(e, t, "--out", str(e.d / "emptydir")), ["emptydir"], ["g.png"]),
    "sample-out-empty": (lambda e, t: _sample(e, t, "--out", ""), ["--out"], ["g.png"]),
    "sample-npz-bad-suffix": (lambda e, t: _sample(e, t, "--npz", str(t / "s.txt")), [".npz"], ["g.png", "s.txt"]),
    "sample-npz-under-a-file": (lambda e, t: _sample(e, t, "--npz", str(e.d / "afile" / "s.npz")), ["afile"], ["g.png"]),
    # ---- classify
    "classify-truncated-png": (lambda e, t: _classify(e, t, e.d / "img" / "trunc.png"), ["trunc.png"], []),
    "classify-text-as-png": (lambda e, t: _classify(e, t, e.d / "img" / "text.png"), ["text.png"], []),
    "classify-empty-png": (lambda e, t: _classify(e, t, e.d / "img" / "empty.png"), ["empty.png"], []),
    "classify-truncated-jpg": (lambda e, t: _classify(e, t, e.d / "img" / "trunc.jpg"), ["trunc.jpg"], []),
    "classify-text-file": (lambda e, t: _classify(e, t, e.d / "notes.txt"), ["notes.txt"], []),
    "classify-decompression-bomb": (lambda e, t: _classify(e, t, e.d / "img" / "bomb.png"), ["bomb.png"], []),
    "classify-missing-image": (lambda e, t: _classify(e, t, e.d / "img" / "nope.png"), ["nope.png"], []),
    "classify-empty-folder": (lambda e, t: _classify(e, t, e.d / "emptydir"), ["emptydir"], []),
    "classify-folder-without-images": (lambda e, t: _classify(e, t, e.d / "noimgs"), ["noimgs"], []),
    "classify-folder-with-a-bad-image": (lambda e, t: _classify(e, t, e.d / "onebad"), ["b.png"], []),
    "classify-top-k-0": (lambda e, t: _classify(e, t, e.d / "img" / "ok.png", extra=["--top-k", "0"]), ["--top-k"], []),
    "classify-threads-0": (lambda e, t: _classify(e, t, e.d / "img" / "ok.png", extra=["--threads", "0"]), ["--threads"], []),
    "classify-ckpt-text-file": (lambda e, t: _classify(e, t, e.d / "img" / "ok.png", ckpt=e.d / "text.safetensors"), ["text.safetensors"], []),
    "classify-ckpt-truncated": (lambda e, t: _classify(e, t, e.d / "img" / "ok.png", ckpt=e.d / "trunc.safetensors"), ["trunc.safetensors"], []),
    "classify-ckpt-foreign-safetensors": (lambda e, t: _classify(e, t, e.d / "img" / "ok.png", ckpt=e.d / "foreign.safetensors"), ["not an egc"], []),
    "classify-ckpt-other-model-size": (lambda e, t: _classify(e, t, e.d / "img" / "ok.png", ckpt=e.d / "wrongsize.safetensors"), ["do not fit"], []),
    "classify-ckpt-nan-weights": (lambda e, t: _classify(e, t, e.d / "img" / "ok.png", ckpt=e.d / "nan.safetensors"), ["nan"], []),
    # ---- export
    "export-ckpt-text-file": (lambda e, t: _export(e, t, ckpt=e.d / "text.safetensors"), ["text.safetensors"], ["w.safetensors"]),
    "export-ckpt-truncated": (lambda e, t: _export(e, t, ckpt=e.d / "trunc.safetensors"), ["trunc.safetensors"], ["w.safetensors"]),
    "export-ckpt-random-bytes": (lambda e, t: _export(e, t, ckpt=e.d / "noise.safetensors"), ["noise.safetensors"], ["w.safetensors"]),
    "export-ckpt-foreign-safetensors": (lambda e, t: _export(e, t, ckpt=e.d / "foreign.safetensors"), ["not an egc"], ["w.safetensors"]),
    "export-ckpt-nan-weights": (lambda e, t: _export(e, t, ckpt=e.d / "nan.safetensors"), ["nan"], ["w.safetensors"]),
    "export-ckpt-missing": (lambda e, t: _export(e, t, ckpt=e.d / "none.safetensors"), ["none.safetensors"], ["w.safetensors"]),
    "export-out-under-a-file": (lambda e, t: _export(e, t, out=e.d / "afile" / "w.safetensors"), ["afile"], []),
    "export-out-is-a-folder": (lambda e, t: _export(e, t, out=e.d / "emptydir"), ["emptydir"], []),
    "export-out-empty": (lambda e, t: ["export", str(e.run), "--out", ""], ["--out"], []),
    # ---- demo
    "demo-ckpt-text-file": (lambda e, t: _demo(e, t, ckpt=e.d / "text.safetensors"), ["text.safetensors"], ["demo"]),
    "demo-ckpt-truncated": (lambda e, t: _demo(e, t, ckpt=e.d / "trunc.safetensors"), ["trunc.safetensors"], ["demo"]),
    "demo-ckpt-foreign-safetensors": (lambda e, t: _demo(e, t, ckpt=e.d / "foreign.safetensors"), ["not an egc"], ["demo"]),
    "demo-ckpt-missing": (lambda e, t: _demo(e, t, ckpt=e.d / "none.safetensors"), ["none.safetensors"], ["demo"]),
    "demo-model-of-a-data-set-without-demo-images": (lambda e, t: _demo(e, t, ckpt=e.run), ["no demo images ship", "npz:"], ["demo"]),
    "demo-out-under-a-file": (lambda e, t: _demo(e, t, out=e.d / "afile" / "demo"), ["afile"], []),
    "demo-out-is-a-file": (lambda e, t: _demo(e, t, out=e.d / "afile"), ["afile"], []),
    "demo-threads-0": (lambda e, t: _demo(e, t, "--threads", "0"), ["--threads"], ["demo"]),
    # ---- cag
    "cag-unknown-classifier": (lambda e, t: _cag(e, t, clf="resnet-9000"), ["resnet-9000"], ["c.png"]),
    "cag-classifier-text-file": (lambda e, t: _cag(e, t, clf=f"egc:{e.d / 'text.safetensors'}"), ["text.safetensors"], ["c.png"]),
    "cag-classifier-foreign-safetensors": (lambda e, t: _cag(e, t, clf=f"egc:{e.d / 'foreign.safetensors'}"), ["not an egc"], ["c.png"]),
    "cag-classifier-truncated": (lambda e, t: _cag(e, t, clf=f"egc:{e.d / 'trunc.safetensors'}"), ["trunc.safetensors"], ["c.png"]),
    "cag-torchscript-missing": (lambda e, t: _cag(e, t, clf=str(e.d / "nope.pt")), ["nope.pt"], ["c.png"]),
    "cag-torchscript-not-torchscript": (lambda e, t: _cag(e, t, clf=str(e.d / "foreign.pt")), ["foreign.pt"], ["c.png"]),
    "cag-zoo-unknown": (lambda e, t: _cag(e, t, clf="zoo:imagenet-9000"), ["imagenet-9000"], ["c.png"]),
    "cag-target-out-of-range": (lambda e, t: _cag(e, t, target="7"), ["class id 7"], ["c.png"]),
    "cag-target-negative": (lambda e, t: _cag(e, t, target="-1"), ["class id -1"], ["c.png"]),
    "cag-target-unknown-name": (lambda e, t: _cag(e, t, target="giraffe"), ["giraffe"], ["c.png"]),
    "cag-n-0": (lambda e, t: _cag(e, t, "--n", "0"), ["--n"], ["c.png"]),
    "cag-size-0": (lambda e, t: _cag(e, t, "--size", "0"), ["--size"], ["c.png"]),
    "cag-size-too-small": (lambda e, t: _cag(e, t, "--size", "4"), ["size"], ["c.png"]),
    "cag-size-not-the-classifiers": (lambda e, t: _cag(e, t, "--size", "16"), ["16"], ["c.png"]),
    "cag-steps-0": (lambda e, t: _cag(e, t, "--steps", "0"), ["--steps"], ["c.png"]),
    "cag-stages-bad": (lambda e, t: _cag(e, t, "--stages", "4,x"), ["--stages"], ["c.png"]),
    "cag-lr-nan": (lambda e, t: _cag(e, t, "--lr", "nan"), ["--lr"], ["c.png"]),
    "cag-mask-ratio-above-1": (lambda e, t: _cag(e, t, "--mask-ratio", "1.5"), ["mask ratio"], ["c.png"]),
    "cag-jitter-negative": (lambda e, t: _cag(e, t, "--jitter=-2"), ["jitter"], ["c.png"]),
    "cag-batch-size-0": (lambda e, t: _cag(e, t, "--batch-size", "0"), ["--batch-size"], ["c.png"]),
    "cag-out-not-png": (lambda e, t: _cag(e, t, "--out", str(t / "c.jpg")), [".png"], ["c.png", "c.jpg"]),
    "cag-out-under-a-file": (lambda e, t: _cag(e, t, "--out", str(e.d / "afile" / "c.png")), ["afile"], []),
    "cag-npz-bad-suffix": (lambda e, t: _cag(e, t, "--npz", str(t / "c.txt")), [".npz"], ["c.png", "c.txt"]),
    "cag-npz-under-a-file": (lambda e, t: _cag(e, t, "--npz", str(e.d / "afile" / "c.npz")), ["afile"], ["c.png"]),
    # ---- eval
    "eval-ckpt-text-file": (lambda e, t: _eval(e, t, ckpt=e.d / "text.safetensors"), ["text.safetensors"], ["eval.json"]),
    "eval-ckpt-truncated": (lambda e, t: _eval(e, t, ckpt=e.d / "trunc.safetensors"), ["trunc.safetensors"], ["eval.json"]),
    "eval-ckpt-foreign-safetensors": (lambda e, t: _eval(e, t, ckpt=e.d / "foreign.safetensors"), ["not an egc"], ["eval.json"]),
    "eval-ckpt-nan-weights": (lambda e, t: _eval(e, t, ckpt=e.d / "nan.safetensors"), ["nan"], ["eval.json"]),
    "eval-ckpt-missing": (lambda e, t: _eval(e, t, ckpt=e.d / "none.safetensors"), ["none.safetensors"], ["eval.json"]),
    "eval-zoo-unknown": (lambda e, t: _eval(e, t, ckpt="zoo:imagenet-9000"), ["imagenet-9000"], ["eval.json"]),
    "eval-unknown-metric": (lambda e, t: _eval(e, t, "--metrics", "acc,fid"), ["'fid'"], ["eval.json"]),
    "eval-no-metric": (lambda e, t: _eval(e, t, "--metrics", ","), ["--metrics"], ["eval.json"]),
    "eval-data-unknown": (lambda e, t: _eval(e, t, "--data", "imagenet-22k"), ["imagenet-22k"], ["eval.json"]),
    "eval-data-truncated-npz": (lambda e, t: _eval(e, t, "--data", f"npz:{e.d / 'trunc.npz'}"), ["trunc.npz"], ["eval.json"]),
    "eval-n-test-0": (lambda e, t: _eval(e, t, "--n-test", "0"), ["--n-test"], ["eval.json"]),
    "eval-pgd-steps-negative": (lambda e, t: _eval(e, t, "--pgd-steps=-1"), ["--pgd-steps"], ["eval.json"]),
    "eval-eps-negative": (lambda e, t: _eval(e, t, "--eps-linf", "0.1,-0.2"), ["--eps-linf"], ["eval.json"]),
    "eval-eps-not-numbers": (lambda e, t: _eval(e, t, "--eps-l2", "big"), ["--eps-l2"], ["eval.json"]),
    "eval-noise-t-not-integers": (lambda e, t: _eval(e, t, "--noise-t", "0,1.5"), ["--noise-t"], ["eval.json"]),
    "eval-noise-t-beyond-schedule": (lambda e, t: _eval(e, t, "--metrics", "noisy_acc", "--noise-t", "5000"), ["--noise-t"], ["eval.json"]),
    "eval-guidance-nan": (lambda e, t: _eval(e, t, "--guidance", "nan"), ["--guidance"], ["eval.json"]),
    "eval-unknown-ood-set": (lambda e, t: _eval(e, t, "--metrics", "ood", "--ood-sets", "svhn"), ["svhn"], ["eval.json"]),
    "eval-inception-weights": (lambda e, t: _eval(e, t, "--inception", str(e.d / "foreign.pt")), ["not a torch state dict"], ["eval.json"]),
    "eval-inception-missing": (lambda e, t: _eval(e, t, "--inception", str(e.d / "none.pth")), ["none.pth"], ["eval.json"]),
    "eval-json-under-a-file": (lambda e, t: _eval(e, t, "--json", str(e.d / "afile" / "e.json")), ["afile"], ["eval.json"]),
    "eval-out-dir-is-a-file": (lambda e, t: _eval(e, t, "--out-dir", str(e.d / "afile")), ["afile"], ["eval.json"]),
    # ---- report
    "report-input-missing": (lambda e, t: _rep(e, t, e.d / "none.json"), ["none.json"], ["r.html"]),
    "report-input-not-json": (lambda e, t: _rep(e, t, e.d / "notes.txt"), ["notes.txt"], ["r.html"]),
    "report-input-other-json": (lambda e, t: _rep(e, t, e.d / "list.yaml"), ["list.yaml"], ["r.html"]),
    "report-folder-without-eval": (lambda e, t: _rep(e, t, e.d / "emptydir"), ["emptydir"], ["r.html"]),
    "report-out-under-a-file": (lambda e, t: ["report", str(e.d / "good-eval.json"), "--out", str(e.d / "afile" / "r.html")], ["afile"], []),
}

# Full disk: RLIMIT_FSIZE below the size of what the command writes (name -> (argv, limit in bytes, words, outputs)).
FULL_DISK = {
    "train-full-disk": (lambda e, t: _train(e, t, out=t / "out"), 64_000, ["file too large"], ["out/checkpoints/step-0000001.safetensors"]),
    "sample-full-disk": (lambda e, t: _sample(e, t, "--scale", "16"), 300, ["file too large"], ["g.png"]),
    "export-full-disk": (lambda e, t: _export(e, t), 4_000, ["file too large"], ["w.safetensors"]),
    "demo-full-disk": (lambda e, t: _demo(e, t), 2_000, ["file too large"], ["demo/classified.png", "demo/samples.png", "demo/summary.json"]),
    "cag-full-disk": (lambda e, t: _cag(e, t, "--scale", "16"), 300, ["file too large"], ["c.png"]),
    # the grid fits, the npz does not: neither may be left
    "sample-full-disk-npz": (lambda e, t: ["sample", str(e.run), "--n", "1", "--steps", "2", "--quiet", "--scale", "1", "--out", str(t / "g.png"),
                                           "--npz", str(t / "s.npz")], 350, ["file too large"], ["g.png", "s.npz"]),
    "eval-full-disk": (lambda e, t: _eval(e, t), 200, ["file too large"], ["eval.json"]),
    "report-full-disk": (lambda e, t: _rep(e, t, e.d / "good-eval.json"), 500, ["file too large"], ["r.html"]),
    "cag-full-disk-npz": (lambda e, t: _cag(e, t, "--n", "1", "--npz", str(t / "c.npz")), 350, ["file too large"], ["c.png", "c.npz"]),
}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    lines = [f"  {cmd:9s} {tried:3d} malformed inputs, {clean:3d} clean one-line errors" for cmd, (tried, clean) in sorted(TALLY.items())]
    total = [sum(v[i] for v in TALLY.values()) for i in (0, 1)]
    print("\nbad-input fuzz:\n" + "\n".join(lines) + f"\n  total     {total[0]:3d} tried, {total[1]:3d} clean")


def _check(name: str, rc, err: str, words: list[str], outputs: list[Path], tmp: Path) -> None:
    TALLY[name.split("-")[0]][0] += 1
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert rc not in (0, None), (rc, err)
    assert len(lines) == 1, err
    assert any(w.lower() in lines[0].lower() for w in words), (words, lines[0])
    left = [str(p) for p in outputs if p.exists()]
    assert not left, left
    stray = [str(q) for q in tmp.rglob("*") if ".tmp" in q.name]
    assert not stray, stray
    TALLY[name.split("-")[0]][1] += 1
    print(f"\n  {name}: {lines[0]}", end="")


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input(name, E, tmp_path, capsys):
    build, words, outputs = CASES[name]
    argv = build(E, tmp_path)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    except BaseException as e:  # noqa: BLE001 - what the user would see as a traceback
        TALLY[name.split("-")[0]][0] += 1
        raise AssertionError(f"uncaught {type(e).__name__}: {e}") from e
    _check(name, rc, capsys.readouterr().err, words, [tmp_path / o for o in outputs], tmp_path)
    planted = E.d / "tmponly" / ".step-0000003.safetensors.tmp4242"
    assert [q for q in E.d.glob("**/.*.tmp*") if q != planted] == []  # nothing half-written beside the inputs either


_DRIVER = r"""
import contextlib, io, json, resource, sys, traceback
from egc.cli import main
out = {}
for name, argv, limit in json.loads(sys.argv[1]):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        except BaseException:
            rc = "traceback"
            err.write(traceback.format_exc())
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    out[name] = {"rc": rc, "err": err.getvalue()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def full_disk(E, tmp_path_factory):
    """Run every full-disk case in one subprocess (one interpreter start-up) with SIGXFSZ ignored."""
    base = tmp_path_factory.mktemp("fulldisk")
    jobs, dirs = [], {}
    for name, (build, limit, _, _) in FULL_DISK.items():
        dirs[name] = base / name
        dirs[name].mkdir()
        jobs.append([name, build(E, dirs[name]), limit])

    def limits():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(jobs)], capture_output=True, text=True, preexec_fn=limits, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), dirs


@pytest.mark.parametrize("name", list(FULL_DISK))
def test_full_disk(name, full_disk):
    results, dirs = full_disk
    _, _, words, outputs = FULL_DISK[name]
    res = results[name]
    _check(name, res["rc"], res["err"], words, [dirs[name] / o for o in outputs], dirs[name])


def test_odd_images_are_preprocessed_not_refused(E, capsys):
    """Images a user has (another size, colour for a grey model, transparency, 16 bits) go through the
    model's training preprocessing: classified, with what was changed reported per image and once on stderr."""
    files = {n: E.d / "img" / n for n in ("big.png", "colour.png", "transparent.png", "deep16.png")}
    capsys.readouterr()
    assert main(["classify", str(E.run), *map(str, files.values()), "--json"]) == 0
    out = capsys.readouterr()
    rows = {Path(r["image"]).name: r for r in json.loads(out.out)}
    assert any("resized from 16x16" in n for n in rows["big.png"]["preprocessed"])
    assert "colour converted to grey" in rows["colour.png"]["preprocessed"]
    assert "alpha channel dropped" in rows["transparent.png"]["preprocessed"]
    assert "16-bit pixels scaled to 8 bits" in rows["deep16.png"]["preprocessed"]
    assert "1 of 4 image(s) resized" in out.err and "\n" not in out.err.strip()
