"""What a run record must look like before report or compare reads it.

Records are files on disk that anything may have damaged or planted: each check returns the first
problem as one line naming the file and field (None when the record is sound), so report lists the
record as `unreadable` with that reason and renders the rest, and compare leaves it out. The fields
checked are exactly the ones report and compare read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ferbench.fileio import MAX_CLASSES

# The files of a run record (`runs/<spec>/<job-id>/`) and of a spec's folder: their one home; `records`
# re-exports them for everything else.
JOB_FILE, MANIFEST_FILE, HISTORY_FILE = "job.yaml", "manifest.json", "history.csv"
METRICS_FILE, PREDICTIONS_FILE, CHECKPOINT_FILE = "metrics.json", "predictions.npz", "checkpoint.pt"
SPEC_FILE = "spec.yaml"

# metrics.json's model cost (params, GMACs, CPU latency at the job's input size); records made before
# 2026-12-04 name it "profile", a word ferbench keeps for a spec's named override sets
COST_FIELD, LEGACY_COST_FIELD = "cost", "profile"


def metrics_cost(metrics: dict) -> dict:
    """The model cost a metrics.json records (either name), {} when it records none."""
    return metrics.get(COST_FIELD) or metrics.get(LEGACY_COST_FIELD) or {}

NUMBER = (int, float)
JOB_FIELDS: dict[str, type | tuple[type, ...]] = {
    "job": dict, "job.spec": str, "job.recipe": str, "job.seed": int,
    "job.model": dict, "job.model.id": str, "job.model.arch": str, "job.model.options": dict,
    "job.dataset": dict, "job.dataset.id": str, "job.eval": dict, "job.eval.tta": str,
    "job.train": dict, "job.train.input_size": int, "job.train.in_chans": int, "job.train.epochs": int,
    "job.train.optimizer": str, "job.train.lr": NUMBER, "job.train.batch_size": int, "job.train.schedule": str,
    "job.train.loss": str, "job.train.label_smoothing": NUMBER,
}
MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "status": str, "environment": dict, "classes": list, "class_counts": dict, "pretrained": dict, "data_notes": dict,
}
RESULT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "accuracy": NUMBER, "balanced_accuracy": NUMBER, "macro_f1": NUMBER, "ece": NUMBER,
    "per_class_recall": dict, "confusion": list,
}


def _get(obj: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return False, None
        obj = obj[part]
    return True, obj


def _fields(obj: Any, fields: dict[str, Any], where: str, required: bool) -> str | None:
    """The first field missing (when required) or of the wrong type, as one line."""
    if not isinstance(obj, dict):
        return f"{where}: expected a mapping, got {type(obj).__name__}"
    for name, kind in fields.items():
        present, value = _get(obj, name)
        if not present:
            if required:
                return f"{where}: field {name!r} missing"
            continue
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            return f"{where}: field {name!r} has the wrong type ({type(value).__name__})"
    return None


MAX_IMAGE_SIDE = 4096  # a stored training image (48, 64, 100, 224 px in practice)


def _image_shape_ok(shape: Any) -> bool:
    return (isinstance(shape, list) and len(shape) in (2, 3)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
            and all(1 <= v <= MAX_IMAGE_SIDE for v in shape[:2]) and (len(shape) == 2 or shape[2] == 3))


def check_job(job: Any) -> str | None:
    """job.yaml as parsed: the fields report and compare read."""
    return _fields(job, JOB_FIELDS, JOB_FILE, required=True)


def check_manifest(manifest: Any) -> str | None:
    """manifest.json: the optional fields report reads, each of its type when present."""
    problem = _fields(manifest, MANIFEST_FIELDS, MANIFEST_FILE, required=False)
    if problem is None and "classes" in manifest:
        classes = manifest["classes"]
        if not 1 <= len(classes) <= MAX_CLASSES or not all(isinstance(c, str) for c in classes):
            return f"{MANIFEST_FILE}: field 'classes' must be 1 to {MAX_CLASSES} class names"
    if problem is None and "image_shape" in manifest and not _image_shape_ok(manifest["image_shape"]):
        return (f"{MANIFEST_FILE}: field 'image_shape' must be [height, width] or [height, width, 3] with sides "
                f"1..{MAX_IMAGE_SIDE}")
    if problem is None and "class_counts" in manifest:
        counts = manifest["class_counts"]
        if "classes" not in manifest or not all(isinstance(v, dict) for v in counts.values()):
            return f"{MANIFEST_FILE}: field 'class_counts' must map splits to per-class counts, with 'classes'"
    return problem


def check_metrics(metrics: Any) -> str | None:
    """metrics.json of a complete record: classes, and each test result's numbers and confusion."""
    if not isinstance(metrics, dict):
        return f"{METRICS_FILE}: not a JSON mapping"
    classes = metrics.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return f"{METRICS_FILE}: field 'classes' must be a list of class names"
    if not isinstance(metrics.get("test"), dict) or not metrics["test"]:
        return f"{METRICS_FILE}: field 'test' missing"
    for key in (COST_FIELD, LEGACY_COST_FIELD):
        if key in metrics and not isinstance(metrics[key], dict):
            return f"{METRICS_FILE}: field '{key}' must be a mapping"
    for which, result in metrics["test"].items():
        problem = _fields(result, RESULT_FIELDS, f"{METRICS_FILE}: test.{which}", required=True)
        if problem:
            return problem
        try:
            confusion = np.asarray(result["confusion"], dtype=float)
        except (TypeError, ValueError):
            confusion = np.empty(0)
        if confusion.shape != (len(classes), len(classes)):
            return f"{METRICS_FILE}: test.{which}.confusion must be a {len(classes)}x{len(classes)} table of counts"
    return None


