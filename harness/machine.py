"""What a measurement ran on, in one line: stored with every run, printed with every benchmark."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.lru_cache(maxsize=1)
def describe() -> str:
    """e.g. ``AMD EPYC 7B13 ×2 cores, no GPU, torch 2.14.1`` — enough to tell two machines' numbers apart."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_name()} ×{cores} cores, {gpu}, torch {torch.__version__}"
