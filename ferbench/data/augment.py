"""Batched augmentation on the training device: one affine warp per batch, no per-sample PIL.

Flip, rotation, zoom, shift and "resize by r then random-crop" are composed into one 2x3 matrix
per sample and applied with one `grid_sample` at no more than the source resolution, then upsampled
to the model's input size. Random numbers come from a seeded CPU `torch.Generator`, so the stream is
the same on every device and can be saved and restored for exact resume.

Upsampling on the CPU (48 -> 224) is memory-bound, so there the warped batch is rounded to uint8
(what torchvision's PIL pipeline holds at every step) and upsampled by PyTorch's vectorised uint8
bilinear kernel straight into the channels-last 3-channel layout the model reads; on CUDA it stays
float. Either way the result is the model's input before normalisation, in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ferbench.spec import AugmentConfig


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W) in [0, 1]; warps happen here, so padding is black."""
    return images.unsqueeze(1).float().div_(255.0)


def finish(x: torch.Tensor, in_chans: int, normalize: str) -> torch.Tensor:
    """Normalise and repeat grey to 3 channels when the model wants 3 (explicit, as the papers do)."""
    if normalize == "half":
        x = x.mul(2.0).sub_(1.0)  # (x - 0.5) / 0.5 in one new tensor
    return x.expand(-1, 3, -1, -1) if in_chans == 3 and x.shape[1] == 1 else x


_BASE_GRIDS: dict[tuple[int, str], torch.Tensor] = {}


def _base_grid(size: int, device: torch.device) -> torch.Tensor:
    """(size*size, 3) rows [x, y, 1] of output pixel centres (align_corners=False), cached."""
    key = (size, str(device))
    if key not in _BASE_GRIDS:
        c = (torch.arange(size, dtype=torch.float32, device=device) * 2 + 1) / size - 1
        gy, gx = torch.meshgrid(c, c, indexing="ij")
        _BASE_GRIDS[key] = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones_like(gx).reshape(-1)], 1)
    return _BASE_GRIDS[key]


def affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """`F.affine_grid(theta, (N, C, size, size), align_corners=False)` from a cached base grid."""
    grid = torch.einsum("pk,njk->npj", _base_grid(size, theta.device), theta)  # 10x faster than a broadcast bmm here
    return grid.view(theta.shape[0], size, size, 2)


def random_affine(n: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates (normalised, align_corners=False)."""
    u = torch.rand(n, 6, generator=gen, dtype=torch.float64)
    angle = (u[:, 0] * 2 - 1) * math.radians(cfg.rotation)
    lo, hi = cfg.scale
    zoom = lo + u[:, 1] * (hi - lo)
    s = 1.0 / (cfg.resize_ratio * zoom)  # output covers 1/s of the (resized) source
    room = (1 - s).clamp(min=0)  # how far a crop of that size may move inside the source
    tx = (u[:, 2] * 2 - 1) * room + (u[:, 4] * 2 - 1) * 2 * cfg.translate
    ty = (u[:, 3] * 2 - 1) * room + (u[:, 5] * 2 - 1) * 2 * cfg.translate
    flips = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    fx = torch.where((flips[:, 0] < 0.5) & torch.tensor(cfg.hflip), -1.0, 1.0).double()
    fy = torch.where((flips[:, 1] < 0.5) & torch.tensor(cfg.vflip), -1.0, 1.0).double()
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    theta = torch.stack(
        [torch.stack([cos * fx, -sin * fy, tx], 1), torch.stack([sin * fx, cos * fy, ty], 1)], 1
    )
    return theta.float()


def augment_batch(
    x: torch.Tensor, out_size: int, cfg: AugmentConfig, gen: torch.Generator, n_total: int | None = None,
    part: slice = slice(None), out_chans: int = 1,
) -> torch.Tensor:
    """Apply per-sample random affine augmentation and resize to out_size: (N, out_chans, S, S) in [0, 1].

    In data-parallel training each rank holds rows `part` of a global batch of `n_total`: the matrices
    are drawn for the whole global batch (same stream on every rank) and sliced, so the result equals
    the single-process one. With out_chans=3 the grey image is repeated (channels-last on the CPU).
    """
    theta = random_affine(n_total or x.shape[0], cfg, gen)[part].to(x.device, non_blocking=True)
    # Warp at no more than the source resolution, then upsample: like torchvision's pipeline, which
    # rotates the 48x48 image before Resize(236), and far cheaper than sampling 224x224 points.
    warp = min(out_size, max(x.shape[-2:]))
    y = F.grid_sample(x, affine_grid(theta, warp).to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    if warp != out_size and y.device.type == "cpu":
        return _upsample_uint8(y, out_size, out_chans)
    if warp != out_size:
        y = F.interpolate(y, size=(out_size, out_size), mode="bilinear", align_corners=False)
    return y.expand(-1, 3, -1, -1) if out_chans == 3 else y


def _upsample_uint8(y: torch.Tensor, out_size: int, out_chans: int) -> torch.Tensor:
    """CPU upsample through PyTorch's uint8 bilinear kernel, channels-last when 3 channels are wanted."""
    q = y.mul(255.0).round_().to(torch.uint8)
    if out_chans == 3:
        q = q.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
    up = F.interpolate(q, size=(out_size, out_size), mode="bilinear", align_corners=False)
    return up.float().mul_(1.0 / 255.0)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


def ten_crop(x: torch.Tensor, size: int, resize_ratio: float) -> torch.Tensor:
    """(N, C, H, W) -> (10, N, C, size, size): resize to size*ratio, 4 corners + centre, and their flips."""
    big = resize(x, int(round(size * resize_ratio)))
    h, w = big.shape[-2:]
    tops = [0, 0, h - size, h - size, (h - size) // 2]
    lefts = [0, w - size, 0, w - size, (w - size) // 2]
    crops = [big[..., t : t + size, l : l + size] for t, l in zip(tops, lefts)]
    crops += [c.flip(-1) for c in crops]
    return torch.stack(crops)


def random_crop_eval(x: torch.Tensor, size: int, resize_ratio: float, gen: torch.Generator) -> torch.Tensor:
    """EmoNeXt code's validation view: resize to size*ratio, one random crop per sample."""
    big = resize(x, int(round(size * resize_ratio)))
    room = big.shape[-1] - size
    offs = torch.randint(0, room + 1, (x.shape[0], 2), generator=gen).tolist()
    return torch.stack([big[i, :, t : t + size, l : l + size] for i, (t, l) in enumerate(offs)])
