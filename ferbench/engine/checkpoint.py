"""End-of-epoch checkpoints: what they hold, how they are written (atomically, in the background)
and read (weights only, so a checkpoint can never run code).

A checkpoint is everything `fit` needs to continue exactly: model, optimizer, scheduler, EMA,
scaler, the RNG states and the loop's counters (`LoopState`). The epoch's `history.csv` is written
by the same background write, after the checkpoint.
"""

from __future__ import annotations

import argparse

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ferbench.errors import FerbenchError, first_line, one_line
from ferbench.fileio import open_regular, write_atomic, write_text_atomic


@dataclass
class LoopState:
    """The training loop's counters: where it is and what the best validation epoch was."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    best_val: float = float("-inf")  # the best epoch's score (train._score: val_acc or -val_loss)
    best_epoch: int = -1
    since_best: int = 0  # epochs since the best validation accuracy
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None  # eval-model weights of the best epoch


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint atomically: a failed write (a full disk) leaves the previous one intact."""
    import shutil

    try:
        # by path: torch's C++ writer fills the file directly (no in-memory copy, no Python call per chunk)
        write_atomic(path, lambda p: torch.save(state, str(p)))
        return
    except RuntimeError as e:  # torch reports a failed write as "unexpected pos ..." with no errno
        reason = first_line(e)
    needed, free = state_nbytes(state), shutil.disk_usage(path.parent).free
    if free < needed:
        reason = f"no space left on the device ({free / 2**20:.0f} MiB free, about {needed / 2**20:.0f} MiB needed)"
    # raised outside the except block: the failed writer (and the space its open file holds) is freed
    raise FerbenchError(f"{path}: checkpoint not written: {reason}; the previous checkpoint is intact: "
                        "free space and run again to resume")


def state_nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


# Plain data containers that common training scripts pickle beside the weights, allowed in weights_only
# loading because building them runs no code of the file's choosing: timm's train.py saves its
# argparse.Namespace of arguments as `args`.
SAFE_GLOBALS = [argparse.Namespace]


def safe_torch_load(path: Path) -> Any:
    """torch.load with weights_only (a file can never run code) and its warnings about the file's
    pickle protocol kept off the user's screen; a file holding other Python objects raises an
    UnpicklingError whose message says so in one line (torch's own advises weights_only=False)."""
    import pickle
    import warnings

    with warnings.catch_warnings(), torch.serialization.safe_globals(SAFE_GLOBALS):
        warnings.simplefilter("ignore")
        try:
            with open_regular(path) as f:  # a pipe planted as a checkpoint would block torch.load forever
                return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise pickle.UnpicklingError("it holds Python objects other than tensors, and ferbench never runs code "
                                         "from a file") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """weights_only load: a checkpoint can never run code."""
    try:
        return safe_torch_load(path)
    except Exception as e:  # noqa: BLE001  (any unpickling failure is bad input)
        raise FerbenchError(f"{path}: not a loadable ferbench checkpoint ({first_line(e)}); ferbench never unpickles "
                            "code: delete the file to restart this job from scratch") from None


def checkpoint_state(parts: dict[str, Any], loop: LoopState, device: torch.device, job_id: str) -> dict[str, Any]:
    """The checkpoint dict: each part's state dict (None for an absent part), RNG states, the counters,
    and the id of the job it belongs to (`check_owner`)."""
    return {
        "job_id": job_id,
        **{name: (p.state_dict() if p is not None else None) for name, p in parts.items()},
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
        **{name: getattr(loop, name) for name in LoopState.__dataclass_fields__},  # not copied: the writer snapshots
    }


def check_owner(ck: dict[str, Any], path: Path, job_id: str) -> None:
    """Refuse a checkpoint another job wrote (copied into this job's folder, it would be resumed or
    predicted from as if it were this job's: same architecture, other data or settings). Checkpoints
    written before ferbench recorded the owner carry no id and are taken as their folder's."""
    owner = ck.get("job_id")
    if owner is not None and owner != job_id:
        raise FerbenchError(f"{path}: this checkpoint belongs to job {one_line(str(owner))[:120]}, not {job_id}: "
                            "never resumed or used; delete the file to restart this job from scratch")


def restore(path: Path, parts: dict[str, Any], device: torch.device, job_id: str) -> LoopState:
    """Load `path` into each part (model, optimizer, ...) and the RNG states; return the loop's counters."""
    ck = load_checkpoint(path)
    check_owner(ck, path, job_id)
    try:
        for name, p in parts.items():
            if p is not None:
                p.load_state_dict(ck[name])
    except (KeyError, RuntimeError, ValueError) as e:
        raise FerbenchError(f"{path}: checkpoint does not match this job's model or optimizer ({first_line(e, 160)}); "
                            "delete the file to restart this job from scratch") from None
    torch.set_rng_state(ck["rng_torch"])
    if device.type == "cuda" and ck.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ck["rng_cuda"])
    return LoopState(**{name: ck.get(name) for name in LoopState.__dataclass_fields__})


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`obj` (nested dicts, lists, tuples) with every tensor replaced by fn(tensor)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def cpu_snapshot(obj: Any) -> Any:
    """A snapshot of a (nested) state: every tensor copied to the CPU, so training can go on changing the originals.

    CUDA tensors are copied into pinned host memory without waiting, and one synchronize per device
    then completes the snapshot: one host wait an epoch instead of one per tensor (the profile of
    `ferbench bench profile --device cuda` counted ~850 for EmoNeXt-T's model and AdamW state).
    """
    devices: set[torch.device] = set()

    def copy(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if t.device.type != "cuda":
            return t.to("cpu", copy=True)
        devices.add(t.device)
        return torch.empty_like(t, device="cpu", pin_memory=True).copy_(t, non_blocking=True)  # same strides

    snapshot = _map_tensors(obj, copy)
    for device in devices:
        torch.cuda.current_stream(device).synchronize()
    return snapshot


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """history.csv: one row per epoch, floats to 6 significant digits."""
    if not rows:
        return
    keys = list(rows[0])
    lines = [",".join(keys)] + [",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in keys) for r in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


class CheckpointWriter:
    """Writes end-of-epoch checkpoints in a background thread while the next epoch trains.

    `submit` snapshots the state (a memory copy, milliseconds) and returns; serialising, writing and
    fsync-ing (0.15-0.3 s for ResNet-18 with SGD momentum, 90 MB, here) overlap with training. One write is in
    flight at most: `submit` and `close` wait for the previous one and re-raise its error. A run killed
    mid-write keeps the previous checkpoint (writes are atomic) and resumes one epoch earlier, which the
    (seed, epoch)-seeded data and augmentation streams make exact.

    As a context manager it closes on exit; when the block raises, that error wins over the writer's.
    `run_job` holds one around `fit` and the test evaluation, so the last epoch's write overlaps with
    evaluation and is on disk before the record is marked complete.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(Exception):
                self.close()

    def _run(self, path: Path, state: dict[str, Any], history_path: Path, history: list[dict[str, Any]]) -> None:
        try:
            save_checkpoint(path, state)
            write_history(history_path, history)
        except BaseException as e:  # noqa: BLE001  (re-raised in the training thread)
            self._error = e.with_traceback(None)  # its frames would keep the snapshot alive until raised

    def submit(self, path: Path, state: dict[str, Any], history_path: Path, history: list[dict[str, Any]]) -> None:
        self.close()
        snapshot = cpu_snapshot(state)
        self._thread = threading.Thread(target=self._run, args=(path, snapshot, history_path, [dict(r) for r in history]),
                                        name="ferbench-checkpoint", daemon=False)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
