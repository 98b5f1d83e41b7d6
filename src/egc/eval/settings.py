"""What ``egc eval`` is asked (:class:`EvalSettings`, the metric names) and what its metric steps share
while it runs (:class:`EvalContext`): the vocabulary of the runner (evaluate.py) and of every metric
group's module (accuracy.py, robustness.py, ood.py, generation.py, diffusion_classifier.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from egc.errors import EgcError

if TYPE_CHECKING:
    from egc.model import EGC

SCHEMA = "egc-eval/1"
METRICS = ("acc", "ece", "noisy_acc", "robust", "ood", "gen")
# Asked for by name only (not in "all"): dc = the diffusion classifier (Li et al.) read out of the model's
# conditional eps, at --dc-schedule, on the first --n-dc test images (hundreds of network evaluations an image).
OPT_IN_METRICS = ("dc",)
CLASSIFY_METRICS = ("acc", "ece", "noisy_acc", "robust", "ood")


@dataclass
class EvalSettings:
    """Everything that decides the numbers (stored in the JSON as ``settings``)."""

    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    data: str | None = None  # None: the data set the model was trained on
    data_root: str | None = None
    n_test: int | None = None  # None: the whole test set
    noise_t: list[int] = field(default_factory=lambda: [0, 100, 250, 500, 750])
    n_robust: int = 500
    eps_linf: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    eps_l2: list[float] = field(default_factory=lambda: [0.5, 1.5, 3.0])
    pgd_steps: int = 20
    restarts: int = 2
    sanity: bool = True
    sanity_n: int = 100
    square_queries: int = 500
    ood_sets: list[str] | None = None  # None: uniform, gaussian and every other installed data set
    n_samples: int = 1000
    dc_schedule: str = "K:5,3:10"  # the diffusion classifier's rounds KEEP:TRIALS (K = every class)
    n_dc: int = 100
    sampler: str | None = None  # None: the model's own sampling defaults (config sample.*), as egc sample
    steps: int | None = None
    eta: float | None = None  # DDIM's noise (None: the model's, with DDIM)
    guidance: float | None = None  # None: the model's recommended scale (sample.guidance)
    cfg: float | None = None  # classifier-free guidance; None: the model's recommended scale (sample.cfg)
    guidance_interval: tuple[float, float] | None = None  # (tmin, tmax) of t/T where guidance acts; None: the model's
    judge: str | None = None  # None: the default judge of the data set, if any
    inception: str | None = None  # pytorch-fid's Inception-v3 weights file: fid_inception, kid_inception
    batch_size: int = 250
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    out_dir: str | None = None
    quiet: bool = False


def parse_metrics(spec: str) -> list[str]:
    """``--metrics`` ("acc,ood", "all", aliases such as "accuracy") -> the metric names, in order, once each."""
    names = [p.strip().lower() for p in spec.split(",") if p.strip()]
    if not names:
        raise EgcError("--metrics: no metric given")
    if names == ["all"]:
        return list(METRICS)
    aliases = {"accuracy": "acc", "noisy": "noisy_acc", "noisy_accuracy": "noisy_acc", "generation": "gen", "ood_auroc": "ood"}
    out = []
    for n in names:
        n = aliases.get(n, n)
        if n not in METRICS + OPT_IN_METRICS:
            raise EgcError(f"--metrics: unknown metric '{n}' (choose from {', '.join(METRICS + OPT_IN_METRICS)} or all)")
        if n not in out:
            out.append(n)
    return out


@dataclass
class EvalContext:
    """What every metric step of ``run_eval`` reads (the model, the test images x in [-1, 1] and labels y,
    the settings) and writes (metrics, skipped reasons, artifacts, wall times)."""

    m: EGC
    s: EvalSettings
    checkpoint: str
    data_name: str
    x: torch.Tensor
    y: torch.Tensor
    out_dir: Path | None
    split_note: str = ""  # which images the test figures are on (a folder's held-out share, ...)
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    logits: torch.Tensor | None = None  # the clean logits [N, K] of x, once acc, ece or ood asked for them

    def wants(self, name: str) -> bool:
        return name in self.s.metrics and name not in self.skipped
