"""`ferbench predict`: class probabilities for face crops or photos on disk, from a finished run's model.

Inputs are image files or folders (searched recursively for image suffixes). Without `detect` each
image is a face crop: decoded grey or colour as the run's training images were and resized to their
size (`data.pixels.as_training_image`). With `detect` each image is a photo: every frontal face the
detector finds (`ferbench.detect`) is cropped in the frame of the run's training data, then treated
as a crop; a photo without a face is listed as such. Crops go through the run's evaluation transform
with the run's TTA or the one asked for, `batch_size` at a time (so memory holds one batch, not the
folder). A file that does not decode is refused in one line and the rest go on. Results are one row
per crop (per face, with its box in the photo's pixels): the predicted class, the `top_k` classes,
and one probability per class in the run's class order.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ferbench.errors import FerbenchError
from ferbench.fileio import write_text_atomic
from ferbench.data.pixels import as_training_image, open_image
from ferbench.trained import TrainedModel, class_probabilities

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
BOX_FIELDS = ("face", "x", "y", "w", "h")


@dataclass
class Predictions:
    classes: list[str]
    files: list[str] = field(default_factory=list)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    refused: list[str] = field(default_factory=list)  # one line per input that gave no prediction
    run: str = ""
    selection: str = "last"
    tta: str = "none"
    top_k: int = 1
    boxes: list[tuple[int, int, int, int, int]] | None = None  # with detect: (face index, x, y, w, h) per row
    no_face: list[str] = field(default_factory=list)  # with detect: photos where no face was found
    detector: dict[str, Any] | None = None  # with detect: the detector, its settings and the crop frame used

    def top(self, p: np.ndarray) -> list[tuple[str, float]]:
        order = np.argsort(-p, kind="stable")[: self.top_k]
        return [(self.classes[int(i)], float(p[i])) for i in order]

    def fields(self) -> list[str]:
        """The columns of `rows()`, in order."""
        box = list(BOX_FIELDS) if self.boxes is not None else []
        top = [f"{name}{k}{p}" for k in range(1, self.top_k + 1) for name, p in (("top", ""), ("top", "_p"))] if self.top_k > 1 else []
        return ["file", *box, "prediction", *top, *self.classes]

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for n, (f, p) in enumerate(zip(self.files, self.probabilities)):
            row: dict[str, Any] = {"file": f}
            if self.boxes is not None:
                row.update(zip(BOX_FIELDS, self.boxes[n]))
            row["prediction"] = self.classes[int(np.argmax(p))]
            if self.top_k > 1:
                for k, (name, prob) in enumerate(self.top(p), 1):
                    row[f"top{k}"], row[f"top{k}_p"] = name, prob
            row.update({c: float(v) for c, v in zip(self.classes, p)})
            out.append(row)
        return out


def image_files(inputs: list[str | Path]) -> tuple[list[Path], list[str]]:
    """The files named, and the image files under the folders named (sorted); lines for inputs that do not exist."""
    files, refused = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            named = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            regular = {p: p.is_file() for p in named}
            found = [p for p in named if regular[p]]
            refused += [f"{p}: not a regular file (a pipe or device would never end)" for p in named if not regular[p]]
            if not named:
                refused.append(f"{item}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        elif item.exists():
            refused.append(f"{item}: not a regular file (a pipe or device would never end)")
        else:
            refused.append(f"{item}: no such file or folder")
    return files, refused


def check_device(device: str) -> str:
    """`--device` as torch names it (cpu, cuda, cuda:1, mps), refused in one line when this machine has none."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise FerbenchError(f"--device {device!r}: expected cpu, cuda, cuda:<index> or mps") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise FerbenchError(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise FerbenchError(f"--device {device}: MPS is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise FerbenchError(f"--device {device!r}: expected cpu, cuda, cuda:<index> or mps")
    return str(dev)