def check_predictions(arrays: dict[str, np.ndarray], n_classes: int) -> str | None:
    """predictions.npz: integer test labels, and every split's logits and targets (N, classes) for its N labels."""
    if "test.labels" not in arrays:
        return f"{PREDICTIONS_FILE}: array 'test.labels' missing"
    for key, a in arrays.items():
        if key.endswith(".labels") and (a.ndim != 1 or a.dtype.kind not in "iu"):
            return f"{PREDICTIONS_FILE}: {key} must be a 1-D integer array, got {a.dtype} {a.shape}"
    for key, a in arrays.items():
        if key.endswith((".logits", ".targets")):
            prefix = key.rsplit(".", 2 if key.endswith(".logits") else 1)[0]  # test | cross.<id>
            n = len(arrays.get(prefix + ".labels", []))
            k = a.shape[-1] if prefix.startswith("cross.") and a.ndim == 2 and a.shape[-1] else n_classes  # target classes
            if a.shape != (n, k) or a.dtype.kind != "f":
                return f"{PREDICTIONS_FILE}: {key} must be float ({n}, {k}), got {a.dtype} {a.shape}"
    return None


def check_agreement(metrics: dict[str, Any], arrays: dict[str, np.ndarray]) -> str | None:
    """metrics.json's test numbers must be what predictions.npz's logits give (numbers on a page come from
    one source): for each selection with logits, the confusion table and the accuracy recomputed."""
    labels = arrays["test.labels"]
    k = len(metrics["classes"])
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        return f"{PREDICTIONS_FILE}: test.labels must be class indices 0..{k - 1}, found {int(labels.min())}..{int(labels.max())}"
    for which, result in metrics["test"].items():
        logits = arrays.get(f"test.{which}.logits")
        if logits is None:
            continue
        pred = logits.argmax(1) if logits.size else np.zeros(0, np.int64)
        confusion = np.zeros((k, k), np.int64)
        np.add.at(confusion, (labels, pred), 1)
        if not np.array_equal(confusion, np.asarray(result["confusion"])) or \
                abs(float((pred == labels).mean() if labels.size else 0.0) - float(result["accuracy"])) > 1e-9:
            return (f"{METRICS_FILE}: test.{which} disagrees with {PREDICTIONS_FILE} (its confusion table or accuracy "
                    "is not what the stored logits give)")
    return None


def check_history(rows: list[dict[str, Any]], path: Path) -> str | None:
    """history.csv: every value a number (the curves figure plots them)."""
    for i, row in enumerate(rows, start=2):
        if None in row or any(not isinstance(v, NUMBER) for v in row.values()):
            return f"{path.name}: line {i} is not a row of numbers"
    return None
