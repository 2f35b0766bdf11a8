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

from ferbench.data.pixels import as_training_image, open_image
from ferbench.errors import FerbenchError, first_line
from ferbench.records import CHECKPOINT_FILE, JOB_FILE, damaged, is_complete, read_job, read_manifest
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


def load_run(run_dir: str | Path, which: Which = "last", trust_code: bool = False) -> TrainedModel:
    """The model a finished run evaluated (its `which` selection), rebuilt from the run folder. A record
    names its model; where that name is a Python module of the user's (`module:function`), the module
    is imported only with `trust_code` (a record folder may come from anyone: reading it never runs code)."""
    from ferbench.engine.checkpoint import check_owner, load_checkpoint
    from ferbench.models import build_model

    run_dir = Path(run_dir)
    if which not in ("last", "best"):
        raise FerbenchError(f"--which {which!r}: expected last or best")
    if not (run_dir / JOB_FILE).exists():  # one that is there but unreadable (a pipe, say) is named by read_job
        raise FerbenchError(f"{run_dir}: not a run folder (no {JOB_FILE}); expected runs/<spec>/<job-id>")
    job = read_job(run_dir)
    if not is_complete(run_dir):
        m = read_manifest(run_dir)
        why = f": {m['failure']}" if m.get("status") == "unreadable" and m.get("failure") else ""
        raise FerbenchError(f"{run_dir}: the run is not complete (status {m.get('status', 'unknown')!r}{why})")
    ck_path = run_dir / CHECKPOINT_FILE
    if not ck_path.is_file():
        raise FerbenchError(f"{run_dir}: no {CHECKPOINT_FILE} (published records keep no weights); run the spec to make one")
    if problem := damaged(run_dir):  # fail closed: a record whose files do not check is never used
        raise FerbenchError(f"{run_dir}: a damaged record ({problem}) is never used; run the job again")
    arch = job.model.arch
    if ":" in arch and not arch.startswith("timm:") and not trust_code:
        from ferbench.models import is_registered

        if not is_registered(arch):
            raise FerbenchError(f"{run_dir}: its model is Python code, {arch!r}; ferbench imports a record's module only "
                                "when asked: add --trust-code if you trust this record and that module")
    manifest = read_manifest(run_dir)
    ck = load_checkpoint(ck_path)
    check_owner(ck, ck_path, job.id)
    state = selected_state(ck, job, which, run_dir)
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # every answer would be NaN: refuse, never predict
        raise FerbenchError(f"{ck_path}: the {which} weights hold NaN or infinite values ({len(bad)} tensors, e.g. {bad[0]})")
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
    """An image file as a training image of `shape`; a file that does not decode raises FerbenchError naming it."""
    return as_training_image(open_image(path), shape)


def class_probabilities(tm: TrainedModel, images: np.ndarray, tta: str = "none", device: str = "cpu",
                        batch_size: int | None = None) -> np.ndarray:
    """(N, K) softmax probabilities for uint8 images shaped like the run's training images (TTA views'
    logits averaged, then softmax), computed on `device` in batches of `batch_size` (default: the run's
    `train.eval_batch_size`)."""
    from ferbench.engine.evaluate import predict

    dev = torch.device(device)
    cfg = tm.job.train if batch_size is None else tm.job.train.model_copy(update={"eval_batch_size": batch_size})
    logits = predict(tm.model.to(dev), images, cfg, dev, tta, tm.job.eval.tta_resize_ratio)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def preprocessing_steps(tm: TrainedModel) -> list[dict[str, Any]]:
    """Every step from an image file to the network's input, with the library call and its settings,
    for a user to copy outside ferbench (the export sidecar): `decode_image`, then `preprocess`.
    The interpolation matters: bicubic instead of bilinear moves the probabilities by about 3e-2."""
    from ferbench.data.augment import channel_stats

    t = tm.job.train
    h, w = tm.image_shape[:2]
    grey = not tm.colour
    steps: list[dict[str, Any]] = [
        {"step": "decode", "mode": "L" if grey else "RGB",
         "call": f"PIL.Image.open(f).convert({'L' if grey else 'RGB'!r})" + (" (ITU-R 601-2 luma)" if grey else "")},
        {"step": "resize", "size": [w, h], "interpolation": "bilinear", "antialias": "Pillow's (filter support widened by the factor when shrinking)",
         "call": f"im.resize(({w}, {h}), PIL.Image.Resampling.BILINEAR)", "when": "the image is not already this size"},
        {"step": "to_float", "call": "np.asarray(im, np.float32) / 255, laid out (batch, channels, height, width)"},
    ]
    if t.input_size != h or t.input_size != w:
        shrink = t.input_size < w
        steps.append({"step": "resize", "size": [t.input_size, t.input_size], "interpolation": "bilinear", "align_corners": False,
                      "antialias": shrink, "call": f"torch.nn.functional.interpolate(x, size=({t.input_size}, {t.input_size}), "
                                                   f"mode='bilinear', align_corners=False, antialias={shrink})"})
    if t.in_chans == 3 and grey:
        steps.append({"step": "repeat_channels", "times": 3, "call": "x.expand(-1, 3, -1, -1)"})
    stats = ([0.5] * t.in_chans, [0.5] * t.in_chans) if t.normalize == "half" else channel_stats(t.normalize, t.norm_mean, t.norm_std)
    if stats is not None:
        steps.append({"step": "normalize", "mean": list(stats[0]), "std": list(stats[1]), "source": t.normalize,
                      "call": "(x - mean[c]) / std[c] per channel c"})
    return steps


def preprocessing_text(tm: TrainedModel) -> str:
    """`preprocessing_steps` in one line."""
    words = {"decode": lambda s: f"decode as {'grey' if s['mode'] == 'L' else 'RGB'}",
             "resize": lambda s: f"resize ({s['interpolation']}{', antialiased' if s['antialias'] is not False else ''}) "
                                 f"to {s['size'][0]}x{s['size'][1]}",
             "to_float": lambda s: "scale pixels to [0, 1]",
             "repeat_channels": lambda s: "repeat the grey channel 3 times",
             "normalize": lambda s: f"normalise: (x - {s['mean']}) / {s['std']}"}
    return "; ".join(words[s["step"]](s) for s in preprocessing_steps(tm))


def preprocess(tm: TrainedModel, images: np.ndarray) -> torch.Tensor:
    """The network's input for uint8 training-shaped images: the run's centre-view evaluation transform."""
    from ferbench.engine.evaluate import network_input

    return network_input(torch.from_numpy(images), tm.job.train, "none", tm.job.eval.tta_resize_ratio)[0].contiguous()
