"""How long a job will take on this device, from a short measured probe, and how far it already got.

The probe times a training step (forward, loss, backward, SGD step) and an evaluation forward of
the job's model at its input size on random images (the faster of two calls after a warm-up), and scales
per image: a job's time = epochs x training images x the step's seconds per image + the validation
and test forwards (TTA views included) x the forward's. The probe's batch is the job's, capped so a
step stays short (32 images at 48x48, 2 at 224x224: large images fill the device at any batch; small
batches of small images run less efficiently, so there the estimate errs long). Probes are cached per
process by what changes their cost (model, options, input size, batch, channels, precision, layout,
device).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferbench.data import FerDataset
from ferbench.errors import JobFailed, first_line
from ferbench.records import HISTORY_FILE
from ferbench.spec import TTA_VIEWS, Job



def probe_images(input_size: int, batch: int) -> int:
    """The probe's batch: the job's, capped at ~32 images' worth of 48x48 pixels (at least 2)."""
    return min(batch, max(2, round(32 * (48 / input_size) ** 2)))


@dataclass(frozen=True)
class Probe:
    train_s_per_image: float
    eval_s_per_image: float


_CACHE: dict[str, Probe] = {}


def probe(job: Job, num_classes: int, device: Any) -> Probe:
    """Seconds per image of a training step and of an eval forward for `job`'s model on `device`."""
    import json

    t = job.train
    n = probe_images(t.input_size, t.batch_size)
    key = json.dumps([job.model.arch, job.model.options, t.input_size, n, t.in_chans, t.amp, t.channels_last, str(device)],
                     sort_keys=True, default=str)
    if key not in _CACHE:
        _CACHE[key] = _measure(job, num_classes, device, n)
    return _CACHE[key]


def _measure(job: Job, num_classes: int, device: Any, n: int) -> Probe:
    import torch
    import torch.nn.functional as F

    from ferbench.engine.evaluate import autocast_ctx
    from ferbench.models import build_model, check_logits

    t = job.train
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # runs stay seeded as without it
        model = build_model(job, num_classes)
        check_logits(model, num_classes, t.input_size, t.in_chans)  # JobFailed: the plan says why, nothing is timed
        model = model.to(device, memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(n, t.in_chans, t.input_size, t.input_size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, num_classes, (n,), device=device)

        def train_step() -> None:
            model.train()
            with autocast_ctx(device, t.amp, cpu=t.cpu_amp):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        @torch.no_grad()
        def forward() -> None:
            model.eval()
            with autocast_ctx(device, t.amp, cpu=t.cpu_amp):
                model(x)

        try:
            return Probe(_seconds(train_step, device) / n, _seconds(forward, device) / n)
        except (RuntimeError, ValueError) as e:  # the job would fail the same way: the plan says why, the rest runs
            raise JobFailed(f"a training step of {job.model.arch} fails: {type(e).__name__}: {first_line(e, 200)}") from None


def _seconds(fn: Any, device: Any) -> float:
    """Wall seconds of fn: the faster of two calls after a warm-up, the device synchronised around each."""
    from ferbench.machine import sync

    fn()
    sync(device)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def epochs_done(job_dir: Path) -> int:
    """Epochs a started job has finished (its history.csv's rows; 0 if none)."""
    return len(_history(job_dir))


def _history(job_dir: Path) -> list[dict[str, str]]:
    import csv
    import io

    from ferbench.fileio import read_text_bounded

    try:
        return list(csv.DictReader(io.StringIO(read_text_bounded(job_dir / HISTORY_FILE))))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def epochs_left(job: Job, job_dir: Path | None = None, done: int = 0) -> tuple[int, int]:
    """The fewest and the most epochs `job` has left after `done`. They differ only under early
    stopping: the run ends `early_stopping_patience` epochs after its best monitored validation epoch
    (read from the job's history.csv; a new job's best is at least its first epoch), and at the
    latest at `train.epochs`. A recipe whose cap is a formality (mini-xception-code's 10,000 epochs)
    is thus estimated from the fewest epochs it can run, not from a cap it never reaches."""
    t = job.train
    most = max(0, t.epochs - done)
    if not t.early_stopping_patience:
        return most, most
    best = _best_epoch(_history(job_dir) if job_dir is not None and done else [], t.monitor)
    return max(0, min(t.epochs, max(best, 1) + t.early_stopping_patience) - done), most


def _best_epoch(rows: list[dict[str, str]], monitor: str) -> int:
    """The epoch (1-based) of the best monitored validation number in history rows, as the loop counts
    it (strictly better; val_loss lower, val_acc higher); 0 without validation rows."""
    best, best_epoch = float("-inf"), 0
    for i, row in enumerate(rows, 1):
        try:
            value = float(row[monitor])
        except (KeyError, TypeError, ValueError):
            continue
        score = -value if monitor == "val_loss" else value
        if score > best:
            best, best_epoch = score, i
    return best_epoch


def job_seconds(job: Job, ds: FerDataset, p: Probe, epochs: int | None = None) -> float:
    """Estimated seconds for `epochs` more epochs of `job` (default: all of them), training and
    validation, and the final evaluation of the last and the best-validation model on the eval splits."""
    t, e = job.train, job.eval
    n_train = len(ds.splits["train"])
    per_epoch = (n_train // min(t.batch_size, n_train)) * min(t.batch_size, n_train) * p.train_s_per_image
    val = ds.splits.get("val")
    if val is not None and "val" in e.splits:
        per_epoch += len(val) * p.eval_s_per_image
    final = sum(len(ds.splits[s]) for s in e.splits if s in ds.splits) * TTA_VIEWS[e.tta] * p.eval_s_per_image * 2
    return (t.epochs if epochs is None else epochs) * per_epoch + final


def format_seconds(s: float) -> str:
    """1 h 05 min, 3 min 20 s, 12 s, or 2.4 days."""
    if s >= 2 * 86400:
        return f"{s / 86400:.1f} days"
    if s >= 3600:
        return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
    if s >= 60:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{s:.0f} s"
