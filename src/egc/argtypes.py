"""Argument types of every command line (``egc`` and its subcommands): one rule each, one-line errors
that argparse prints as ``egc: error: argument --flag: ...``. No torch here: the parsers build fast."""

from __future__ import annotations

import argparse
import math

from .config import parse_guidance_interval
from .errors import ConfigError


def _int_at_least(s: str, low: int, what: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got '{s}'") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
    return v


def positive_int(s: str) -> int:
    return _int_at_least(s, 1, "a positive integer")


def nonneg_int(s: str) -> int:
    return _int_at_least(s, 0, "an integer >= 0")


def nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{s}'") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s}")
    return v


def positive_float(s: str) -> float:
    v = nonneg_float(s)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return v


def interval(s: str) -> tuple[float, float]:
    """LO,HI with 0 <= LO <= HI <= 1 (a guidance interval in fractions t / T of the noise schedule)."""
    try:
        return parse_guidance_interval(s, "LO,HI")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
