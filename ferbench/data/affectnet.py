"""`affectnet`: AffectNet's manually annotated images, brought by the user (no data ships here).

Layout as released: `<root>/affectnet/training.csv`, `validation.csv` (columns
subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks, expression,
valence, arousal) and `Manually_Annotated_Images/<subDirectory_filePath>`. Expression codes:
0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt, 8 none,
9 uncertain, 10 non-face. Codes 8-10 are always dropped; `protocol: 8class` keeps contempt, `7class`
drops it too. Class indices are AffectNet's own codes (the label order above), so a prediction's
index is the code.

Each face is cropped by its box, converted (RGB by default) and resized to `size`. AffectNet's test
set is not public: its validation set is the test split here, as the literature reports it (the
record says so), and validation is carved from training (stratified, seeded). Several published
AffectNet results train with class-balanced sampling: `train.sampler: balanced`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ferbench.data import DatasetKind, FerDataset, Split, check_split_nonempty
from ferbench.fileio import bounded_table, expand_user
from ferbench.data.cache import cached_arrays, file_digest
from ferbench.data.rafdb import carve_val, decode
from ferbench.errors import FerbenchError

CODES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"]  # codes 0-7
DROPPED = {8: "none", 9: "uncertain", 10: "non-face"}
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
PARSER_VERSION = 1


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    protocol: Literal["8class", "7class"] = Field("8class", description="7class drops contempt (code 7)")
    size: int = Field(112, ge=8, le=512, description="side of the resized face crop")
    color: Literal["rgb", "grey"] = "rgb"
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="of training, stratified, as validation")
    val_seed: int = 0


def _locate(root: Path | None, path: str | None, options: BaseModel) -> dict[str, Path]:
    base = expand_user(path) if path else (root / "affectnet" if root else None)
    if base is None:
        raise FerbenchError("affectnet: no data location: set FERBENCH_DATA or pass --data-root (expected "
                            "<root>/affectnet/training.csv, validation.csv and Manually_Annotated_Images/)")
    files = {"train": base / "training.csv", "test": base / "validation.csv", "images": base / "Manually_Annotated_Images"}
    for key, p in files.items():
        if not p.exists():
            raise FerbenchError(f"affectnet: expected {p}: not found")
    return files


def read_table(path: Path, keep: int) -> tuple[list[tuple[str, tuple[int, int, int, int], int]], dict[str, int]]:
    """(image path, face box, code) of the rows whose code is below `keep`, and how many rows each
    dropped code had."""
    import pandas as pd

    try:
        df = pd.read_csv(bounded_table(path), usecols=lambda c: c in COLUMNS)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise FerbenchError(f"{path}: not an AffectNet annotation table ({str(e).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise FerbenchError(f"{path}: column(s) {', '.join(missing)} missing (expected {', '.join(COLUMNS)})")
    for c in COLUMNS[1:]:
        bad = pd.to_numeric(df[c], errors="coerce").isna() | (pd.to_numeric(df[c], errors="coerce") % 1 != 0)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise FerbenchError(f"{path}: line {row + 2}: {c} must be an integer, got {df[c].iloc[row]!r}")
    code = df["expression"].astype(int).to_numpy()
    if ((code < 0) | (code > 10)).any():
        row = int(np.flatnonzero((code < 0) | (code > 10))[0])
        raise FerbenchError(f"{path}: line {row + 2}: expression must be a code 0-10, got {code[row]}")
    dropped = {name: int((code == c).sum()) for c, name in {7: "contempt", **DROPPED}.items() if c >= keep}
    kept = np.flatnonzero(code < keep)
    boxes = df[["face_x", "face_y", "face_width", "face_height"]].astype(int).to_numpy()
    names = df["subDirectory_filePath"].astype(str).to_numpy()
    return [(names[i], tuple(int(v) for v in boxes[i]), int(code[i])) for i in kept], dropped


def _load(files: dict[str, Path], options: BaseModel) -> FerDataset:
    o = options if isinstance(options, Options) else Options.model_validate(options)
    keep = 8 if o.protocol == "8class" else 7
    tables = {split: read_table(files[split], keep) for split in ("train", "test")}
    h = hashlib.sha256(f"{file_digest(files['train'])}:{file_digest(files['test'])}:{keep}".encode())
    for rows, _ in tables.values():  # an image replaced on disk gets a new cache entry (as rafdb's)
        for name, _, _ in rows:
            p = files["images"] / name
            st = p.stat() if p.exists() else None
            h.update(f"{name}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}".encode())
    shape = (o.size, o.size, 3) if o.color == "rgb" else (o.size, o.size)

    def build() -> dict[str, np.ndarray]:
        out = {}
        for split, (rows, _) in tables.items():
            faces = [decode(files["images"] / name, o.size, o.color, box) for name, box, _ in rows]
            out[f"{split}_images"] = np.stack(faces) if faces else np.zeros((0, *shape), np.uint8)
            out[f"{split}_labels"] = np.array([code for _, _, code in rows], np.int64)
        return out

    a = cached_arrays("affectnet", h.hexdigest(), {"v": PARSER_VERSION, "size": o.size, "color": o.color}, build)
    train = Split(a["train_images"], a["train_labels"])
    val_mask = carve_val(train.labels, o.val_fraction, o.val_seed)
    splits = {"train": train.take(np.flatnonzero(~val_mask)), "val": train.take(np.flatnonzero(val_mask)),
              "test": Split(a["test_images"], a["test_labels"])}
    notes = {"protocol": f"{keep} classes ({', '.join(CODES[:keep])}); dropped codes: " +
                         ", ".join(f"{k} ({v} train, {tables['test'][1][k]} validation)" for k, v in tables["train"][1].items()),
             "test_split": "AffectNet's validation set (validation.csv), as the literature reports it: the test set is not public",
             "val_rule": f"stratified {o.val_fraction:g} of training per class, seed {o.val_seed}",
             "color": o.color, "size": o.size}
    ds = FerDataset("affectnet", CODES[:keep], splits, files={str(files["train"]): file_digest(files["train"]),
                                                               str(files["test"]): file_digest(files["test"])}, notes=notes)
    check_split_nonempty(ds, str(files["train"].parent))
    return ds


KIND = DatasetKind(Options, _locate, _load, "AffectNet (bring your own): 8- or 7-class, validation set as test")
