"""A model's cost: params, GMACs / GFLOPs and CPU latency.

Counted with `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-accumulate) at
batch 1 in eval mode. It counts nothing for ops without a formula, so the STN's sampling ops get
theirs here: `affine_grid_generator` 3 MACs per output coordinate, `grid_sampler_2d` (bilinear)
4 MACs per output value. GMACs = FLOPs / 2, which is what vision papers and timm call "FLOPs".
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ferbench.errors import FerbenchError
from ferbench.fileio import MAX_CLASSES
from ferbench.models import create_model
from ferbench.spec import INPUT_SIZES

aten = torch.ops.aten


def _affine_grid_flop(theta_shape, size, *args, out_shape=None, **kwargs) -> int:
    return 2 * 3 * math.prod(out_shape)  # each output coordinate: 3 MACs


def _grid_sampler_flop(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * 4 * math.prod(out_shape)  # bilinear: 4 taps per output value


CUSTOM_FLOPS = {aten.affine_grid_generator: _affine_grid_flop, aten.grid_sampler_2d: _grid_sampler_flop}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Forward FLOPs (2 per MAC) at batch 1, eval mode."""
    model.eval()
    x = torch.zeros(1, in_chans, input_size, input_size)
    counter = FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def latency(model: nn.Module, input_size: int, in_chans: int = 3, min_run_time: float = 0.5) -> dict[str, float]:
    """Batch-1 eval forward on the CPU, timed by `torch.utils.benchmark.Timer.blocked_autorange`
    (warm-up, blocks sized to the timer's resolution, the process's thread count): its median and
    interquartile range in ms, and how many blocks the spread rests on."""
    from torch.utils.benchmark import Timer

    model.eval()
    x = torch.randn(1, in_chans, input_size, input_size)
    with torch.no_grad():
        m = Timer("model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads()).blocked_autorange(
            min_run_time=min_run_time)
    return {"median_ms": 1000 * m.median, "iqr_ms": 1000 * m.iqr, "blocks": len(m.times)}


def check_sizes(input_size: int, num_classes: int, in_chans: int) -> None:
    """One line for a size a spec would refuse: an input side outside `spec.INPUT_SIZES`, 1 to
    `fileio.MAX_CLASSES` classes, 1 or 3 input channels."""
    lo, hi = INPUT_SIZES
    if not lo <= input_size <= hi:
        raise FerbenchError(f"--input-size {input_size}: expected {lo} to {hi} pixels")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise FerbenchError(f"--num-classes {num_classes}: expected 1 to {MAX_CLASSES}")
    if in_chans not in (1, 3):
        raise FerbenchError(f"--in-chans {in_chans}: expected 1 (grey) or 3 (colour)")


def model_cost(name: str, input_size: int = 224, num_classes: int = 7, in_chans: int = 3,
               timed: bool = True, min_run_time: float = 0.5, **options: Any) -> dict[str, Any]:
    """Params, GMACs, GFLOPs and (when `timed`) the batch-1 CPU latency (median, IQR) of a registered model.
    Sizes are checked before anything is allocated, with the bounds a spec has (FerbenchError)."""
    check_sizes(input_size, num_classes, in_chans)
    model = create_model(name, num_classes, input_size, in_chans, **options)
    flops = count_flops(model, input_size, in_chans)
    lat = latency(model, input_size, in_chans, min_run_time) if timed else None
    return {
        "model": name, "params": count_params(model), "gmacs": flops / 2e9, "gflops": flops / 1e9,
        "latency_ms": lat["median_ms"] if lat else None, "latency_iqr_ms": lat["iqr_ms"] if lat else None,
        "input_size": input_size, "num_classes": num_classes, "in_chans": in_chans, "options": options,
        "threads": torch.get_num_threads(),
    }
