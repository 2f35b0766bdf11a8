"""`ferbench export`: a finished run's model as ONNX or TorchScript, checked against PyTorch.

The exported network takes what the model takes: (batch, in_chans, input_size, input_size) float32,
already normalised (the batch size is dynamic). A JSON file beside it says how to get there from a
face crop, step by step with each library call and its interpolation (`trained.preprocessing_steps`),
names the test-time augmentation the run's numbers used and the classes in their order. Every export is loaded back and run on a seeded batch of preprocessed random images;
the largest absolute logit difference against PyTorch is recorded and must be under `tolerance`,
or nothing is written.

ONNX goes through `torch.onnx.export(dynamo=True)` at opset 18: EmoNeXt's spatial transformer
becomes ONNX `GridSample` (opset 16 and later) and its `affine_grid` is decomposed into plain
arithmetic; the check runs the file in onnxruntime. TorchScript is `torch.jit.trace` (for libtorch
users; PyTorch marks torch.jit deprecated), pt2 is `torch.export` (`torch.export.load(f).module()`),
both checked by loading the file back.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ferbench.errors import FerbenchError, first_line
from ferbench.fileio import json_text, read_text_bounded, write_together
from ferbench.trained import TrainedModel, preprocess, preprocessing_steps, preprocessing_text

Format = Literal["onnx", "torchscript", "pt2"]
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
ONNX_OPSET = 18
PARITY_BATCH = 8


@dataclass
class Exported:
    path: Path
    sidecar: Path
    max_abs_diff: float
    batch: int


def export_model(tm: TrainedModel, fmt: Format, out: Path, tolerance: float = 1e-4, seed: int = 0) -> Exported:
    """Write `tm` to `out` in `fmt`, with its sidecar JSON, after the parity check passes."""
    if fmt not in SUFFIX:
        raise FerbenchError(f"--format {fmt!r}: expected {', '.join(SUFFIX)}")
    sidecar = out.with_suffix(".json")
    if sidecar.absolute() == out.absolute():
        raise FerbenchError(f"--out {out}: its sidecar {sidecar} would replace the model; give the model file "
                            f"its format's suffix ({SUFFIX[fmt]})")
    x = parity_batch(tm, seed)
    with torch.no_grad():
        reference = tm.model(x).float().numpy()
    write, run = WRITERS[fmt]
    diff: list[float] = []

    def fill(tmp: Path) -> None:  # checked before the file takes its name: a failed check leaves nothing
        write(tm.model, x, tmp)
        got = run(tmp, x)
        diff.append(float(np.abs(got - reference).max()))
        if not diff[0] <= tolerance:
            raise FerbenchError(f"{out}: {fmt} export differs from PyTorch by {diff[0]:.3g} (max abs logit) on "
                                f"{len(x)} images, above the tolerance {tolerance:g}; nothing written")

    describe_to = lambda tmp: tmp.write_text(json_text(describe(tm, fmt, out, diff[0], len(x), tolerance)))  # noqa: E731
    write_together([(out, fill), (sidecar, describe_to)])  # the model and the sidecar that describes it, or neither
    return Exported(out, sidecar, diff[0], len(x))


def parity_batch(tm: TrainedModel, seed: int) -> torch.Tensor:
    """A seeded batch of random training-shaped images through the run's evaluation transform."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(PARITY_BATCH, *tm.image_shape), dtype=np.uint8)
    return preprocess(tm, images)


def describe(tm: TrainedModel, fmt: str, out: Path, diff: float, batch: int, tolerance: float) -> dict[str, Any]:
    """What a user of the exported file needs: input, preprocessing, classes, provenance, parity."""
    t = tm.job.train
    return {
        "file": out.name, "format": fmt, "opset": ONNX_OPSET if fmt == "onnx" else None,
        "run": str(tm.source), "job_id": tm.source.name, "arch": tm.job.model.arch, "selection": tm.which,
        "classes": tm.classes,
        "input": {"shape": ["batch", t.in_chans, t.input_size, t.input_size], "dtype": "float32",
                  "face_crop": {"colour": tm.colour, "size": list(tm.image_shape[:2])},
                  "preprocessing": preprocessing_text(tm), "preprocessing_steps": preprocessing_steps(tm),
                  "test_time_augmentation": {"mode": tm.job.eval.tta, "resize_ratio": tm.job.eval.tta_resize_ratio,
                                             "note": "the run's reported accuracy averaged the logits of these views, "
                                                     "then took the softmax; this file takes one view per image"}},
        "output": "logits (batch, classes); softmax gives the class probabilities",
        "parity": {"max_abs_logit_diff": diff, "batch": batch, "tolerance": tolerance, "against": f"torch {torch.__version__}"},
    }


def _write_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    _need("onnx", "onnxscript", "onnxruntime")
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=ONNX_OPSET, input_names=["input"],
                                        output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
        except Exception as e:  # noqa: BLE001  (an operator the exporter cannot translate: one line)
            raise FerbenchError(f"ONNX export failed ({first_line(e, 200)})") from None
    program.save(str(path))


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _write_torchscript(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x, check_trace=False)
    traced.save(str(path))


def _run_torchscript(path: Path, x: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(x).float().numpy()


def _write_pt2(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except Exception as e:  # noqa: BLE001
        raise FerbenchError(f"torch.export failed ({first_line(e, 200)})") from None
    torch.export.save(program, str(path))


def _run_pt2(path: Path, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.export.load(str(path)).module()(x).float().numpy()


WRITERS = {"onnx": (_write_onnx, _run_onnx), "torchscript": (_write_torchscript, _run_torchscript), "pt2": (_write_pt2, _run_pt2)}


def _need(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise FerbenchError(f"ONNX export needs {', '.join(missing)}: pip install 'ferbench[export]' "
                            "(or use --format torchscript)")


def default_path(tm: TrainedModel, fmt: Format, folder: Path = Path("exports")) -> Path:
    return folder / f"{tm.source.name}-{tm.which}{SUFFIX[fmt]}"


def read_sidecar(path: Path) -> dict[str, Any]:
    return json.loads(read_text_bounded(path.with_suffix(".json")))
