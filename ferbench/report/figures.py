"""Figures as PNG bytes (matplotlib, Agg). The report embeds them in HTML and writes them for Markdown."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def confusion_figure(cm: np.ndarray, classes: list[str], title: str) -> bytes:
    """Row-normalised confusion matrix; each cell shows the rate and the count."""
    cm = np.asarray(cm)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.6 * len(classes) + 1.4, 0.55 * len(classes) + 1.2))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{rates[i, j]:.2f}\n{cm[i, j]}", ha="center", va="center", fontsize=6,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def class_distribution_figure(counts: dict[str, dict[str, Any]], classes: list[str], title: str) -> bytes:
    """Grouped bars: images per class for each split."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    splits = list(counts)
    w = 0.8 / max(len(splits), 1)
    x = np.arange(len(classes))
    for i, s in enumerate(splits):
        vals = [counts[s]["per_class"].get(c, 0) for c in classes]
        ax.bar(x + i * w - 0.4 + w / 2, vals, w, label=f"{s} ({counts[s]['total']:,})")
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig)


def curves_figure(histories: dict[str, list[list[dict[str, Any]]]], title: str) -> bytes:
    """Validation accuracy (solid) and training accuracy (dashed) per epoch, mean over seeds."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for label, runs in histories.items():
        for key, style in (("val_acc", "-"), ("train_acc", "--")):
            series = [[row[key] for row in h if key in row] for h in runs]
            series = [s for s in series if s]
            if not series:
                continue
            n = min(len(s) for s in series)
            mean = np.mean([s[:n] for s in series], axis=0)
            ax.plot(np.arange(1, n + 1), mean, style, label=f"{label} {key.split('_')[0]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _png(fig)


def label_distribution_figure(target_mean: np.ndarray, pred_mean: np.ndarray, kl: np.ndarray,
                              classes: list[str], title: str) -> bytes:
    """Mean target vs predicted distribution per class, and the histogram of per-sample KL."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    x = np.arange(len(classes))
    a.bar(x - 0.2, target_mean, 0.4, label="target (votes)")
    a.bar(x + 0.2, pred_mean, 0.4, label="predicted")
    a.set_xticks(x, classes, rotation=30, ha="right")
    a.set_ylabel("mean probability")
    a.legend(fontsize=8)
    b.hist(kl, bins=40, color="tab:purple")
    b.set_xlabel("KL(target || predicted), nats")
    b.set_ylabel("test images")
    b.set_title(f"mean KL {kl.mean():.3f}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def scatter_figure(points: list[dict[str, Any]], x: str, y: str, title: str) -> bytes:
    """Accuracy vs cost, one labelled point per (model, dataset)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for p in points:
        ax.scatter(p[x], p[y], s=30)
        ax.annotate(p["label"], (p[x], p[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def faces_grid_figure(images: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int = 8,
                      title: str = "") -> bytes:
    """A grid of example faces: one row per class."""
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95))
    axes = np.atleast_2d(axes)
    for c, name in enumerate(classes):
        idx = np.flatnonzero(labels == c)[:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.axis("off")
            if j < len(idx):
                ax.imshow(images[idx[j]], cmap="gray", vmin=0, vmax=255)
        axes[c, 0].text(-0.1, 0.5, name, transform=axes[c, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def agreement_figure(votes: np.ndarray, title: str) -> bytes:
    """Histogram of annotator agreement: the share of votes on each image's top class."""
    share = votes.max(1) / np.maximum(votes.sum(1), 1)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(share, bins=np.linspace(0, 1, 21), color="tab:green")
    ax.set_xlabel("share of votes on the top class")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def side_by_side_figure(left: dict[str, int], right: dict[str, int], left_name: str, right_name: str, title: str) -> bytes:
    """Two label distributions over their union of class names (e.g. FER-2013 vs FER+)."""
    names = list(dict.fromkeys(list(left) + list(right)))
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 3.4))
    a = ax.bar(x - 0.2, [left.get(n, 0) for n in names], 0.4, label=left_name)
    b = ax.bar(x + 0.2, [right.get(n, 0) for n in names], 0.4, label=right_name)
    ax.bar_label(a, fontsize=6)
    ax.bar_label(b, fontsize=6)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("images (all splits)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig)
