"""Optimizers, per-step learning-rate schedules and EMA, built from a resolved TrainConfig."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
import torch.nn as nn

from ferbench.spec import EmaConfig, TrainConfig


def implementation(device_type: str) -> str:
    """Which torch implementation of the (same) update rule runs: "fused" on CUDA, torch's default elsewhere.

    On CUDA the fused kernels update every tensor in a handful of launches; torch's default there
    (foreach) launches per group of tensors and reads AdamW's step counters on the host (412 reads a
    step for EmoNeXt-T, `ferbench bench profile` on an H200), and a batch-64 step at 224 is bound by
    the host. The CPU keeps torch's default, so CPU runs repeat earlier ones bit for bit.
    """
    return "fused" if device_type == "cuda" else "default"


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    impl = {"fused": True} if params and implementation(params[0].device.type) == "fused" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **impl)
    if cfg.optimizer == "adam":  # weight decay as an L2 term in the gradient (torch.optim.Adam, Keras's Adam + L2)
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay, **impl)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step `step` (0-based)."""
    total = max(cfg.epochs * steps_per_epoch, 1)
    floor = cfg.min_lr / cfg.lr

    def factor(step: int) -> float:
        if cfg.schedule == "step":  # linear warm-up, then decay by gamma every step_size epochs
            warm = (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else 1.0
            return warm * cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        if cfg.restart_steps and cfg.schedule == "cosine":
            return _warm_restart_factor(cfg, step)
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min((step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _warm_restart_factor(cfg: TrainConfig, step: int) -> float:
    """EmoNeXt code's CosineAnnealingWithWarmRestartsLR: its counter has already stepped once when the
    first optimizer step runs (LRScheduler's constructor calls step()), so optimizer step k runs at
    position p = (k + 1) mod restart_steps: warm-up p / warmup_steps (so p = 0, each restart, is an lr
    of exactly min_lr), then a cosine from lr to min_lr over the rest of the cycle."""
    floor = cfg.min_lr / cfg.lr
    pos = (step + 1) % cfg.restart_steps
    if pos < cfg.warmup_steps:
        return floor + (1 - floor) * pos / cfg.warmup_steps
    progress = (pos - cfg.warmup_steps) / max(cfg.restart_steps - cfg.warmup_steps, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class KerasPlateau:
    """Keras 2.0's ReduceLROnPlateau, stepped once an epoch with the monitored value (`epoch_end`); the
    per-step `step()` leaves the lr alone.

    Keras 2.0.5 tests its counter before raising it: with patience p the first drop comes at the
    (p + 1)-th epoch without an improvement of more than `min_delta`, and later drops every p such
    epochs (the counter restarts at 1 after a drop). torch's ReduceLROnPlateau waits p + 1 epochs
    every time, and later Keras releases p every time, so neither gives the code's lr curve: this
    class is those 15 lines of Keras. The lr never goes below min_lr (Keras skips a drop once the
    lr is within min_lr x 1e-4 of it).
    """

    def __init__(self, opt: torch.optim.Optimizer, cfg: TrainConfig) -> None:
        self.opt, self.factor, self.patience = opt, cfg.gamma, cfg.plateau_patience
        self.min_delta, self.min_lr = cfg.plateau_min_delta, cfg.min_lr
        self.lower_is_better = cfg.monitor.endswith("loss")
        self.best = math.inf if self.lower_is_better else -math.inf
        self.wait = 0

    def step(self) -> None:
        """Called after every optimizer step, like the other schedules: nothing to do."""

    def epoch_end(self, value: float) -> None:
        improved = value < self.best - self.min_delta if self.lower_is_better else value > self.best + self.min_delta
        if improved:
            self.best, self.wait = value, 0
            return
        if self.wait >= self.patience:
            dropped = False
            for group in self.opt.param_groups:
                if group["lr"] > self.min_lr + self.min_lr * 1e-4:
                    group["lr"], dropped = max(group["lr"] * self.factor, self.min_lr), True
            if dropped:
                self.wait = 0
        self.wait += 1

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.wait = float(state["best"]), int(state["wait"])


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """The schedule stepped after every optimizer step: a LambdaLR of `lr_factor`, or `KerasPlateau`."""
    if cfg.schedule == "plateau":
        return KerasPlateau(opt, cfg)
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, steps_per_epoch))


def ema_decay(cfg: EmaConfig, step: int) -> float | None:
    """The EMA's decay after optimizer step `step` (1-based): None = no update at this step, 0.0 = copy.

    flat: every `every` steps, a copy before `warmup_steps`, then `decay`.
    ema_pytorch (0.3.x-0.6.3, as EmoNeXt's code calls it once per step): its call counter c = step - 1
    updates when c % every == 0, copies while c <= warmup_steps (its update_after_step) and once more
    at the first update after that (its `initted` flag: copy, then average with itself), and then
    decays by min(decay, 1 - (1 + t) ** -power) with t = c - warmup_steps (inv_gamma 1).
    ema_pytorch_0.6.4 (0.6.4 to today's 0.7.9): `initted` is set at the first call, so the first update
    after the warm-up (optimizer step 113 at every 16, warm-up 100) averages instead of copying.
    """
    if cfg.rule == "flat":
        if step % cfg.every:
            return None
        return 0.0 if step < cfg.warmup_steps else cfg.decay
    calls = step - 1
    if calls % cfg.every:
        return None
    t = calls - cfg.warmup_steps
    if cfg.rule == "ema_pytorch_0.6.4":  # its `initted` copy moved to the very first call: nothing extra after the warm-up
        return 0.0 if t <= 0 else min(cfg.decay, 1.0 - (1.0 + t) ** -cfg.power)
    return 0.0 if t <= cfg.every else min(cfg.decay, 1.0 - (1.0 + t) ** -cfg.power)


class ModelEma:
    """Exponential moving average of weights (buffers copied), updated every `every` steps.

    Before `warmup_steps` the average is reset to the live weights, as EmoNeXt's code does. The
    update is e <- lerp(e, m, 1 - decay) over all floating tensors in one multi-tensor op
    (`torch._foreach_lerp_`: one kernel per group of tensors, not two per tensor), and one
    multi-tensor copy for the integer buffers (BatchNorm's batch counts).
    """

    def __init__(self, model: nn.Module, cfg: EmaConfig):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.cfg = cfg
        self._pairs: tuple[int, list, list, list, list] | None = None

    def _tensors(self, model: nn.Module) -> tuple[list, list, list, list]:
        """(EMA floats, live floats, EMA others, live others), listed once per live model."""
        if self._pairs is None or self._pairs[0] != id(model):
            floats: tuple[list, list] = ([], [])
            others: tuple[list, list] = ([], [])
            for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
                pair = floats if e.dtype.is_floating_point else others
                pair[0].append(e)
                pair[1].append(m.detach())
            self._pairs = (id(model), *floats, *others)
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """After optimizer step `step` (1-based): average (or copy) the live weights in, per the rule."""
        decay = ema_decay(self.cfg, step)
        if decay is None:
            return
        ema_f, live_f, ema_o, live_o = self._tensors(model)
        if ema_f:
            torch._foreach_lerp_(ema_f, live_f, 1.0 - decay)
        if ema_o and self.cfg.rule == "flat":  # ema_pytorch leaves integer buffers (BN batch counts) as they were
            torch._foreach_copy_(ema_o, live_o)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.module.load_state_dict(sd)
