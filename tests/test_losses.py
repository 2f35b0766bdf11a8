"""The label-distribution loss, pinned by hand-computed values: its formula and its averaging."""

import math

import pytest
import torch
import torch.nn.functional as F

from ferbench.engine.losses import compute_loss, soft_ce
from ferbench.spec import TrainConfig

# row 0: p = softmax(0, ln 3) = (0.25, 0.75) against t = (0.5, 0.5); row 1: p = (0.5, 0.5) against t = (1, 0)
LOGITS = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
TARGET = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
ROW0 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))  # 0.836988...
ROW1 = -math.log(0.5)  # 0.693147...


def test_ldl_sums_minus_t_log_p_and_averages_over_samples_times_classes():
    assert ROW0 == pytest.approx(0.8369882) and ROW1 == pytest.approx(0.6931472)
    assert soft_ce(LOGITS, TARGET, "paper").item() == pytest.approx((ROW0 + ROW1) / (2 * 2))  # the article: 1/(N x K)
    assert soft_ce(LOGITS, TARGET, "sample").item() == pytest.approx((ROW0 + ROW1) / 2)  # per sample, as FER+'s code
    # PyTorch's cross-entropy with probability targets is the per-sample mean
    assert soft_ce(LOGITS, TARGET, "sample").item() == pytest.approx(F.cross_entropy(LOGITS, TARGET).item())


def test_ldl_in_the_training_loss_with_and_without_a_hard_term():
    model = torch.nn.Identity()
    y = torch.tensor([1, 0])
    ldl = compute_loss(model, LOGITS, y, TARGET, TrainConfig(loss="ldl"))
    assert ldl.item() == pytest.approx((ROW0 + ROW1) / 4)
    hard = -(math.log(0.75) + math.log(0.5)) / 2  # CE on y over the same logits
    both = compute_loss(model, LOGITS, y, TARGET, TrainConfig(loss="ldl", ldl_hard_weight=0.5))
    assert both.item() == pytest.approx((ROW0 + ROW1) / 4 + 0.5 * hard)
