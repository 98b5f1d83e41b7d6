"""What machine a figure was measured on: recorded beside every benchmark and evaluation figure."""

from __future__ import annotations

import platform

# The instruction-set tiers that change which precision and memory format are fastest (BENCHMARKS.md's host
# legend), best first: the first one the CPU has names its kind.
_TIERS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2"))


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; ("", empty) where there is none."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def cpu_tier() -> str:
    """The host's instruction-set tier: "AMX" | "AVX512-BF16" | "AVX512" | "AVX2" | "other"."""
    flags = _cpuinfo()[1]
    return next((label for flag, label in _TIERS if flag in flags), "other")


def cpu_name() -> str:
    """The CPU model with its tier, e.g. "AMD EPYC [AVX2]" (the model name alone does not say whether bf16 pays)."""
    name = _cpuinfo()[0] or platform.processor() or "unknown"
    return f"{name} [{cpu_tier()}]"
