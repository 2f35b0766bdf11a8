"""FER-2013 in the Kaggle `fer2013.csv` format (plain or gzipped).

Columns `emotion,pixels,Usage`; `pixels` is 2304 space-separated ints (48x48, row-major).
Standard protocol: Training -> train, PublicTest -> val, PrivateTest -> test.
(`torchvision.datasets.FER2013` merges PublicTest and PrivateTest, so it cannot serve here.)

Other protocols are options, each named by the code that uses it (`protocol`), and so is the pixel
path of an official pipeline (`jpeg_quality`, `resize` with `resize_method`). Where the CSV has its
provenance file beside it (`fer2013_provenance.csv.gz`, see the shared data README), the number of
images per split whose pixels are approximate is recorded (`notes.inexact_pixels`): a re-evaluated
released model can differ from its authors' number on those images.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pydantic import BaseModel, ConfigDict, Field

from ferbench.data import DatasetKind, FerDataset, Split, check_split_nonempty
from ferbench.fileio import bounded_table, expand_user
from ferbench.data.cache import cached_arrays, file_digest
from ferbench.errors import FerbenchError, first_line

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
COLUMNS = ["emotion", "pixels", "Usage"]
PIXELS = 48 * 48
PARSER_VERSION = 1
FILE_NAMES = ("fer2013.csv.gz", "fer2013.csv")


PROTOCOLS = {
    "standard": "Training->train, PublicTest->val, PrivateTest->test",
    # oarriaga/face_classification split_data(validation_split=.2) without shuffling: the first 80 % of the
    # rows are exactly the 28,709 Training rows; the rest validated, selected the checkpoint and gave "66 %"
    "val-public-private": "Training->train, PublicTest+PrivateTest->val and test (mini-Xception's split_data: the "
                          "set that selected the checkpoint also gives the number)",
    # omarsayed7/Deep-Emotion generate_data.split_test: validation = the first 3,589 rows of train.csv
    "carve-val": "Training rows 3589 onwards->train, the first 3,589 Training rows->val, PrivateTest->test "
                 "(Deep-Emotion's split_test)",
}
CARVED_VAL_ROWS = 3589


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    protocol: Literal["standard", "val-public-private", "carve-val"] = Field(
        "standard", description="; ".join(f"{k}: {v}" for k, v in PROTOCOLS.items()))
    jpeg_quality: int | None = Field(None, ge=1, le=100, description="re-encode every image as a Pillow JPEG at "
                                     "this quality first (Deep-Emotion's generate_data.py: Pillow's default, 75)")
    resize: int | None = Field(None, ge=8, le=1024, description="resize every image to this side at load time "
                               "(mini-Xception: 64), with resize_method")
    resize_method: Literal["cv2-linear"] = Field("cv2-linear", description="cv2-linear: cv2.resize's default "
                                                 "bilinear in uint8, as mini-Xception's datasets.py")


def find_csv(root: Path | None, path: str | None) -> Path:
    """The CSV: `path` (a file or a folder holding it), else `<root>/fer2013/fer2013.csv[.gz]`."""
    if path:
        p = expand_user(path)
        if p.exists() and not p.is_dir():  # a file, or a pipe or device that bounded_table refuses by name
            return p
        candidates = [p / n for n in FILE_NAMES] + [p / "fer2013" / n for n in FILE_NAMES]
    elif root is not None:
        candidates = [root / "fer2013" / n for n in FILE_NAMES] + [root / n for n in FILE_NAMES]
    else:
        raise FerbenchError(
            "fer2013: no data location: set FERBENCH_DATA, pass --data-root, or give the dataset a path: "
            "expected <root>/fer2013/fer2013.csv.gz (Kaggle 'Challenges in Representation Learning' fer2013.csv)"
        )
    for c in candidates:
        if c.is_file():
            return c
        if c.exists():  # a pipe would block the reader, a link to a device never end
            raise FerbenchError(f"fer2013: {c}: not a regular file (a folder, pipe or device)")
    raise FerbenchError(
        f"fer2013: expected {candidates[0]} (the Kaggle fer2013.csv, plain or gzipped): file not found"
    )


def _locate(root: Path | None, path: str | None, options: BaseModel) -> dict[str, Path]:
    return {"csv": find_csv(root, path)}


_TOO_LONG = re.compile(r"(?<![0-9])0*[1-9][0-9]{3,}")  # a value of 1000 or more, leading zeros aside


def parse_pixels(pixels: list[str], where: str, first_line: int = 2) -> np.ndarray:
    """Parse space-separated pixel strings into (N, 48, 48) uint8, vectorised over bytes.

    Raises FerbenchError naming the line of the first row with a wrong count or a bad value.
    """
    n = len(pixels)
    out = np.empty((n, PIXELS), dtype=np.uint8)
    chunk = 4096
    for start in range(0, n, chunk):
        rows = pixels[start : start + chunk]
        out[start : start + len(rows)] = _parse_chunk(rows, where, first_line + start)
    return out.reshape(n, 48, 48)


def _parse_chunk(rows: list[str], where: str, first_line: int) -> np.ndarray:
    counts = np.fromiter((r.count(" ") + 1 if r else 0 for r in rows), dtype=np.int64, count=len(rows))
    wrong = np.flatnonzero(counts != PIXELS)
    if wrong.size:
        r = int(wrong[0])
        raise FerbenchError(
            f"{where}: line {first_line + r}: expected {PIXELS} pixel values (48x48) separated by single spaces, "
            f"got {len(rows[r].split())}"
        )
    text = " ".join(rows)
    if text.encode("ascii", errors="replace").translate(None, b"0123456789 "):
        r = next(i for i, row in enumerate(rows) if row.encode("ascii", errors="replace").translate(None, b"0123456789 "))
        raise FerbenchError(f"{where}: line {first_line + r}: pixels must be integers 0-255 separated by spaces")
    big = _TOO_LONG.search(text)  # 1000 and up: refused before the int32 parser could wrap it (4294967305 -> 9)
    if big:
        r = text.count(" ", 0, big.start()) // PIXELS
        raise FerbenchError(f"{where}: line {first_line + r}: pixel value {big.group()[:20]} out of range 0-255")
    values = np.fromstring(text, dtype=np.int32, sep=" ")  # text mode: a C parser, not deprecated
    if values.size != len(rows) * PIXELS:
        raise FerbenchError(f"{where}: lines {first_line}-{first_line + len(rows) - 1}: malformed pixel values")
    if values.max(initial=0) > 255:
        r = int(np.argmax(values > 255) // PIXELS)
        raise FerbenchError(f"{where}: line {first_line + r}: pixel value out of range 0-255")
    return values.astype(np.uint8).reshape(len(rows), PIXELS)


def read_csv_frame(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read a CSV with exactly `columns`, all as strings; one-line errors for unreadable files."""
    try:
        df = pd.read_csv(bounded_table(path), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as e:
        raise FerbenchError(f"{path}: not a readable CSV ({first_line(e, limit=10_000)})") from None
    got = [c.strip() for c in df.columns]
    if got != columns:
        raise FerbenchError(f"{path}: expected columns {','.join(columns)}, got {','.join(got)}")
    df.columns = got
    return df


def split_codes(df: pd.DataFrame, path: Path) -> np.ndarray:
    """The Usage column as split codes 0 train, 1 val, 2 test; one-line error on an unknown value."""
    usage = df["Usage"].str.strip().to_numpy()
    known = np.isin(usage, list(USAGE_TO_SPLIT))
    if not known.all():
        i = int(np.argmax(~known))
        raise FerbenchError(f"{path}: line {i + 2}: Usage {usage[i]!r} is not one of Training, PublicTest, PrivateTest")
    return np.select([usage == u for u in USAGE_TO_SPLIT], list(range(3))).astype(np.int8)


def parse_csv(path: Path) -> dict[str, np.ndarray]:
    df = read_csv_frame(path, COLUMNS)
    split = split_codes(df, path)
    emo = pd.to_numeric(df["emotion"].str.strip(), errors="coerce").to_numpy()
    ok = ~np.isnan(emo) & (emo == np.round(emo)) & (emo >= 0) & (emo < len(CLASSES))
    if not ok.all():
        i = int(np.argmax(~ok))
        raise FerbenchError(f"{path}: line {i + 2}: emotion {df['emotion'].iloc[i]!r} is not an integer 0-6")
    images = parse_pixels(df["pixels"].str.strip().tolist(), str(path))
    return {"images": images, "labels": emo.astype(np.int64), "split": split}


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Parsed arrays of a FER-2013 CSV, through the cache."""
    return cached_arrays("fer2013", file_digest(path), {"v": PARSER_VERSION}, lambda: parse_csv(path))


def split_rows(split: np.ndarray, protocol: str) -> dict[str, np.ndarray]:
    """Row indices of each split under a protocol (split codes 0 Training, 1 PublicTest, 2 PrivateTest)."""
    rows = [np.flatnonzero(split == i) for i in range(3)]
    if protocol == "val-public-private":
        rest = np.concatenate([rows[1], rows[2]])  # file order, as split_data slices it
        return {"train": rows[0], "val": rest, "test": rest}
    if protocol == "carve-val":
        return {"train": rows[0][CARVED_VAL_ROWS:], "val": rows[0][:CARVED_VAL_ROWS], "test": rows[2]}
    return dict(zip(USAGE_TO_SPLIT.values(), rows))


def inexact_rows(csv: Path, n_rows: int) -> np.ndarray | None:
    """Rows whose pixels are approximate, from the provenance file beside the CSV (None without one)."""
    prov = csv.parent / "fer2013_provenance.csv.gz"
    if not prov.is_file():
        return None
    try:
        df = pd.read_csv(bounded_table(prov), usecols=["row", "status"])
    except (ValueError, OSError, pd.errors.ParserError, FerbenchError):
        return None  # an unreadable provenance file only loses the count
    mask = np.zeros(n_rows, dtype=bool)
    rows = df.loc[df["status"].astype(str).str.startswith("approx"), "row"].to_numpy(int)
    mask[rows[(rows >= 0) & (rows < n_rows)]] = True
    return mask


def _load(files: dict[str, Path], options: BaseModel) -> FerDataset:
    from ferbench.data.pixels import library_versions, reencode_jpeg, resize_cv2_linear

    path = files["csv"]
    a = load_arrays(path)
    images = a["images"]
    notes: dict = {"protocol": PROTOCOLS[options.protocol]}
    if options.jpeg_quality is not None:
        images = reencode_jpeg(images, options.jpeg_quality)
        notes["pixels"] = f"re-encoded as JPEG quality {options.jpeg_quality} (Pillow)"
    if options.resize is not None:
        images = resize_cv2_linear(images, options.resize)
        notes["resize"] = f"{options.resize}x{options.resize} by cv2.resize (INTER_LINEAR, uint8) at load"
    versions = library_versions(options.jpeg_quality is not None, options.resize is not None)
    if versions:
        notes["pixel_libraries"] = versions
    rows = split_rows(a["split"], options.protocol)
    splits = {name: Split(images[r], a["labels"][r]) for name, r in rows.items()}
    inexact = inexact_rows(path, len(a["labels"]))
    if inexact is not None:
        notes["inexact_pixels"] = {name: int(inexact[r].sum()) for name, r in rows.items()}
    ds = FerDataset("fer2013", CLASSES, splits, files={str(path): file_digest(path)}, notes=notes)
    check_split_nonempty(ds, str(path))
    return ds


KIND = DatasetKind(Options, _locate, _load, "FER-2013 (Kaggle fer2013.csv), 7 classes, 48x48")
