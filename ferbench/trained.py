"""A finished run's model outside training: read back from its folder for `predict` and `export`.

A run folder holds `job.yaml` (the model and how its inputs were made), `manifest.json` (the class
names in their order, and the shape of one training image) and `checkpoint.pt`. `load_run` rebuilds
the model the run evaluated: `last` is the model after the final epoch (the EMA copy when the recipe
keeps one and `eval.use_ema`, as the run's own test numbers), `best` the best-validation epoch's.
Images go in as the run's training images were: decoded grey or colour, resized to the dataset's
image size, then through the run's own evaluation transform (`engine.evaluate.predict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from ferbench.errors import FerbenchError, first_line
from ferbench.records import CHECKPOINT_FILE, JOB_FILE, is_complete, read_job, read_manifest
from ferbench.spec import Job

Which = Literal["last", "best"]

# image shape of records written before the manifest held `image_shape` (the 48x48 grey datasets)
LEGACY_IMAGE_SHAPES = {"fer2013": (48, 48), "ferplus": (48, 48), "synthfer": (48, 48)}


@dataclass
class TrainedModel:
    model: nn.Module  # in eval mode, on the CPU
    job: Job
    classes: list[str]
    which: Which
    image_shape: tuple[int, ...]  # one training image as the dataset held it: (H, W) grey, (H, W, 3) colour
    source: Path  # the run folder

    @property
    def colour(self) -> bool:
        return len(self.image_shape) == 3

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """What the network itself takes: (batch, in_chans, input_size, input_size) floats, normalised."""
        t = self.job.train
        return (batch, t.in_chans, t.input_size, t.input_size)


def load_run(run_dir: str | Path, which: Which = "last") -> TrainedModel:
    """The model a finished run evaluated (its `which` selection), rebuilt from the run folder."""
    from ferbench.engine.checkpoint import load_checkpoint
    from ferbench.models import build_model

    run_dir = Path(run_dir)
    if which not in ("last", "best"):
        raise FerbenchError(f"--which {which!r}: expected last or best")
    if not (run_dir / JOB_FILE).is_file():
        raise FerbenchError(f"{run_dir}: not a run folder (no {JOB_FILE}); expected runs/<spec>/<job-id>")
    if not is_complete(run_dir):
        raise FerbenchError(f"{run_dir}: the run is not complete (status {read_manifest(run_dir).get('status', 'unknown')!r})")
    ck_path = run_dir / CHECKPOINT_FILE
    if not ck_path.is_file():
        raise FerbenchError(f"{run_dir}: no {CHECKPOINT_FILE} (published records keep no weights); run the spec to make one")
    job = read_job(run_dir)
    manifest = read_manifest(run_dir)
    ck = load_checkpoint(ck_path)
    state = selected_state(ck, job, which, run_dir)
    t = job.train
    model = build_model(job, len(manifest["classes"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise FerbenchError(f"{ck_path}: the weights do not fit {job.model.arch} ({first_line(e, 160)})") from None
    if t.channels_last:  # the memory format the run evaluated in: the same kernels, the same logits bit for bit
        model = model.to(memory_format=torch.channels_last)
    return TrainedModel(model.eval(), job, list(manifest["classes"]), which, _image_shape(manifest, job, run_dir), run_dir)


def selected_state(ck: dict[str, Any], job: Job, which: Which, run_dir: Path) -> dict[str, torch.Tensor]:
    """From a ferbench checkpoint, the weights of the model the run evaluated as `which`."""
    if which == "best":
        if ck.get("best_state") is None:
            raise FerbenchError(f"{run_dir}: this run kept no best-validation model (no validation split); use --which last")
        return ck["best_state"]
    if job.eval.use_ema and ck.get("ema") is not None:
        return ck["ema"]
    return ck["model"]


def _image_shape(manifest: dict[str, Any], job: Job, run_dir: Path) -> tuple[int, ...]:
    shape = manifest.get("image_shape") or LEGACY_IMAGE_SHAPES.get(job.dataset.name)
    if not shape:
        raise FerbenchError(f"{run_dir}: the record does not say what size its training images were (made before "
                            "ferbench recorded it); run the job again to use it for prediction")
    return tuple(int(n) for n in shape)


def decode_image(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """An image file as a training image of `shape` ((H, W) grey or (H, W, 3) colour) as uint8; a
    file that does not decode raises FerbenchError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if len(shape) == 3 else "L")
            im = im.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)  # PIL antialiases when it shrinks
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise FerbenchError(f"{path}: not a decodable image ({first_line(e, 120)})") from None


def class_probabilities(tm: TrainedModel, images: np.ndarray, tta: str = "none") -> np.ndarray:
    """(N, K) softmax probabilities for uint8 images shaped like the run's training images."""
    from ferbench.engine.evaluate import predict

    logits = predict(tm.model, images, tm.job.train, torch.device("cpu"), tta, tm.job.eval.tta_resize_ratio)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def preprocess(tm: TrainedModel, images: np.ndarray) -> torch.Tensor:
    """The network's input for uint8 training-shaped images: the run's centre-view evaluation transform."""
    from ferbench.engine.evaluate import network_input

    return network_input(torch.from_numpy(images), tm.job.train, "none", tm.job.eval.tta_resize_ratio)[0].contiguous()
