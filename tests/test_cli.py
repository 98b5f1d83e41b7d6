"""Every CLI subcommand on tiny data, and the one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from egc.cli import main

from .conftest import tiny_train_argv


@pytest.fixture
def trained(tmp_path: Path, tiny_npz: Path) -> Path:
    run = tmp_path / "run"
    assert main(tiny_train_argv(run, tiny_npz, 3)) == 0
    return run


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def test_train_sample_classify(tmp_path, trained, capsys):
    capsys.readouterr()
    grid, npz = tmp_path / "g.png", tmp_path / "s.npz"
    assert main(["sample", str(trained), "--n", "6", "--class-balanced", "--steps", "3", "--out", str(grid), "--npz", str(npz), "--quiet"]) == 0
    assert Image.open(grid).size[0] > 8
    with np.load(npz) as z:
        assert z["images"].shape == (6, 8, 8, 1) and z["images"].dtype == np.uint8
        assert z["labels"].dtype == np.int64 and sorted(z["labels"].tolist()) == [0, 0, 1, 1, 2, 2]
    for sampler in ("ddpm", "dpm++2m"):
        assert main(["sample", str(trained), "--n", "2", "--label", "c1", "--sampler", sampler, "--steps", "3", "--out", str(grid), "--quiet"]) == 0
    assert main(["sample", str(trained), "--n", "2", "--guidance", "0", "--steps", "2", "--out", str(grid), "--quiet"]) == 0
    img = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    capsys.readouterr()
    # fp32 on both sides: "auto" is bf16 on hosts with native bf16, whose rounding the 1e-4 below cannot absorb
    assert main(["classify", str(trained), str(img), "--json", "--top-k", "2", "--precision", "fp32"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and len(rows[0]["top"]) == 2 and "energy" in rows[0]
    # the two most likely classes, in order, with the probabilities the Python API gives the same file
    from egc import EGC

    p = EGC.load(str(trained), precision="fp32").predict_proba([img])[0]
    want = p.topk(2)
    assert [t["class"] for t in rows[0]["top"]] == want.indices.tolist()
    assert [t["prob"] for t in rows[0]["top"]] == pytest.approx(want.values.tolist(), abs=1e-4)


def test_resume_via_cli(tmp_path, trained, capsys):
    args = ["train", "--out", str(trained), "--resume", "--steps", "5", "--quiet"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step"] == 5


@pytest.mark.parametrize("case", ["missing_data_root", "corrupt_image", "wrong_class_id", "unknown_class_name", "wrong_ckpt_file",
                                  "missing_ckpt", "bad_set", "unreadable_image", "no_budget", "resume_empty", "bad_npz_suffix"])
def test_bad_input_gives_one_line_error(case, tmp_path, trained, capsys):
    capsys.readouterr()
    grid = str(tmp_path / "g.png")
    if case == "missing_data_root":
        args = ["train", "--out", str(tmp_path / "x"), "--data", "fashion-mnist", "--data-root", str(tmp_path / "nowhere"), "--steps", "1"]
        needle = "nowhere"
    elif case == "corrupt_image":
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        args, needle = ["classify", str(trained), str(bad)], "bad.png"
    elif case == "wrong_class_id":
        args, needle = ["sample", str(trained), "--n", "2", "--label", "7", "--out", grid], "class id 7"
    elif case == "unknown_class_name":
        args, needle = ["sample", str(trained), "--n", "2", "--label", "giraffe", "--out", grid], "giraffe"
    elif case == "wrong_ckpt_file":
        junk = tmp_path / "junk.safetensors"
        junk.write_text("hello")
        args, needle = ["sample", str(junk), "--out", grid], "junk.safetensors"
    elif case == "missing_ckpt":
        args, needle = ["classify", str(tmp_path / "none.safetensors"), str(tmp_path)], "none.safetensors"
    elif case == "bad_set":
        args, needle = ["train", "--out", str(tmp_path / "x"), "--set", "train.lr=fast", "--steps", "1"], "train.lr"
    elif case == "unreadable_image":  # (another size is not an error: the model's preprocessing resizes it)
        img = tmp_path / "big.png"
        img.write_bytes(b"\x89PNG not really")
        args, needle = ["classify", str(trained), str(img)], "big.png"
    elif case == "no_budget":
        args, needle = ["train", "--out", str(tmp_path / "x"), "--set", "model.size=tiny"], "budget"
    elif case == "resume_empty":
        args, needle = ["train", "--out", str(tmp_path / "empty"), "--resume", "--steps", "1"], "no checkpoint"
    else:
        args, needle = ["sample", str(trained), "--n", "2", "--steps", "2", "--out", grid, "--npz", str(tmp_path / "s.txt")], ".npz"
    assert main(args) == 2
    err = _err(capsys)
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not Path(grid).exists()


def test_out_of_range_flag_is_rejected_by_parser(trained, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", str(trained), "--n", "0"])
    assert e.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_export_weights_only_file_gives_same_outputs(tmp_path, trained, capsys):
    import torch

    from egc import EGC

    out = tmp_path / "w.safetensors"
    assert main(["export", str(trained), "--out", str(out)]) == 0
    a, b = EGC.load(trained, "fp32"), EGC.load(out, "fp32")
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.equal(a.logits(x), b.logits(x)) and b.class_names == ["c0", "c1", "c2"]
    assert out.stat().st_size < next((trained / "checkpoints").glob("*.safetensors")).stat().st_size


def test_auto_precision_follows_native_bf16(monkeypatch, trained):
    """"auto" is bf16 exactly when the CPU multiplies bf16 natively (else oneDNN emulates it, slower
    than fp32), whatever the model was trained in; explicit choices are kept; anything else is refused."""
    import egc.device as model  # the device/precision policy lives in egc.device
    from egc import EGC
    from egc.errors import EgcError

    # The probe itself agrees with torch's CPU feature checks on this machine.
    assert model.native_bf16() == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(model, "native_bf16", lambda native=native: native)
        assert model.resolve_precision("auto") == want
        assert EGC.load(trained).precision == want
        assert EGC.load(trained, "fp32").precision == "fp32" and EGC.load(trained, "bf16").precision == "bf16"
    with pytest.raises(EgcError, match="precision must be auto, bf16 or fp32, got 'fp16'"):
        model.resolve_precision("fp16")


def test_training_precision_and_memory_format_follow_the_cpu(monkeypatch, tmp_path, tiny_npz):
    """train.precision auto and train.channels_last auto are decided per host: bf16 only with native
    bf16 (emulated bf16 made a step 13x slower on an AVX2 host), channels_last only with AMX tiles;
    the run's summary records what was chosen."""
    import egc.model as model

    for amx, want in ((True, True), (False, False)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert model.resolve_channels_last("auto") is want
    assert model.resolve_channels_last("true") and not model.resolve_channels_last("false")
    assert model.resolve_channels_last("auto", "cuda") is False
    import egc.device

    # patched where resolve_precision looks it up (egc.model only re-exports it)
    monkeypatch.setattr(egc.device, "native_bf16", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    import json

    from egc.cli import main as cli_main

    from .conftest import tiny_train_argv

    run = tmp_path / "run"
    assert cli_main(tiny_train_argv(run, tiny_npz, 1)) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == "fp32" and summary["channels_last"] is False
