"""Issue 32: a user's folder as it comes (sizes, modes, broken files, no split), the preprocessing saved
with the model and applied to any later image, the held-out split, pixel-or-latent, sampling defaults."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from egc.cli import main
from egc.data import Prep, load_dataset, to_model_range
from egc.data.prep import auto_size
from egc.errors import DataError
from tests.conftest import TINY


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def _pattern(k: int, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Class k: a bright block in a class-specific third of the image (learnable in a few steps), plus noise."""
    img = rng.integers(0, 40, (h, w)).astype(np.uint8)
    img[:, k * w // 3:(k + 1) * w // 3] = 220
    return img


def make_messy_folder(base: Path, per_class: int = 10, seed: int = 0) -> Path:
    """Three classes of grey content saved every way a real folder has them, plus the junk real folders hold."""
    rng = np.random.default_rng(seed)
    kinds = ["L.png", "RGB.jpg", "RGBA.png", "I16.png", "P.gif", "RGB.bmp", "L.tiff", "RGB.webp", "PT.png"]
    for k in range(3):
        d = base / f"class{k}"
        (d / "nested").mkdir(parents=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(10, 40, 2))
            g = _pattern(k, w, h, rng)
            mode, ext = kinds[(i + k) % len(kinds)].split(".")
            path = (d / "nested" if i == 0 else d) / f"{i}.{ext}"
            if mode == "I16":
                Image.fromarray(g.astype(np.uint16) * 257).save(path)
            elif mode == "PT":  # palette with a transparent index
                img = Image.fromarray(g).convert("P")
                img.info["transparency"] = 0
                img.save(path, transparency=0)
            elif mode == "RGBA":
                Image.fromarray(np.dstack([g, g, g, np.full_like(g, 200)]), "RGBA").save(path)
            else:
                Image.fromarray(g).convert(mode).save(path, **({"quality": 95} if ext in ("jpg", "webp") else {}))
        (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        good = io.BytesIO()
        Image.fromarray(_pattern(k, 20, 20, rng)).save(good, format="PNG")
        (d / "truncated.png").write_bytes(good.getvalue()[:-40])  # passes the header probe, fails to decode
        (d / "notes.txt").write_text("not an image")
        (d / ".cache").mkdir()
        (d / ".cache" / "x.png").write_bytes(good.getvalue())  # hidden: never read
    (base / ".git").mkdir()
    (base / ".git" / "HEAD").write_text("ref")
    return base


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha1(arr.tobytes()).hexdigest()


def test_messy_folder_loads_with_notes_and_a_held_out_split(tmp_path: Path) -> None:
    base = make_messy_folder(tmp_path / "f")
    train = load_dataset(f"folder:{base}", "train", holdout=0.2, holdout_seed=3)
    test = load_dataset(f"folder:{base}", "test", holdout=0.2, holdout_seed=3)
    assert train.class_names == ["class0", "class1", "class2"] and train.channels == 1  # grey in content though stored RGB/RGBA/P
    assert train.image_size == test.image_size == 16  # the median shorter side of 10-39 px, below 24, snapped down
    notes = " | ".join(train.notes)
    assert "skipped 3 unreadable files" in notes and "class0/broken.png" in notes
    assert "skipped 3 files that are not images" in notes and "failed to decode" in notes and "truncated.png" in notes
    assert ".cache" not in notes and "grey" in notes and "image size 16x16" in notes
    # stratified: 20 % of each class's 12 listed files (10 images, the broken and the truncated one) = 2, the unreadable ones dropped after
    assert len(test) + len(train) == 30 and 4 <= len(test) <= 6 and set(test.labels.tolist()) == {0, 1, 2}
    assert not set(train.files) & set(test.files)
    # never overlaps by content either (each image is distinct noise): hashes of the source files
    src = lambda ds: {hashlib.sha1((base / f).read_bytes()).hexdigest() for f in ds.files}  # noqa: E731
    assert not src(train) & src(test)
    assert "never trained on" in test.split_note
    # the same seed, the same split; another seed, another one
    again = load_dataset(f"folder:{base}", "test", holdout=0.2, holdout_seed=3)
    assert again.files == test.files and torch.equal(again.images, test.images)
    other = load_dataset(f"folder:{base}", "test", holdout=0.2, holdout_seed=4)
    assert other.files != test.files
    # the images are the class pattern: the bright third sits where the class says
    col = train.images.float().mean(dim=(1, 3))  # [N, W]
    for k in range(3):
        prof = col[train.labels == k].mean(0)
        third = train.image_size // 3
        assert int(prof.argmax()) // third == k or abs(int(prof.argmax()) - (k * third + third // 2)) <= third


def test_folder_refusals_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    for k in range(2):
        (bad / f"c{k}").mkdir(parents=True)
        (bad / f"c{k}" / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError) as e:
        load_dataset(f"folder:{bad}")
    assert "none of the 2 image files" in str(e.value) and "\n" not in str(e.value)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / "c0" / "ok.png")
    with pytest.raises(DataError, match="class 'c1' has no usable image .*c1/x.png"):
        load_dataset(f"folder:{bad}")


def test_one_image_classes_train_and_are_said(tmp_path: Path) -> None:
    for k, n in ((0, 1), (1, 5)):
        for i in range(n):
            (tmp_path / "f" / f"c{k}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "f" / f"c{k}" / f"{i}.png")
    train = load_dataset(f"folder:{tmp_path / 'f'}", "train", holdout=0.2)
    test = load_dataset(f"folder:{tmp_path / 'f'}", "test", holdout=0.2)
    assert train.labels.tolist().count(0) == 1 and 0 not in test.labels.tolist() and len(test) == 1
    assert any("has one image" in n for n in train.notes)


def test_prep_by_hand_crop_pad_exif_and_deep_modes() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (30, 50, 3)).astype(np.uint8)  # 50 wide, 30 high
    img = Image.fromarray(arr)
    got, notes = Prep(12, 3, "crop").pixels(img)
    hand = img.resize((20, 12), Image.Resampling.BICUBIC).crop((4, 0, 16, 12))  # shorter side 30 -> 12, centre 12 of 20
    assert np.array_equal(got, np.asarray(hand)) and notes == ["resized from 50x30 (shorter side resized, centre crop)"]
    padded, _ = Prep(10, 3, "pad").pixels(img)
    assert padded.shape == (10, 10, 3) and (padded[:2] == 0).all() and (padded[-2:] == 0).all()  # 50x30 -> 10x6, 2 black rows each side
    # EXIF orientation 6 (rotate 90 clockwise to view): a 20x10 stored image is shown 10x20
    buf = io.BytesIO()
    stored = np.zeros((10, 20), np.uint8)
    stored[:, :5] = 255  # bright left edge as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(buf, format="JPEG", exif=exif, quality=100)
    shown, notes = Prep(10, 1, "pad").pixels(Image.open(io.BytesIO(buf.getvalue())))
    assert "EXIF orientation applied" in notes
    # shown 10 wide x 20 high, padded into 10 x 10 as 5 x 10 in columns 2-6: the stored left edge is now its top
    assert shown[:2, 3:6].mean() > 200 and shown[-2:, 3:6].mean() < 60 and (shown[:, :2] == 0).all()
    deep, notes = Prep(4, 1).pixels(Image.fromarray(np.full((4, 4), 65535, np.uint16)))
    assert (deep == 255).all() and "16-bit pixels scaled to 8 bits" in notes  # scaled, not clipped at 255 of 65535
    mid, _ = Prep(4, 1).pixels(Image.fromarray(np.full((4, 4), 32896, np.uint16)))
    assert (mid == 128).all()


def test_auto_size_rule() -> None:
    assert auto_size([(28, 28)] * 3) == (28, "every image is 28x28")
    size, why = auto_size([(20, 64), (40, 50), (64, 64)])
    assert size == 32 and "median shorter side 40" in why
    assert auto_size([(500, 400)] * 2)[0] == 64 and "capped at 64" in auto_size([(500, 400), (300, 900)])[1]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> Path:
    """A tiny EGC trained by `egc train --data folder:DIR` on the messy folder, no other data flags."""
    tmp = tmp_path_factory.mktemp("folderrun")
    base = make_messy_folder(tmp / "f")
    run = tmp / "run"
    assert main(["train", "--out", str(run), "--data", f"folder:{base}", "--steps", "4", "--quiet", "--set", "train.sample_n=0", *_sets(TINY)]) == 0
    return run


def test_folder_run_records_its_preprocessing_and_reports_held_out_accuracy(folder_run: Path) -> None:
    from egc.checkpoint import load_checkpoint

    summary = json.loads((folder_run / "summary.json").read_text())
    held_out = load_dataset(f"folder:{folder_run.parent / 'f'}", "test", holdout=0.1)  # the run's default share and seed
    assert "never trained on" in summary["test_split"] and summary["test_images"] == len(held_out) > 0 and 0 <= summary["test_accuracy"] <= 1
    cfg = load_checkpoint(str(folder_run)).config
    assert (cfg.data.image_size, cfg.data.fit, cfg.data.holdout, cfg.model.in_channels, cfg.model.space) == (16, "crop", 0.1, 1, "pixel")


def test_classify_an_odd_image_equals_classifying_it_preprocessed_by_hand(folder_run: Path, tmp_path: Path, capsys) -> None:
    from egc import EGC

    rng = np.random.default_rng(5)
    odd = Image.fromarray(np.dstack([_pattern(1, 37, 29, rng)] * 3))  # colour-stored, 37x29, for a 16x16 grey model
    odd.save(tmp_path / "odd.jpg", quality=100)
    capsys.readouterr()
    # fp32 as the by-hand side below: "auto" is bf16 on hosts with native bf16
    assert main(["classify", str(folder_run), str(tmp_path / "odd.jpg"), "--json", "--top-k", "3", "--precision", "fp32"]) == 0
    out = capsys.readouterr()
    row = json.loads(out.out)[0]
    assert "resized from 37x29" in row["preprocessed"][-1] and "resized to the model's 16x16 grey" in out.err
    m = EGC.load(str(folder_run), precision="fp32")
    with Image.open(tmp_path / "odd.jpg") as im:
        grey = im.convert("L")
    by_hand = grey.resize((20, 16), Image.Resampling.BICUBIC).crop((2, 0, 18, 16))  # 29 -> 16 shorter side, centre 16 of 20
    x = to_model_range(torch.from_numpy(np.asarray(by_hand).copy())[None, ..., None])
    probs = m.predict_proba(x)[0]
    for t in row["top"]:
        assert probs[t["class"]].item() == pytest.approx(t["prob"], abs=1e-4)
    # the Python API takes the file, a PIL image and a uint8 array the same way
    for item in (tmp_path / "odd.jpg", Image.open(tmp_path / "odd.jpg"), np.asarray(Image.open(tmp_path / "odd.jpg"))):
        assert torch.allclose(m.predict_proba([item])[0], probs, atol=1e-5)


def test_eval_uses_the_held_out_split(folder_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    assert main(["eval", str(folder_run), "--metrics", "acc", "--out-dir", str(out), "--quiet"]) == 0
    doc = json.loads((out / "eval.json").read_text())
    assert doc["n_test"] == len(load_dataset(f"folder:{folder_run.parent / 'f'}", "test", holdout=0.1)) and "never trained on" in doc["test_split"]


def test_resume_refuses_new_preprocessing(folder_run: Path, capsys) -> None:
    assert main(["train", "--out", str(folder_run), "--resume", "--image-size", "32", "--steps", "5"]) == 2
    assert "--image-size" in capsys.readouterr().err


def test_old_checkpoints_keep_their_sampling_and_data_behaviour(folder_run: Path, tmp_path: Path) -> None:
    """A checkpoint written before sample.sampler/steps/eta, data.holdout/image_size/fit and model.space existed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from egc import EGC
    from egc.checkpoint import latest_in

    src = latest_in(folder_run)
    with safe_open(str(src), "pt") as f:
        md, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(md["config"])
    for sec, keys in (("sample", ("sampler", "steps", "eta")), ("data", ("image_size", "fit", "holdout", "holdout_seed")), ("model", ("space",))):
        for k in keys:
            cfg[sec].pop(k)
    md["config"] = json.dumps(cfg)
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=md)
    m = EGC.load(str(old))
    smp = m.config.sample
    assert (smp.sampler, smp.steps, smp.eta, m.config.data.holdout, m.config.model.space) == ("ddim", 100, 0.0, 0.0, "pixel")
    assert m.predict_proba([np.zeros((50, 40), np.uint8)]).shape == (1, 3)  # still preprocesses odd images (its own 16x16)


def test_sampling_defaults_live_in_the_model(folder_run: Path, tmp_path: Path, capsys) -> None:
    from egc import EGC

    w = tmp_path / "w.safetensors"
    assert main(["export", str(folder_run), "--out", str(w), "--steps", "3", "--eta", "0.5", "--sampler", "ddim"]) == 0
    m = EGC.load(str(w))
    assert (m.config.sample.steps, m.config.sample.eta) == (3, 0.5)
    seen: list[int] = []
    m.sample(2, class_balanced=True, callback=lambda step, total, x0: seen.append(total))
    assert set(seen) == {3}
    capsys.readouterr()
    assert main(["sample", str(w), "--n", "2", "--class-balanced", "--out", str(tmp_path / "g.png"), "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["sampler"], res["steps"], res["eta"]) == ("ddim", 3, 0.5)
    # eta goes with DDIM only: another sampler runs without the model's eta, and a given one wins
    a, _ = m.sample(2, class_balanced=True, eta=0.0, seed=1)
    b, _ = m.sample(2, class_balanced=True, seed=1)
    assert not torch.equal(a, b)  # the model's eta 0.5 adds noise that eta 0 does not
    m.sample(1, sampler="dpm++2m", steps=2)


def test_the_shipped_fashion_model_samples_with_its_card_settings() -> None:
    from egc import EGC

    smp = EGC.load("zoo:fashion-mnist").config.sample
    assert (smp.sampler, smp.steps, smp.eta, smp.guidance, smp.cfg) == ("ddim", 50, 1.0, 10.0, 0.0)  # the card: DDIM 50, eta 1, s 10


def test_space_rule_and_a_staged_latent_run(tmp_path: Path, monkeypatch) -> None:
    """Colour at 32 px trains on latents: an autoencoder stage first (when the shipped one does not fit),
    then the model on its latents, one run folder, --resume continuing the stage that was running."""
    from egc.checkpoint import latest_in, load_checkpoint
    from egc.train import stages

    assert stages.choose_space("egc", 1, 64)[0] == "pixel" and stages.choose_space("egc", 3, 16)[0] == "pixel"
    assert stages.choose_space("egc", 3, 32)[0] == "latent" and stages.choose_space("classifier", 3, 64)[0] == "pixel"
    monkeypatch.setattr(stages, "reconstruction_mse", lambda spec, ds, n=128: 1.0)  # the shipped autoencoder "does not fit"
    rng = np.random.default_rng(0)
    for k in range(2):
        (tmp_path / "c" / f"k{k}").mkdir(parents=True)
        for i in range(8):
            a = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
            a[..., k] = 230
            Image.fromarray(a).save(tmp_path / "c" / f"k{k}" / f"{i}.png")
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), "--data", f"folder:{tmp_path / 'c'}", "--steps", "5", "--quiet", "--set", "train.sample_n=0",
            *_sets([s for s in TINY if "sample" not in s]), "--set", "train.batch_size=4", "--set", "model.ae.channels=8"]
    assert main(argv) == 0
    plan = json.loads((run / "plan.json").read_text())
    assert plan["space"] == "latent" and plan["ae_here"] and latest_in(run / "autoencoder") is not None
    ck = load_checkpoint(str(run))
    assert ck.config.model.latent and ck.config.model.autoencoder == str(run / "autoencoder") and ck.step == 5
    assert ck.config.model.in_channels == 8 and ck.config.model.image_size == 8  # 32 px / 4, 8 latent channels
    assert ck.config.sample.eta == 0.0 and ck.config.model.space == "latent"  # the latent default, not the pixel one decided before the plan
    ae_ckpt = latest_in(run / "autoencoder")
    stamp = ae_ckpt.stat().st_mtime_ns
    assert main(["train", "--out", str(run), "--resume", "--steps", "7", "--quiet"]) == 0
    assert load_checkpoint(str(run)).step == 7 and latest_in(run / "autoencoder") == ae_ckpt and ae_ckpt.stat().st_mtime_ns == stamp


def test_the_latent_stage_sizes_latents_by_the_autoencoder_it_will_use(tmp_path: Path) -> None:
    """At 68 px an autoencoder trained here downsamples 8 (8 x 8 latents: no patch stem), the reused zoo:cifar10
    one downsamples 4 (17 x 17 latents: the patch stem stays)."""
    from egc.config import load_config
    from egc.train import stages

    cfg = load_config(None, ["data.image_size=68", "model.patch=2"])
    here = stages._latent_stage(cfg, stages.Plan("latent", "test", ae_here=True), tmp_path)
    reused = stages._latent_stage(cfg, stages.Plan("latent", "test", autoencoder="zoo:cifar10"), tmp_path)
    assert (here.model.patch, reused.model.patch) == (1, 2)
