"""mini-Xception (Arriaga, Valdenegro-Toro & Ploeger 2017), ported from its Keras code.

Follows oarriaga/face_classification `src/models/cnn.py` `mini_XCEPTION` (Keras 2.0.5, TensorFlow),
layer for layer, so that the authors' released HDF5 weights load and give their numbers:

- stem: two 3x3 convs with 8 filters, no padding (`valid`), bias-free, each with BatchNorm + ReLU;
- four modules (16, 32, 64, 128 filters): a residual 1x1 stride-2 conv + BN beside two 3x3 separable
  convs (depthwise 3x3 then pointwise 1x1, both bias-free, `same` padding) with BN (ReLU between
  them), then a 3x3 stride-2 max-pool with TensorFlow's `same` padding, summed with the residual;
- head: a 3x3 conv to the classes (with bias, `same`), global average pooling; the softmax is the
  loss's.

Keras facts kept as they are: BatchNorm epsilon 1e-3 and momentum 0.99 (PyTorch's momentum 0.01);
TensorFlow's `same` pooling pads only as much as the output size needs, more after than before (a
60-pixel map is padded by 0 before and 1 after, where PyTorch's `padding=1` pads both sides and shifts
every window). The code's L2 regulariser (0.01) acts only on the two stem convs: Keras 2.0.5's
`SeparableConv2D` ignores `kernel_regularizer` (it has depthwise/pointwise regularisers), the
residual convs have none and the head's is commented out; `l2_weights()` names the stem's two
kernels for `train.l2` (recipe `mini-xception-code`, the code's training run). Kernels start as Keras
2.0.5 starts them (glorot uniform, zero biases; option `init: torch` keeps PyTorch's defaults). The
paper's text adds nothing the code contradicts; option `pool_padding: torch` gives PyTorch's
symmetric padding as a named deviation.

`keras_filter` maps a Keras HDF5 file's weights (read by `engine.weights` into `layer/weight` keys,
kernels in Keras layout) onto this module, by each layer type's creation order as `mini_XCEPTION`
creates them (Keras numbers layers per type in creation order, whatever offset a session adds).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferbench.errors import FerbenchError
from ferbench.models import Variant, register

KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99 = the weight of the old running value
MODULE_WIDTHS = (16, 32, 64, 128)
STEM_WIDTH = 8


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's `same` padding of one axis: (before, after) so that the output is ceil(size / stride).

    >>> tf_same_pad(60, 3, 2), tf_same_pad(15, 3, 2), tf_same_pad(8, 3, 2)
    ((0, 1), (1, 1), (0, 1))
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


class SeparableConv(nn.Module):
    """Keras SeparableConv2D with depth multiplier 1: depthwise 3x3 then pointwise 1x1, bias-free."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionModule(nn.Module):
    def __init__(self, cin: int, cout: int, pool_padding: str):
        super().__init__()
        # Keras's 1x1 stride-2 `same` conv, computed as a 1x1 conv of every second pixel (the same products
        # and sums): PyTorch 2.14's CPU backward of the strided 1x1 conv corrupts memory in channels-last
        # layout at this layer's size (8 -> 16 channels, 60x60; "double free or corruption")
        self.residual = nn.Conv2d(cin, cout, 1, bias=False)
        self.residual_bn = bn(cout)
        self.sep1, self.bn1 = SeparableConv(cin, cout), bn(cout)
        self.sep2, self.bn2 = SeparableConv(cout, cout), bn(cout)
        self.pool_padding = pool_padding

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_padding == "torch":
            return F.max_pool2d(x, 3, 2, padding=1)
        (top, bottom), (left, right) = tf_same_pad(x.shape[-2], 3, 2), tf_same_pad(x.shape[-1], 3, 2)
        return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.residual_bn(self.residual(x[..., ::2, ::2]))  # a 1x1 stride-2 `same` conv: no padding
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.pool(self.bn2(self.sep2(y)))
        return y + residual


