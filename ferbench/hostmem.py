"""Host-memory allocator setting for training on the CPU: keep freed large blocks for reuse (glibc).

glibc serves every allocation above its mmap threshold (adaptive, at most 32 MiB on 64-bit Linux)
with fresh pages from mmap and hands them back with munmap when the tensor is freed, so each step
page-faults every large tensor in again: a 64 x 3 x 224 x 224 float batch is 38.5 MB, ResNet-18's
first activation at 224 and batch 64 is 205 MB. Raising the mmap and trim thresholds keeps freed
blocks in the heap, which is what preloading jemalloc or tcmalloc buys PyTorch CPU training, without
the preload. Measured here (1 thread): the uint8 -> float conversion of a 64 x 3 x 224 x 224 batch
took 24.7 ms with glibc's defaults and 2.5 ms with this setting. The price: a process keeps its
peak heap size until it exits. `FERBENCH_MALLOC=system` leaves glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
THRESHOLD = 1 << 30  # 1 GiB: allocations below it come from the heap, freed memory below it stays mapped
_applied: str | None = None


def keep_freed_memory() -> str:
    """Apply once per process; returns what was done, for the run record's environment."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> str:
    if os.environ.get("FERBENCH_MALLOC", "").lower() == "system":
        return "system defaults (FERBENCH_MALLOC=system)"
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return "system defaults (no glibc mallopt)"
    if mallopt(_M_MMAP_THRESHOLD, THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, THRESHOLD) != 1:
        return "system defaults (mallopt refused)"
    return "glibc, mmap and trim thresholds 1 GiB (freed blocks reused)"
