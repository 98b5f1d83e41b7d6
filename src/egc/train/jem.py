"""JEM's training state: the persistent replay buffer of SGLD samples, and the loss that uses it
(model.kind "jem", config section ``jem``). The loss itself is the pure ``diffusion.losses.jem_loss``;
the chain is ``egc.sgld.sgld``. The buffer is saved in every checkpoint (tensors ``jem.*``) and restored
by --resume and by a rollback, so a resumed run continues bit-for-bit.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import JEMConfig, RunConfig
from ..device import randn_from
from ..diffusion.energy import EnergyModel
from ..diffusion.losses import LossParts, jem_loss
from ..errors import EgcError
from ..sgld import sgld


class InitDistribution:
    """Where SGLD chains start: uniform on [-1, 1] (JEM), or per-class Gaussians of the training images
    (JEM++'s informative initialisation; cag.stats.PixelPrior, mean and 64 principal directions)."""

    def __init__(self, kind: str, shape: tuple[int, int, int], images: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
        self.kind, self.shape, self.prior = kind, shape, None
        if kind == "data":
            from ..cag.stats import PixelPrior

            if images is None or labels is None:
                raise EgcError("jem.init data needs the training images")
            self.prior = PixelPrior.fit((images.float() + 1) / 2, labels)
            self.classes = int(labels.max()) + 1

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n starting points [n, C, H, W] in [-1, 1]."""
        if self.prior is None:
            return torch.rand((n, *self.shape), generator=gen) * 2 - 1
        cls = torch.randint(0, self.classes, (n,), generator=gen)
        out = torch.empty((n, *self.shape))
        for c in cls.unique().tolist():
            rows = (cls == c).nonzero().flatten()
            out[rows] = self.prior.sample(c, rows.numel(), gen) * 2 - 1
        return out


class ReplayBuffer:
    """A fixed-size store of past SGLD samples [N, C, H, W] (on the CPU)."""

    def __init__(self, size: int, init: InitDistribution, gen: torch.Generator) -> None:
        self.init = init
        self.x = init.draw(size, gen)

    def draw(self, b: int, reinit: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices [b], starts [b, C, H, W]): b stored samples, a share ``reinit`` of them restarted."""
        idx = torch.randint(0, self.x.shape[0], (b,), generator=gen)
        start = self.x[idx].clone()
        fresh = torch.rand(b, generator=gen) < reinit
        if bool(fresh.any()):
            start[fresh] = self.init.draw(int(fresh.sum()), gen)
        return idx, start

    def put(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        self.x[idx] = x.detach().to(self.x.device, self.x.dtype)


class JEMLoss:
    """The shared loss signature (em, lcfg, x0, y, gen, shard) around jem_loss: draws a batch from the
    buffer, runs SGLD on the current network's clean-token logits (``em.logits``), puts the samples back,
    returns the loss."""

    def __init__(self, cfg: RunConfig, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> None:
        self.jc: JEMConfig = cfg.jem
        shape = (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
        init = InitDistribution(self.jc.init, shape, images, labels)
        self.buffer = ReplayBuffer(self.jc.buffer_size, init, gen)

    def __call__(self, em: EnergyModel, lcfg: Any, x0: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                 shard: tuple[int, int] = (0, 1), **_: Any) -> LossParts:
        if shard[1] != 1:
            raise EgcError("model.kind jem trains in one process (its replay buffer is not shared between processes)")
        jc = self.jc
        if jc.data_noise > 0:  # JEM trains on slightly noisy data (both terms)
            x0 = x0 + jc.data_noise * randn_from(x0, gen)
        idx, start = self.buffer.draw(x0.shape[0], jc.reinit, gen)
        x_sgld = sgld(em.logits, start.to(x0.device), jc.sgld_steps, jc.sgld_step_size, jc.sgld_noise, jc.sgld_clip, gen=gen)
        self.buffer.put(idx, x_sgld)
        return jem_loss(em, lcfg, x0, y, x_sgld, jc.energy_weight, jc.diverge_at)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"buffer": self.buffer.x}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if "buffer" not in sd or tuple(sd["buffer"].shape) != tuple(self.buffer.x.shape):
            raise EgcError(f"checkpoint's jem replay buffer is missing or not of shape {list(self.buffer.x.shape)}")
        self.buffer.x = sd["buffer"].clone()
