"""`ferbench bench small`: the two CPU-sized published models (Deep-Emotion, mini-Xception) trained by
ferbench against a bare PyTorch loop, in both memory formats, and how a 2-core machine is best shared.

- `small_train_<arch>_<format>`: `fit` vs a bare loop of the same model, recipe optimizer, batch and
  input, one step of each in turn (`cpu.bench_train`); no augmentation on either side, so the ratio
  is the harness's own cost per step.
- `small_parallel_<arch>`: total images/s of the bare loop run as `cores` one-thread processes side
  by side (ours) against one process using every core's thread (reference), the two layouts `ferbench
  run` chooses between for small models (`launch.cpu_layout`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np
import torch

from ferbench.bench.cpu import bare_steps, bench_train
from ferbench.bench.timing import faces, row
from ferbench.spec import RECIPES, AugmentConfig, TrainConfig

_DE = RECIPES["deep-emotion-code"]
SMALL_MODELS = {  # arch -> (input size, batch, optimizer, lr) of its code's recipe
    "deep-emotion": (_DE["input_size"], _DE["batch_size"], _DE["optimizer"], _DE["lr"]),
    "mini-xception": (64, 32, "adam", 0.001),  # train_emotion_classifier.py: Adam (Keras default lr), batch 32
}
NO_AUGMENT = AugmentConfig(hflip=False, rotation=0.0)


def small_cfg(arch: str, channels_last: bool, epochs: int = 2) -> TrainConfig:
    size, batch, optimizer, lr = SMALL_MODELS[arch]
    return TrainConfig(epochs=epochs, batch_size=batch, input_size=size, in_chans=1, optimizer=optimizer, lr=lr,
                       weight_decay=0.0, schedule="constant", channels_last=channels_last, augment=NO_AUGMENT)


def _bare_rate(arch: str, threads: int, seconds: float, channels_last: bool, result: Any) -> None:
    """Images/s of the bare loop in this process with `threads` torch threads (a child's target)."""
    torch.set_num_threads(threads)
    cfg = small_cfg(arch, channels_last)
    n = 16 * cfg.batch_size
    steps = bare_steps(arch, faces(n, size=cfg.input_size), np.random.default_rng(1).integers(0, 7, n), cfg)
    for _ in range(3):
        next(steps)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(steps)
        done += cfg.batch_size
    result.put(done / (time.perf_counter() - t0))


def bench_parallel(arch: str, seconds: float = 15.0, channels_last: bool = True) -> dict[str, Any]:
    """`cores` one-thread processes at once vs one `cores`-thread process, same bare loop, same seconds."""
    cores = os.cpu_count() or 1
    ctx = mp.get_context("spawn")

    def total(processes: int, threads: int) -> float:
        q = ctx.Queue()
        procs = [ctx.Process(target=_bare_rate, args=(arch, threads, seconds, channels_last, q)) for _ in range(processes)]
        for p in procs:
            p.start()
        rates = [q.get() for _ in procs]
        for p in procs:
            p.join()
        return float(sum(rates))

    side_by_side, together = total(cores, 1), total(1, cores)
    return row(f"small_parallel_{arch}", side_by_side, together, model=arch, cores=cores, seconds=seconds,
               layout=f"{cores} processes x 1 thread (total)", reference=f"1 process x {cores} threads",
               channels_last=channels_last)


def run_small() -> list[dict[str, Any]]:
    from ferbench.hostmem import keep_freed_memory

    allocator = keep_freed_memory()  # as `ferbench run` does
    rows = []
    for arch in SMALL_MODELS:
        for channels_last in (True, False):
            rows.append(bench_train(arch, small_cfg(arch, channels_last), n=24 * SMALL_MODELS[arch][1], repeats=2,
                                    name=f"small_train_{arch}_{'channels_last' if channels_last else 'contiguous'}"))
    rows += [bench_parallel(arch) for arch in SMALL_MODELS]
    for r in rows:
        r["host_allocator"] = allocator
    return rows

