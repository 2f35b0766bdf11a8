"""Baselines: torchvision ResNets and timm ConvNeXts, random init, any input size.

Grayscale is explicit: `in_chans=1` replaces the first conv with a one-channel conv; `in_chans=3`
expects the engine to repeat the grey channel (as the papers' pipelines do).
"""

from __future__ import annotations

import timm
import torch.nn as nn
import torchvision

from ferbench.errors import FerbenchError
from ferbench.models import Variant, register


def build_resnet(num_classes: int, input_size: int, in_chans: int, depth: int) -> nn.Module:
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
    if in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def build_timm_convnext(
    num_classes: int, input_size: int, in_chans: int, size: str, drop_path_rate: float = 0.0
) -> nn.Module:
    return timm.create_model(
        f"convnext_{size}", pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate
    )


for _depth in (18, 50):
    register(Variant(f"resnet{_depth}", "resnet", build_resnet, {"depth": _depth},
                     description=f"torchvision ResNet-{_depth}", paper=True))

def convnext_checkpoint_filter(state_dict: dict, model: nn.Module) -> dict:
    """FB ConvNeXt checkpoints (`downsample_layers`, `stages.i.j`, `pwconv1`) mapped to timm's keys with
    timm's own converter; timm-keyed weights pass through."""
    from timm.models.convnext import checkpoint_filter_fn

    return checkpoint_filter_fn(state_dict, model)


for _size, _paper in [("atto", False), ("femto", False), ("pico", False), ("nano", False), ("tiny", True),
                      ("small", True), ("base", True), ("large", True), ("xlarge", True)]:
    register(Variant(f"convnext-{_size}", "convnext", build_timm_convnext, {"size": _size},
                     options=("drop_path_rate",), description=f"timm convnext_{_size}", paper=_paper,
                     checkpoint_filter=convnext_checkpoint_filter))


TIMM_PREFIX = "timm:"
TIMM_OPTIONS = ("drop_rate", "drop_path_rate")


def build_timm(num_classes: int, input_size: int, in_chans: int, arch: str, **options: float) -> nn.Module:
    """A timm architecture, random init, with the job's classes and channels; its input size as
    `img_size` where the architecture has one (ViTs, Swin), any size otherwise (CNNs)."""
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, img_size=input_size,
                                 **options)
    except TypeError:  # no img_size argument: a convolutional network takes any input size
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **options)


def timm_variant(name: str) -> Variant:
    """`timm:<architecture>` (e.g. `timm:efficientnet_b0`): any model timm registers, through the same
    protocols, costs and reports as the built-ins; its pretrained weights come through `weights: timm:<tag>`."""
    arch = name[len(TIMM_PREFIX):]
    if not timm.is_model(arch):
        near = timm.list_models(f"*{arch[:8]}*")[:5]
        raise FerbenchError(f"model {name!r}: timm {timm.__version__} has no architecture {arch!r}"
                            + (f" (near: {', '.join(near)})" if near else ""))
    return Variant(name, "timm", build_timm, {"arch": arch}, options=TIMM_OPTIONS, description=f"timm {arch}")

