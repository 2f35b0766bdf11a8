"""`ferbench bench gpu`: training throughput of the paper models on an accelerator, and its cost in FLOPs.

For each model (default EmoNeXt-T and ResFace-R18 at 224x224, the papers' batch 64, bf16 autocast,
channels_last) two loops run over the same in-memory images, alternating epoch by epoch within one
several-epoch fit (3 by default, as a real run has several) after a one-epoch warm-up of each, with
the device synchronised before every clock read:

- ours: `ferbench`'s `fit` (batched augmentation on the device, on-device metrics, the divergence check,
  the end-of-epoch checkpoint) with the model's paper recipe (its optimizer and loss; EMA off);
- reference: a bare loop over pre-made 3x224x224 batches already on the device: forward, loss,
  backward, optimizer step, nothing else; one bare epoch runs after each of fit's epochs (from fit's
  progress sink), so a machine's drift between rounds (5-10 % on one H200) hits both loops alike.

Training FLOPs per image are taken as 3x the counted forward FLOPs (backward ~ 2x forward), so
achieved TFLOP/s = images/s x 6 x GMACs / 1000. The peak it is divided by is measured in the same
process (median of 10 bf16 8192^3 matrix products on random data), and the datasheet's dense bf16
peak is given beside it when the GPU is known.

With `graphs` (`--graphs`) both loops replay their step as one CUDA graph (`train.cuda_graphs` in fit,
the same `GraphedStep` around the bare loop's body), so the ratio still compares like with like.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch

from ferbench.bench.timing import fit_seconds
from ferbench.data import FerDataset, Split
from ferbench.engine.evaluate import autocast_ctx
from ferbench.engine.optim import build_optimizer
from ferbench.engine.checkpoint import CheckpointWriter
from ferbench.engine.graphs import GraphedStep
from ferbench.engine.losses import compute_loss
from ferbench.engine.train import NoProgress, Progress, graphs_run
from ferbench.errors import FerbenchError
from ferbench.hostmem import keep_freed_memory
from ferbench.machine import sync
from ferbench.models import create_model
from ferbench.cost import count_flops
from ferbench.spec import RECIPES, TrainConfig

DEFAULT_MODELS = {"emonext-tiny": "emonext-paper", "resface-r18": "resface-paper"}
# dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity), TFLOP/s
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def datasheet_peak(gpu_name: str) -> float | None:
    for key, tflops in DATASHEET_BF16_TFLOPS.items():  # most specific keys first
        if key in gpu_name:
            return tflops
    return None


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """Median bf16 (CUDA) / fp32 (CPU) n^3 matrix-product rate in TFLOP/s, on random data."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 3):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / sorted(times)[len(times) // 2] / 1e12


