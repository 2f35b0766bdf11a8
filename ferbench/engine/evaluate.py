"""Evaluation: per-sample logits for a split, with batched test-time augmentation.

TTA is batched: the 10 TenCrop views (or 2 flip views) of a batch go through the model as one
forward over the expanded batch and their logits are averaged (as EmoNeXt's code averages them).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from ferbench.data.augment import finish, random_crop_eval, resize, ten_crop, to_unit
from ferbench.spec import EMONEXT_RESIZE_RATIO, TrainConfig


def autocast_ctx(device: torch.device, amp: str, cache: bool = True, cpu: bool = False):
    """bf16/fp16 autocast on CUDA when asked (auto -> bf16), and on the CPU with `cpu` (train.cpu_amp);
    a no-op elsewhere. `cache=False` inside a CUDA graph capture (autocast's cache of cast weights must
    not outlive the capture); the casts are the same either way."""
    if amp == "off" or device.type not in ("cuda", "cpu") or (device.type == "cpu" and not cpu):
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def views(x: torch.Tensor, size: int, tta: str, ratio: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """(V, N, C, size, size) views of a float batch for the given TTA mode."""
    if tta == "tencrop":
        return ten_crop(x, size, ratio)
    if tta == "random_crop":
        return random_crop_eval(x, size, ratio, gen)[None]
    base = resize(x, size)
    if tta == "flip":
        return torch.stack([base, base.flip(-1)])
    return base[None]


def network_input(xb: torch.Tensor, cfg: TrainConfig, tta: str, ratio: float,
                  gen: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """A uint8 batch (N, H, W[, 3]) as the network takes it under `tta` (crops from a resize by `ratio`,
    the job's `eval.tta_resize_ratio`): (V*N, C, size, size) floats, view-major, normalised as the run
    trained; and V, the number of views per image."""
    v = views(to_unit(xb), cfg.input_size, tta, ratio, gen)
    n_views, n = v.shape[:2]
    return finish(v.reshape(n_views * n, *v.shape[2:]), cfg.in_chans, cfg.normalize, cfg.norm_mean, cfg.norm_std), n_views


@contextmanager
def sampling_dropout(model: nn.Module, on: bool, seed: int) -> Iterator[None]:
    """The model in eval mode; with `on`, its dropout modules keep sampling (train mode), from a
    torch RNG seeded by `seed` and restored afterwards: the released Deep-Emotion code's evaluation
    (`F.dropout(out)` ignores eval mode), repeatable. The model's modes are restored on exit."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        if not on:
            yield
            return
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield
    finally:
        for m, training in modes.items():
            m.training = training


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    tta: str = "none",
    tta_resize_ratio: float = EMONEXT_RESIZE_RATIO,
    gen: torch.Generator | None = None,
    keep_mode: bool = False,
) -> np.ndarray:
    """Logits (N, K) float32 for uint8 images (N, H, W); the model is put in eval mode unless
    `keep_mode` (the caller has set its modes, e.g. `sampling_dropout`)."""
    if not keep_mode:
        model.eval()
    src = torch.from_numpy(images)
    if device.type == "cuda":
        src = src.pin_memory()  # so the per-batch copies below are truly asynchronous
    out = []
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for start in range(0, len(src), cfg.eval_batch_size):
        xb = src[start : start + cfg.eval_batch_size].to(device, non_blocking=True)
        flat, n_views = network_input(xb, cfg, tta, tta_resize_ratio, gen)
        with autocast_ctx(device, cfg.amp, cpu=cfg.cpu_amp):
            logits = model(flat.contiguous(memory_format=fmt))
        out.append(logits.float().reshape(n_views, len(xb), -1).mean(0))
    return torch.cat(out).cpu().numpy().astype(np.float32)
