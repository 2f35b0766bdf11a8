"""Data-parallel helpers for one job across processes (torchrun): gloo on CPU, nccl on CUDA.

Without an initialised process group every helper is the identity, so the single-process path is
the same code. Training batches are split by rank (rows rank::world of the global batch), evaluation
is sharded the same way and gathered, and only rank 0 writes run records.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns whether we did. Pair it
    with `finish()`: a rank that exits while its group is live aborts in gloo's threads."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def local_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def broadcast(obj: Any) -> Any:
    """rank 0's value of a picklable object, on every rank."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sharded(fn: Callable[[np.ndarray], np.ndarray], items: np.ndarray) -> np.ndarray:
    """fn over rows rank::world on each rank, gathered back into the original order on every rank."""
    rank, ws = world()
    if ws == 1:
        return fn(items)
    part = fn(items[rank::ws])
    parts: list[Any] = [None] * ws
    dist.all_gather_object(parts, part)
    out = np.empty((len(items),) + parts[0].shape[1:], dtype=parts[0].dtype)
    for r, p in enumerate(parts):
        out[r::ws] = p
    return out


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def finish() -> None:
    """Leave the process group once every rank is done. Without it a rank > 0, which returns as soon
    as its share of the last job is computed, exits while rank 0 still writes records, and gloo's
    live threads abort the process ("terminate called without an active exception", exit -6)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
