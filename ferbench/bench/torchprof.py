"""`ferbench bench trace`: a training epoch under `torch.profiler`, read for what the harness adds.

For one epoch of `fit` and one epoch of the bare loop (the same pair `ferbench bench gpu` times),
after a warm-up of each, it counts per step:
- host syncs: `aten::_local_scalar_dense` (a tensor read into a Python number: `.item()`, `float(t)`,
  `int(t)`) and, on CUDA, `cudaStreamSynchronize` / `cudaDeviceSynchronize` / `cudaEventSynchronize`;
- kernel launches (CUDA) or aten ops (CPU);
- on CUDA, device busy time (kernels, copies, memsets) as a fraction of the epoch's wall time: near 1
  means the GPU, not the host, sets the pace.
The ten ops with the most host time in each loop are listed, so an added cost has a name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ferbench.bench.gpu import LoopPair
from ferbench.hostmem import keep_freed_memory

SYNC_OPS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
LAUNCH_OPS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


def summarise(prof: profile, wall_s: float, steps: int, cuda: bool) -> dict[str, Any]:
    """Counts per step and device busy fraction from a finished profile."""
    avgs = prof.key_averages()
    count = {e.key: e.count for e in avgs}
    syncs = {k: count[k] for k in SYNC_OPS if count.get(k)}
    n_syncs = sum(syncs.values())
    busy_us = sum(e.self_device_time_total for e in avgs
                  if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False))
    host = sorted((e for e in avgs if e.device_type == DeviceType.CPU), key=lambda e: -e.self_cpu_time_total)
    launches = sum(count.get(k, 0) for k in LAUNCH_OPS) if cuda else sum(c for k, c in count.items() if k.startswith("aten::"))
    return {
        "wall_s": wall_s, "steps": steps, "host_syncs": n_syncs, "host_syncs_per_step": n_syncs / steps,
        "host_syncs_by_op": syncs, "launches_per_step": launches / steps,
        "launches_counted": "CUDA kernel launches" if cuda else "aten ops",
        "device_busy_s": busy_us / 1e6 if cuda else None, "device_busy_fraction": busy_us / 1e6 / wall_s if cuda else None,
        "top_host_ops": [{"op": e.key, "calls": e.count, "self_host_ms": e.self_cpu_time_total / 1e3} for e in host[:10]],
    }


def trace_epoch(arch: str, recipe: str, device: torch.device, size: int = 224, batch: int = 64,
                  n_images: int = 3200) -> dict[str, Any]:
    """Profile one `fit` epoch and one bare epoch of `arch` (after a warm-up of each).

    The profiler wraps exactly what `ferbench bench gpu` times: for fit, everything from the call to
    its return (moving the model, optimizer set-up, the epoch, the checkpoint), not the model's init.
    """
    keep_freed_memory()
    pair = LoopPair(arch, recipe, device, size, batch, n_images, compile=False)
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        pair.bare_seconds(1), pair.fit_seconds(1)
        out: dict[str, Any] = {"name": f"trace_{arch}_{size}", "model": arch, "recipe": recipe, "input_size": size,
                               "batch": batch, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                               "threads": torch.get_num_threads()}
        for name, timed in (("bare", pair.bare_seconds), ("fit", pair.fit_seconds)):
            prof = profile(activities=acts)
            wall = timed(1, lambda: prof)
            out[name] = summarise(prof, wall, pair.steps, cuda)
    finally:
        pair.close()
    return out
