"""`ferbench data plot`: the figures of a dataset (reused by reports): class bars per split, example
faces, annotator agreement for datasets with votes, and FER-2013 vs FER+ label distributions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferbench.data import FerDataset, load_dataset
from ferbench.report import figures
from ferbench.records import write_bytes_atomic

def fer_vs_ferplus_counts(data_root: str | None) -> tuple[dict[str, int], dict[str, int]]:
    """All-split counts: FER-2013 labels vs a plain argmax over FER+'s 10 vote columns (no protocol)."""
    ds = load_dataset("ferplus", {}, None, data_root)
    left, right = ds.notes["fer2013_vs_ferplus"].values()
    return left, right


def dataset_figures(ds: FerDataset, votes: np.ndarray | None = None) -> dict[str, bytes]:
    figs = {
        f"{ds.name}_classes.png": figures.class_distribution_figure(ds.counts(), ds.classes, f"{ds.name}: images per class and split"),
        f"{ds.name}_faces.png": figures.faces_grid_figure(ds.splits["train"].images, ds.splits["train"].labels, ds.classes,
                                                          title=f"{ds.name}: training examples per class"),
    }
    if votes is not None:
        figs[f"{ds.name}_agreement.png"] = figures.agreement_figure(votes, f"{ds.name}: annotator agreement (train)")
    return figs


def plot_dataset(name: str, out: Path, data_root: str | None = None, path: str | None = None,
                 options: dict | None = None) -> list[Path]:
    ds = load_dataset(name, options or {}, path, data_root)
    votes = None
    t = ds.splits["train"].targets
    if t is not None:
        votes = t  # shares of votes: max share is the agreement
    figs = dataset_figures(ds, votes)
    if name in ("fer2013", "ferplus"):
        left, right = fer_vs_ferplus_counts(data_root)
        figs["fer2013_vs_ferplus.png"] = figures.side_by_side_figure(
            left, right, "FER-2013 labels", "FER+ plain vote argmax",
            f"FER-2013 vs FER+ (fear {left['fear']:,} vs {right['fear']:,}; FER+ non-faces {right['NF']:,})")
    paths = []
    for n, png in figs.items():
        write_bytes_atomic(out / n, png)
        paths.append(out / n)
    return paths
