"""Crash safety of ``egc train``: SIGKILL at seeded random moments (one of them in the middle of a
checkpoint write), SIGTERM and SIGINT, each followed by ``--resume``, must end with exactly the
weights of an uninterrupted run, and no half-written or temporary file may ever pass for a checkpoint.

What an interrupted run may differ in, and why it does not here:
- steps done after the last checkpoint are lost at a kill and redone on resume from the same saved
  RNG and data-order state (ckpt_every=1 only keeps the lost work small; any ckpt_every is exact);
- log.csv may hold rows of those lost steps (and a torn last line): resume drops rows after the
  checkpoint's step, so the log equals the uninterrupted one;
- a kill during a write leaves ".step-N.safetensors.tmpPID" (never matched as a checkpoint);
  the next run deletes it;
- ``elapsed_s`` (wall clock) differs, which matters only to a --minutes budget, not to --steps.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from egc.checkpoint import latest_in, load_checkpoint
from egc.config import load_config
from egc.train.loop import train

from .conftest import TINY

STEPS = 30
EXTRA = ["train.ckpt_every=1"]
# The interruption schedule; delays are drawn from a seeded RNG.
PLAN = ["kill_startup", "kill_train", "sigterm", "kill_ckpt_write", "sigint", "kill_train"]


def _cmd(run: Path, data: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "egc.cli", "train", "--out", str(run), "--data", f"npz:{data}", "--steps", str(STEPS), "--quiet"]
    for s in TINY + EXTRA:
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else [])


def _logged_step(run: Path) -> int:
    """The step of the last complete line of log.csv (-1 before the first)."""
    try:
        lines = (run / "log.csv").read_text().splitlines()
    except OSError:
        return -1
    for line in reversed(lines[1:]):
        try:
            return int(line.split(",", 1)[0])
        except ValueError:
            continue
    return -1


def _wait(cond, proc: subprocess.Popen, timeout: float = 90.0) -> bool:
    """Poll ``cond`` until it holds (True) or the process ends first (False)."""
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the training process")


def _sleep_within(delay: float, run: Path, limit_step: int, proc: subprocess.Popen) -> bool:
    """Sleep ``delay`` seconds, but stop early once a checkpoint of step >= ``limit_step`` exists or the
    process has ended. The cap keeps every interruption within a few steps however fast the machine is,
    so the whole plan always fits in STEPS (on a fast CI host an uncapped 3 s start-up delay reached
    step 22 of 30 and the later kill points found nothing left to interrupt). Returns whether it runs."""
    end = time.time() + delay
    while time.time() < end and proc.poll() is None:
        q = latest_in(run)
        if q is not None and load_step(q) >= limit_step:
            break
        time.sleep(0.005)
    return proc.poll() is None


def _tmp_files(run: Path) -> list[Path]:
    return [q for d in (run, run / "checkpoints", run / "samples") if d.is_dir() for q in d.iterdir() if ".tmp" in q.name]


def _check_disk(run: Path) -> int:
    """Every step-N.safetensors loads and is finite; returns how many there are."""
    files = sorted((run / "checkpoints").glob("step-*.safetensors")) if (run / "checkpoints").is_dir() else []
    for f in files:
        ck = load_checkpoint(f)  # raises CheckpointError on a half-written or foreign file
        assert ck.step == int(f.stem.split("-")[1])
        assert all(torch.isfinite(v).all() for v in ck.tensors.values() if v.is_floating_point()), f
    newest = latest_in(run)
    assert (newest is None) == (not files) and (newest is None or newest.name.startswith("step-")), newest
    return len(files)


def load_step(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _losses(run: Path) -> list[tuple[int, str]]:
    with open(run / "log.csv") as f:
        return [(int(r["step"]), r["total"]) for r in csv.DictReader(f)]


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, tiny_npz):
    ref = train(load_config(None, TINY + EXTRA + [f"data.name=npz:{tiny_npz}", f"train.steps={STEPS}"]), tmp_path / "ref", quiet=True)
    run = tmp_path / "run"
    rng = random.Random(20261122)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tried: list[str] = []
    survived = 0
    during_write = 0
    summary = None
    for attempt in range(len(PLAN) + 1):
        mode = PLAN[attempt] if attempt < len(PLAN) else "finish"
        start = latest_in(run)
        start_step = load_checkpoint(start).step if start else 0
        penv = {**env, "EGC_TEST_SLOW_CKPT": "1.5"} if mode == "kill_ckpt_write" else env
        out, err = tmp_path / f"out{attempt}.txt", tmp_path / f"err{attempt}.txt"
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen(_cmd(run, tiny_npz, resume=start is not None), stdout=fo, stderr=fe, env=penv)
        try:
            if mode == "kill_startup":  # anywhere from interpreter start-up to the first steps
                alive = _sleep_within(rng.uniform(0.2, 3.0), run, start_step + 2, proc)
            elif mode == "kill_ckpt_write":  # the temporary file exists, the rename has not happened
                alive = _wait(lambda: any(q.name.endswith(f".tmp{proc.pid}") for q in (run / "checkpoints").glob(".step-*")), proc)
                time.sleep(rng.uniform(0.0, 0.5))
            elif mode != "finish":  # after at least one new checkpoint of this process, at a random moment
                alive = _wait(lambda: (q := latest_in(run)) is not None and load_step(q) > start_step, proc)
                alive = alive and _sleep_within(rng.uniform(0.0, 0.3), run, start_step + 3, proc)
            sig = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT}.get(mode, signal.SIGKILL)
            if mode != "finish" and alive and proc.poll() is None:
                proc.send_signal(sig)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr = err.read_text()
        assert "Traceback" not in stderr, stderr
        s = json.loads(out.read_text().strip().splitlines()[-1]) if rc == 0 else None
        hit = mode != "finish" and (rc == -sig if sig == signal.SIGKILL else s is not None and s["interrupted"])
        if hit:
            tried.append(mode)
        if hit and sig != signal.SIGKILL:
            # A clean stop: exit 0, a summary saying so, and a checkpoint of the step reached.
            assert Path(s["checkpoint"]).is_file() and load_checkpoint(s["checkpoint"]).step == s["step"] > start_step, s
            assert not _tmp_files(run), _tmp_files(run)
        elif hit and mode == "kill_ckpt_write":
            left = [q for q in (run / "checkpoints").glob(".step-*") if q.name.endswith(f".tmp{proc.pid}")]
            assert left, "the kill should have hit the pause between the temporary file and the rename"
            during_write += 1
        elif not hit:  # finished before the planned interruption (or the final run)
            assert rc == 0 and s is not None, f"{mode}: exit {rc}: {stderr}"
            summary = s
        _check_disk(run)
        if hit:
            survived += 1  # the disk is consistent; the final comparison fails the test if any kill did not survive
        print(f"{mode}: from step {start_step}, exit {rc}, {'interrupted' if hit else 'not interrupted'}, newest checkpoint {latest_in(run)}")
        if summary is not None and summary["step"] >= STEPS:
            break
    print(f"\nkill points tried: {len(tried)} ({', '.join(tried)}); survived: {survived}; killed mid-checkpoint-write: {during_write}")
    assert summary is not None and summary["step"] == STEPS and not summary["interrupted"], summary
    assert len(tried) == len(PLAN) and during_write == 1, tried
    assert not _tmp_files(run), _tmp_files(run)  # the resumed runs removed what the kills left
    a, b = load_checkpoint(ref["checkpoint"]), load_checkpoint(run)
    assert a.step == b.step == STEPS
    assert set(a.tensors) == set(b.tensors)
    differ = [k for k in a.tensors if not torch.equal(a.tensors[k], b.tensors[k])]
    assert not differ, differ  # weights, EMA, optimiser, RNG and data order: bit for bit
    assert a.meta["ema_updates"] == b.meta["ema_updates"] and a.meta["loader"] == b.meta["loader"]
    assert _losses(tmp_path / "ref") == _losses(run)  # each step logged once, with the same loss


def test_resume_is_exact_with_dropout_and_sample_grids(tmp_path, tiny_overrides):
    """The grid drawn at each checkpoint builds a network (global RNG); that must not shift the dropout
    masks of later steps, or a run resumed from a checkpoint would differ from one that went on."""
    ov = tiny_overrides + ["train.steps=6", "model.dropout=0.3", "train.ckpt_every=2"]
    full = train(load_config(None, ov), tmp_path / "full", quiet=True)
    train(load_config(None, ov), tmp_path / "part", quiet=True, stop_at_step=4)
    train(load_config(None, ov), tmp_path / "part", resume=True, quiet=True)
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(tmp_path / "part")
    assert a.step == b.step == 6
    assert not [k for k in a.tensors if not torch.equal(a.tensors[k], b.tensors[k])]


def test_stale_temporary_files_of_other_writers_are_removed(tmp_path):
    """Ours (".NAME.tmpPID" of another pid) and safetensors' own staging files (".tmpXXXXXX") go;
    real checkpoints and our own pid's file stay."""
    import os

    from egc.checkpoint import remove_stale_tmp

    keep = [tmp_path / "step-0000001.safetensors", tmp_path / f".step-0000002.safetensors.tmp{os.getpid()}"]
    stale = [tmp_path / ".step-0000002.safetensors.tmp999999", tmp_path / ".tmpgL2UdO"]
    for p in keep + stale:
        p.write_bytes(b"x")
    assert sorted(remove_stale_tmp(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_sigterm_during_the_final_checkpoint_still_finishes(tmp_path, tiny_npz):
    """A stop request while the last checkpoint is being written must not kill the run between the
    checkpoint and summary.json (the signal handler stays installed until both are written)."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "egc.cli", "train", "--out", str(run), "--data", f"npz:{tiny_npz}", "--steps", "3", "--quiet"]
    for s in TINY + ["train.ckpt_every=1000"]:  # the only checkpoint is the final one
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EGC_TEST_SLOW_CKPT": "1.0"}
    out = tmp_path / "out.txt"
    with open(out, "w") as fo:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert _wait(lambda: any(q.name.endswith(f".tmp{proc.pid}") for q in (run / "checkpoints").glob(".step-*")), proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (proc.returncode, stderr)
    summary = json.loads(out.read_text().strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["interrupted"]
    assert json.loads((run / "summary.json").read_text())["step"] == 3
    assert load_checkpoint(latest_in(run)).step == 3
