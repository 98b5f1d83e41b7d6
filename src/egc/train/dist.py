"""Data-parallel training across processes (torchrun): one code path for CPU (gloo) and GPU (nccl).

``torchrun --nproc_per_node N -m egc.cli train ...`` starts N copies of the training loop with
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the environment. :func:`start` joins
them into one process group (nothing happens for a single process) and :class:`Dist` holds what the
loop needs:

- every rank reads the same *global* batch (``train.batch_size`` x world size) from the same seeded
  loader and draws the same global noise, then computes the loss on its rows rank::world
  (``egc.diffusion.losses``); DistributedDataParallel averages the gradients, so N processes take
  the same optimiser steps as one process with the global batch (up to float rounding);
- decisions that depend on a clock or a signal (time budget, time-based checkpoints, SIGINT/SIGTERM)
  are agreed once per step in one small all-reduce: rank 0's clock rules, any rank's signal stops all;
- only rank 0 writes files; the others wait at a barrier while it checkpoints.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..device import resolve_device
from ..errors import EgcError


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise EgcError("WORLD_SIZE / RANK / LOCAL_RANK must be integers (set by torchrun)") from None
    return rank, max(world, 1), local


def rank_device(kind: str, local_rank: int = 0) -> torch.device:
    """train.device ("auto" | "cpu" | "cuda") -> the device of this process: the policy of
    :func:`egc.device.resolve_device`, then local rank r's own GPU (cuda:r) under torchrun."""
    if kind not in ("auto", "cpu", "cuda"):
        raise EgcError(f"device must be auto, cpu or cuda, got '{kind}'")
    dev = resolve_device(kind)
    if dev.type != "cuda":
        return dev
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise EgcError(f"local rank {local_rank} has no GPU: this machine shows {n} (lower --nproc_per_node)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we initialised the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world

    def wrap(self, net: nn.Module) -> nn.Module:
        """The module the loss calls: DDP around ``net`` when there are several processes.

        Checked against one process (tests/test_distributed.py): DDP's gradient hooks sit on the
        parameters' accumulators, which the loss's input gradient (autograd.grad w.r.t. x_t with
        create_graph) does not touch, so double backprop and the extra clean-image forward are
        reduced once, in the final backward."""
        if self.world == 1:
            return net
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # bf16 gives 1x1-conv weight grads [O, I, 1, 1] strides that differ only on the size-1 dims:
        # the same layout, but DDP warns about it once per process.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)

    def agree(self, elapsed: float, due: bool, stop: bool, scalars: dict[str, float]) -> tuple[float, bool, bool, dict[str, float]]:
        """One all-reduce per step: rank 0's elapsed time and checkpoint-due flag, whether any rank
        was asked to stop, and the loss scalars averaged over ranks (the global batch's values)."""
        if self.world == 1:
            return elapsed, due, stop, scalars
        import torch.distributed as dist

        main = 1.0 if self.is_main else 0.0
        v = torch.tensor([elapsed * main, float(due) * main, float(stop), *(s / self.world for s in scalars.values())],
                         dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(v)
        out = v.tolist()
        return out[0], out[1] > 0.5, out[2] > 0.5, dict(zip(scalars, out[3:]))

    def all_true(self, flag: bool | torch.Tensor) -> bool:
        """True on every rank iff ``flag`` is true on every rank (e.g. "my loss is finite")."""
        ok = bool(flag)
        if self.world == 1:
            return ok
        import torch.distributed as dist

        v = torch.tensor([0.0 if ok else 1.0], device=self._comm_device())
        dist.all_reduce(v)
        return v.item() == 0

    def from_main(self, flag: bool) -> bool:
        """Rank 0's value of ``flag`` on every rank."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        v = torch.tensor([float(flag)], device=self._comm_device())
        dist.broadcast(v, src=0)
        return v.item() > 0.5

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")  # nccl needs CUDA tensors


def start(device: str = "auto", timeout_minutes: float = 60.0) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA).

    The timeout bounds how long ranks wait for each other, e.g. at a barrier while rank 0 writes a
    checkpoint and draws its sample grid."""
    rank, world, local = env_world()
    dev = rank_device(device, local)
    if world == 1:
        return Dist(device=dev)
    import torch.distributed as dist

    if not dist.is_available():
        raise EgcError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    owns = False
    if not dist.is_initialized():
        for k in ("MASTER_ADDR", "MASTER_PORT"):
            if k not in os.environ:
                raise EgcError(f"WORLD_SIZE={world} but {k} is not set: launch with torchrun (see docs/ddp.md)")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=timeout_minutes))
        owns = True
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise EgcError(f"process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match RANK={rank} WORLD_SIZE={world}")
    return Dist(rank, world, local, dev, owns)
