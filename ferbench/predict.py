"""`ferbench predict`: class probabilities for face crops on disk, from a finished run's model.

Inputs are image files or folders (searched recursively for image suffixes); each image is decoded
grey or colour as the run's training images were and resized to their size (`trained.decode_image`),
then goes through the run's evaluation transform, with the run's TTA or the one asked for. A file
that does not decode is refused in one line and the rest go on. Results are one row per image: the
file, the predicted class and one probability per class in the run's class order.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferbench.errors import FerbenchError
from ferbench.fileio import write_text_atomic
from ferbench.trained import TrainedModel, class_probabilities, decode_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")


@dataclass
class Predictions:
    classes: list[str]
    files: list[str] = field(default_factory=list)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    refused: list[str] = field(default_factory=list)  # one line per input that gave no prediction
    run: str = ""
    selection: str = "last"
    tta: str = "none"

    def rows(self) -> list[dict[str, Any]]:
        return [{"file": f, "prediction": self.classes[int(np.argmax(p))], **{c: float(v) for c, v in zip(self.classes, p)}}
                for f, p in zip(self.files, self.probabilities)]


def image_files(inputs: list[str | Path]) -> tuple[list[Path], list[str]]:
    """The files named, and the image files under the folders named (sorted); lines for inputs that do not exist."""
    files, refused = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                refused.append(f"{item}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            refused.append(f"{item}: no such file or folder")
    return files, refused


def predict_files(tm: TrainedModel, inputs: list[str | Path], tta: str | None = None) -> Predictions:
    """Probabilities for every decodable image among `inputs`; the others are listed in `refused`."""
    tta = tm.job.eval.tta if tta is None else tta
    files, refused = image_files(inputs)
    decoded, names = [], []
    for path in files:
        try:
            decoded.append(decode_image(path, tm.image_shape))
            names.append(str(path))
        except FerbenchError as e:
            refused.append(str(e))
    out = Predictions(tm.classes, names, refused=refused, run=str(tm.source), selection=tm.which, tta=tta)
    if decoded:
        out.probabilities = class_probabilities(tm, np.stack(decoded), tta)
    return out


def write_predictions(pred: Predictions, path: Path) -> None:
    """CSV (one row per image) or JSON (rows plus the run, selection, TTA and refusals), by suffix."""
    if path.suffix.lower() == ".json":
        doc = {"run": pred.run, "selection": pred.selection, "tta": pred.tta, "classes": pred.classes,
               "predictions": pred.rows(), "refused": pred.refused}
        write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    elif path.suffix.lower() == ".csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["file", "prediction", *pred.classes], lineterminator="\n")
        w.writeheader()
        for row in pred.rows():
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
        write_text_atomic(path, buf.getvalue())
    else:
        raise FerbenchError(f"--out {path}: expected a .csv or .json file")
