"""Generic image datasets (`folder`): a `root/<split>/<class>/*.png|jpg` tree, or an `.npz`.

Tree: splits `train`, `test` and optionally `val` (else carved from train like RAF-DB); class names
and order from `classes` (default: sorted folder names). NPZ: arrays named by `images_key`,
`labels_key` and optionally `groups_key` (e.g. subject ids; by default a `subject` or `groups` array
is used when the file has one) and `classes_key`; with groups, the data is split into `folds` grouped
folds so that one person never straddles train and test: fold `fold` is the test set, fold
(`fold` + 1) mod folds is validation, the rest train. `split: random` deals images to folds at
random instead (frame-level, as leaky papers do): on data with subject ids that is recorded as a
leakage warning. Every split of an .npz counts the test images that have a near-identical twin in
train (a 64-bit difference hash within Hamming distance 2: consecutive video frames).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ferbench.data import DatasetKind, FerDataset, Split, check_split_nonempty
from ferbench.data.cache import cached_arrays, file_digest
from ferbench.data.leakage import leakage_notes
from ferbench.data.rafdb import carve_val
from ferbench.fileio import MAX_CLASSES, expand_user
from ferbench.errors import FerbenchError, first_line

EXTS = (".png", ".jpg", ".jpeg", ".bmp")


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classes: list[str] | None = None
    size: int = Field(48, ge=8, le=512)
    images_key: str = "images"
    labels_key: str = "label"
    groups_key: str | None = Field("auto", description="array of subject ids; auto: 'subject' or 'groups' if present")
    classes_key: str | None = "class_names"
    folds: int = Field(5, ge=3, description="k: fold `fold` is test, the next validation, the rest train")
    fold: int = Field(0, ge=0)
    split: Literal["grouped", "random"] = Field("grouped", description="random: frame-level random folds (leaks subjects)")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    val_seed: int = 0


def _locate(root: Path | None, path: str | None, options: BaseModel) -> dict[str, Path]:
    if not path:
        raise FerbenchError("folder: the dataset entry needs a path: a <split>/<class>/ image tree or an .npz file")
    p = expand_user(path)
    if not p.exists():
        raise FerbenchError(f"folder: expected {p} (an image tree or .npz): not found")
    return {"source": p}


def grouped_folds(groups: np.ndarray, folds: int) -> np.ndarray:
    """Fold index per sample; groups are dealt round-robin in sorted order, so no group is split."""
    uniq = np.unique(groups)
    if len(uniq) < folds:
        raise FerbenchError(f"folder: {len(uniq)} groups cannot make {folds} grouped folds")
    fold_of = {g: i % folds for i, g in enumerate(uniq)}
    return np.array([fold_of[g] for g in groups])


def _read_npz(path: Path, keys: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The named arrays of an .npz that are present, and the names of all it holds; never unpickles
    (an object array is refused) and gives one line for a damaged file."""
    import zipfile

    from ferbench.fileio import load_npz

    arrays = load_npz(path, keys)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n.removesuffix(".npy") for n in zf.namelist()]
    except (OSError, zipfile.BadZipFile) as e:
        raise FerbenchError(f"{path}: not a readable .npz of plain arrays ({first_line(e)})") from None
    return arrays, names


AUTO_GROUP_KEYS = ("subject", "groups")


