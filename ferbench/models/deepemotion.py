"""Deep-Emotion (Minaee, Minaei & Abdolrashidi 2021, Sensors 21(9):3046) as users run it.

The paper has no official code; the implementation its users run is omarsayed7/Deep-Emotion
(`deep_emotion.py`), followed here layer for layer at 48x48 grey input:

- a spatial transformer on the input, copied from PyTorch's STN tutorial: localisation conv 7x7
  (1->8), max-pool 2, ReLU, conv 5x5 (8->10), max-pool 2, ReLU; regressor Linear(10*8*8 -> 32), ReLU,
  Linear(32 -> 6) starting at the identity; `affine_grid` / `grid_sample` with the defaults of the
  PyTorch it runs on today (`align_corners=False`, bilinear, zero padding);
- conv 3x3 (1->10), ReLU, conv 3x3 (10->10), max-pool 2, ReLU, conv 3x3, ReLU, conv 3x3, BatchNorm,
  max-pool 2, ReLU (no padding anywhere: 48 -> 9), dropout 0.5, Linear(810 -> 50), ReLU, Linear(50 -> 7).

Known defect, kept switchable: the code calls `F.dropout(out)` without `training=`, so dropout stays
on when the model is evaluated. Here dropout is an `nn.Dropout` module, so evaluation turns it off
like any module, and `eval.dropout_at_eval: true` (an evaluation setting: no retraining) turns it
back on, seeded, to give the released code's numbers. Flattened sizes are computed from the input
size (the code hard-codes 640 and 810, which hold only at 48).

Options: `stn` (false: the plain CNN), `stn_align_corners` (true: PyTorch < 1.3's behaviour, the
default when the code was written), `dropout`.

Where the code and the paper's architecture figure differ, the figure is an option. The figure is
the one the implementation's README shows as the architecture (`imgs/net_arch.PNG`, the paper's
model figure); it reads:
- localisation network: "Convolution 3x3x8 kernel, Max Pooling, ReLU; Convolution 3x3x10 kernel, Max
  Pooling, ReLU; FC (90-to-32), ReLU, Linear" -> theta -> grid generator;
- feature path: "Convolution 3x3x10 kernel, ReLU, Convolution 3x3x10 kernel, Max Pooling, ReLU" twice,
  "Dropout", then the sampler (x) and "FC (810-to-50), FC (50-to-7), Softmax". No BatchNorm.
So, against the code:
- `localization: figure`: 3x3 kernels (the code: 7x7 and 5x5, as in PyTorch's STN tutorial). The
  figure gives no pool sizes. Its FC input of 90 = 10 x 3 x 3 at 48 px fixes their product, and pools
  of 4 then 3 are the pair that gives it (46 -> 11 -> 9 -> 3). This is inferred, and recorded as such.
- `stn_on: features`: the grid samples the 10 x 9 x 9 feature maps after dropout (810 = the FC's input),
  with theta regressed from the input image. The code warps the input image instead (the repository's
  issue #5 reports this difference).
- `batchnorm: false`: no BatchNorm after the fourth convolution (the code has one).
The paper's text beyond the figure (training schedule, selection) is not reproduced here; the recipe
is the code's (`deep-emotion-code`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ferbench.models import Variant, register

WIDTH = 10


def _after_localisation(size: int, localization: str = "code") -> int:
    if localization == "figure":
        return ((size - 2) // 4 - 2) // 3  # conv3, pool4, conv3, pool3: 48 -> 3 (the figure's FC 90 = 10 x 3 x 3)
    return ((size - 6) // 2 - 4) // 2  # conv7, pool2, conv5, pool2


def _after_features(size: int) -> int:
    return ((size - 4) // 2 - 4) // 2  # conv3, conv3, pool2, conv3, conv3, pool2


class DeepEmotion(nn.Module):
    def __init__(self, num_classes: int = 7, input_size: int = 48, in_chans: int = 1, stn: bool = True,
                 stn_align_corners: bool = False, dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5,
                 localization: Literal["code", "figure"] = "code", stn_on: Literal["input", "features"] = "input",
                 batchnorm: bool = True):
        super().__init__()
        self.use_stn, self.align_corners, self.stn_on = stn, stn_align_corners, stn_on
        k1, p1, k2, p2 = (3, 4, 3, 3) if localization == "figure" else (7, 2, 5, 2)
        self.localization = nn.Sequential(
            nn.Conv2d(in_chans, 8, kernel_size=k1), nn.MaxPool2d(p1, stride=p1), nn.ReLU(True),
            nn.Conv2d(8, 10, kernel_size=k2), nn.MaxPool2d(p2, stride=p2), nn.ReLU(True))
        self.fc_loc = nn.Sequential(nn.Linear(10 * _after_localisation(input_size, localization) ** 2, 32),
                                    nn.ReLU(True), nn.Linear(32, 6))
        nn.init.zeros_(self.fc_loc[2].weight)
        with torch.no_grad():
            self.fc_loc[2].bias.copy_(torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.float))
        if not stn:
            del self.localization, self.fc_loc
        self.conv1, self.conv2 = nn.Conv2d(in_chans, WIDTH, 3), nn.Conv2d(WIDTH, WIDTH, 3)
        self.conv3, self.conv4 = nn.Conv2d(WIDTH, WIDTH, 3), nn.Conv2d(WIDTH, WIDTH, 3)
        self.norm = nn.BatchNorm2d(WIDTH) if batchnorm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(WIDTH * _after_features(input_size) ** 2, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def stn(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`target` (the image itself, or the feature maps) sampled on the grid that theta, regressed
        from `image` by the localisation network, defines."""
        theta = self.fc_loc(self.localization(image).flatten(1)).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(target.size()), align_corners=self.align_corners)
        return F.grid_sample(target, grid, align_corners=self.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x
        if self.use_stn and self.stn_on == "input":
            x = self.stn(image, x)
        x = F.relu(F.max_pool2d(self.conv2(F.relu(self.conv1(x))), 2))
        x = F.relu(F.max_pool2d(self.norm(self.conv4(F.relu(self.conv3(x)))), 2))
        x = self.drop(x)
        if self.use_stn and self.stn_on == "features":
            x = self.stn(image, x)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def build(num_classes: int, input_size: int, in_chans: int, **options) -> DeepEmotion:
    return DeepEmotion(num_classes, input_size, in_chans, **options)


register(Variant("deep-emotion", "deep-emotion", build,
                 options=("stn", "stn_align_corners", "dropout", "localization", "stn_on", "batchnorm"),
                 signature=DeepEmotion, paper=True, modules=("stn",), base_family="cnn",
                 description="Deep-Emotion (Minaee et al. 2021) as omarsayed7/Deep-Emotion builds it, 48x48 grey"))
