"""`ckplus48`: CK+ as 48x48 grey crops, the last three frames of each of the 327 labelled sequences
(981 images, 118 subjects; anger, contempt, disgust, fear, happy, sadness, surprise: no neutral).

Read from `<root>/ckplus48/ckplus48.npz` (arrays `images`, `label`, `class_names`, `subject`, ...).
Split like CK+ papers: subject-independent k-fold cross-validation (10 folds by default; fold `fold`
is test, the next one validation), so no person is in train and test; `split: random` deals frames
to folds at random (what a leaky paper does), and the run records the leakage (`data.leakage`).
CK+ images are under a research-only agreement: publish numbers, never the images.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from ferbench.data import DatasetKind, FerDataset, check_split_nonempty
from ferbench.fileio import expand_user
from ferbench.data import folder
from ferbench.errors import FerbenchError

FILE = Path("ckplus48") / "ckplus48.npz"


class Options(folder.Options):
    folds: int = Field(10, ge=3, description="k of the subject-independent k-fold (10 as CK+ papers)")


def _locate(root: Path | None, path: str | None, options: BaseModel) -> dict[str, Path]:
    p = expand_user(path) if path else (root / FILE if root else None)
    if p is None:
        raise FerbenchError(f"ckplus48: no data location: set FERBENCH_DATA or pass --data-root (expected <root>/{FILE})")
    if not p.is_file():
        raise FerbenchError(f"ckplus48: expected {p} (the CK+48 .npz): not found")
    return {"source": p}


def _load(files: dict[str, Path], options: BaseModel) -> FerDataset:
    o = options if isinstance(options, Options) else Options.model_validate(options)
    ds = folder._from_npz(files["source"], o)
    check_split_nonempty(ds, str(files["source"]))
    ds.name = "ckplus48"
    ds.notes["licence"] = "CK+ research-only agreement: numbers may be published, images never"
    return ds


KIND = DatasetKind(Options, _locate, _load, "CK+ 48x48 (981 images, 118 subjects), subject-independent k-fold")