class LoopPair:
    """The two loops a GPU row compares, over the same in-memory images, for `arch` under its paper recipe.

    `fit_seconds(e)`: wall seconds of an e-epoch `fit` of a fresh model (startup, per-epoch checkpoints
    and the final checkpoint's wait included). `bare_seconds(e)`: e epochs of a bare loop over pre-made
    device batches (forward, loss, backward, step), one model trained on across calls.
    """

    def __init__(self, arch: str, recipe: str, device: torch.device, size: int, batch: int, n_images: int,
                 compile: bool, graphs: bool = False) -> None:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (n_images, 48, 48), dtype=np.uint8)
        labels = rng.integers(0, 7, n_images)
        targets = rng.dirichlet(np.ones(7), n_images).astype(np.float32)  # LDL recipes train on distributions
        self.ds = FerDataset("bench", [str(i) for i in range(7)], {"train": Split(images, labels, targets=targets)})
        self.cfg = TrainConfig.model_validate({**RECIPES[recipe], "epochs": 1, "input_size": size, "batch_size": batch,
                                               "ema": None, "early_stopping_patience": None, "compile": compile,
                                               "cuda_graphs": graphs})
        self.arch, self.device, self.batch = arch, device, batch
        self.steps = n_images // batch
        if self.steps < 1:
            raise FerbenchError(f"--images {n_images}: need at least one batch of {batch}")
        self.tmp = Path(tempfile.mkdtemp(prefix="ferbench-bench-gpu-"))
        torch.manual_seed(0)
        self.model = create_model(arch, 7, size).to(device, memory_format=torch.channels_last)
        self.opt = build_optimizer(self.model, self.cfg)
        self.call = torch.compile(self.model) if compile and device.type == "cuda" else self.model
        self.graphed = GraphedStep(self.model, self.opt, self._update) if graphs_run(self.cfg, device) else None
        k = min(8, self.steps)  # distinct pre-made batches, cycled
        self.xs = torch.randn(k, batch, 3, size, size, device=device)
        self.ys = torch.from_numpy(labels[: k * batch].reshape(k, batch)).to(device)
        self.ts = torch.from_numpy(targets[: k * batch].reshape(k, batch, 7)).to(device)

    def fit_seconds(self, epochs: int, around: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
                    progress: Progress | None = None, writer: CheckpointWriter | None = None) -> float:
        cfg = self.cfg.model_copy(update={"epochs": epochs})
        return fit_seconds(self.arch, self.ds, cfg, self.device, self.tmp, around, progress=progress, writer=writer)

    def interleaved(self, epochs: int) -> tuple[float, "EpochInterleaved"]:
        """(fit's wall seconds with the bare epochs taken out, the sink) of an `epochs`-epoch fit with one
        bare epoch after each of its epochs."""
        writer = CheckpointWriter()
        sink = EpochInterleaved(lambda: self.bare_seconds(1), writer)
        wall = self.fit_seconds(epochs, progress=sink, writer=writer)
        return wall - sum(sink.bare_epochs), sink

    def bare_seconds(self, epochs: int, around: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> float:
        self.model.train()
        k = self.xs.shape[0]
        with around():
            sync(self.device)
            t0 = time.perf_counter()
            for i in range(epochs * self.steps):
                x = self.xs[i % k].contiguous(memory_format=torch.channels_last)
                if self.graphed is not None:
                    self.graphed(x, self.ys[i % k], self.ts[i % k])
                else:
                    self.opt.zero_grad(set_to_none=True)
                    self._update(x, self.ys[i % k], self.ts[i % k])
            sync(self.device)
            return time.perf_counter() - t0

    def _update(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The bare step: forward, loss, backward, optimizer step (autocast's cache off when captured)."""
        with autocast_ctx(self.device, self.cfg.amp, cache=self.graphed is None):
            logits = self.call(x)
            loss = compute_loss(self.model, logits, y, t, self.cfg)
        loss.backward()
        self.opt.step()
        return logits, loss

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class EpochInterleaved(NoProgress):
    """A `fit` progress sink that runs one bare epoch after each of fit's epochs and times it apart.

    Fit's epochs keep the times fit gives them (`row["seconds"]`, each ending with the metric reads that
    synchronise the device). Before each bare epoch it waits for fit's checkpoint write in flight, and
    the wait is fit's (outside its epochs), so the write never borrows the bare loop's time; fit
    snapshots and submits the epoch's own checkpoint after the bare epoch, to overlap its next epoch.
    """

    def __init__(self, bare_epoch: Callable[[], float], writer: CheckpointWriter) -> None:
        self.bare_epoch, self.writer = bare_epoch, writer
        self.rows: list[dict[str, Any]] = []  # fit's history rows, one an epoch
        self.bare_epochs: list[float] = []  # seconds of each bare epoch

    def end_epoch(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.writer.close()
        self.bare_epochs.append(self.bare_epoch())


def bench_model(arch: str, recipe: str, device: torch.device, size: int = 224, batch: int = 64,
                n_images: int = 6400, epochs: int = 3, compile: bool = False, graphs: bool = False) -> dict[str, Any]:
    """One row: images/s of an `epochs`-epoch `fit` vs as many bare epochs run between its epochs, after
    a one-epoch warm-up of each.

    Several epochs per fit, as in a real run: each epoch's checkpoint is written while the next one
    trains, and fit's startup and the wait for its last checkpoint are paid once, not once per epoch.
    """
    pair = LoopPair(arch, recipe, device, size, batch, n_images, compile, graphs)
    try:
        pair.interleaved(1)  # warm-up of both loops: cudnn autotuning, compilation, allocator
        our_t, sink = pair.interleaved(epochs)
    finally:
        pair.close()
    seen = epochs * pair.steps * batch
    ref_t = sum(sink.bare_epochs)
    in_epochs = sum(r["seconds"] for r in sink.rows)
    gmacs = count_flops(create_model(arch, 7, size), size) / 2e9
    ours, ref = seen / our_t, seen / ref_t
    cfg = pair.cfg
    return {"name": f"gpu_train_{arch}_{size}", "ours_per_s": ours, "reference_per_s": ref, "ratio": ours / ref,
            "model": arch, "recipe": recipe, "input_size": size, "batch": batch, "images_per_epoch": pair.steps * batch,
            "epochs": epochs, "amp": cfg.amp if device.type == "cuda" else "off", "compile": compile,
            "cuda_graphs": graphs_run(cfg, device), "optimizer": cfg.optimizer, "loss": cfg.loss, "gmacs_forward": gmacs, "train_tflops": ours * 6 * gmacs / 1e3,
            "reference": "bare loop over pre-made device batches: forward, loss, backward, step",
            "method": "one bare epoch after each of fit's epochs, inside one fit",
            "all_epochs": [{"ours_s": r["seconds"], "reference_s": b} for r, b in zip(sink.rows, sink.bare_epochs)],
            # the same fit split in two: its epochs (each timed by fit up to its synchronising metric reads),
            # which a long run repeats, and what it pays once or between epochs (start-up, snapshots, last write)
            "ours_in_epochs_per_s": seen / in_epochs, "in_epochs_ratio": seen / in_epochs / ref,
            "ours_outside_epochs_s": our_t - in_epochs}


def parse_models(items: list[str]) -> dict[str, str] | None:
    """`arch=recipe` strings (`--model emonext-tiny=emonext-paper`); None for the default pair."""
    from ferbench.models import variants

    out = {}
    for item in items:
        arch, _, recipe = item.partition("=")
        if arch not in variants():
            raise FerbenchError(f"--model {item!r}: unknown arch {arch!r} (see `ferbench models`)")
        if recipe not in RECIPES:
            raise FerbenchError(f"--model {item!r}: expected arch=recipe with a recipe in {', '.join(RECIPES)}")
        out[arch] = recipe
    return out or None


def run_gpu_bench(device: torch.device, models: dict[str, str] | None = None, size: int = 224, batch: int = 64,
                  n_images: int = 6400, compile: bool = False, matmul_n: int = 8192, epochs: int = 3,
                  graphs: bool = False) -> list[dict[str, Any]]:
    """Rows for each model, each with the fraction of the measured (and datasheet) bf16 peak."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    keep_freed_memory()
    peak = matmul_tflops(device, matmul_n if device.type == "cuda" else 512)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    sheet = datasheet_peak(gpu) if device.type == "cuda" else None
    rows = []
    for arch, recipe in (models or DEFAULT_MODELS).items():
        r = bench_model(arch, recipe, device, size, batch, n_images, epochs, compile=compile, graphs=graphs)
        r.update(device=gpu, matmul_peak_tflops=peak, fraction_of_measured_peak=r["train_tflops"] / peak,
                 datasheet_peak_tflops=sheet,
                 fraction_of_datasheet_peak=(r["train_tflops"] / sheet) if sheet else None,
                 threads=torch.get_num_threads())
        rows.append(r)
    return rows
