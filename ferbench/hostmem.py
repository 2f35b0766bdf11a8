"""Host-memory allocator setting for training on the CPU: keep freed large blocks for reuse (glibc).

glibc serves every allocation above its mmap threshold (adaptive, at most 32 MiB on 64-bit Linux)
with fresh pages from mmap and hands them back with munmap when the tensor is freed, so each step
page-faults every large tensor in again: a 64 x 3 x 224 x 224 float batch is 38.5 MB, ResNet-18's
first activation at 224 and batch 64 is 205 MB. Raising the mmap and trim thresholds keeps freed
blocks in the heap, which is what preloading jemalloc or tcmalloc buys PyTorch CPU training, without
the preload. Measured here (1 thread): the uint8 -> float conversion of a 64 x 3 x 224 x 224 batch
took 24.7 ms with glibc's defaults and 2.5 ms with this setting. The price: a process keeps its
peak heap size until it exits. `FERBENCH_MALLOC=system` leaves glibc's defaults alone.

With freed blocks kept, transparent huge pages pay off too: PyTorch's CPU allocator madvises
allocations of 2 MiB and more for huge pages when `THP_MEM_ALLOC_ENABLE` is set at its first
allocation (so the CLI applies this policy before anything else). Measured here: the
32-image 224 batch's upsample (19 MB written) took 1.3-1.8 ms instead of 1.6-2.1 ms. Without the
kept heap, huge pages are a loss (every fresh mapping is faulted in 2 MiB at a time: 5 ms), so the
two go together and `FERBENCH_MALLOC=system` declines both (`THP_MEM_ALLOC_ENABLE=0` just the huge
pages). The price of huge pages is memory: the README's quickstart peaked at 1.7 GB instead of 1.4 GB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
THRESHOLD = 1 << 30  # 1 GiB: allocations below it come from the heap, freed memory below it stays mapped
HUGE = 2 << 20  # a transparent huge page; PyTorch madvises CPU tensors from this size on
_policy: str | None = None  # what _apply did (cheap, no torch)
_applied: str | None = None  # the same, plus whether huge pages are in effect (probed once)


def apply_policy() -> str:
    """Apply once per process, without importing torch: the CLI calls this first thing, so that the
    huge-page setting is in the environment before PyTorch's first allocation (it is read there;
    spawned workers inherit it)."""
    global _policy
    if _policy is None:
        _policy = _apply()
        if _policy.startswith("glibc"):
            os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return _policy


def keep_freed_memory() -> str:
    """Apply once per process (if not yet done); returns what was done, for the run record's environment."""
    global _applied
    if _applied is None:
        _applied = apply_policy()
        if _applied.startswith("glibc") and huge_pages_in_effect():
            _applied += "; tensors >= 2 MiB on transparent huge pages"
    return _applied


def huge_pages_in_effect() -> bool:
    """Whether the process holds transparent huge pages after writing an 8 MiB tensor (Linux's own count).

    The whole process is counted, not the probe's growth: with freed blocks kept, the probe may reuse
    memory that is already on huge pages.
    """
    import torch

    probe = torch.empty(4 * HUGE, dtype=torch.uint8).fill_(0)
    held = _anon_huge_kib()
    del probe
    return held >= HUGE // 1024


def _anon_huge_kib() -> int:
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("AnonHugePages:")), 0)
    except OSError:
        return 0


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
