"""RAF-DB basic (users bring it): `EmoLabel/list_patition_label.txt` + `Image/aligned/*_aligned.jpg`.

Labels 1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral (class index = label - 1);
12,271 train / 3,068 test. RAF-DB has no validation split: `val_fraction` of train is carved off,
stratified per class with a fixed seed (`val_seed`), and the rule is recorded with every run.
Images are decoded once, in RGB as the papers train (`color: rgb`, (N, H, W, 3) arrays; `grey` is an
option), resized to `size`, then cached keyed by the label file, the image files and the colour mode.
`val: none` keeps all of train for training, as EfficientFace did (it has no validation split and
reports its best test epoch): the record says so and no model is selected on validation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ferbench.data import DatasetKind, FerDataset, Split, check_split_nonempty
from ferbench.fileio import expand_user
from ferbench.data.cache import cached_arrays, file_digest
from ferbench.errors import FerbenchError
from ferbench.data.pixels import as_training_image, open_image

CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
PARSER_VERSION = 1


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(100, ge=16, le=512, description="images are resized to size x size")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    val_seed: int = 0
    color: Literal["rgb", "grey"] = Field("rgb", description="rgb as the papers train; grey converts on decode")
    val: Literal["carve", "none"] = Field("carve", description="carve: val_fraction of train becomes validation; none: "
                                          "no validation split, as EfficientFace (which selects on the test set)")


def _locate(root: Path | None, path: str | None, options: BaseModel) -> dict[str, Path]:
    if path:
        base = expand_user(path)
    elif root is not None:
        base = root / "rafdb"
    else:
        raise FerbenchError("rafdb: no data location: set FERBENCH_DATA, pass --data-root, or give the dataset a path "
                            "(expected <root>/rafdb/EmoLabel/list_patition_label.txt and Image/aligned/)")
    labels = base / LABEL_FILE
    if not labels.is_file():
        raise FerbenchError(f"rafdb: expected {labels} (RAF-DB basic, from the dataset's authors): file not found")
    return {"labels": labels, "images": base / "Image" / "aligned"}


def read_labels(path: Path) -> list[tuple[str, int]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= 7:
            raise FerbenchError(f"{path}: line {n}: expected '<name>.jpg <label 1-7>', got {line.strip()!r}")
        if not parts[0].startswith(("train_", "test_")):
            raise FerbenchError(f"{path}: line {n}: image name {parts[0]!r} must start with train_ or test_")
        out.append((parts[0], int(parts[1]) - 1))
    if not out:
        raise FerbenchError(f"{path}: no labelled images")
    return out


def _image_path(folder: Path, name: str) -> Path:
    stem = name.rsplit(".", 1)[0]
    return folder / f"{stem}_aligned.jpg"




def decode(path: Path, size: int, color: str = "grey", box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """An image file as uint8 (size, size) grey or (size, size, 3) RGB; `box` (left, top, width, height)
    crops a face first (clamped to the image). One line naming the file for anything undecodable."""
    if not path.is_file():
        raise FerbenchError(f"rafdb: expected image {path}: file not found")
    im = open_image(path)
    if box is not None:
        left, top = max(0, box[0]), max(0, box[1])
        right, bottom = min(im.width, box[0] + box[2]), min(im.height, box[1] + box[3])
        if right <= left or bottom <= top:
            raise FerbenchError(f"{path}: face box {box} lies outside the {im.width}x{im.height} image")
        im = im.crop((left, top, right, bottom))
    return as_training_image(im, (size, size, 3) if color == "rgb" else (size, size))


def carve_val(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of training rows moved to validation: per class, round(fraction * n), seeded."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        val[rng.permutation(idx)[: int(round(fraction * len(idx)))]] = True
    return val


def _load(files: dict[str, Path], options: BaseModel) -> FerDataset:
    o = options if isinstance(options, Options) else Options.model_validate(options)
    entries = read_labels(files["labels"])
    label_digest = file_digest(files["labels"])
    h = hashlib.sha256(label_digest.encode())
    for name, _ in entries:
        p = _image_path(files["images"], name)
        st = p.stat() if p.exists() else None
        h.update(f"{name}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}".encode())

    def build() -> dict[str, np.ndarray]:
        images = np.stack([decode(_image_path(files["images"], n), o.size, o.color) for n, _ in entries])
        return {"images": images, "labels": np.array([l for _, l in entries], np.int64),
                "is_test": np.array([n.startswith("test_") for n, _ in entries])}

    a = cached_arrays("rafdb", h.hexdigest(), {"v": PARSER_VERSION, "size": o.size, "color": o.color}, build)
    train_rows = np.flatnonzero(~a["is_test"])
    pick = lambda rows: Split(a["images"][rows], a["labels"][rows])  # noqa: E731
    test = pick(np.flatnonzero(a["is_test"]))
    if o.val == "none":
        splits = {"train": pick(train_rows), "test": test}
        rule = ("none: no validation split, as EfficientFace, which selects its reported epoch on the test set; "
                "ferbench selects nothing on validation and shows a best-test number only as that paper's rule, labelled test-selected")
    else:
        val_mask = carve_val(a["labels"][train_rows], o.val_fraction, o.val_seed)
        splits = {"train": pick(train_rows[~val_mask]), "val": pick(train_rows[val_mask]), "test": test}
        rule = f"stratified {o.val_fraction:g} of train per class, seed {o.val_seed}"
    ds = FerDataset("rafdb", CLASSES, splits, files={str(files["labels"]): label_digest},
                    notes={"val_rule": rule,
                           "color": "RGB, as the papers" if o.color == "rgb" else "converted to grey (papers use RGB)",
                           "size": o.size})
    check_split_nonempty(ds, str(files["labels"]))
    return ds


KIND = DatasetKind(Options, _locate, _load, "RAF-DB basic (bring your own), 7 classes, aligned 100x100")