class MiniXception(nn.Module):
    def __init__(self, num_classes: int = 7, input_size: int = 64, in_chans: int = 1,
                 pool_padding: Literal["tensorflow", "torch"] = "tensorflow", init: Literal["keras", "torch"] = "keras"):
        """init: keras (glorot-uniform kernels, zero biases: the code's) or torch (PyTorch's defaults, a deviation)."""
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, STEM_WIDTH, 3, bias=False), bn(STEM_WIDTH), nn.ReLU(),
            nn.Conv2d(STEM_WIDTH, STEM_WIDTH, 3, bias=False), bn(STEM_WIDTH), nn.ReLU())
        widths = (STEM_WIDTH,) + MODULE_WIDTHS
        self.blocks = nn.Sequential(*[XceptionModule(a, b, pool_padding) for a, b in zip(widths, widths[1:])])
        self.head = nn.Conv2d(MODULE_WIDTHS[-1], num_classes, 3, padding=1)
        if init == "keras":
            self.keras_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x))).mean(dim=(2, 3))

    def l2_weights(self) -> list[torch.Tensor]:
        """The kernels Keras 2.0.5 regularises in mini_XCEPTION: the two stem convs only (train.l2)."""
        return [self.stem[0].weight, self.stem[3].weight]

    def keras_init(self) -> None:
        """Keras 2.0.5's initialisers: glorot_uniform kernels (depthwise and pointwise ones too), zero biases;
        BatchNorm gamma 1, beta 0 as PyTorch's."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)  # symmetric in fan-in and fan-out: Keras's layout gives the same bound
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def build(num_classes: int, input_size: int, in_chans: int, **options: Any) -> MiniXception:
    return MiniXception(num_classes, input_size, in_chans, **options)


# Keras layer types in the order mini_XCEPTION creates them, as this module's parameter prefixes
def _creation_order() -> dict[str, list[str]]:
    convs = ["stem.0", "stem.3"] + [f"blocks.{i}.residual" for i in range(4)] + ["head"]
    seps = [f"blocks.{i}.sep{j}" for i in range(4) for j in (1, 2)]
    bns = ["stem.1", "stem.4"] + [f"blocks.{i}.{b}" for i in range(4) for b in ("residual_bn", "bn1", "bn2")]
    return {"conv2d": convs, "separable_conv2d": seps, "batch_normalization": bns}


BN_WEIGHTS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_LAYER = re.compile(r"^(conv2d|separable_conv2d|batch_normalization)_(\d+)/(\w+)$")


def keras_filter(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A Keras mini_XCEPTION's weights (`conv2d_3/kernel`, ... in Keras layout: conv kernels
    (kh, kw, in, out), depthwise (kh, kw, in, 1)) -> this module's state dict. Keys already in PyTorch
    form pass through. A file whose layers are not mini_XCEPTION's is refused in one line."""
    if not any(_LAYER.match(k) for k in state_dict):
        return state_dict
    layers: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in state_dict.items():
        m = _LAYER.match(key)
        if m is None:
            raise FerbenchError(f"Keras weights: unexpected layer {key.split('/')[0]!r} for mini-Xception")
        layers.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = value
    out: dict[str, torch.Tensor] = {}
    for kind, targets in _creation_order().items():
        found = [layers.get(kind, {})[n] for n in sorted(layers.get(kind, {}))]
        if len(found) != len(targets):
            raise FerbenchError(f"Keras weights: {len(found)} {kind} layers, mini_XCEPTION has {len(targets)}")
        for prefix, weights in zip(targets, found):
            out.update(_convert_layer(kind, prefix, weights))
    return out


def _convert_layer(kind: str, prefix: str, w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if kind == "batch_normalization":
        return {f"{prefix}.{BN_WEIGHTS[k]}": v for k, v in w.items()}
    if kind == "separable_conv2d":  # depthwise (kh, kw, in, 1) -> (in, 1, kh, kw); pointwise like a conv
        return {f"{prefix}.depthwise.weight": w["depthwise_kernel"].permute(2, 3, 0, 1).contiguous(),
                f"{prefix}.pointwise.weight": w["pointwise_kernel"].permute(3, 2, 0, 1).contiguous()}
    out = {f"{prefix}.weight": w["kernel"].permute(3, 2, 0, 1).contiguous()}  # (kh, kw, in, out) -> (out, in, kh, kw)
    if "bias" in w:
        out[f"{prefix}.bias"] = w["bias"]
    return out


register(Variant("mini-xception", "mini-xception", build, options=("pool_padding", "init"), signature=MiniXception,
                 description="mini-Xception (Arriaga et al. 2017), Keras code port, ~58k params at 64x64 grey",
                 paper=True, checkpoint_filter=keras_filter))
