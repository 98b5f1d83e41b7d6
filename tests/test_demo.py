"""`egc demo` end to end on a tiny 28x28 model (the shipped model is exercised by scripts/demo.sh)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from egc.checkpoint import ZOO_DIR, load_checkpoint, save_checkpoint
from egc.cli import main

from .conftest import make_npz, tiny_rgb32_run, tiny_train_argv


def test_demo_writes_pngs_and_summary(tmp_path, capsys):
    data = make_npz(tmp_path / "fm.npz", n=20, size=28, classes=10)
    run = tmp_path / "run"
    assert main(tiny_train_argv(run, data, 1)) == 0
    # The demo shows the real test images of the model's own data set: a model of an npz file has none ...
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path / "no"), "--checkpoint", str(run), "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no demo images ship" in err and not (tmp_path / "no").exists()
    # ... the same weights said to be a Fashion-MNIST model get the shipped Fashion-MNIST images.
    ck = load_checkpoint(str(run))
    ck.config.data.name = "fashion-mnist"
    fm = save_checkpoint(tmp_path / "fm.safetensors", ck.config, ck.step, {"ema": ck.inference_weights()}, kind="weights")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", str(fm), "--quick"]) == 0  # --model: the spelling of --checkpoint
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classified"]["images"] == 20 and summary["samples"]["n"] == 20
    assert summary["precision"] in ("bf16", "fp32")  # "auto" resolved, never left as "auto"
    # the classified count is the model's own: the shipped 20 images classified by it, label by label
    from egc import EGC
    from egc.data import to_model_range
    from egc.demo import examples_file

    with np.load(examples_file("fashion-mnist")) as z:
        imgs, labels = torch.from_numpy(z["images"]), torch.from_numpy(z["labels"])
    m = EGC.load(str(fm), precision=summary["precision"])
    assert summary["classified"]["correct"] == int((m.logits(to_model_range(imgs)).argmax(1) == labels).sum())
    assert (out / "classified.png").stat().st_size > 0 and (out / "samples.png").stat().st_size > 0


def test_shipped_zoo_files_present():
    assert (ZOO_DIR / "fashion-mnist-examples.npz").is_file()
    assert (ZOO_DIR / "fashioncnn.safetensors").is_file()


def test_demo_runs_a_cifar10_model_on_the_shipped_cifar10_images(tmp_path, capsys):
    """zoo:cifar10 (issue 18) will demo like zoo:fashion-mnist: its 20 real test images (32 x 32 RGB) ship."""
    import numpy as np

    with np.load(ZOO_DIR / "cifar10-examples.npz") as z:
        assert z["images"].shape == (20, 32, 32, 3) and z["images"].dtype == np.uint8
        assert sorted(z["labels"].tolist()) == sorted(list(range(10)) * 2) and len(z["class_names"]) == 10
    ck = tiny_rgb32_run(tmp_path)
    ck.config.data.name = "cifar10"
    c10 = save_checkpoint(tmp_path / "c10.safetensors", ck.config, ck.step, {"ema": ck.inference_weights()}, kind="weights")
    out = tmp_path / "demo"
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--model", str(c10), "--quick"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classified"]["images"] == 20 and summary["samples"]["n"] == 20
    assert (out / "samples.png").stat().st_size > 0


def test_zoo_lists_models_not_judges_and_names_them_when_asked_for_a_missing_one(capsys):
    from egc.checkpoint import zoo_models

    names = zoo_models()
    assert "fashion-mnist" in names and "fashioncnn" not in names and "cifarcnn" not in names  # judges are not models
    assert main(["sample", "zoo:no-such-model", "--n", "1", "--out", "x.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no model 'no-such-model' in the zoo" in err and "fashion-mnist" in err and "cifarcnn" not in err
    assert main(["sample", "zoo:../zoo/fashion-mnist", "--n", "1", "--out", "x.png"]) == 2  # no paths through zoo:


def test_egc_zoo_lists_models_and_judges(capsys):
    capsys.readouterr()
    assert main(["zoo", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    fm = rows["zoo:fashion-mnist"]
    assert fm["role"] == "model" and fm["data"] == "fashion-mnist" and fm["image_shape"] == [1, 28, 28] and fm["card"].endswith("fashion-mnist.md")
    assert rows["zoo:fashioncnn"]["role"] == rows["zoo:cifarcnn"]["role"] == "judge" and rows["zoo:cifarcnn"]["data"] == "cifar10"
    assert main(["zoo"]) == 0 and "zoo:fashion-mnist" in capsys.readouterr().out


def _shipped_models() -> list[str]:
    from egc.checkpoint import zoo_models

    return zoo_models()


@pytest.mark.parametrize("name", _shipped_models())
def test_every_shipped_model_has_a_card_classifies_its_examples_and_samples(name):
    """Each zoo:NAME: a model card beside it, well above chance on its data set's 20 shipped test images
    (every shipped model measured >= 75 % on the whole test set), and two samples of its image shape."""
    import numpy as np
    import torch

    from egc import EGC
    from egc.data import to_model_range
    from egc.demo import examples_file

    card = ZOO_DIR / f"{name}.md"
    assert card.is_file() and f"zoo:{name}" in card.read_text()
    torch.manual_seed(0)
    m = EGC.load(f"zoo:{name}", precision="fp32")
    with np.load(examples_file(m.config.data.name)) as z:
        x, y = to_model_range(torch.from_numpy(z["images"])), torch.from_numpy(z["labels"])
    with torch.no_grad():
        acc = float((m.logits(x).argmax(1) == y).float().mean())
    assert acc >= 0.6, f"zoo:{name}: {acc:.2f} on its 20 shipped examples"
    imgs, labels = m.sample(2, labels=[0, 1], sampler="ddim", steps=2, seed=0)
    assert tuple(imgs.shape) == (2, *m.image_shape) and torch.isfinite(imgs).all() and labels.tolist() == [0, 1]