def _crops(tm: TrainedModel, files: list[Path], out: Predictions, detect: bool
           ) -> Iterator[tuple[str, tuple[int, int, int, int, int] | None, np.ndarray]]:
    """(file, box or None, training-shaped crop) for each face crop among `files`; refusals and
    photos without a face are noted in `out` as they are met."""
    from ferbench.detect import BOX_AS_DRAWN, FACE_FRAMES, MIN_FACE, MIN_NEIGHBORS, SCALE_FACTOR, cascade, crop_box, find_faces

    detector, frame = None, None
    if detect:
        detector, frame = cascade(), FACE_FRAMES.get(tm.job.dataset.name, BOX_AS_DRAWN)
        out.detector = {"detector": "OpenCV Haar cascade haarcascade_frontalface_default.xml", "scale_factor": SCALE_FACTOR,
                        "min_neighbors": MIN_NEIGHBORS, "min_face_px": MIN_FACE, "dataset": tm.job.dataset.name,
                        "frame": {"scale": frame.scale, "dx": frame.dx, "dy": frame.dy, "source": frame.source}}
    for path in files:
        try:
            im = open_image(path)
        except FerbenchError as e:
            out.refused.append(str(e))
            continue
        if detector is None:
            yield str(path), None, as_training_image(im, tm.image_shape)
            continue
        boxes = find_faces(np.asarray(im.convert("L"), dtype=np.uint8), detector)
        if not boxes:
            out.no_face.append(str(path))
        for i, box in enumerate(boxes):  # PIL fills a crop reaching past the photo's edge with black
            yield str(path), (i, *box), as_training_image(im.crop(crop_box(box, frame)), tm.image_shape)


def check_predict_memory(tm: TrainedModel, tta: str, batch: int, device: str) -> None:
    """One line, before any image is read, when a forward of `batch` crops x `tta`'s views cannot fit
    in the device's memory (`memory.check_job_memory`'s lower bound)."""
    from ferbench.errors import JobFailed
    from ferbench.memory import check_job_memory

    job = tm.job.model_copy(update={"train": tm.job.train.model_copy(update={"eval_batch_size": batch}),
                                    "eval": tm.job.eval.model_copy(update={"tta": tta})})
    try:
        check_job_memory(job, len(tm.classes), device, train=False, eval_field="--batch-size")
    except JobFailed as e:
        raise FerbenchError(str(e)) from None


def predict_files(tm: TrainedModel, inputs: list[str | Path], tta: str | None = None, *, detect: bool = False,
                  batch_size: int | None = None, device: str = "cpu", top_k: int = 1) -> Predictions:
    """Probabilities for every decodable image (or, with `detect`, every face found) among `inputs`;
    the others are listed in `refused` (and `no_face`)."""
    tta = tm.job.eval.tta if tta is None else tta
    batch = batch_size or tm.job.train.eval_batch_size
    check_predict_memory(tm, tta, batch, device)
    files, refused = image_files(inputs)
    out = Predictions(tm.classes, refused=refused, run=str(tm.source), selection=tm.which, tta=tta,
                      top_k=min(top_k, len(tm.classes)), boxes=[] if detect else None)
    chunks: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            chunks.append(class_probabilities(tm, np.stack(pending), tta, device, batch))
            pending.clear()

    for name, box, crop in _crops(tm, files, out, detect):
        out.files.append(name)
        if box is not None:
            out.boxes.append(box)
        pending.append(crop)
        if len(pending) == batch:
            flush()
    flush()
    if chunks:
        out.probabilities = np.concatenate(chunks)
    return out


def write_predictions(pred: Predictions, path: Path) -> None:
    """CSV (one row per crop or face; photos without a face as rows with face `none`) or JSON (rows
    plus the run, selection, TTA, detector, photos without a face and refusals), by suffix."""
    if path.suffix.lower() == ".json":
        doc = {"run": pred.run, "selection": pred.selection, "tta": pred.tta, "classes": pred.classes,
               "predictions": pred.rows(), "refused": pred.refused}
        if pred.detector is not None:
            doc.update(detector=pred.detector, no_face=pred.no_face)
        write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    elif path.suffix.lower() == ".csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=pred.fields(), lineterminator="\n", restval="")
        w.writeheader()
        for row in pred.rows():
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
        for name in pred.no_face:
            w.writerow({"file": name, "face": "none"})
        write_text_atomic(path, buf.getvalue())
    else:
        raise FerbenchError(f"--out {path}: expected a .csv or .json file")
