"""Opt-in progress sinks besides the terminal (`launcher.log`, `ferbench run --log tensorboard`).

A sink listens to the training loop like the terminal's progress bars (`engine.train.Progress`) and
writes what the record's `history.csv` holds, one row per epoch, somewhere a dashboard reads it. Off
by default; never part of a job's identity; the run record is the same with or without it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ferbench.engine.train import NoProgress
from ferbench.errors import FerbenchError


def check_available(names: list[str]) -> None:
    """One line, before any record is written, for a sink whose package is not installed."""
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise FerbenchError("--log tensorboard needs the tensorboard package: pip install 'ferbench[log]'")


class TensorBoardSink(NoProgress):
    """Each epoch row's numbers as scalars (`train_loss`, `val_acc`, `lr`, ...) at step = epoch, in
    event files under `log_dir` (a resumed job appends to the same folder)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def end_epoch(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, global_step=int(row["epoch"]))
        self.writer.flush()

    def note(self, text: str) -> None:
        self.writer.add_text("notes", text)

    def close(self) -> None:
        self.writer.close()


class Tee(NoProgress):
    """The terminal's progress and the sinks, called in turn."""

    def __init__(self, *targets: Any) -> None:
        self.targets = targets

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        for t in self.targets:
            t.start_epoch(epoch, epochs, batches)

    def advance(self) -> None:
        for t in self.targets:
            t.advance()

    def end_epoch(self, row: dict[str, Any]) -> None:
        for t in self.targets:
            t.end_epoch(row)

    def note(self, text: str) -> None:
        for t in self.targets:
            t.note(text)


def open_sinks(names: list[str], job_dir: Path) -> list[Any]:
    return [TensorBoardSink(job_dir / "tensorboard") for name in names if name == "tensorboard"]
