"""Training loop: checkpoints reload exactly, and an interrupted + resumed run equals an uninterrupted one."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from egc import EGC
from egc.checkpoint import load_checkpoint, save_checkpoint
from egc.config import load_config
from egc.errors import CheckpointError
from egc.train.loop import train


def _losses(run: Path) -> list[float]:
    with open(run / "log.csv") as f:
        return [float(r["total"]) for r in csv.DictReader(f) if r.get("total")]


def test_resumed_run_continues_the_same_loss_curve(tmp_path, tiny_overrides):
    full = train(load_config(None, tiny_overrides + ["train.steps=8"]), tmp_path / "full", quiet=True)
    train(load_config(None, tiny_overrides + ["train.steps=8"]), tmp_path / "part", quiet=True, stop_at_step=3)
    train(load_config(None, tiny_overrides + ["train.steps=8"]), tmp_path / "part", resume=True, quiet=True)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")
    a = load_checkpoint(full["checkpoint"])
    b = load_checkpoint(tmp_path / "part")
    assert a.step == b.step == 8
    for k, v in a.group("model").items():
        assert torch.equal(v, b.group("model")[k]), k
    for k, v in a.group("ema").items():
        assert torch.equal(v, b.group("ema")[k]), k


def test_checkpoint_reloads_to_identical_outputs(tmp_path, tiny_overrides):
    s = train(load_config(None, tiny_overrides + ["train.steps=2"]), tmp_path / "r", quiet=True)
    ck = load_checkpoint(s["checkpoint"])
    assert ck.config.model.size == "tiny" and ck.meta["class_names"] == ["c0", "c1", "c2"]
    m = EGC.load(s["checkpoint"], "fp32")
    # Inference uses the EMA weights, not the raw ones (they differ after two steps), and nothing else:
    # a network built from the config with the file's EMA tensors gives the same logits, energy and eps.
    ema, raw = ck.group("ema"), ck.group("model")
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    from egc.diffusion.energy import EnergyModel
    from egc.diffusion.schedule import Schedule
    from egc.nets import build_net

    net = build_net(ck.config.model)
    net.load_state_dict(ema)
    by_hand = EnergyModel(net.eval(), ck.config.model, Schedule.make(ck.config.diffusion.schedule, ck.config.diffusion.steps))
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    t = torch.full((4,), 10)
    assert torch.equal(m.logits(x), by_hand.logits(x))
    assert torch.allclose(m.energy(x, 10), by_hand.energy(x, t), atol=1e-6)
    assert torch.allclose(m.eps(x, 10), by_hand.eps_and_logits(x, t)[0], atol=1e-6)
    # The run folder records the resolved config and a grid per checkpoint.
    assert (tmp_path / "r" / "config.yaml").is_file() and list((tmp_path / "r" / "samples").glob("*.png"))


def test_checkpoint_refuses_nan_weights_and_foreign_files(tmp_path):
    cfg = load_config(None, ["model.size=tiny"])
    with pytest.raises(CheckpointError, match="NaN"):
        save_checkpoint(tmp_path / "bad.safetensors", cfg, 1, {"model": {"w": torch.tensor([float("nan")])}})
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_checkpoint(junk)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not an egc checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")


def test_checkpoint_file_mode_follows_the_umask(tmp_path):
    # safetensors stages through a private 0600 file; a checkpoint or exported model must be readable
    # by whoever the umask allows (0644 under 022), like any other file the user writes.
    import os

    cfg = load_config(None, ["model.size=tiny"])
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "w.safetensors", cfg, 1, {"model": {"w": torch.zeros(2)}})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_wrong_architecture_is_reported(tmp_path, tiny_overrides):
    s = train(load_config(None, tiny_overrides + ["train.steps=1"]), tmp_path / "r", quiet=True)
    ck = load_checkpoint(s["checkpoint"])
    ck.config.model.channels = 16  # the config now describes another size than the weights
    with pytest.raises(CheckpointError, match="do not fit"):
        EGC.from_checkpoint(ck)


def test_stop_after_trains_a_piece_of_the_budget_and_resume_continues(tmp_path, tiny_npz, capsys):
    """--stop-after: a short piece of a long budget; the schedule is the whole budget's (lr barely decayed)."""
    import json

    from egc.cli import main

    from .conftest import tiny_train_argv

    run = tmp_path / "r"
    argv = tiny_train_argv(run, tiny_npz, 100000, "--stop-after", "0.005")  # 0.3 s of a 100,000-step budget
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 1 <= first["step"] < 100000 and first["budget_left"] and not first["interrupted"]
    assert load_checkpoint(run).step == first["step"]
    with open(run / "log.csv") as f:
        lr = [float(r["lr"]) for r in csv.DictReader(f) if r.get("lr")]
    cfg = load_config(run / "config.yaml")
    assert lr[-1] > 0.99 * cfg.train.lr  # cosine over 100,000 steps, not over this piece
    assert main(argv + ["--resume"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["step"] > first["step"] and second["budget_left"]
    with pytest.raises(SystemExit) as bad:
        main(argv[:-2] + ["--stop-after", "0"])
    assert bad.value.code == 2 and "--stop-after: expected a number > 0" in capsys.readouterr().err