def _from_npz(path: Path, o: Options) -> FerDataset:
    group_keys = list(AUTO_GROUP_KEYS) if o.groups_key == "auto" else [o.groups_key] if o.groups_key else []
    z, names = _read_npz(path, [o.images_key, o.labels_key] + group_keys + ([o.classes_key] if o.classes_key else []))
    groups_key = next((k for k in group_keys if k in z), None) if o.groups_key == "auto" else o.groups_key
    for key in (o.images_key, o.labels_key) + ((groups_key,) if groups_key else ()):
        if key not in z:
            raise FerbenchError(f"{path}: array {key!r} missing (has {', '.join(names)})")
    images, labels = z[o.images_key], z[o.labels_key]
    if images.ndim != 3 or images.dtype != np.uint8:
        raise FerbenchError(f"{path}: {o.images_key!r} must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
        raise FerbenchError(f"{path}: {o.labels_key!r} must be integers, one per image ({len(images)}), "
                            f"got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    groups = z[groups_key] if groups_key else None
    if groups is not None and len(groups) != len(images):
        raise FerbenchError(f"{path}: {groups_key!r} must have one entry per image ({len(images)}), got {len(groups)}")
    if labels.size and labels.min() < 0:
        raise FerbenchError(f"{path}: {o.labels_key!r} must be class indices >= 0 (found {labels.min()})")
    classes = o.classes or ([str(c) for c in z[o.classes_key]] if o.classes_key and o.classes_key in z else None)
    if classes is None:
        if labels.size and labels.max() >= MAX_CLASSES:
            raise FerbenchError(f"{path}: labels go up to {labels.max()}: more than the {MAX_CLASSES} classes ferbench takes")
        classes = [str(i) for i in range(int(labels.max()) + 1)] if labels.size else []
    if len(classes) > MAX_CLASSES:
        raise FerbenchError(f"{path}: {len(classes)} classes, more than the {MAX_CLASSES} ferbench takes")
    if labels.size and labels.max() >= len(classes):
        raise FerbenchError(f"{path}: labels must be in 0..{len(classes) - 1} for {len(classes)} classes (found {labels.max()})")
    if o.fold >= o.folds and (groups is not None or o.split == "random"):
        raise FerbenchError(f"folder: fold {o.fold} out of range for {o.folds} folds")
    if groups is not None or o.split == "random":
        if o.split == "random":
            f = np.random.default_rng(o.val_seed).permutation(len(labels)) % o.folds
            rule = f"random (frame-level) folds, seed {o.val_seed}: fold {o.fold} of {o.folds} is test, fold {(o.fold + 1) % o.folds} val"
        else:
            f = grouped_folds(groups, o.folds)
            rule = f"grouped by {groups_key!r}: fold {o.fold} of {o.folds} is test, fold {(o.fold + 1) % o.folds} val"
        test, val = f == o.fold, f == (o.fold + 1) % o.folds
        train = ~test & ~val
        splits = {"train": Split(images[train], labels[train]),
                  "val": Split(images[val], labels[val]), "test": Split(images[test], labels[test])}
    else:
        rng = np.random.default_rng(o.val_seed)
        order = rng.permutation(len(labels))
        n_test = len(labels) // 5
        test = np.zeros(len(labels), bool)
        test[order[:n_test]] = True
        tr = np.flatnonzero(~test)
        vm = carve_val(labels[tr], o.val_fraction, o.val_seed)
        train = np.zeros(len(labels), bool)
        train[tr[~vm]] = True
        splits = {"train": Split(images[tr[~vm]], labels[tr[~vm]]), "val": Split(images[tr[vm]], labels[tr[vm]]),
                  "test": Split(images[test], labels[test])}
        rule = f"random 20 % test, {o.val_fraction:g} of the rest val, seed {o.val_seed} (no groups: frames may leak)"
    notes = leakage_notes(images[train], images[test], None if groups is None else groups[train],
                          None if groups is None else groups[test], groups_key)
    return FerDataset(path.stem, classes, splits, files={str(path): file_digest(path)}, notes={"split_rule": rule, **notes})


def _from_tree(root: Path, o: Options) -> FerDataset:
    from ferbench.data.rafdb import decode

    split_dirs = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" not in split_dirs or "test" not in split_dirs:
        raise FerbenchError(f"{root}: expected train/ and test/ folders with one sub-folder per class")
    classes = o.classes or sorted(d.name for d in split_dirs["train"].iterdir() if d.is_dir())
    files = {s: sorted((f, classes.index(c.name)) for c in d.iterdir() if c.is_dir() and c.name in classes
                       for f in c.iterdir() if f.suffix.lower() in EXTS) for s, d in split_dirs.items()}
    present = {y for _, y in files["train"]}
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise FerbenchError(f"{root / 'train'}: class folder(s) {', '.join(map(repr, empty))} hold no images "
                            f"({', '.join(sorted(EXTS))}); remove them or add images")
    h = hashlib.sha256(repr([(s, [(str(f), f.stat().st_size, f.stat().st_mtime_ns, y) for f, y in v]) for s, v in files.items()]).encode())

    def build() -> dict[str, np.ndarray]:
        out = {}
        for s, v in files.items():
            out[f"{s}_images"] = np.stack([decode(f, o.size) for f, _ in v]) if v else np.zeros((0, o.size, o.size), np.uint8)
            out[f"{s}_labels"] = np.array([y for _, y in v], np.int64)
        return out

    a = cached_arrays("folder", h.hexdigest(), {"size": o.size, "classes": classes}, build)
    splits = {s: Split(a[f"{s}_images"], a[f"{s}_labels"]) for s in files}
    rule = "val/ folder"
    if "val" not in splits:
        tr = splits["train"]
        vm = carve_val(tr.labels, o.val_fraction, o.val_seed)
        splits["train"], splits["val"] = tr.take(np.flatnonzero(~vm)), tr.take(np.flatnonzero(vm))
        rule = f"stratified {o.val_fraction:g} of train, seed {o.val_seed}"
    return FerDataset(root.name, classes, splits, notes={"split_rule": rule})


def _load(files: dict[str, Path], options: BaseModel) -> FerDataset:
    o = options if isinstance(options, Options) else Options.model_validate(options)
    src = files["source"]
    ds = _from_npz(src, o) if src.suffix == ".npz" else _from_tree(src, o)
    check_split_nonempty(ds, str(src))
    return ds


KIND = DatasetKind(Options, _locate, _load, "image tree or .npz, optional grouped k-fold splits")
