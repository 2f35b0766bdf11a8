"""Batched augmentation on the training device: one affine warp per batch, no per-sample PIL.

Flip, rotation, zoom, shift and "resize by r then random-crop" are composed into one 2x3 matrix
per sample and applied with one `grid_sample` at no more than the source resolution, then upsampled
to the model's input size. Random numbers come from a seeded CPU `torch.Generator`, so the stream is
the same on every device and can be saved and restored for exact resume.

On CUDA the upsample is `F.interpolate`. On the CPU it is two matrix products with the same bilinear
weights (`upsample_bilinear`), the second one writing the channels-last 3-channel layout the model
reads in one pass: a 32-image batch at 224 is 19 MB of float output, and PyTorch's own kernels need
several passes over it (float bilinear, then the grey-to-3-channel copy) or a uint8 detour. Either
way the result is the model's input before normalisation, in [0, 1].
"""

from __future__ import annotations

import math
from functools import lru_cache

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
        return upsample_bilinear(y, out_size, out_chans)
    if warp != out_size:
        y = F.interpolate(y, size=(out_size, out_size), mode="bilinear", align_corners=False)
    return y.expand(-1, 3, -1, -1) if out_chans == 3 else y


@lru_cache(maxsize=16)
def _upsample_plan(n_in: int, n_out: int, chans: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Matrices of the separable upsample n_in -> n_out (see `upsample_bilinear`), cached per size.

    With g = gcd(n_in, n_out), output columns come in g blocks of p_out = n_out / g that read only a
    window of p_in + 2 input columns (p_in = n_in / g, one more each side), and under edge replication
    every block has the same weights: so the horizontal pass is one (rows*g, window) x (window, p_out*chans)
    product instead of a dense (rows, n_in) x (n_in, n_out*chans) one (48 -> 224: 5 x 42 instead of 48 x 672).
    Returns the vertical weights (n_out, n_in), the window gatherer (n_in, g*window) and the block
    weights (window, p_out*chans), and the window length.
    """
    g = math.gcd(n_in, n_out)
    p_in, p_out, window = n_in // g, n_out // g, n_in // g + 2
    cols = torch.arange(g * window)
    gather = torch.zeros(n_in, g * window, dtype=torch.float64)  # edge-replicated windows, column -1 first
    gather[((cols // window) * p_in - 1 + cols % window).clamp(0, n_in - 1), cols] = 1.0
    # one block's weights without edge clamping: output r reads window columns i0 + 1 and i0 + 2;
    # at the image edges the replicated window gives what PyTorch's clamped indices give
    r = torch.arange(p_out, dtype=torch.float64)
    src = (r + 0.5) * (p_in / p_out) - 0.5
    i0 = src.floor()
    lam = src - i0
    block = torch.zeros(window, p_out, dtype=torch.float64)
    block[(i0 + 1).long(), r.long()] = 1 - lam
    block[(i0 + 2).long(), r.long()] += lam
    # the same weights as a dense (n_out, n_in) matrix for the vertical pass
    vertical = torch.einsum("jbk,kr->brj", gather.view(n_in, g, window), block).reshape(n_out, n_in)
    # stored transposed (a column-major right operand): MKL's product is ~15 % faster that way here
    return (vertical.float(), gather.float(), block.repeat_interleave(chans, dim=1).float().T.contiguous().T, window)


def upsample_bilinear(y: torch.Tensor, out_size: int, out_chans: int = 1) -> torch.Tensor:
    """`F.interpolate(y, out_size, "bilinear", align_corners=False)` of a (N, 1, S, S) batch, the grey channel
    repeated to out_chans, as two matrix products; channels-last when out_chans > 1.

    Equal to F.interpolate to float rounding (~3e-6). For 32 images 48 -> 224 on 2 CPU threads here it
    takes ~2.6 ms, against ~3.6 ms for the uint8 kernel plus float conversion it replaced (which also
    rounded to uint8 twice); see `ferbench bench data`.
    """
    n, n_in = y.shape[0], y.shape[-1]
    vertical, gather, block, window = _upsample_plan(n_in, out_size, out_chans)
    windows = torch.matmul(vertical, torch.matmul(y.reshape(n, n_in, n_in), gather))  # (N, out, g*window)
    out = torch.mm(windows.view(-1, window), block)  # every output row's blocks, channels innermost
    return out.view(n, out_size, out_size, out_chans).permute(0, 3, 1, 2)


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
