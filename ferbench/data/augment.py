"""Batched augmentation on the training device: one affine warp per batch, no per-sample PIL.

Flip, rotation, zoom, shift and "resize by r then random-crop" are composed into one 2x3 matrix
per sample and applied with one `grid_sample` at no more than the source resolution, then upsampled
to the model's input size. Random numbers come from a seeded CPU `torch.Generator`, so the stream is
the same on every device and can be saved and restored for exact resume.

On CUDA the upsample is `F.interpolate`. On the CPU it is `upsample_bilinear`, which writes the
channels-last 3-channel layout the model reads: a 32-image batch at 224 is 19 MB of float output.
Two CPU ops have several formulations with equal results (to float rounding) whose speed depends on
the machine's BLAS, and `kernels.choose` runs the fastest measured here (recorded in each manifest):
- the sampling grid: one (size^2, 3) x (3, 2N) matrix product (`mm`), or two fused multiply-adds
  (`addcmul`);
- the upsample: a block-sparse matrix product along rows and a few lerps along columns
  (`blocksparse`), the same lerps after a gather of the two source columns of each output column
  (`gather`, no BLAS), or PyTorch's bilinear kernel followed by the channels-last copy (`native`).
Either way the result is the model's input before normalisation, in [0, 1].
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ferbench.data.kernels import choose
from ferbench.spec import AugmentConfig


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) grey or (N, H, W, 3) colour -> float (N, C, H, W) in [0, 1]; warps happen here,
    so padding is black."""
    if images.ndim == 4:
        return images.permute(0, 3, 1, 2).float().div_(255.0)
    return images.unsqueeze(1).float().div_(255.0)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`, queued without waiting: to CUDA through pinned memory (from pageable
    memory the driver may first wait for the stream's queued work, a host sync in every step)."""
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Per-channel statistics by their source: what `train.normalize` names (custom: train.norm_mean / norm_std)
CHANNEL_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),  # torchvision's ImageNet statistics
    # zengqunzhao/EfficientFace main.py, "# RAF-DB": RAF-DB's own statistics, as EfficientFace trains and tests
    "rafdb-efficientface": ((0.57535914, 0.44928582, 0.40079932), (0.20735591, 0.18981615, 0.18132027)),
}


def channel_stats(normalize: str, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None
                  ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) per channel that `normalize` subtracts and divides by; None for none / half."""
    if normalize == "custom":
        return tuple(mean or ()), tuple(std or ())
    return CHANNEL_STATS.get(normalize)


def finish(x: torch.Tensor, in_chans: int, normalize: str, mean: tuple[float, ...] | None = None,
           std: tuple[float, ...] | None = None) -> torch.Tensor:
    """Normalise and repeat grey to 3 channels when the model wants 3 (explicit, as the papers do)."""
    if normalize == "half":
        x = x.mul(2.0).sub_(1.0)  # (x - 0.5) / 0.5 in one new tensor
    x = x.expand(-1, 3, -1, -1) if in_chans == 3 and x.shape[1] == 1 else x
    stats = channel_stats(normalize, mean, std)
    if stats is not None:  # per channel, after a grey image is repeated
        m = torch.tensor(stats[0], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(stats[1], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        x = (x - m) / s
    return x


def split_channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population, over every pixel of every image) of uint8 images (N, H, W[, 3])
    scaled to [0, 1]: a split's own statistics for `normalize: custom`. float64 sums over `chunk` images
    at a time (a whole split in float64 would be gigabytes).

    >>> split_channel_stats(np.array([[[0, 255]], [[255, 255]]], np.uint8))  # pixels 0, 1, 1, 1
    ((0.75,), (0.4330127018922193,))
    """
    x = images[..., None] if images.ndim == 3 else images
    total = np.zeros(x.shape[-1])
    squares = np.zeros(x.shape[-1])
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].astype(np.float64) / 255.0
        total += part.sum(axis=tuple(range(part.ndim - 1)))
        squares += (part * part).sum(axis=tuple(range(part.ndim - 1)))
    n = x.size / x.shape[-1]
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


_BASE_GRIDS: dict[tuple[int, str], torch.Tensor] = {}


def _base_grid(size: int, device: torch.device) -> torch.Tensor:
    """(size*size, 3) rows [x, y, 1] of output pixel centres (align_corners=False), cached."""
    key = (size, str(device))
    if key not in _BASE_GRIDS:
        c = (torch.arange(size, dtype=torch.float32, device=device) * 2 + 1) / size - 1
        gy, gx = torch.meshgrid(c, c, indexing="ij")
        _BASE_GRIDS[key] = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones_like(gx).reshape(-1)], 1)
    return _BASE_GRIDS[key]


def _grid_mm(base: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # one (size*size, 3) x (3, 2N) product: bitwise the einsum it replaced, which was 10x faster than a
    # broadcast bmm on an Intel Xeon with MKL
    return torch.mm(base, t.T)


def _grid_addcmul(base: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # x * t0 + y * t1 + t2 as two fused multiply-adds: no BLAS call
    return torch.addcmul(t[:, 2], base[:, :1], t[:, 0]).addcmul_(base[:, 1:2], t[:, 1])


GRID_KERNELS = {"mm": _grid_mm, "addcmul": _grid_addcmul}


def affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """`F.affine_grid(theta, (N, C, size, size), align_corners=False)` from a cached base grid."""
    base, t = _base_grid(size, theta.device), theta.reshape(-1, 3)
    kernel = "mm"
    if theta.device.type == "cpu":
        kernel = choose("grid", f"{size}x{size}x{theta.shape[0]}",
                        {name: (lambda f=f: f(base, t)) for name, f in GRID_KERNELS.items()})
    grid = GRID_KERNELS[kernel](base, t)  # the sampler reads the transposed view as it is
    return grid.view(size, size, theta.shape[0], 2).permute(2, 0, 1, 3)


def keras_affine(n: int, cfg: AugmentConfig, gen: torch.Generator, size: int) -> torch.Tensor:
    """(n, 2, 3) output-to-input matrices (normalised, align_corners=False) of Keras 2.0's
    ImageDataGenerator.random_transform with rotation_range, width/height_shift_range, zoom_range and
    horizontal_flip: in pixel (row, col) indices, p_in = R (Z (p_out - o) + t) + o with R the rotation,
    Z = diag(zx, zy) drawn independently from `scale`, t the shift in pixels (translate x size) and o
    = size/2 + 0.5 (Keras 2.0's transform_matrix_offset_center), then the output flipped left-right
    with probability 1/2. In the sampler's coordinates u = (2 i + 1) / size - 1 (so p - o = d u - 1,
    d = size / 2) that is u_in = A u_out + (R t + 1 - A 1) / d with A = R Z. The draws come from `gen`,
    not numpy's global stream (tests/test_keras_recipe.py checks the warp against scipy's, as Keras ran it)."""
    u = torch.rand(n, 6, generator=gen, dtype=torch.float64).numpy()
    flips = torch.rand(n, 2, generator=gen, dtype=torch.float64).numpy()
    theta = (u[:, 0] * 2 - 1) * math.radians(cfg.rotation)
    lo, hi = cfg.scale
    zr, zc = lo + u[:, 1] * (hi - lo), lo + u[:, 2] * (hi - lo)  # Keras: zx scales rows, zy columns
    tr, tc = (u[:, 4] * 2 - 1) * cfg.translate * size, (u[:, 5] * 2 - 1) * cfg.translate * size  # height, width shift
    cos, sin = np.cos(theta), np.sin(theta)
    d = size / 2
    # pixel index i = d (u + 1) - 0.5, so p - o = d u - 1 on both axes (o = d + 0.5)
    a = np.stack([np.stack([cos * zr, -sin * zc], 1), np.stack([sin * zr, cos * zc], 1)], 1)  # (n, 2, 2), (row, col)
    shift = np.stack([cos * tr - sin * tc, sin * tr + cos * tc], 1)  # R t
    offset = (shift + 1 - a.sum(axis=2)) / d  # from d u_in - 1 = A (d u_out - 1) + R t
    fx = np.where((flips[:, 0] < 0.5) & cfg.hflip, -1.0, 1.0)
    # to the sampler's (x = col, y = row) order, the flip negating the output's x
    out = np.empty((n, 2, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 0, 2] = a[:, 1, 1] * fx, a[:, 1, 0], offset[:, 1]
    out[:, 1, 0], out[:, 1, 1], out[:, 1, 2] = a[:, 0, 1] * fx, a[:, 0, 0], offset[:, 0]
    return torch.from_numpy(out).float()


def torchvision_params(n: int, cfg: AugmentConfig, gen: torch.Generator, big: int, out: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image of the chain: rotation angle (degrees, uniform in +-rotation), horizontal and vertical
    flip (probability 1/2 each where enabled) and the crop's (top, left) in the resized image."""
    u = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    angle = (u[:, 0] * 2 - 1) * cfg.rotation
    flips = torch.stack([(u[:, 1] < 0.5) & cfg.hflip, (u[:, 2] < 0.5) & cfg.vflip], 1)
    corner = torch.randint(0, big - out + 1, (n, 2), generator=gen)
    return angle, flips, corner, torch.full((n,), big)


def torchvision_chain(x: torch.Tensor, out_size: int, cfg: AugmentConfig, angle: torch.Tensor, flips: torch.Tensor,
                      corner: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
    """EmoNeXt code's training transform on a float batch (N, C, H, W) in [0, 1], in its order:
    RandomHorizontalFlip, RandomVerticalFlip, Resize(big) (bilinear; PIL keeps 8-bit pixels, so the
    result is rounded to 1/255), RandomRotation(angle) about the centre with `cfg.interpolation`
    (torchvision's default, nearest) and black fill, RandomCrop(out_size) at `corner` (top, left)."""
    side = int(big[0]) if len(big) else out_size
    x = torch.where(flips[:, 0].view(-1, 1, 1, 1), x.flip(-1), x)
    x = torch.where(flips[:, 1].view(-1, 1, 1, 1), x.flip(-2), x)
    y = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=side < x.shape[-1])
    y = y.mul(255).round_().div_(255)
    a = torch.deg2rad(angle)
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    # PIL's rotate(angle) turns the picture counter-clockwise: output (x, y) samples the input at R(-angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(y.dtype)
    grid = F.affine_grid(theta, list(y.shape), align_corners=False)
    y = F.grid_sample(y, grid, mode=cfg.interpolation, padding_mode="zeros", align_corners=False)
    return torch.stack([y[i, :, t:t + out_size, l:l + out_size] for i, (t, l) in enumerate(corner.tolist())])


def random_affine(n: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates (normalised, align_corners=False).

    The arithmetic runs in NumPy on the generator's float64 draws (a dozen 32-element torch ops cost
    ~0.3 ms a batch in dispatch alone); cos and sin stay torch's, so the matrices are bitwise those of
    the all-torch version.
    """
    u = torch.rand(n, 6, generator=gen, dtype=torch.float64).numpy()
    flips = torch.rand(n, 2, generator=gen, dtype=torch.float64).numpy()
    angle = torch.from_numpy((u[:, 0] * 2 - 1) * math.radians(cfg.rotation))
    lo, hi = cfg.scale
    zoom = lo + u[:, 1] * (hi - lo)
    s = 1.0 / (cfg.resize_ratio * zoom)  # output covers 1/s of the (resized) source
    room = np.maximum(1 - s, 0)  # how far a crop of that size may move inside the source
    tx = (u[:, 2] * 2 - 1) * room + (u[:, 4] * 2 - 1) * 2 * cfg.translate
    ty = (u[:, 3] * 2 - 1) * room + (u[:, 5] * 2 - 1) * 2 * cfg.translate
    fx = np.where((flips[:, 0] < 0.5) & cfg.hflip, -1.0, 1.0)
    fy = np.where((flips[:, 1] < 0.5) & cfg.vflip, -1.0, 1.0)
    cos, sin = torch.cos(angle).numpy() * s, torch.sin(angle).numpy() * s
    theta = np.stack([np.stack([cos * fx, -sin * fy, tx], 1), np.stack([sin * fx, cos * fy, ty], 1)], 1)
    return torch.from_numpy(theta).float()


def augment_batch(
    x: torch.Tensor, out_size: int, cfg: AugmentConfig, gen: torch.Generator, n_total: int | None = None,
    part: slice = slice(None), out_chans: int = 1,
) -> torch.Tensor:
    """Apply per-sample random affine augmentation and resize to out_size: (N, out_chans, S, S) in [0, 1].

    In data-parallel training each rank holds rows `part` of a global batch of `n_total`: the matrices
    are drawn for the whole global batch (same stream on every rank) and sliced, so the result equals
    the single-process one. With out_chans=3 a grey image is repeated (channels-last on the CPU); a
    colour image (C = 3) is warped per channel. Without any augmentation at the source's size the
    batch is returned as it is (an identity warp would move pixels by float rounding, up to 2e-6).
    """
    if cfg.is_identity and x.shape[-2] == x.shape[-1] == out_size:  # the pixels as they are: no warp, no draws
        return x.expand(-1, 3, -1, -1) if out_chans == 3 and x.shape[1] == 1 else x
    if cfg.pixel_path == "torchvision":
        n = n_total or x.shape[0]
        params = torchvision_params(n, cfg, gen, int(round(out_size * cfg.resize_ratio)), out_size)
        y = torchvision_chain(x, out_size, cfg, *(p[part] for p in params))
        return y.expand(-1, 3, -1, -1) if out_chans == 3 and y.shape[1] == 1 else y
    # Warp at no more than the source resolution, then upsample: far cheaper than sampling 224x224
    # points. (EmoNeXt's torchvision chain does it the other way round: Resize(236) first, then the
    # rotation at 236 and the crop: `pixel_path: torchvision` gives that order.)
    warp = min(out_size, max(x.shape[-2:]))
    if cfg.geometry == "keras":
        theta = to_device(keras_affine(n_total or x.shape[0], cfg, gen, warp)[part], x.device)
    else:
        theta = to_device(random_affine(n_total or x.shape[0], cfg, gen)[part], x.device)
    y = F.grid_sample(x, affine_grid(theta, warp).to(x.dtype), mode=cfg.interpolation,
                      padding_mode="border" if cfg.fill == "border" else "zeros", align_corners=False)
    if warp != out_size and y.device.type == "cpu" and y.shape[1] == 1:  # the grey fast path
        return upsample_bilinear(y, out_size, out_chans)
    if warp != out_size:
        y = F.interpolate(y, size=(out_size, out_size), mode="bilinear", align_corners=False)
    return y.expand(-1, 3, -1, -1) if out_chans == 3 and y.shape[1] == 1 else y


class _UpsamplePlan(NamedTuple):
    """Weights of the separable upsample n_in -> n_out in g = gcd(n_in, n_out) identical blocks."""

    blocks: int  # g: input rows/columns come in g blocks of p_in, output ones in g blocks of p_out
    p_in: int
    window: int  # p_in + 2: a block reads its own p_in pixels and one more each side (edge-replicated)
    gather: torch.Tensor  # (n_in, g*window): copies every block's window of input columns side by side
    block: torch.Tensor  # (window, p_out*chans): one block's horizontal weights, channels innermost
    rows: tuple[tuple[int, int, int, torch.Tensor], ...]  # vertical runs: (window row k, first, end, weights)
    left: torch.Tensor  # (n_out*chans,): each output column's left source column (the `gather` kernel)
    right: torch.Tensor  # its right source column
    lam: torch.Tensor  # (n_out*chans, 1): the right one's weight


@lru_cache(maxsize=16)
def _upsample_plan(n_in: int, n_out: int, chans: int) -> _UpsamplePlan:
    """The weights of `upsample_bilinear`, cached per size.

    Output pixel r of a block (0 <= r < p_out) is (1 - lam) * w[k] + lam * w[k + 1] of its block's window w,
    with PyTorch's source index (r + 0.5) * p_in / p_out - 0.5 = k - 1 + lam; at the image edges the
    replicated window gives what PyTorch's clamped indices give, and every block has the same weights.
    Horizontally that is one (rows*g, window) x (window, p_out*chans) product (48 -> 224: 5 x 42 instead
    of a dense 48 x 672); vertically, consecutive output rows that read the same k form one run: one lerp.
    """
    g = math.gcd(n_in, n_out)
    p_in, p_out, window = n_in // g, n_out // g, n_in // g + 2
    cols = torch.arange(g * window)
    gather = torch.zeros(n_in, g * window)  # edge-replicated windows, column -1 first
    gather[((cols // window) * p_in - 1 + cols % window).clamp(0, n_in - 1), cols] = 1.0
    src = (torch.arange(p_out, dtype=torch.float64) + 0.5) * (p_in / p_out) - 0.5
    k = (src.floor() + 1).long()
    lam = src - src.floor()
    block = torch.zeros(window, p_out, dtype=torch.float64)
    block[k, torch.arange(p_out)] = 1 - lam
    block[k + 1, torch.arange(p_out)] += lam
    rows, first = [], 0
    for r in range(1, p_out + 1):
        if r == p_out or k[r] != k[first]:
            rows.append((int(k[first]), first, r, lam[first:r].float().view(-1, 1)))
            first = r
    # the block weights stored transposed (a column-major right operand): MKL's product is ~15 % faster here
    block = block.repeat_interleave(chans, dim=1).float().T.contiguous().T
    # the same weights per output column, as PyTorch computes them: source (j + 0.5) * n_in / n_out - 0.5,
    # clamped at 0, between columns floor(source) and the next one (clamped at the last)
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    left = src.floor().long()
    right = (left + 1).clamp(max=n_in - 1)
    lam_cols = (src - left).float().repeat_interleave(chans).view(-1, 1)
    return _UpsamplePlan(g, p_in, window, gather, block, tuple(rows), left.repeat_interleave(chans),
                         right.repeat_interleave(chans), lam_cols)


def upsample_bilinear(y: torch.Tensor, out_size: int, out_chans: int = 1) -> torch.Tensor:
    """`F.interpolate(y, out_size, "bilinear", align_corners=False)` of a (N, 1, S, S) batch, the grey channel
    repeated to out_chans; channels-last when out_chans > 1. Equal to F.interpolate to float rounding
    (~3e-6) whichever kernel `kernels.choose` picks; see `ferbench bench data`."""
    kernels = {"blocksparse": _upsample_blocksparse, "gather": _upsample_gather, "native": _upsample_native}
    shape = f"{y.shape[0]}x{y.shape[-1]}->{out_size}x{out_chans}"
    kernel = choose("upsample", shape, {name: (lambda f=f: f(y, out_size, out_chans)) for name, f in kernels.items()})
    return kernels[kernel](y, out_size, out_chans)


def _padded_rows(y: torch.Tensor) -> torch.Tensor:
    """(N*(S+2), S): each image's rows with its first and last row repeated (the vertical edge)."""
    return torch.cat([y[:, 0, :1], y[:, 0], y[:, 0, -1:]], 1).view(-1, y.shape[-1])


def _upsample_blocksparse(y: torch.Tensor, out_size: int, out_chans: int) -> torch.Tensor:
    """Horizontal pass as a small block-sparse matrix product on the padded rows (48 -> 224: 5 x 42
    weights instead of a dense 48 x 672), which already writes the channels-last layout. 32 images
    48 -> 224 on 2 threads of an Intel Xeon with MKL: ~1.3 ms."""
    plan = _upsample_plan(y.shape[-1], out_size, out_chans)
    cols = torch.mm(torch.mm(_padded_rows(y), plan.gather).view(-1, plan.window), plan.block)
    return _vertical(cols.view(-1, out_size * out_chans), y, plan, out_size, out_chans)


def _upsample_gather(y: torch.Tensor, out_size: int, out_chans: int) -> torch.Tensor:
    """Horizontal pass as a gather of each output column's two source columns and a lerp (on the
    transposed rows, where the gather reads whole rows): no BLAS call."""
    plan = _upsample_plan(y.shape[-1], out_size, out_chans)
    by_column = _padded_rows(y).T.contiguous()
    cols = torch.lerp(by_column.index_select(0, plan.left), by_column.index_select(0, plan.right), plan.lam)
    return _vertical(cols.T.contiguous(), y, plan, out_size, out_chans)


def _upsample_native(y: torch.Tensor, out_size: int, out_chans: int) -> torch.Tensor:
    """PyTorch's bilinear kernel, then one copy into the channels-last layout."""
    up = F.interpolate(y, size=(out_size, out_size), mode="bilinear", align_corners=False)
    out = torch.empty(y.shape[0], out_size, out_size, out_chans, dtype=y.dtype, device=y.device)
    out.copy_(up.permute(0, 2, 3, 1).expand(-1, -1, -1, out_chans))
    return out.permute(0, 3, 1, 2)


def _vertical(cols: torch.Tensor, y: torch.Tensor, plan: _UpsamplePlan, out_size: int, out_chans: int) -> torch.Tensor:
    """The vertical pass over the horizontally upsampled padded rows `cols` (N*(S+2), out*chans): a few
    lerps between adjacent rows straight into the output, so the big tensor is written once."""
    n, n_in = y.shape[0], y.shape[-1]
    wide = out_size * out_chans
    # block b of the padded rows reads rows b*p_in .. b*p_in + window - 1: overlapping windows, no copy
    windows = cols.as_strided((n, plan.blocks, plan.window, wide), ((n_in + 2) * wide, plan.p_in * wide, wide, 1))
    out = torch.empty(n, plan.blocks, out_size // plan.blocks, wide, dtype=y.dtype, device=y.device)
    for k, first, end, lam in plan.rows:
        torch.lerp(windows[:, :, k:k + 1], windows[:, :, k + 1:k + 2], lam, out=out[:, :, first:end])
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
