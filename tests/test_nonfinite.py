"""Numerical faults in training: a NaN loss, an inf gradient or NaN weights (injected by wrapping the
loss) are skipped or rolled back (train.nonfinite), said in one stderr line and in log.csv, give a
one-line error when they keep coming, and never reach a checkpoint on disk."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from egc.checkpoint import load_checkpoint, save_checkpoint
from egc.cli import main
from egc.config import load_config
from egc.diffusion import losses
from egc.errors import CheckpointError, ConfigError, EgcError
from egc.train import loop
from egc.train.loop import lr_factor, train

from .conftest import tiny_train_argv

FAST = ["train.sample_n=0", "train.ckpt_every=2", "train.lr_schedule=constant"]


def _inject(monkeypatch, bad: set[int] | None = None, kind: str = "loss", after: int | None = None) -> list[int]:
    """Make loss call number n (1-based, counting retried steps too) non-finite when n is in ``bad``
    or n > ``after``: kind "loss" = NaN loss, "grad" = finite loss with an inf gradient, "poison" =
    NaN written into the weights (so every later loss is NaN until a rollback restores them)."""
    orig = losses.egc_loss
    calls = [0]

    def wrapped(em, lcfg, x, y, gen=None, shard=(0, 1)):
        parts = orig(em, lcfg, x, y, gen, shard=shard)
        calls[0] += 1
        n = calls[0]
        if (bad and n in bad) or (after is not None and n > after):
            p = next(em.net.parameters())
            if kind == "grad":
                s = p.float().sum()
                parts.total = parts.total + torch.sqrt(s - s.detach())  # adds 0, d/dp = inf
            else:
                if kind == "poison":
                    with torch.no_grad():
                        p.fill_(float("nan"))
                parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(losses, "egc_loss", wrapped)
    return calls


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def _all_finite_on_disk(run: Path) -> int:
    files = list((run / "checkpoints").glob("step-*.safetensors"))
    for f in files:
        ck = load_checkpoint(f)
        assert all(torch.isfinite(v).all() for v in ck.tensors.values() if v.is_floating_point()), f
    return len(files)


def test_skip_mode_skips_nan_loss_and_inf_gradient(tmp_path, tiny_overrides, monkeypatch, capsys):
    _inject(monkeypatch, bad={3}, kind="loss")
    s = train(load_config(None, tiny_overrides + FAST + ["train.steps=6"]), tmp_path / "r", quiet=True)
    monkeypatch.undo()
    _inject(monkeypatch, bad={2}, kind="grad")
    s2 = train(load_config(None, tiny_overrides + FAST + ["train.steps=8"]), tmp_path / "r", resume=True, quiet=True)
    err = capsys.readouterr().err
    assert "step 2: non-finite loss, step skipped (1 so far)" in err
    assert "step 7: non-finite gradient, step skipped (1 so far)" in err
    assert s["step"] == 6 and s["skipped_steps"] == 1 and s2["step"] == 8 and s2["skipped_steps"] == 1
    rows = _rows(tmp_path / "r")
    assert [r["step"] for r in rows if r["nonfinite"]] == ["2", "7"]
    assert [int(r["step"]) for r in rows if r["total"]] == list(range(1, 9))  # every step once, columns kept
    assert _all_finite_on_disk(tmp_path / "r") >= 1


def test_rollback_reloads_the_last_checkpoint_with_a_lower_lr(tmp_path, tiny_overrides, monkeypatch, capsys):
    cfg = load_config(None, tiny_overrides + FAST + ["train.steps=8", "train.nonfinite=rollback", "train.rollback_lr_factor=0.5"])
    _inject(monkeypatch, bad={6}, kind="poison")  # call 6 = step 5 -> 6: NaN weights and loss
    s = train(cfg, tmp_path / "r", quiet=True)
    err = capsys.readouterr().err
    assert "step 5: non-finite loss: rolled back to step-0000004.safetensors (step 4), learning rate x0.5" in err, err
    assert s["step"] == 8 and s["rollbacks"] == 1 and s["lr_scale"] == 0.5
    rows = _rows(tmp_path / "r")
    event = [r for r in rows if r["nonfinite"]]
    assert len(event) == 1 and event[0]["step"] == "5" and float(event[0]["lr_scale"]) == 0.5
    # Steps 5.. are redone at half the learning rate.
    lrs = {int(r["step"]): float(r["lr"]) for r in rows if r["total"]}
    assert lrs[4] == pytest.approx(cfg.train.lr * lr_factor(cfg, 3, 0))
    assert lrs[8] == pytest.approx(0.5 * cfg.train.lr * lr_factor(cfg, 7, 0))
    ck = load_checkpoint(s["checkpoint"])
    assert ck.meta["lr_scale"] == 0.5 and _all_finite_on_disk(tmp_path / "r") >= 1
    # The lower learning rate survives a resume.
    monkeypatch.undo()
    s2 = train(load_config(None, tiny_overrides + FAST + ["train.steps=9", "train.nonfinite=rollback"]), tmp_path / "r", resume=True, quiet=True)
    assert s2["step"] == 9 and s2["lr_scale"] == 0.5


def test_rollback_before_the_first_checkpoint_returns_to_step_0(tmp_path, tiny_overrides, monkeypatch, capsys):
    _inject(monkeypatch, bad={1}, kind="grad")
    s = train(load_config(None, tiny_overrides + FAST + ["train.steps=3", "train.nonfinite=rollback"]), tmp_path / "r", quiet=True)
    assert "rolled back to step-0000000.safetensors (step 0)" in capsys.readouterr().err
    assert s["step"] == 3 and s["rollbacks"] == 1


def test_rollbacks_that_keep_failing_give_a_one_line_error(tmp_path, tiny_npz, monkeypatch, capsys):
    calls = _inject(monkeypatch, after=4, kind="loss")  # from step 4 on, every loss is NaN
    args = tiny_train_argv(tmp_path / "r", tiny_npz, 20)
    for s in FAST + ["train.nonfinite=rollback", "train.max_nonfinite=3"]:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert sum("rolled back to step-0000004.safetensors" in line for line in err) == 3
    assert err[-1].startswith("egc train: error: step 4: non-finite loss after 3 rollbacks in a row") and "giving up" in err[-1]
    assert calls[0] == 8  # 4 good steps, then 1 + 3 retried failures
    assert not any("Traceback" in line for line in err)
    assert _all_finite_on_disk(tmp_path / "r") >= 1
    assert load_checkpoint(tmp_path / "r").step == 4


def test_skip_mode_gives_up_on_nan_weights_without_writing_them(tmp_path, tiny_overrides, monkeypatch, capsys):
    _inject(monkeypatch, bad={5}, kind="poison")  # every later loss is NaN: skipping cannot recover
    with pytest.raises(EgcError, match=r"after 5 skipped steps in a row"):
        train(load_config(None, tiny_overrides + FAST + ["train.steps=20"]), tmp_path / "r", quiet=True)
    assert capsys.readouterr().err.count("step skipped") == 5
    assert _all_finite_on_disk(tmp_path / "r") == 2  # steps 2 and 4 (keep_ckpts=2); nothing after the poison


def test_nan_weights_are_never_written(tmp_path, tiny_overrides, monkeypatch):
    """If NaN reached the weights without a NaN loss (here: the EMA), the checkpoint write refuses and
    the previous checkpoint stays the newest, intact."""
    orig = loop.EMA.update

    def update(self, net):
        orig(self, net)
        if self.updates == 3:
            next(iter(self.shadow.values())).fill_(float("nan"))

    monkeypatch.setattr(loop.EMA, "update", update)
    with pytest.raises(CheckpointError, match=r"refusing to write .*step-0000004\.safetensors: tensor 'ema\..*' holds NaN"):
        train(load_config(None, tiny_overrides + FAST + ["train.steps=6"]), tmp_path / "r", quiet=True)
    assert _all_finite_on_disk(tmp_path / "r") == 1 and load_checkpoint(tmp_path / "r").step == 2
    assert not [q for q in (tmp_path / "r" / "checkpoints").iterdir() if not q.name.startswith("step-")]  # no temporary file


def test_save_checkpoint_refuses_nonfinite_and_keeps_the_old_file(tmp_path):
    cfg = load_config(None, ["model.size=tiny"])
    path = tmp_path / "step-0000001.safetensors"
    save_checkpoint(path, cfg, 1, {"model": {"w": torch.ones(3)}})
    before = path.read_bytes()
    for bad in ({"model": {"w": torch.tensor([1.0, float("nan")])}}, {"model": {"w": torch.ones(3)}, "opt": {"0.exp_avg": torch.tensor([float("inf")])}},
                {"ema": {"w": torch.tensor([float("-inf")], dtype=torch.bfloat16)}}):
        with pytest.raises(CheckpointError, match="NaN or inf"):
            save_checkpoint(path, cfg, 2, bad)
    assert path.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == [path.name]


def test_nonfinite_options_are_validated():
    with pytest.raises(ConfigError, match="train.nonfinite"):
        load_config(None, ["train.nonfinite=ignore"])
    with pytest.raises(ConfigError, match="rollback_lr_factor"):
        load_config(None, ["train.rollback_lr_factor=0"])
    with pytest.raises(ConfigError, match="max_nonfinite"):
        load_config(None, ["train.max_nonfinite=0"])
    assert json.loads(load_config(None, []).to_json())["train"]["nonfinite"] == "skip"
