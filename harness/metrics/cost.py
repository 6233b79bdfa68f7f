"""Cost of a run: MACs (from the engine's report), latency and peak memory (docs/evaluation.md#latency).

Latency is the median of timed repeats after untimed warm-up runs; :func:`interleaved` times several
arms in ABBA order so that drifting machine load hits them alike. On CUDA the timer synchronises before
starting and after stopping.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the call minus the allocation before it
(the tensors the call itself allocated at its peak). On CPU, the growth of the process's peak resident
set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` before the call): real memory touched,
including the allocator's and other threads' — tracemalloc would miss torch's tensors, which are not
allocated through Python. glibc keeps freed blocks resident for reuse (its mmap threshold grows with
every large free), so after a warm-up run the call would reuse resident pages and read ≈ 0: ``malloc_trim``
hands the free pages back to the OS first, and the call's touches show up in the peak again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def macs(report: dict) -> dict[str, float]:
    """The MAC counts of ``handle.report()`` (per generated image, whole run; docs/accounting.md) as flat metrics."""
    return {
        "macs": report["macs_cfg_not_counted"],
        "macs_cfg_counted": report["macs_cfg_counted"],
        "macs_attention": report["macs_attention_cfg_not_counted"],
        "macs_attention_cfg_counted": report["macs_attention_cfg_counted"],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: str | torch.device = "cpu") -> float:
    """Seconds of one call of ``fn`` (synchronised on CUDA; the garbage collector paused)."""
    device = torch.device(device)
    gc.disable()
    try:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start
    finally:
        gc.enable()


def _summary(seconds: list[float]) -> dict:
    """Median, min, max and count of the timed calls, and the calls themselves (``seconds``, in order)."""
    return {
        "latency_median": statistics.median(seconds),
        "latency_min": min(seconds),
        "latency_max": max(seconds),
        "latency_n": len(seconds),
        "seconds": list(seconds),
    }


def latency(
    fn: Callable[[], object], *, repeats: int = 5, warmup: int = 3, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Median (and min/max) seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        fn()
    gc.collect()  # once, so that earlier garbage is not collected inside a timed call
    return _summary([timed(fn, device) for _ in range(repeats)])


def interleaved(
    arms: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1, device: str | torch.device = "cpu"
) -> dict[str, dict[str, float]]:
    """:func:`latency` of every arm, timed in ABBA order (A B, B A, A B, ...) after warm-up of each."""
    for fn in arms.values():
        for _ in range(warmup):
            fn()
    gc.collect()
    names = list(arms)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds[name].append(timed(arms[name], device))
    return {name: _summary(s) for name, s in seconds.items()}


_STATUS = Path("/proc/self/status")


def _vm_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in {_STATUS}")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None on other C libraries, where nothing is trimmed)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> dict[str, float]:
    """Peak memory of one call of ``fn`` in bytes (``peak_memory_bytes``), measured as the module says."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {"peak_memory_bytes": float(torch.cuda.max_memory_allocated(device) - before)}
    gc.collect()
    if _malloc_trim() is not None:
        _malloc_trim()(0)  # free heap pages back to the OS, so reusing them counts again
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _vm_kib("VmRSS")
    except OSError as err:
        raise OSError(f"peak CPU memory needs Linux /proc (VmHWM reset via /proc/self/clear_refs): {err}") from None
    fn()
    return {"peak_memory_bytes": float(max(_vm_kib("VmHWM") - before, 0) * 1024)}
