"""An infinite, seeded, resumable iterator of random training batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from egc.data.dataset import ImageDataset, to_model_range
from egc.errors import ConfigError, DataError


class BatchLoader:
    """Yields ``(x, y)`` forever: x float32 ``[B, C, H, W]`` in [-1, 1], y int64 ``[B]``.

    Each epoch visits the data in a fresh random permutation. All randomness of an epoch (the
    permutation and one flip coin per position) is drawn from one ``torch.Generator`` at the
    start of the epoch, so the generator state saved *at that moment* plus the position within
    the epoch is all that is needed to resume exactly. Flip coins are drawn even when
    ``flip=False`` so the visiting order does not depend on the flip setting.

    The data is gathered in memory with one index op per batch; at these data set sizes a
    multi-process DataLoader would cost more in start-up and copying than it saves.
    """

    def __init__(
        self, ds: ImageDataset, batch_size: int, seed: int, flip: bool, drop_last: bool = True
    ) -> None:
        n = len(ds)
        if n == 0:
            raise DataError(f"{ds.name}: the data set is empty; nothing to load")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size > n:
            raise ConfigError(
                f"batch_size {batch_size} exceeds the {n} images of {ds.name} with drop_last=True; "
                "lower the batch size"
            )
        self.ds = ds
        self.batch_size = batch_size
        self.seed = seed
        self.flip = flip
        self.drop_last = drop_last
        self._gen = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.position = 0
        self._start_epoch()

    @property
    def batches_per_epoch(self) -> int:
        n, b = len(self.ds), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _start_epoch(self) -> None:
        # Remember the state *before* this epoch's draws: replaying from it regenerates them.
        self._epoch_state = self._gen.get_state()
        n = len(self.ds)
        self._perm = torch.randperm(n, generator=self._gen)
        self._flips = torch.rand(n, generator=self._gen) < 0.5

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.ds)
        remaining = n - self.position
        if remaining == 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch += 1
            self.position = 0
            self._start_epoch()
        stop = min(self.position + self.batch_size, n)
        idx = self._perm[self.position : stop]
        images = self.ds.images[idx]  # uint8 [B, H, W, C]
        if self.flip:
            # Flip the uint8 NHWC batch along W before conversion: cheaper than on floats.
            flips = self._flips[self.position : stop]
            images = torch.where(flips[:, None, None, None], images.flip(2), images)
        self.position = stop
        return to_model_range(images), self.ds.labels[idx]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the exact batch sequence (plain types + one tensor)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "generator_state": self._epoch_state.clone(),  # uint8 [K], state at epoch start
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_examples": len(self.ds),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the next batch equals the one the saved loader would
        have produced. ``generator_state`` may be a uint8 tensor or a list of ints (JSON)."""
        for key, mine in (("batch_size", self.batch_size), ("num_examples", len(self.ds))):
            # A different batch size or data set would silently give a different sequence.
            if key in state and int(state[key]) != mine:
                raise ConfigError(f"loader state has {key}={state[key]} but this run uses {mine}")
        gen_state = torch.as_tensor(state["generator_state"], dtype=torch.uint8)
        position = int(state["position"])
        if not 0 <= position <= len(self.ds):
            raise ConfigError(f"loader state position {position} outside 0..{len(self.ds)}")
        self._gen.set_state(gen_state.cpu())
        self._start_epoch()  # regenerates this epoch's permutation and flips
        self.epoch = int(state["epoch"])
        self.position = position
