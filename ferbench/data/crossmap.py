"""Cross-dataset evaluation: a model trained on one label set tested on another through a class map.

The map sends training classes to target classes (FER-2013 `sad` -> CK+ `sadness`). A target class
no training class maps to (CK+ `contempt`) is dropped with its images: the model cannot name it. A
training class mapped to nothing (FER-2013 `neutral` on CK+, which has no neutral frames) is never
predicted: the prediction is the best-scoring mapped class. When several training classes map to
one target class, the target's score is the largest of theirs. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ferbench.errors import FerbenchError


@dataclass(frozen=True)
class ClassMap:
    classes: list[str]  # the target classes kept, in the target's order
    source_to_kept: dict[int, int]  # training class index -> index into `classes`
    dropped: list[str]  # target classes no training class maps to

    def target_logits(self, logits: np.ndarray) -> np.ndarray:
        """(N, kept) scores over the kept target classes from (N, training classes) logits."""
        out = np.full((len(logits), len(self.classes)), -np.inf, np.float32)
        for s, t in self.source_to_kept.items():
            out[:, t] = np.maximum(out[:, t], logits[:, s])
        return out

    def target_labels(self, labels: np.ndarray, target_classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows kept, their labels as indices into `classes`) of target-dataset labels."""
        index = {c: i for i, c in enumerate(self.classes)}
        new = np.array([index.get(target_classes[int(y)], -1) for y in labels], np.int64)
        keep = new >= 0
        return np.flatnonzero(keep), new[keep]


def class_map(source: list[str], target: list[str], mapping: dict[str, str] | None, where: str) -> ClassMap:
    """Check `mapping` against both class lists (None: the classes both name alike) and build the map."""
    mapping = mapping if mapping is not None else {c: c for c in source if c in target}
    for s, t in mapping.items():
        if s not in source:
            raise FerbenchError(f"{where}.map: {s!r} is not a training class (expected one of {', '.join(source)})")
        if t not in target:
            raise FerbenchError(f"{where}.map: {t!r} is not a class of the target (expected one of {', '.join(target)})")
    if not mapping:
        raise FerbenchError(f"{where}: no class of the target matches a training class; give map: {{training: target}}")
    kept = [c for c in target if c in set(mapping.values())]
    return ClassMap(kept, {source.index(s): kept.index(t) for s, t in mapping.items()}, [c for c in target if c not in kept])
