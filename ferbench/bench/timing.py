"""What every `ferbench bench` row shares: clocks that wait for the device, rates, the row format,
and a timed `fit` of a fresh model."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch

from ferbench.data import FerDataset
from ferbench.engine.checkpoint import CheckpointWriter
from ferbench.engine.train import Progress, fit
from ferbench.machine import sync
from ferbench.models import create_model
from ferbench.spec import EvalConfig, TrainConfig


def rate(fn: Callable[[], int], min_seconds: float = 2.0, warmup: int = 1) -> float:
    """Items per second of fn (which returns how many items it processed), after warm-up calls."""
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        n += fn()
    return n / (time.perf_counter() - t0)


def row(name: str, ours: float, ref: float | None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "ours_per_s": ours, "reference_per_s": ref,
            "ratio": (ours / ref) if ref else None, "threads": torch.get_num_threads(), **extra}


def faces(n: int, seed: int = 0, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def fit_seconds(model_name: str, ds: FerDataset, cfg: TrainConfig, device: torch.device, workdir: Path,
                around: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
                progress: Progress | None = None, writer: CheckpointWriter | None = None) -> float:
    """Wall seconds of a `fit` of a fresh model in a fresh job folder (so nothing resumes).

    The model is made before the clock starts (its random init is not the harness); `around` wraps
    the timed part (a profiler, say); `progress` is fit's progress sink; the wait for the last
    checkpoint write is inside the timed part (through `writer` when given).
    """
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    torch.manual_seed(0)
    model = create_model(model_name, 7, cfg.input_size, cfg.in_chans)
    with around():
        sync(device)
        t0 = time.perf_counter()
        with writer or contextlib.nullcontext():
            fit(model, ds, cfg, EvalConfig(splits=["test"]), 0, device, workdir, progress=progress, writer=writer)
        sync(device)
        return time.perf_counter() - t0
