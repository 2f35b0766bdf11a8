"""Datasets as arrays: uint8 images (N, H, W), hard labels (N,), optional target distributions (N, K).

Each dataset module defines an `Options` model (validated against the spec's `options:`), a
`locate(root, path, options)` that names the files it needs (a one-line error if missing) and a
`load(files, options)` that returns a `FerDataset`. Loading never imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ValidationError

from ferbench.errors import FerbenchError
from ferbench.fileio import expand_user
from ferbench.fileio import sha256_file  # noqa: F401  (loaders and the cache hash their files)

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64, index into classes
    targets: np.ndarray | None = None  # (N, K) float32 label distributions (votes), rows sum to 1

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx: np.ndarray) -> "Split":
        return Split(self.images[idx], self.labels[idx], None if self.targets is None else self.targets[idx])


@dataclass
class FerDataset:
    name: str
    classes: list[str]
    splits: dict[str, Split]
    files: dict[str, str] = field(default_factory=dict)  # source path -> sha256, for the manifest
    notes: dict[str, Any] = field(default_factory=dict)  # protocol facts recorded with each run
    # datasets[].cross targets by id, each with its checked class map (runner.load_cross_targets)
    cross: dict[str, tuple["FerDataset", Any]] = field(default_factory=dict)
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def content_digest(self) -> str:
        """sha256 of what a job trains and is tested on: classes and every split's images, labels and
        targets, whatever files or folders they came from (so a moved dataset keeps its digest, and a
        changed one, even an image tree, gets a new one). Computed once per loaded dataset."""
        if self._digest is None:
            import hashlib

            h = hashlib.sha256(repr(self.classes).encode())
            for name in sorted(self.splits):
                s = self.splits[name]
                for part in (s.images, s.labels, s.targets):
                    if part is not None:
                        a = np.ascontiguousarray(part)
                        h.update(f"{name}|{a.dtype}|{a.shape}".encode())
                        h.update(memoryview(a).cast("B"))
            self._digest = h.hexdigest()
        return self._digest

    def counts(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, s in self.splits.items():
            per = np.bincount(s.labels, minlength=self.num_classes)
            out[name] = {"total": len(s), "per_class": {c: int(n) for c, n in zip(self.classes, per)}}
        return out


@dataclass(frozen=True)
class DatasetKind:
    options: type[BaseModel]
    locate: Callable[[Path | None, str | None, BaseModel], dict[str, Path]]
    load: Callable[[dict[str, Path], BaseModel], FerDataset]
    description: str


def _registry() -> dict[str, DatasetKind]:
    from ferbench.data import affectnet, ckplus48, fer2013, ferplus, folder, rafdb, synthetic

    return {"synthfer": synthetic.KIND, "fer2013": fer2013.KIND, "ferplus": ferplus.KIND, "rafdb": rafdb.KIND,
            "folder": folder.KIND, "ckplus48": ckplus48.KIND, "affectnet": affectnet.KIND}


def dataset_names() -> list[str]:
    return sorted(_registry())


def get_kind(name: str) -> DatasetKind:
    reg = _registry()
    if name not in reg:
        raise FerbenchError(f"unknown dataset {name!r} (expected one of {', '.join(sorted(reg))})")
    return reg[name]


def parse_options(name: str, options: dict[str, Any], where: str = "") -> BaseModel:
    kind = get_kind(name)
    try:
        return kind.options.model_validate(options)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        what = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        got = "" if err["type"] == "extra_forbidden" else f" (got {err.get('input')!r})"
        raise FerbenchError(f"{where}dataset {name!r} options.{loc}: {what}{got}") from None


def fold_count(entry: Any) -> int | None:
    """How many cross-validation folds a spec's dataset entry has (its `options.folds`, or the dataset's
    default), None for a dataset without folds: what `spec.expand` needs to make one job per fold."""
    opts = parse_options(entry.name, entry.options, where=f"datasets.{entry.id}: ")
    k = getattr(opts, "folds", None)
    return k if isinstance(k, int) and hasattr(opts, "fold") else None


def resolve_root(spec_path: str | None, data_root: str | None) -> Path | None:
    """Dataset location: the spec's `path`, then `--data-root`, then FERBENCH_DATA."""
    if spec_path:
        return expand_user(spec_path)
    if data_root:
        return expand_user(data_root)
    env = os.environ.get("FERBENCH_DATA")
    return expand_user(env) if env else None


def load_dataset(
    name: str,
    options: dict[str, Any] | None = None,
    path: str | None = None,
    data_root: str | None = None,
    subset: dict[str, int | None] | None = None,
) -> FerDataset:
    """Locate, load (through the cache where the loader uses it) and optionally subsample a dataset."""
    kind = get_kind(name)
    opts = parse_options(name, options or {})
    root = None if path else resolve_root(None, data_root)
    files = kind.locate(root, path, opts)
    ds = kind.load(files, opts)
    if subset:
        ds = subsample(ds, subset)
    return ds


def subsample(ds: FerDataset, sizes: dict[str, int | None], seed: int = 0) -> FerDataset:
    """Stratified, seeded subsample: keeps class proportions, same subset for every job seed."""
    out = {}
    for name, split in ds.splits.items():
        n = sizes.get(name)
        if n is None or n >= len(split):
            out[name] = split
            continue
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(split))
        # take an equal fraction of each class, then top up to n in permuted order
        frac = n / len(split)
        chosen: list[np.ndarray] = []
        for c in range(ds.num_classes):
            members = order[split.labels[order] == c]
            chosen.append(members[: int(np.floor(len(members) * frac))])
        picked = np.concatenate(chosen)
        rest = np.setdiff1d(order, picked, assume_unique=True)
        rest = order[np.isin(order, rest)][: n - len(picked)]
        idx = np.sort(np.concatenate([picked, rest]))
        out[name] = split.take(idx)
    return FerDataset(ds.name, ds.classes, out, ds.files, {**ds.notes, "subset": dict(sizes)})


def check_split_nonempty(ds: FerDataset, where: str) -> None:
    for name, s in ds.splits.items():
        if len(s) == 0:
            raise FerbenchError(f"{where}: split {name!r} is empty after filtering")
