"""The training loop, readable top to bottom: `fit` = set up, resume, then per epoch
`train_one_epoch`, `validate`, checkpoint; early stopping is decided in one place (`should_stop`).

Exact resume: the data order and the augmentation stream of epoch e come from generators seeded by
(seed, e), and the global RNG state is saved with every end-of-epoch checkpoint, so a run killed at
any moment and restarted repeats the interrupted epoch bit for bit (on the CPU).
No per-step host syncs: each step's loss and correct count go into per-epoch buffers on the device
(one copy and one sum a step, few kernel launches for a GPU's host to issue), summed and read once
per epoch; the divergence check reads one flag for the last `CHECK_EVERY` steps' losses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferbench.data import FerDataset, Split
from ferbench.data.augment import augment_batch, finish, to_device, to_unit
from ferbench.engine import dist
from ferbench.engine.checkpoint import (CheckpointWriter, LoopState, checkpoint_state, cpu_snapshot, restore,
                                       write_history)
from ferbench.engine.evaluate import autocast_ctx, predict
from ferbench.engine.graphs import GraphedStep
from ferbench.engine.losses import check_targets, compute_loss, draw_labels, l2_penalty, uses_teacher
from ferbench.engine.optim import KerasPlateau, ModelEma, build_optimizer, build_scheduler
from ferbench.errors import FerbenchError, JobFailed
from ferbench.records import CHECKPOINT_FILE, HISTORY_FILE
from ferbench.spec import EvalConfig, TrainConfig

CHECK_EVERY = 50


class Progress(Protocol):
    """Where a run reports what it does: a progress bar, a benchmark's clock, nothing."""

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...
    def advance(self) -> None: ...  # after each training step
    def steps(self, first_step: int, epoch: int, losses: list[float], lrs: list[float]) -> None: ...  # an epoch's steps
    def end_epoch(self, row: dict[str, Any]) -> None: ...  # the epoch's history row
    def note(self, text: str) -> None: ...  # a line for the user (e.g. what pretrained weights loaded)


class NoProgress:
    """A sink that ignores everything; subclass it to listen to some of the calls."""

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...
    def advance(self) -> None: ...
    def steps(self, first_step: int, epoch: int, losses: list[float], lrs: list[float]) -> None: ...
    def end_epoch(self, row: dict[str, Any]) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass
class FitResult:
    model: nn.Module  # the model evaluated: the EMA copy when EMA is on and eval.use_ema
    best_state: dict[str, torch.Tensor] | None
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """The generator of one epoch's stream: 0 data order, 1 augmentation (and drawn labels), 2 validation crops."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 16 + stream)


@dataclass
class Trainer:
    """What one training run holds: the module and its optimizer state, the training split on the
    device, and how each global batch splits across data-parallel ranks."""

    cfg: TrainConfig
    device: torch.device
    core: nn.Module  # the module whose weights are saved and evaluated
    model: nn.Module  # what the step calls: `core`, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    sched: Any
    ema: ModelEma | None
    scaler: torch.amp.GradScaler
    teacher: nn.Module | None
    images: torch.Tensor  # the training split, uint8 on the device
    labels: torch.Tensor
    targets: torch.Tensor | None
    host_targets: torch.Tensor | None  # for the sampled loss: labels are drawn on the host
    batch: int  # global batch
    mine: slice  # this rank's rows of a global batch
    steps_per_epoch: int
    graphed: GraphedStep | None = None  # the captured step (train.cuda_graphs on CUDA), else the eager one

    @property
    def fmt(self) -> torch.memory_format:
        return torch.channels_last if self.cfg.channels_last else torch.contiguous_format

    def parts(self) -> dict[str, Any]:
        """What a checkpoint saves and restores, by its key."""
        return {"model": self.core, "optimizer": self.opt, "scheduler": self.sched, "ema": self.ema, "scaler": self.scaler}

    def eval_model(self, use_ema: bool) -> nn.Module:
        return self.ema.module if (self.ema is not None and use_ema) else self.core


def setup(model: nn.Module, train: Split, cfg: TrainConfig, device: torch.device, teacher: nn.Module | None) -> Trainer:
    """Move the model and the training split to the device, wrap for DDP, build optimizer, schedule, EMA, scaler."""
    rank, world = dist.world()
    core = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":  # SyncBatchNorm is CUDA-only; on the CPU BatchNorm sees each rank's rows
            core = nn.SyncBatchNorm.convert_sync_batchnorm(core)
        model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
    batch = min(cfg.batch_size, len(train))
    if batch % world:
        raise FerbenchError(f"train.batch_size {batch} must be divisible by the {world} data-parallel processes")
    if train.images.ndim == 4 and cfg.in_chans != 3:
        raise FerbenchError(f"the training images are colour (N, H, W, {train.images.shape[-1]}): train.in_chans must be 3 "
                            "(or load the dataset in grey, e.g. rafdb option color: grey)")
    if not cfg.drop_last and world > 1:
        raise FerbenchError("train.drop_last: false runs in one process (a partial last batch cannot be split evenly)")
    steps_per_epoch = len(train) // batch if cfg.drop_last else -(-len(train) // batch)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    ema = ModelEma(core, cfg.ema) if cfg.ema else None
    if cfg.compile and device.type == "cuda":
        core.compile()  # in place: state-dict keys, attributes and the EMA copy stay those of the plain module
    if cfg.cuda_graphs and (world > 1 or uses_teacher(cfg)):
        raise FerbenchError("train.cuda_graphs: a captured step runs in one process without a teacher network "
                            f"(this job has {'a teacher' if uses_teacher(cfg) else f'{world} data-parallel processes'})")
    tr = Trainer(
        cfg=cfg, device=device, core=core, model=model, opt=opt, sched=sched, ema=ema,
        scaler=torch.amp.GradScaler(device.type, enabled=precision(cfg, device)["grad_scaler"]),
        teacher=teacher if uses_teacher(cfg) else None,
        images=torch.from_numpy(train.images).to(device), labels=torch.from_numpy(train.labels).to(device),
        targets=torch.from_numpy(train.targets).to(device) if train.targets is not None else None,
        host_targets=torch.from_numpy(train.targets) if cfg.loss == "sampled" else None,
        batch=batch, mine=slice(rank, None, world), steps_per_epoch=steps_per_epoch,
    )
    if graphs_run(cfg, device):
        tr.graphed = GraphedStep(core, opt, lambda x, y, target: update(tr, x, y, target, cache=False))
    return tr


def graphs_run(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the training step replays a CUDA graph (recorded in the manifest's precision entry)."""
    return cfg.cuda_graphs and device.type == "cuda"


