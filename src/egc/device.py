"""Where and how a network runs: the device and precision policy in one place (inference, training, the
web app and CaG all ask here). "auto" choices depend on the host: bf16 only where the CPU multiplies it
natively, channels_last only with AMX tiles (BENCHMARKS.md 1 measures both per host kind)."""

from __future__ import annotations

import torch

from .config import PRECISIONS
from .errors import EgcError


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" (cuda when available, else cpu) | "cpu" | "cuda[:N]" -> a torch.device; a cuda request
    on a machine without CUDA is a one-line error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise EgcError(f"device must be auto, cpu or cuda, got '{device}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EgcError("device cuda requested but this torch build sees no CUDA GPU (use --device cpu or auto)")
    if dev.type not in ("cpu", "cuda", "meta"):
        raise EgcError(f"device must be auto, cpu or cuda, got '{device}'")
    return dev


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX tiles). Without it oneDNN
    emulates bf16 and autocast runs slower than fp32, so "auto" must not pick it there."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume nothing
        return False


def resolve_channels_last(setting: str, device: str | torch.device = "cpu") -> bool:
    """train.channels_last ("auto" | "true" | "false") -> whether the training step runs channels_last.
    "auto" is True on CPUs with AMX tiles only, where it measured 1.74x vs 1.21x over fp32 (issue 17);
    on AVX-512 BF16 hosts it measured 1.0x, and on GPUs it was not measured."""
    if setting != "auto":
        return setting == "true"
    if torch.device(device).type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """"auto" | "bf16" | "fp32" -> the precision a network runs in on ``device`` (training and
    inference alike). "auto" is bf16 where bf16 is native (CPUs with AVX-512 BF16 or AMX; CUDA devices
    that support it), else fp32: on such a CPU bf16 classified the shipped fp32-trained model at equal
    accuracy and ECE 1.9x faster, and sampled at equal FD and conditional accuracy 1.7x faster
    (BENCHMARKS.md 3); on an AVX2-only CPU emulated bf16 made a training step 13x slower."""
    if precision not in PRECISIONS:
        raise EgcError(f"precision must be auto, bf16 or fp32, got '{precision}'")
    if precision == "auto":
        if torch.device(device).type == "cuda":
            return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if native_bf16() else "fp32"
    return precision


def randn_from(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on gen's device (CPU when gen is None) in x's dtype, then
    moved to x's device: a seed gives the same noise whatever device the network runs on."""
    dev = gen.device if gen is not None else torch.device("cpu")
    return torch.randn(x.shape, generator=gen, dtype=x.dtype, device=dev).to(x.device)
