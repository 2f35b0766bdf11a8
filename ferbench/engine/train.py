"""The training loop, readable top to bottom.

Exact resume: the data order and the augmentation stream of epoch e come from generators seeded by
(seed, e), and the global RNG state is saved with every end-of-epoch checkpoint, so a run killed at
any moment and restarted repeats the interrupted epoch bit for bit (on the CPU).
No per-step host syncs: each step's loss and correct count go into per-epoch buffers on the device
(one copy and one sum a step, few kernel launches for a GPU's host to issue), summed and read once
per epoch; the divergence check reads one flag for the last `CHECK_EVERY` steps' losses.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferbench.data import FerDataset
from ferbench.data.augment import augment_batch, finish, to_device, to_unit
from ferbench.engine import dist
from ferbench.engine.evaluate import autocast_ctx, predict
from ferbench.engine.optim import ModelEma, build_optimizer, build_scheduler
from ferbench.errors import FerbenchError, JobFailed
from ferbench.runs import write_atomic, write_text_atomic
from ferbench.spec import EvalConfig, TrainConfig

CHECK_EVERY = 50


class Progress(Protocol):
    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...
    def advance(self) -> None: ...
    def end_epoch(self, row: dict[str, Any]) -> None: ...


class NoProgress:
    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...
    def advance(self) -> None: ...
    def end_epoch(self, row: dict[str, Any]) -> None: ...


@dataclass
class FitResult:
    model: nn.Module  # the model evaluated: the EMA copy when EMA is on and eval.use_ema
    best_state: dict[str, torch.Tensor] | None
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 16 + stream)


def soft_ce(logits: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """-sum t log softmax(z), divided by N x classes ("paper", the article's formula) or by N."""
    total = -(target * F.log_softmax(logits.float(), dim=1)).sum()
    denom = logits.shape[0] * (logits.shape[1] if reduction == "paper" else 1)
    return total / denom


def compute_loss(
    model: nn.Module, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, cfg: TrainConfig
) -> torch.Tensor:
    if cfg.loss == "ldl":
        loss = soft_ce(logits, target, cfg.ldl_reduction)
        if cfg.ldl_hard_weight:
            loss = loss + cfg.ldl_hard_weight * F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    else:
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    aux = getattr(model, "aux_loss", None)
    return loss if aux is None else loss + aux.float()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    # by path: torch's C++ writer fills the file directly (no in-memory copy, no Python call per chunk)
    write_atomic(path, lambda p: torch.save(state, str(p)))


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`obj` (nested dicts, lists, tuples) with every tensor replaced by fn(tensor)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _cpu_copy(obj: Any) -> Any:
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
            _write_history(history_path, history)
        except BaseException as e:  # noqa: BLE001  (re-raised in the training thread)
            self._error = e

    def submit(self, path: Path, state: dict[str, Any], history_path: Path, history: list[dict[str, Any]]) -> None:
        self.close()
        snapshot = _cpu_copy(state)
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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """weights_only load: a checkpoint can never run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unpickling failure is bad input)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise FerbenchError(f"{path}: not a loadable ferbench checkpoint ({first})") from None


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    lines = [",".join(keys)] + [",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in keys) for r in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


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
    stop_after_steps: int | None = None,
    writer: CheckpointWriter | None = None,
) -> FitResult:
    """Train with per-epoch checkpoints and validation; resume from `job_dir/checkpoint.pt` if present.

    Checkpoints go through `writer` when given (the caller closes it, and may overlap the last write
    with its own work); else through a writer of fit's own, closed before fit returns.
    """
    progress = progress or NoProgress()
    train = ds.splits["train"]
    if cfg.loss in ("ldl", "sampled") and cfg.ldl_source == "votes" and train.targets is None:
        raise FerbenchError(f"dataset {ds.name!r} has no annotator votes: train.loss=ldl needs ldl_source: teacher")
    if cfg.loss == "ldl" and cfg.ldl_source == "teacher" and teacher is None:
        raise FerbenchError("train.ldl_source=teacher needs a model entry with depends_on: <teacher model id>")
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    rank, world = dist.world()
    core = model.to(device, memory_format=fmt)  # the module whose weights are saved and evaluated
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":  # SyncBatchNorm is CUDA-only; on the CPU BatchNorm sees each rank's rows
            core = nn.SyncBatchNorm.convert_sync_batchnorm(core)
        model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
    images = torch.from_numpy(train.images).to(device)
    labels = torch.from_numpy(train.labels).to(device)
    targets = torch.from_numpy(train.targets).to(device) if train.targets is not None else None
    host_targets = torch.from_numpy(train.targets) if cfg.loss == "sampled" else None  # drawn from on the host
    n = len(train)
    batch = min(cfg.batch_size, n)
    if batch % world:
        raise FerbenchError(f"train.batch_size {batch} must be divisible by the {world} data-parallel processes")
    mine = slice(rank, None, world)  # this rank's rows of each global batch
    rows_per_step = len(range(batch)[mine])
    steps_per_epoch = n // batch
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    ema = ModelEma(core, cfg.ema) if cfg.ema else None
    if cfg.compile and device.type == "cuda":
        core.compile()  # in place: state-dict keys, attributes and the EMA copy stay those of the plain module
    use_scaler = device.type == "cuda" and cfg.amp == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    val = ds.splits.get("val")

    ckpt_path = job_dir / "checkpoint.pt"
    start_epoch, step, best_val, best_epoch, since_best = 0, 0, -1.0, -1, 0
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    if ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        try:
            core.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if ema is not None:
                ema.load_state_dict(ck["ema"])
            scaler.load_state_dict(ck["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            msg = str(e).strip().splitlines()[0][:160]
            raise FerbenchError(f"{ckpt_path}: checkpoint does not match this job's model or optimizer ({msg})") from None
        torch.set_rng_state(ck["rng_torch"])
        if device.type == "cuda" and ck.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ck["rng_cuda"])
        start_epoch, step = ck["epoch"], ck["step"]
        best_val, best_epoch, since_best = ck["best_val"], ck["best_epoch"], ck["since_best"]
        history = ck["history"]
        best_state = ck.get("best_state")

    eval_model = lambda: ema.module if (ema is not None and eval_cfg.use_ema) else core  # noqa: E731
    stopped_early = False
    own_writer = writer is None
    writer = writer or CheckpointWriter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if cfg.early_stopping_patience and since_best >= cfg.early_stopping_patience:
                stopped_early = True
                break
            t0 = time.perf_counter()
            model.train()
            host_order = torch.randperm(n, generator=epoch_generator(seed, epoch, 0))
            order = to_device(host_order, device)
            aug_gen = epoch_generator(seed, epoch, 1)
            step_loss = torch.empty(steps_per_epoch, device=device)  # each step's mean loss
            step_correct = torch.empty(steps_per_epoch, device=device, dtype=torch.long)
            progress.start_epoch(epoch, cfg.epochs, steps_per_epoch)
            for i in range(steps_per_epoch):
                glob = order[i * batch : (i + 1) * batch]
                idx = glob[mine]
                x = augment_batch(to_unit(images.index_select(0, idx)), cfg.input_size, cfg.augment, aug_gen, len(glob), mine, cfg.in_chans)
                x = finish(x, cfg.in_chans, cfg.normalize).contiguous(memory_format=fmt)
                y = labels[idx]
                if cfg.loss == "sampled":  # FER+ "probability": a fresh one-hot draw from the target every step
                    drawn = torch.multinomial(host_targets[host_order[i * batch : (i + 1) * batch]].float(), 1, generator=aug_gen)
                    y = to_device(drawn.squeeze(1)[mine], device)
                with autocast_ctx(device, cfg.amp):
                    logits = model(x)
                    target = targets[idx] if targets is not None else None
                    if teacher is not None and cfg.loss == "ldl" and cfg.ldl_source == "teacher":
                        with torch.no_grad():
                            target = torch.softmax(teacher(x).float(), dim=1)
                    loss = compute_loss(core, logits, y, target, cfg)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.clip_grad_norm:
                    if use_scaler and not cfg.clip_before_unscale:
                        scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.clip_grad_norm)
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                if ema is not None:
                    ema.update(core, step)
                step_loss[i] = loss.detach()
                torch.sum(logits.detach().argmax(1) == y, dim=0, out=step_correct[i])
                progress.advance()
                if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps_per_epoch:
                    lo = i // CHECK_EVERY * CHECK_EVERY  # the steps since the last check
                    bad = ~torch.isfinite(step_loss[lo : i + 1])
                    first = torch.where(bad.any(), bad.int().argmax() + (step - i + lo), -1)  # its global step
                    first_bad = int(dist.all_reduce(first, "max"))  # one sync every CHECK_EVERY steps
                    if first_bad >= 0:
                        raise JobFailed(f"non-finite loss at epoch {epoch + 1}, step {first_bad}")
                if stop_after_steps is not None and step >= stop_after_steps:
                    raise KeyboardInterrupt  # test hook: simulate a kill mid-epoch
            seen = steps_per_epoch * batch
            loss_sum = dist.all_reduce(step_loss.sum() * rows_per_step)
            correct = dist.all_reduce(step_correct.sum())
            row: dict[str, Any] = {
                "epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"],
                "train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen,
            }
            if val is not None and "val" in eval_cfg.splits:
                mode = "random_crop" if eval_cfg.val_mode == "random_crop" else "none"
                vgen = epoch_generator(seed, epoch, 2)
                vlogits = dist.sharded(lambda part: predict(eval_model(), part, cfg, device, mode, eval_cfg.tta_resize_ratio, vgen),
                                       val.images)
                row["val_loss"] = float(F.cross_entropy(torch.from_numpy(vlogits), torch.from_numpy(val.labels)))
                row["val_acc"] = float((vlogits.argmax(1) == val.labels).mean())
                if row["val_acc"] > best_val:
                    best_val, best_epoch, since_best = row["val_acc"], epoch + 1, 0
                    best_state = _cpu_copy(eval_model().state_dict())
                else:
                    since_best += 1
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            progress.end_epoch(row)
            if rank != 0:
                continue  # only rank 0 writes records
            writer.submit(ckpt_path, {
                "model": core.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "scaler": scaler.state_dict(),
                "rng_torch": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                "epoch": epoch + 1, "step": step, "best_val": best_val, "best_epoch": best_epoch,
                "since_best": since_best, "history": history, "best_state": best_state,
            }, job_dir / "history.csv", history)
    finally:
        if own_writer:
            writer.close()  # the last checkpoint is on disk before fit returns or raises
    if cfg.early_stopping_patience and since_best >= cfg.early_stopping_patience and len(history) < cfg.epochs:
        stopped_early = True
    return FitResult(eval_model(), best_state, best_epoch, len(history), stopped_early, history)

