"""Data-parallel training: 2 processes (torchrun, gloo) take the same steps as 1 process on the same
global batches, and a checkpoint written by 2 processes resumes in 1."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from egc.checkpoint import load_checkpoint
from egc.config import load_config
from egc.diffusion.energy import EnergyModel
from egc.kinds import kind_of
from egc.diffusion.schedule import Schedule
from egc.errors import EgcError
from egc.nets import build_net
from egc.train.loop import train

from .conftest import TINY, make_npz

# fp32 and a constant learning rate, so a 3-step run resumed to 5 steps equals a 5-step run.
EXACT = TINY + ["train.precision=fp32", "train.lr_schedule=constant"]
PER_PROCESS, WORLD = 4, 2


def _gloo_problem() -> str | None:
    """Why a 2-process gloo group cannot run here, or None."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        return "this PyTorch build has no torch.distributed gloo backend"
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        dist.destroy_process_group()
    except Exception as e:  # no loopback TCP, sandboxed sockets, ...
        return f"cannot start a gloo process group on 127.0.0.1 in this sandbox ({type(e).__name__}: {e})"
    return None


def _weights(ck, prefixes=("model", "ema", "opt")) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ck.tensors.items() if k.split(".", 1)[0] in prefixes}


def _assert_same_weights(a, b) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:  # fp32: only the order of float additions differs (all-reduce vs one batch)
        torch.testing.assert_close(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-5, msg=k)


def _losses(run: Path) -> list[float]:
    with open(run / "log.csv") as f:
        return [float(r["total"]) for r in csv.DictReader(f) if r.get("total")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One 2-process run (3 steps, per-process batch 4) and one 1-process run (5 steps, batch 8,
    a checkpoint at step 3): the shared work of the tests below."""
    problem = _gloo_problem()
    if problem:
        pytest.skip(problem)
    root = tmp_path_factory.mktemp("ddp")
    data = make_npz(root / "tiny.npz")
    base = EXACT + [f"data.name=npz:{data}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), "-m", "egc.cli", "train",
           "--out", str(root / "two"), "--quiet", "--steps", "3", "--batch-size", str(PER_PROCESS), "--device", "cpu"]
    for item in base:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count('"run_dir"') == 1, proc.stdout  # one summary line: rank 0's
    train(load_config(None, base + [f"train.batch_size={PER_PROCESS * WORLD}", "train.steps=5", "train.ckpt_every=3"]), root / "one", quiet=True)
    return {"root": root, "two": root / "two", "one": root / "one", "data": data}


def test_two_processes_take_the_same_steps_as_one(runs):
    two = load_checkpoint(runs["two"])
    one = load_checkpoint(runs["one"] / "checkpoints" / "step-0000003.safetensors")
    assert two.step == one.step == 3 and two.meta["world_size"] == WORLD and one.meta["world_size"] == 1
    _assert_same_weights(one, two)
    assert two.meta["loader"] == one.meta["loader"]  # the same global data order
    # The logged losses are the global batch's (averaged over ranks), not rank 0's shard.
    assert _losses(runs["two"]) == pytest.approx(_losses(runs["one"])[:3], rel=1e-5, abs=1e-6)
    # Only rank 0 wrote: one checkpoint, no temporary files, one header in the log.
    files = sorted(p.relative_to(runs["two"]).as_posix() for p in runs["two"].rglob("*") if p.is_file() and "tb" not in p.parts)
    assert files == ["checkpoints/step-0000003.safetensors", "config.yaml", "log.csv", "samples/step-0000003.png", "summary.json"]
    assert (runs["two"] / "log.csv").read_text().count("step,") == 1


def test_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(runs["two"], run)
    cfg = load_config(run / "config.yaml", ["train.steps=5"])
    assert cfg.train.batch_size == PER_PROCESS
    with pytest.raises(EgcError, match=f"--batch-size {PER_PROCESS * WORLD}"):  # the global batch must stay the same
        train(cfg, run, resume=True, quiet=True)
    cfg.train.batch_size = PER_PROCESS * WORLD
    s = train(cfg, run, resume=True, quiet=True)
    assert s["step"] == 5
    _assert_same_weights(load_checkpoint(runs["one"]), load_checkpoint(run))


@pytest.mark.parametrize("kind", ["egc", "ddpm", "classifier"])
@pytest.mark.parametrize("clean_fraction", [0.25, 0.125])  # 0.125 of 8: one clean row, so one rank has none
def test_shard_losses_average_to_the_global_loss(kind, clean_fraction):
    """No processes needed: the mean over ranks of the shard losses and of their gradients is the
    one-process loss and gradient of the global batch (what DDP's gradient averaging relies on)."""
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3", f"model.kind={kind}",
                             f"loss.clean_fraction={clean_fraction}"])
    torch.manual_seed(0)
    net = build_net(cfg.model)
    with torch.no_grad():  # leave the zero-initialised start so every gradient is informative
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    em = EnergyModel(net, cfg.model, Schedule.make(cfg.diffusion.schedule, cfg.diffusion.steps))
    x, y = torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8) % 3

    def run(shard):
        net.zero_grad()
        parts = kind_of(kind).loss()(em, cfg.loss, x, y, torch.Generator().manual_seed(1), shard=shard)
        parts.total.backward()
        return parts.scalars(), [p.grad.clone() for p in net.parameters()]

    ref_scalars, ref_grads = run((0, 1))
    for world in (2, 4):
        shards = [run((r, world)) for r in range(world)]
        for k, v in ref_scalars.items():
            assert sum(s[k] for s, _ in shards) / world == pytest.approx(v, rel=1e-5, abs=1e-6), (world, k)
        for i, g in enumerate(ref_grads):
            torch.testing.assert_close(sum(gs[i] for _, gs in shards) / world, g, rtol=1e-4, atol=1e-6)