def precision(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """What the training arithmetic is on this device (recorded in the manifest): autocast dtype, loss
    scaling, and where the scaler's arithmetic runs (fp16 gradients on CUDA, or on the CPU with
    cpu_amp; else fp32, which has the same scaled-gradient clipping but never overflows, so never skips
    a step); and whether the step replayed a CUDA graph (the same arithmetic, launched at once)."""
    casts = device.type == "cuda" or (device.type == "cpu" and cfg.cpu_amp)
    autocast = "off" if not casts or cfg.amp == "off" else ("fp16" if cfg.amp == "fp16" else "bf16")
    scaler = cfg.grad_scaler if cfg.grad_scaler is not None else autocast == "fp16"
    if cfg.clip_before_unscale and not scaler:
        raise FerbenchError("clip_before_unscale: no grad scaler runs here (set grad_scaler: true)")
    return {"autocast": autocast, "grad_scaler": bool(scaler), "cuda_graphs": graphs_run(cfg, device),
            "scaler_arithmetic": None if not scaler else ("fp16" if autocast == "fp16" else "fp32"),
            "clip": None if not cfg.clip_grad_norm else ("scaled gradients" if cfg.clip_before_unscale and scaler
                                                         else "unscaled gradients")}


def should_stop(loop: LoopState, cfg: TrainConfig) -> bool:
    """Early stopping: `early_stopping_patience` epochs without a better monitored validation number."""
    return bool(cfg.early_stopping_patience) and loop.since_best >= cfg.early_stopping_patience


def fit(
    model: nn.Module,
    ds: FerDataset,
    cfg: TrainConfig,
    eval_cfg: EvalConfig,
    seed: int,
    device: torch.device,
    job_dir: Path,
    teacher: nn.Module | None = None,
    progress: Progress | None = None,
    writer: CheckpointWriter | None = None,
) -> FitResult:
    """Train with per-epoch checkpoints and validation; resume from `job_dir/checkpoint.pt` if present.

    Checkpoints go through `writer` when given (the caller closes it, and may overlap the last write
    with its own work); else through a writer of fit's own, closed before fit returns.
    """
    progress = progress or NoProgress()
    train = ds.splits["train"]
    check_targets(cfg, train.targets is not None, teacher is not None, ds.name)
    tr = setup(model, train, cfg, device, teacher)
    ckpt_path = job_dir / CHECKPOINT_FILE
    loop = restore(ckpt_path, tr.parts(), device, job_dir.name) if ckpt_path.exists() else LoopState()
    if loop.history and dist.is_main():  # a kill between the checkpoint and its history row loses no row
        write_history(job_dir / HISTORY_FILE, loop.history)
    val = ds.splits.get("val") if "val" in eval_cfg.splits else None
    if val is None and (cfg.schedule == "plateau" or cfg.monitor != "val_acc"):
        raise FerbenchError(f"train.schedule {cfg.schedule} / train.monitor {cfg.monitor} read the validation split "
                            "every epoch: the dataset needs one and eval.splits must list val")
    test = ds.splits.get("test") if eval_cfg.test_each_epoch else None
    own_writer = writer is None
    writer = writer or CheckpointWriter()
    try:
        for epoch in range(loop.epoch, cfg.epochs):
            if should_stop(loop, cfg):
                break
            t0 = time.perf_counter()
            row = train_one_epoch(tr, epoch, seed, loop, progress)
            if val is not None:
                val_model = tr.eval_model(eval_cfg.use_ema if eval_cfg.val_uses_ema is None else eval_cfg.val_uses_ema)
                row.update(validate(val_model, val, cfg, eval_cfg, epoch_generator(seed, epoch, 2), device))
                _track_best(loop, _score(row, cfg), epoch, val_model)
                if isinstance(tr.sched, KerasPlateau):  # after the epoch's checkpoint choice, as Keras's callbacks run
                    tr.sched.epoch_end(row[cfg.monitor])
            if test is not None:  # recorded for a paper's test-selected number; never used to select
                row["test_acc"] = test_accuracy(tr.eval_model(eval_cfg.use_ema), test, cfg, device)
            row["seconds"] = time.perf_counter() - t0
            loop.history.append(row)
            loop.epoch = epoch + 1
            progress.end_epoch(row)
            if dist.is_main():  # only rank 0 writes records
                writer.submit(ckpt_path, checkpoint_state(tr.parts(), loop, device, job_dir.name), job_dir / HISTORY_FILE, loop.history)
    finally:
        if own_writer:
            writer.close()  # the last checkpoint is on disk before fit returns or raises
    stopped_early = loop.epoch < cfg.epochs  # only early stopping leaves epochs unrun
    return FitResult(tr.eval_model(eval_cfg.use_ema), loop.best_state, loop.best_epoch, len(loop.history),
                     stopped_early, loop.history)


def train_one_epoch(tr: Trainer, epoch: int, seed: int, loop: LoopState, progress: Progress) -> dict[str, Any]:
    """One pass over the training split in the (seed, epoch) order; the epoch's history row so far."""
    tr.model.train()
    host_order = epoch_order(tr, epoch_generator(seed, epoch, 0))
    order = to_device(host_order, tr.device)
    aug_gen = epoch_generator(seed, epoch, 1)
    step_loss = torch.empty(tr.steps_per_epoch, device=tr.device)  # each step's mean loss
    step_correct = torch.empty(tr.steps_per_epoch, device=tr.device, dtype=torch.long)
    step_lr = [0.0] * tr.steps_per_epoch  # the lr each step used (before the schedule's step)
    first_step = loop.step + 1
    progress.start_epoch(epoch, tr.cfg.epochs, tr.steps_per_epoch)
    for i in range(tr.steps_per_epoch):
        rows = slice(i * tr.batch, (i + 1) * tr.batch)
        x, y, target = _batch(tr, order[rows], host_order[rows], aug_gen)
        step_lr[i] = float(tr.opt.param_groups[0]["lr"])
        logits, loss = train_step(tr, x, y, target)
        loop.step += 1
        if tr.ema is not None:
            tr.ema.update(tr.core, loop.step)
        step_loss[i] = loss.detach()
        torch.sum(logits.detach().argmax(1) == y, dim=0, out=step_correct[i])
        progress.advance()
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == tr.steps_per_epoch:
            _check_finite(step_loss, i, loop.step, epoch)
    progress.steps(first_step, epoch + 1, step_loss.tolist(), step_lr)
    sizes = [min(tr.batch, len(tr.images) - i * tr.batch) for i in range(tr.steps_per_epoch)]  # the last may be partial
    seen = sum(sizes)
    my_rows = torch.tensor([len(range(n)[tr.mine]) for n in sizes], device=tr.device, dtype=step_loss.dtype)
    loss_sum = dist.all_reduce((step_loss * my_rows).sum())
    correct = dist.all_reduce(step_correct.sum())
    return {"epoch": epoch + 1, "step": loop.step, "lr": tr.opt.param_groups[0]["lr"],
            "train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen}


def epoch_order(tr: Trainer, gen: torch.Generator) -> torch.Tensor:
    """The epoch's training rows: a permutation, or (`sampler: balanced`) as many draws with
    replacement, each image weighted 1 / its class's count so every class is equally likely."""
    if tr.cfg.sampler == "uniform":
        return torch.randperm(len(tr.images), generator=gen)
    labels = tr.labels.cpu()
    weights = 1.0 / torch.bincount(labels).double()[labels]
    return torch.multinomial(weights, len(labels), replacement=True, generator=gen)


def _batch(tr: Trainer, glob: torch.Tensor, host_glob: torch.Tensor, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """This rank's augmented images, hard labels and target distributions of one global batch."""
    cfg, idx = tr.cfg, glob[tr.mine]
    x = augment_batch(to_unit(tr.images.index_select(0, idx)), cfg.input_size, cfg.augment, gen, len(glob), tr.mine, cfg.in_chans)
    x = finish(x, cfg.in_chans, cfg.normalize, cfg.norm_mean, cfg.norm_std).contiguous(memory_format=tr.fmt)
    y = tr.labels[idx]
    if cfg.loss == "sampled":  # FER+ "probability": a fresh one-hot draw from the target every step
        y = to_device(draw_labels(tr.host_targets, host_glob, gen)[tr.mine], tr.device)
    return x, y, tr.targets[idx] if tr.targets is not None else None


def train_step(tr: Trainer, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step and the schedule's step; returns the logits and the loss. The step replays
    a CUDA graph when `tr.graphed` holds one (the graph's gradients are overwritten, never zeroed)."""
    if tr.graphed is not None:
        logits, loss = tr.graphed(x, y, target)
    else:
        tr.opt.zero_grad(set_to_none=True)
        logits, loss = update(tr, x, y, target)
    tr.sched.step()
    return logits, loss


def update(tr: Trainer, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, cache: bool = True
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward, (clipped) optimizer step: what a CUDA graph captures (`cache=False` there)."""
    cfg = tr.cfg
    with autocast_ctx(tr.device, cfg.amp, cache, cpu=cfg.cpu_amp):
        logits = tr.model(x)
        if tr.teacher is not None:
            with torch.no_grad():
                target = torch.softmax(tr.teacher(x).float(), dim=1)
        loss = compute_loss(tr.core, logits, y, target, cfg)
    tr.scaler.scale(loss).backward()
    if cfg.clip_grad_norm:
        if tr.scaler.is_enabled() and not cfg.clip_before_unscale:
            tr.scaler.unscale_(tr.opt)
        torch.nn.utils.clip_grad_norm_(tr.core.parameters(), cfg.clip_grad_norm)
    tr.scaler.step(tr.opt)
    tr.scaler.update()
    return logits, loss


def _check_finite(step_loss: torch.Tensor, i: int, step: int, epoch: int) -> None:
    """Fail the job at the first non-finite loss among the steps since the last check (one host read)."""
    lo = i // CHECK_EVERY * CHECK_EVERY
    bad = ~torch.isfinite(step_loss[lo : i + 1])
    first = torch.where(bad.any(), bad.int().argmax() + (step - i + lo), -1)  # its global step
    first_bad = int(dist.all_reduce(first, "max"))
    if first_bad >= 0:
        raise JobFailed(f"non-finite loss at epoch {epoch + 1}, step {first_bad}")


def validate(model: nn.Module, val: Split, cfg: TrainConfig, eval_cfg: EvalConfig, gen: torch.Generator,
             device: torch.device) -> dict[str, float]:
    """Validation loss and accuracy (centre view, or EmoNeXt code's random crop)."""
    mode = "random_crop" if eval_cfg.val_mode == "random_crop" else "none"
    logits = dist.sharded(lambda part: predict(model, part, cfg, device, mode, eval_cfg.tta_resize_ratio, gen), val.images)
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(val.labels)))
    if cfg.l2:  # Keras's validation loss holds the regularisers' penalty too
        with torch.no_grad():
            loss += cfg.l2 * float(l2_penalty(model))
    return {"val_loss": loss, "val_acc": float((logits.argmax(1) == val.labels).mean())}


def test_accuracy(model: nn.Module, test: Split, cfg: TrainConfig, device: torch.device) -> float:
    """The epoch's test accuracy, centre view: the number a paper that reports its best test epoch picks."""
    logits = dist.sharded(lambda part: predict(model, part, cfg, device, "none", 1.0, None), test.images)
    return float((logits.argmax(1) == test.labels).mean())


def _score(row: dict[str, Any], cfg: TrainConfig) -> float:
    """The monitored validation number as a score where higher is better: val_acc, or -val_loss."""
    return -row["val_loss"] if cfg.monitor == "val_loss" else row["val_acc"]


def _track_best(loop: LoopState, score: float, epoch: int, model: nn.Module) -> None:
    """Keep the best validation epoch's weights (strictly better `_score`, as Keras's ModelCheckpoint
    with save_best_only); count the epochs since it for early stopping."""
    if score > loop.best_val:
        loop.best_val, loop.best_epoch, loop.since_best = score, epoch + 1, 0
        loop.best_state = cpu_snapshot(model.state_dict())
    else:
        loop.since_best += 1
