"""EmoNeXt (El Boudouri & Bohi, MMSP 2023): ConvNeXt + STN + SE + self-attention regulariser.

Written from REFERENCE.md §2 and the FB ConvNeXt reference design; module names follow the FB
checkpoints (`downsample_layers`, `stages`, `norm`, `head`) so ImageNet weights load non-strictly.

Fidelity options (paper vs official code), each recorded with the run:
- `se_placement`: "downsample" (code: inside the 3 downsampling layers, after the 2x2 conv) or
  "stage" (paper: "after each stage").
- `attention`: "batch" (code: the pooled (B, C) features attend across the batch, B x B weights) or
  "feature" (paper: attention over the feature vector, C x C weights per sample).
- `attn_scale`: "code" (d^-1/4) or "paper" (d^-1/2).
- `sa_weight`: weight of mean((W - mean W)^2), 1 in both.
Ablation switches `stn`, `se`, `sa_reg` remove exactly their modules; all off is plain ConvNeXt.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from pydantic import Field

from ferbench.models import Variant, register

SIZES = {  # depths, dims
    "atto": ([2, 2, 6, 2], [40, 80, 160, 320]),
    "femto": ([2, 2, 6, 2], [48, 96, 192, 384]),
    "pico": ([2, 2, 6, 2], [64, 128, 256, 512]),
    "nano": ([2, 2, 8, 2], [80, 160, 320, 640]),
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "small": ([3, 3, 27, 3], [96, 192, 384, 768]),
    "base": ([3, 3, 27, 3], [128, 256, 512, 1024]),
    "large": ([3, 3, 27, 3], [192, 384, 768, 1536]),
    "xlarge": ([3, 3, 27, 3], [256, 512, 1024, 2048]),
}
PAPER_SIZES = ("tiny", "small", "base", "large", "xlarge")
OPTIONS = ("stn", "se", "sa_reg", "se_placement", "attention", "attn_scale", "sa_weight", "head_init",
           "drop_path_rate", "layer_scale_init")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample ("row" mode)."""
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """ConvNeXt block: dw 7x7 -> LN -> Linear 4C -> GELU -> Linear C -> layer scale -> drop path."""

    def __init__(self, dim: int, drop_path: float, layer_scale_init: float):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim)) if layer_scale_init > 0 else None
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = self.gamma * y
        return x + drop_path(y.permute(0, 3, 1, 2), self.drop_path, self.training)


class SqueezeExcite(nn.Module):
    """SE with reduction 16 and bias-free FCs (EmoNeXt code)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


def stn_feature_size(input_size: int) -> int:
    """Side of the localisation net's output: conv7 -> pool2 -> conv5 -> pool2 (52 at 224)."""
    s = (input_size - 6) // 2
    return (s - 4) // 2


class SpatialTransformer(nn.Module):
    """STN on the input image; theta starts at the identity, so at init output == input."""

    def __init__(self, in_chans: int, input_size: int):
        super().__init__()
        side = stn_feature_size(input_size)
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for the STN (needs >= 20)")
        self.localization = nn.Sequential(
            nn.Conv2d(in_chans, 8, kernel_size=7), nn.BatchNorm2d(8), nn.MaxPool2d(2, stride=2), nn.ReLU(True),
            nn.Conv2d(8, 10, kernel_size=5), nn.BatchNorm2d(10), nn.MaxPool2d(2, stride=2), nn.ReLU(True),
        )
        self.fc_loc = nn.Sequential(nn.Linear(10 * side * side, 32), nn.ReLU(True), nn.Linear(32, 6))
        self.reset_to_identity()

    def reset_to_identity(self) -> None:
        nn.init.zeros_(self.fc_loc[2].weight)
        with torch.no_grad():
            self.fc_loc[2].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.fc_loc(self.localization(x).flatten(1)).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)


class SelfAttentionRegularizer(nn.Module):
    """Dot-product attention on pooled features; only its weights are used (for the SA loss)."""

    def __init__(self, dim: int, mode: str, scale: str):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.mode = mode
        self.scale = dim ** -0.25 if scale == "code" else dim ** -0.5

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        q, k = self.query(x), self.key(x)
        if self.mode == "batch":  # (B, C) x (C, B): the samples of the batch attend to each other
            scores = q @ k.transpose(-2, -1)
        else:  # each feature attends to every feature of the same sample: (B, C, C)
            scores = q.unsqueeze(-1) * k.unsqueeze(-2)
        return torch.softmax(scores * self.scale, dim=-1)


