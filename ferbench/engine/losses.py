"""Training losses and the per-step targets they take.

- `ce`: cross-entropy on the hard (majority) label, with optional label smoothing.
- `ldl`: label-distribution learning (ResFace module C): cross-entropy against a distribution, the
  annotators' votes or a frozen teacher's softmax; reduced over N x classes as the article's formula
  (`ldl_reduction: paper`) or over N.
- `sampled`: FER+'s "probability" mode: cross-entropy on a one-hot label drawn from each sample's
  target distribution every step.
- `multi_target`: FER+'s "multi_target" mode: -log max_k t_k p_k on the multi-hot target.
A model's own auxiliary loss (EmoNeXt's self-attention regulariser, `model.aux_loss`) is added, and
with `train.l2` Keras's L2 penalty on the weights the model family regularises (`l2_penalty`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferbench.errors import FerbenchError
from ferbench.spec import TrainConfig


def soft_ce(logits: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """-sum t log softmax(z), divided by N x classes ("paper", the article's formula) or by N."""
    total = -(target * F.log_softmax(logits.float(), dim=1)).sum()
    denom = logits.shape[0] * (logits.shape[1] if reduction == "paper" else 1)
    return total / denom


MULTI_TARGET_EPS = 0.001  # FERPlus _process_target: "to avoid ill-conditioned computation"


def multi_target_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = MULTI_TARGET_EPS) -> torch.Tensor:
    """FER+ multi_target: t = (1 - eps) * [target > 0] + eps, loss = mean over N of -log max_k t_k p_k
    (p = softmax), computed as -max_k (log t_k + log p_k)."""
    t = (1 - eps) * (target > 0).float() + eps
    return -(t.log() + F.log_softmax(logits.float(), dim=1)).amax(dim=1).mean()


def compute_loss(
    model: nn.Module, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, cfg: TrainConfig
) -> torch.Tensor:
    """The step's loss: `cfg.loss` on hard labels `y` or distributions `target`, plus the model's aux loss."""
    if cfg.loss == "ldl":
        loss = soft_ce(logits, target, cfg.ldl_reduction)
        if cfg.ldl_hard_weight:
            loss = loss + cfg.ldl_hard_weight * F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    elif cfg.loss == "multi_target":
        loss = multi_target_loss(logits, target)
    else:
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    aux = getattr(model, "aux_loss", None)
    loss = loss if aux is None else loss + aux.float()
    return loss + cfg.l2 * l2_penalty(model) if cfg.l2 else loss


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squares of the weights a model family regularises (its `l2_weights()`), as Keras adds a
    `kernel_regularizer=l2(c)` layer's c x sum(w^2) to the loss; `train.l2` is c."""
    weights = getattr(model, "l2_weights", None)
    if weights is None:
        raise FerbenchError(f"train.l2: {type(model).__name__} names no weights to regularise (no l2_weights()); "
                            "use train.weight_decay")
    return sum((w.float() ** 2).sum() for w in weights())


def uses_teacher(cfg: TrainConfig) -> bool:
    """Whether the step's target distribution is a teacher's softmax rather than the votes."""
    return cfg.loss == "ldl" and cfg.ldl_source == "teacher"


def check_targets(cfg: TrainConfig, has_votes: bool, has_teacher: bool, dataset: str, where: str = "") -> None:
    """Refuse a loss whose targets this dataset or job cannot provide (`where` prefixes the message:
    the runner checks every job before any record, the training loop again when called directly)."""
    if cfg.loss == "multi_target" and not has_votes:
        raise FerbenchError(f"{where}dataset {dataset!r} has no annotator votes: train.loss=multi_target needs FER+'s")
    if cfg.loss in ("ldl", "sampled") and cfg.ldl_source == "votes" and not has_votes:
        raise FerbenchError(f"{where}dataset {dataset!r} has no annotator votes: train.loss={cfg.loss} needs them, "
                            "or ldl_source: teacher with depends_on / teacher")
    if uses_teacher(cfg) and not has_teacher:
        raise FerbenchError(f"{where}train.ldl_source=teacher needs a teacher: depends_on: <teacher model id>, "
                            "or teacher: {arch, weights}")


def draw_labels(host_targets: torch.Tensor, rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One label per row drawn from its target distribution (on the host: no device sync a step)."""
    return torch.multinomial(host_targets[rows].float(), 1, generator=gen).squeeze(1)
