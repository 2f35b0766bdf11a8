"""FER+ (Barsoum et al., ICMI 2016): FER-2013 pixels joined by row with `fer2013new.csv` votes.

Label protocol as microsoft/FERPlus `src/ferplus.py` (`_process_data`, `load_folders`):
- rows with an empty `Image name` are dropped, and where a name is used twice the later row wins
  (the official export overwrites the earlier image): 28,558 / 3,579 / 3,573 images;
- outlier removal: every vote count <= 1 is set to 0;
- `majority`: the top emotion if it has more than half of the remaining votes, else unknown;
- `probability` / `crossentropy`: the top emotions until they cover >= 75 % of the votes, at most
  3; rejected if they cover <= 50 %, need more than 3, or unknown/NF comes first; normalised;
- `multi_target`: every emotion with >= 30 % of the votes; rejected if they cover <= 50 %;
- images whose processed argmax is unknown or NF are dropped; validation and test always use
  `majority`, whatever the training protocol.
Each sample keeps a target distribution: the annotators' normalised votes over the 8 emotions
(`soft_targets: votes`, for label-distribution learning) or the protocol's processed distribution
(`soft_targets: protocol`, the default for every protocol but majority). The protocol also picks the
official training loss unless a spec chooses one (`spec.protocol_training`): majority -> CE on the
majority label, crossentropy -> per-sample soft CE on the processed distribution, probability -> CE
on a one-hot label drawn from it each step, multi_target -> -log max(t * p) on the multi-hot target.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ferbench.data import DatasetKind, FerDataset, Split, check_split_nonempty
from ferbench.fileio import bounded_table, expand_user
from ferbench.data.cache import cached_arrays, file_digest
from ferbench.data.fer2013 import USAGE_TO_SPLIT, find_csv, load_arrays, read_csv_frame, split_codes
from ferbench.errors import FerbenchError

CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
VOTE_COLUMNS = CLASSES + ["unknown", "NF"]
COLUMNS = ["Usage", "Image name"] + VOTE_COLUMNS
PROTOCOLS = ("majority", "probability", "crossentropy", "multi_target")
PARSER_VERSION = 2
LABEL_CSV_FOLDERS = ("FER2013Train", "FER2013Valid", "FER2013Test")  # split codes 0, 1, 2


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    protocol: Literal["majority", "probability", "crossentropy", "multi_target"] = "majority"
    soft_targets: Literal["votes", "protocol"] | None = Field(
        None, description="the per-sample target distribution: the annotators' votes, or the protocol's processed "
        "distribution; None: votes under majority (label-distribution learning), the processed one otherwise")
    votes: Literal["fer2013new", "label_csv"] = Field(
        "fer2013new", description="fer2013new.csv (the README's label file) or FER2013{Train,Valid,Test}/label.csv "
        "(what the official trainer src/train.py reads); they disagree on 1,602 images")

    @property
    def targets(self) -> str:
        """The target distribution in use (`soft_targets`, or its protocol's default)."""
        return self.soft_targets or ("votes" if self.protocol == "majority" else "protocol")


def process_votes(raw: np.ndarray, mode: str) -> np.ndarray:
    """One row of 10 vote counts -> the official processed distribution (10 entries, sums to 1)."""
    size = len(raw)
    votes = [0.0 if v < 1.0 + sys.float_info.epsilon else float(v) for v in raw]
    unknown = [0.0] * size
    unknown[-2] = 1.0
    total = sum(votes)
    emotion = [0.0] * size
    if mode == "majority":
        top = max(votes)
        if top > 0.5 * total:
            emotion[int(np.argmax(votes))] = top
        else:
            emotion = unknown
    elif mode in ("probability", "crossentropy"):
        covered, count, valid = 0.0, 0, True
        while covered < 0.75 * total and count < 3 and valid:
            top = max(votes)
            for i in range(size):
                if votes[i] == top:
                    emotion[i] = top
                    votes[i] = 0
                    covered += emotion[i]
                    count += 1
                    if i >= 8:  # unknown or NF among the top
                        valid = False
                        if sum(emotion) > top:
                            emotion[i] = 0
                            count -= 1
                        break
        if sum(emotion) <= 0.5 * total or count > 3:
            emotion = unknown
    elif mode == "multi_target":
        for i in range(size):
            if votes[i] >= 0.3 * total:
                emotion[i] = votes[i]
        if sum(emotion) <= 0.5 * total:
            emotion = unknown
    else:
        raise ValueError(f"unknown FER+ protocol {mode!r}")
    s = sum(emotion)
    return np.array([e / s for e in emotion]) if s > 0 else np.array(unknown)


VOTE_TABLES = {"fer2013new": "fer2013new.csv", "label_csv": "FER2013{Train,Valid,Test}/label.csv (the official trainer's)"}


def find_votes(root: Path | None, path: str | None) -> Path:
    if path:
        p = expand_user(path)
        cands = [p / "fer2013new.csv", p / "ferplus" / "fer2013new.csv"]
    elif root is not None:
        cands = [root / "ferplus" / "fer2013new.csv", root / "fer2013new.csv"]
    else:
        raise FerbenchError("ferplus: no data location: set FERBENCH_DATA or pass --data-root "
                            "(expected <root>/ferplus/fer2013new.csv from microsoft/FERPlus and <root>/fer2013/fer2013.csv.gz)")
    for c in cands:
        if c.is_file():
            return c
    raise FerbenchError(f"ferplus: expected {cands[0]} (fer2013new.csv from microsoft/FERPlus): file not found")


def vote_counts(columns: Any, path: Path, first_line: int) -> np.ndarray:
    """(N, 10) vote counts from a frame's 10 text columns (VOTE_COLUMNS' order), each 0-999: one line
    naming the file, line and column of the first that is not (either official table)."""
    votes = np.zeros((len(columns), len(VOTE_COLUMNS)), dtype=np.int16)
    for j, col in enumerate(VOTE_COLUMNS):
        raw = columns.iloc[:, j]
        s = raw.str.strip()
        ok = s.str.fullmatch(r"\d{1,3}").to_numpy()
        if not ok.all():
            i = int(np.argmax(~ok))
            raise FerbenchError(f"{path}: line {i + first_line}: column {col!r}: vote count {raw.iloc[i]!r} is not a "
                                "non-negative integer")
        votes[:, j] = s.astype(np.int64).to_numpy()
    return votes


def parse_votes(path: Path) -> dict[str, np.ndarray]:
    """Usage codes, names present, and the (N, 10) vote table, validated."""
    df = read_csv_frame(path, COLUMNS)
    split = split_codes(df, path)
    votes = vote_counts(df[VOTE_COLUMNS], path, first_line=2)  # line 1 is the header
    names = df["Image name"].str.strip().to_numpy()
    # the official export: unnamed rows dropped; a reused name keeps its last row
    keep = names != ""
    last = {}
    for i in np.flatnonzero(keep):
        last[names[i]] = i
    exported = np.zeros(len(df), bool)
    exported[list(last.values())] = True
    return {"votes": votes, "exported": exported, "split": split, "names": names.astype(str)}


def parse_label_csv(paths: list[Path], names: np.ndarray, exported: np.ndarray, split: np.ndarray) -> dict[str, np.ndarray]:
    """The official trainer's vote tables (no header: image name, face box, 10 vote counts) placed on
    the rows of the image table: a name's image is the row fer2013new.csv exports under it (the later
    row of a reused name, as the official PNG export overwrites), so the face box is not needed for
    the 48x48 crops. Returns the (N, 10) votes and the rows label.csv lists."""
    import pandas as pd

    row_of = {str(names[i]): int(i) for i in np.flatnonzero(exported)}
    votes = np.zeros((len(names), len(VOTE_COLUMNS)), dtype=np.int16)
    listed = np.zeros(len(names), bool)
    for code, path in enumerate(paths):
        try:
            df = pd.read_csv(bounded_table(path), header=None, dtype=str, keep_default_na=False)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise FerbenchError(f"{path}: not a readable label.csv ({type(e).__name__})") from None
        if df.shape[1] != 2 + len(VOTE_COLUMNS):
            raise FerbenchError(f"{path}: expected 12 columns (name, face box, {len(VOTE_COLUMNS)} vote counts), got {df.shape[1]}")
        counts = vote_counts(df.iloc[:, 2:], path, first_line=1)  # no header
        rows = np.array([row_of.get(name, -1) for name in df.iloc[:, 0].str.strip()], dtype=np.int64)
        wrong = (rows < 0) | (split[np.maximum(rows, 0)] != code)
        if wrong.any():
            line = int(np.argmax(wrong))
            raise FerbenchError(f"{path}: line {line + 1}: image {df.iloc[line, 0].strip()!r} is not a "
                                f"{LABEL_CSV_FOLDERS[code][7:]} image of fer2013new.csv")
        votes[rows] = counts
        listed[rows] = True
    return {"votes": votes, "exported": listed}


def _locate(root: Path | None, path: str | None, options: BaseModel) -> dict[str, Path]:
    o = options if isinstance(options, Options) else Options.model_validate(options)
    votes = find_votes(root, path)
    images = find_csv(root, None) if root is not None else find_csv(votes.parent.parent, None)
    files = {"votes": votes, "images": images}
    if o.votes == "label_csv":
        for folder in LABEL_CSV_FOLDERS:
            p = votes.parent / folder / "label.csv"
            if not p.is_file():
                raise FerbenchError(f"ferplus votes: label_csv: expected {p} (data/{folder}/label.csv from microsoft/FERPlus): "
                                    "file not found")
            files[folder] = p
    return files


def select(votes: np.ndarray, exported: np.ndarray, split: np.ndarray, protocol: str) -> dict[str, np.ndarray]:
    """Rows kept, hard labels and processed distributions; val/test use majority."""
    processed = np.zeros((len(votes), len(VOTE_COLUMNS)), dtype=np.float32)
    for i in np.flatnonzero(exported):
        mode = protocol if split[i] == 0 else "majority"
        processed[i] = process_votes(votes[i], mode)
    label = processed.argmax(1)
    keep = exported & (label < len(CLASSES))
    return {"keep": keep, "label": label.astype(np.int64), "processed": processed}


def _load(files: dict[str, Path], options: BaseModel) -> FerDataset:
    o = options if isinstance(options, Options) else Options.model_validate(options)
    vpath, ipath = files["votes"], files["images"]
    v = cached_arrays("ferplus-votes", file_digest(vpath), {"v": PARSER_VERSION}, lambda: parse_votes(vpath))
    img = load_arrays(ipath)
    if len(img["images"]) != len(v["votes"]):
        raise FerbenchError(f"{vpath}: {len(v['votes'])} rows, but {ipath} has {len(img['images'])}: they must be row-aligned")
    if not np.array_equal(img["split"], v["split"]):
        i = int(np.argmax(img["split"] != v["split"]))
        raise FerbenchError(f"{vpath}: line {i + 2}: Usage differs from {ipath}: the files are not row-aligned")
    table_key = file_digest(vpath)
    if o.votes == "label_csv":  # the official trainer's table, placed on fer2013new.csv's rows by image name
        paths = [files[f] for f in LABEL_CSV_FOLDERS]
        table_key = "-".join([table_key] + [file_digest(p) for p in paths])
        v = {**v, **cached_arrays("ferplus-labelcsv", table_key, {"v": PARSER_VERSION},
                                  lambda: parse_label_csv(paths, v["names"], v["exported"], v["split"]))}
    sel = cached_arrays("ferplus-select", table_key, {"v": PARSER_VERSION, "protocol": o.protocol},
                        lambda: select(v["votes"], v["exported"], v["split"], o.protocol))
    votes8 = v["votes"][:, : len(CLASSES)].astype(np.float32)
    vote_dist = votes8 / np.maximum(votes8.sum(1, keepdims=True), 1)
    proc = sel["processed"][:, : len(CLASSES)]
    proc = proc / np.maximum(proc.sum(1, keepdims=True), 1e-12)
    soft = vote_dist if o.targets == "votes" else proc
    splits = {}
    for code, name in enumerate(USAGE_TO_SPLIT.values()):
        m = sel["keep"] & (v["split"] == code)
        splits[name] = Split(img["images"][m], sel["label"][m], soft[m].astype(np.float32))
    ds = FerDataset("ferplus", CLASSES, splits,
                    files={str(p): file_digest(p) for p in files.values()},
                    notes={"protocol": o.protocol, "votes": VOTE_TABLES[o.votes], "eval_protocol": "majority", "soft_targets": o.targets,
                           "fer2013_vs_ferplus": _label_comparison(img["labels"], v["votes"]),
                           "exported_images": {n: int((v["exported"] & (v["split"] == c)).sum()) for c, n in enumerate(USAGE_TO_SPLIT.values())}})
    check_split_nonempty(ds, str(vpath))
    return ds


def _label_comparison(fer_labels: np.ndarray, votes: np.ndarray) -> dict[str, dict[str, int]]:
    """All-split counts: FER-2013's labels vs a plain argmax over FER+'s 10 vote columns (the overview
    article's figure: fear 5,121 vs 819, and 177 non-faces)."""
    fer_names = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
    return {"FER-2013 labels": dict(zip(fer_names, np.bincount(fer_labels, minlength=7).tolist())),
            "FER+ plain vote argmax": dict(zip(VOTE_COLUMNS, np.bincount(votes.argmax(1), minlength=10).tolist()))}


KIND = DatasetKind(Options, _locate, _load, "FER+ (FER-2013 images, Microsoft votes), 8 classes, 4 label protocols")
