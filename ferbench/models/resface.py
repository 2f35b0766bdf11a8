"""ResFace (Qu & Niu, MBE 2023): ResNet trunk + local branch + channel-spatial aggregation + LDL.

No code was published. Sources, part by part (REFERENCE.md section 3):
- ResNet-18/50 trunk (torchvision layout, random init): the paper's abstract.
- Local branch [inferred from the overview article + EfficientFace's design]: from the stem output,
  the map is cut into 4 spatial patches, each through its own two stride-2 conv blocks, re-assembled,
  and a ConvTranspose2d restores the spatial size of the stage-2 output (bilinear resize if an odd
  input size leaves them a pixel apart); F_final = F_local + F_mod goes on to stages 3-4.
- Channel-spatial aggregation on the stage-2 output F, F_mod = F * Z:
  - `csa_fusion="sum"`: Z = sigmoid(Z_c + Z_s), the overview article's formula;
    `"product"`: Z = sigmoid(Z_c * Z_s), EfficientFace's code (`Modulator`: one sigmoid of the product).
  - channel branch GAP -> FC -> FC (`csa_channel="fc"`, the overview article) or
    GAP -> FC -> BN1d -> ReLU -> FC (`"fc_bn"`, EfficientFace's `Channel`); reduction 16.
  - spatial branch 1x1 -> two 3x3 convs (dilation 4) -> 1x1 to one map, each but the last with BN
    and ReLU: EfficientFace's `Spatial` (the article names the layers, not the dilation).
- C, label-distribution learning, is a training choice (`train.loss: ldl` with targets from
  annotator votes or a teacher job), not a module: the "compact aggregation" is stages 3-4 -> FC.
The paper's ablation letters as the overview article defines them: A = local feature extraction
(the trunk with the ConvTranspose2d path), B = channel-spatial aggregation, C = compact aggregation
+ LDL (`benchmarks/resface_ablation.yaml`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from pydantic import Field

from ferbench.models import Variant, register

OPTIONS = ("local", "csa", "csa_fusion", "csa_channel", "csa_reduction", "csa_dilation")


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1, kernel: int = 3) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class LocalBranch(nn.Module):
    """Four patch-wise conv stacks on the stem output, re-assembled, upsampled by ConvTranspose2d."""

    def __init__(self, cin: int, cmid: int, cout: int):
        super().__init__()
        self.patches = nn.ModuleList(
            [nn.Sequential(conv_bn_relu(cin, cmid, stride=2), conv_bn_relu(cmid, cout, stride=2)) for _ in range(4)]
        )
        self.up = nn.Sequential(nn.ConvTranspose2d(cout, cout, kernel_size=2, stride=2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        quads = [x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]]
        a, b, c, d = (m(q) for m, q in zip(self.patches, quads))
        hh, ww = min(a.shape[-2], c.shape[-2]), min(a.shape[-1], b.shape[-1])
        a, b, c, d = (t[..., :hh, :ww] for t in (a, b, c, d))
        y = self.up(torch.cat([torch.cat([a, b], dim=3), torch.cat([c, d], dim=3)], dim=2))
        if tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


class ChannelSpatialAggregation(nn.Module):
    """Z_c from GAP -> FC (-> BN1d) -> ReLU -> FC, Z_s from 1x1 -> two dilated 3x3 -> 1x1; returns F * Z."""

    def __init__(self, channels: int, reduction: int, dilation: int, fusion: str, channel_branch: str = "fc"):
        super().__init__()
        mid = max(channels // reduction, 8)
        norm = [nn.BatchNorm1d(mid)] if channel_branch == "fc_bn" else []
        self.channel = nn.Sequential(nn.Linear(channels, mid), *norm, nn.ReLU(inplace=True), nn.Linear(mid, channels))
        self.spatial = nn.Sequential(
            conv_bn_relu(channels, mid, kernel=1),
            conv_bn_relu(mid, mid, dilation=dilation),
            conv_bn_relu(mid, mid, dilation=dilation),
            nn.Conv2d(mid, 1, kernel_size=1),
        )
        self.fusion = fusion

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        zc = self.channel(f.mean((2, 3)))[:, :, None, None]
        zs = self.spatial(f)
        z = torch.sigmoid(zc + zs) if self.fusion == "sum" else torch.sigmoid(zc * zs)
        return f * z


class ResFace(nn.Module):
    def __init__(
        self,
        num_classes: int,
        input_size: int,
        in_chans: int = 3,
        depth: int = 18,
        local: bool = True,
        csa: bool = True,
        csa_fusion: Literal["sum", "product"] = "sum",
        csa_channel: Literal["fc", "fc_bn"] = "fc",
        csa_reduction: Annotated[int, Field(ge=1)] = 16,
        csa_dilation: Annotated[int, Field(ge=1)] = 4,
    ):
        super().__init__()
        if csa_fusion not in ("sum", "product"):
            raise ValueError(f"csa_fusion must be 'sum' or 'product', got {csa_fusion!r}")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
        if in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        c2 = 128 * (4 if depth == 50 else 1)
        self.local = LocalBranch(64, 128, c2) if local else None
        self.csa = ChannelSpatialAggregation(c2, csa_reduction, csa_dilation, csa_fusion, csa_channel) if csa else None
        self.fc = net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        f = self.layer2(self.layer1(s))
        out = self.csa(f) if self.csa is not None else f
        if self.local is not None:
            out = out + self.local(s, tuple(f.shape[-2:]))
        y = self.layer4(self.layer3(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """torchvision ResNet weights (or an EfficientFace-style ResNet checkpoint) for a ResFace trunk:
    its stem is `stem.0` / `stem.1` where torchvision has `conv1` / `bn1`; layers 1-4 and `fc` match."""
    renames = (("conv1.", "stem.0."), ("bn1.", "stem.1."))
    out = {}
    for k, v in state_dict.items():
        for old, new in renames:
            if k.startswith(old):
                k = new + k[len(old):]
        out[k] = v
    return out


def build_resface(num_classes: int, input_size: int, in_chans: int, depth: int, **options) -> nn.Module:
    return ResFace(num_classes, input_size, in_chans, depth=depth, **options)


for _depth in (18, 50):
    register(Variant(f"resface-r{_depth}", "resface", build_resface, {"depth": _depth}, options=OPTIONS, paper=True,
                     signature=ResFace, checkpoint_filter=checkpoint_filter_fn, modules=("local", "csa"), base_family="resnet",
                     description=f"ResFace with a ResNet-{_depth} trunk (local branch + channel-spatial aggregation)"))