class EmoNeXt(nn.Module):
    def __init__(
        self,
        num_classes: int,
        input_size: int,
        in_chans: int = 3,
        size: str = "tiny",
        stn: bool = True,
        se: bool = True,
        sa_reg: bool = True,
        se_placement: Literal["downsample", "stage"] = "downsample",
        attention: Literal["batch", "feature"] = "batch",
        attn_scale: Literal["code", "paper"] = "code",
        sa_weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0,
        drop_path_rate: Annotated[float, Field(ge=0, lt=1)] = 0.1,
        layer_scale_init: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-6,
        head_init: Literal["trunc_normal", "torch_default"] = "trunc_normal",
    ):
        super().__init__()
        if se_placement not in ("downsample", "stage"):
            raise ValueError(f"se_placement must be 'downsample' or 'stage', got {se_placement!r}")
        if attention not in ("batch", "feature"):
            raise ValueError(f"attention must be 'batch' or 'feature', got {attention!r}")
        if attn_scale not in ("code", "paper"):
            raise ValueError(f"attn_scale must be 'code' or 'paper', got {attn_scale!r}")
        depths, dims = SIZES[size]
        self.stn = SpatialTransformer(in_chans, input_size) if stn else None
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))]
        )
        for i in range(3):
            layers = [LayerNorm2d(dims[i], eps=1e-6), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)]
            if se and se_placement == "downsample":
                layers.append(SqueezeExcite(dims[i + 1]))
            self.downsample_layers.append(nn.Sequential(*layers))
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.stages.append(nn.Sequential(*[Block(dims[i], rates[start + j], layer_scale_init) for j in range(depth)]))
        self.stage_se = (
            nn.ModuleList([SqueezeExcite(d) for d in dims]) if se and se_placement == "stage" else None
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.attention = SelfAttentionRegularizer(dims[-1], attention, attn_scale) if sa_reg else None
        self.sa_weight = sa_weight
        self.head = nn.Linear(dims[-1], num_classes)
        self.aux_loss: torch.Tensor | None = None
        self.apply(self._init)
        if self.stn is not None:
            self.stn.reset_to_identity()
        if head_init == "torch_default":  # the official get_model() puts a fresh nn.Linear on after loading weights
            self.head.reset_parameters()

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.stn is not None:
            x = self.stn(x)
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            if self.stage_se is not None:
                x = self.stage_se[i](x)
        return self.norm(x.mean((-2, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        if self.attention is not None and self.training:
            w = self.attention.weights(feats)
            self.aux_loss = self.sa_weight * torch.mean((w - w.mean()) ** 2)
        else:
            self.aux_loss = None
        return self.head(feats)


# timm ConvNeXt key names -> the FB layout EmoNeXt uses; the first pattern that matches wins
_TIMM_TO_FB = [
    (r"^stem\.0\.", "downsample_layers.0.0."),
    (r"^stem\.1\.", "downsample_layers.0.1."),
    (r"^stages\.(\d)\.downsample\.0\.", r"downsample_layers.\1.0."),
    (r"^stages\.(\d)\.downsample\.1\.", r"downsample_layers.\1.1."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.conv_dw\.", r"stages.\1.\2.dwconv."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.mlp\.fc1\.", r"stages.\1.\2.pwconv1."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.mlp\.fc2\.", r"stages.\1.\2.pwconv2."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.", "head."),
]


def timm_to_fb(key: str) -> str:
    """One timm ConvNeXt state-dict key in the FB checkpoint layout (unchanged if no pattern fits)."""
    for pat, rep in _TIMM_TO_FB:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    return key


OFFICIAL_STN = ("localization.", "fc_loc.")  # yelboudouri/EmoNeXt models.py: EmoNeXt.localization / .fc_loc


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """ConvNeXt or EmoNeXt weights shaped for this EmoNeXt: FB checkpoints, timm's keys mapped to FB's
    (timm's conv_mlp variants store the block MLP as 1x1 convs, EmoNeXt as linear layers), and the
    official EmoNeXt trainer's checkpoints, whose spatial-transformer keys move under `stn.`."""
    own = model.state_dict()
    # the official EmoNeXt model keeps its spatial transformer at the top level; ferbench's is `stn.`
    state_dict = {(f"stn.{k}" if k.startswith(OFFICIAL_STN) and f"stn.{k}" in own else k): v for k, v in state_dict.items()}
    if not any(k in own for k in state_dict):
        state_dict = {timm_to_fb(k): v for k, v in state_dict.items()}
    out = {}
    for k, v in state_dict.items():
        if k in own and v.ndim == 4 and v.shape[2:] == (1, 1) and own[k].shape == v.shape[:2]:
            v = v.flatten(1)
        out[k] = v
    return out


def build_emonext(num_classes: int, input_size: int, in_chans: int, size: str, **options) -> nn.Module:
    return EmoNeXt(num_classes, input_size, in_chans, size=size, **options)


for _size in SIZES:
    register(Variant(
        f"emonext-{_size}", "emonext", build_emonext, {"size": _size}, options=OPTIONS, paper=_size in PAPER_SIZES,
        checkpoint_filter=checkpoint_filter_fn, signature=EmoNeXt, modules=("stn", "se", "sa_reg"), base_family="convnext",
        description=f"EmoNeXt on ConvNeXt-{_size}" + ("" if _size in PAPER_SIZES else " (ferbench extension, CPU-sized)"),
    ))
