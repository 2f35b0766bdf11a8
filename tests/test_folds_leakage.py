"""k-fold cross-validation as a spec axis, the leakage guard (subjects and near-identical frames
across the split), and the CK+48 loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ferbench import api
from ferbench.cli import app
from ferbench.data import load_dataset
from ferbench.data.leakage import near_duplicates
from ferbench.errors import FerbenchError
from ferbench.records import discover
from ferbench.report.tables import fold_table, pooled_ci
from tests.conftest import run_spec_dict


def video_npz(path: Path, subjects: int = 12, frames: int = 3, seed: int = 0) -> Path:
    """A lab dataset as CK+ is cut: per subject two sequences of `frames` near-identical frames."""
    rng = np.random.default_rng(seed)
    images, labels, subject = [], [], []
    for s in range(subjects):
        for q in range(2):
            base = rng.integers(0, 256, (48, 48)).astype(np.int16)
            for _ in range(frames):
                images.append(np.clip(base + rng.integers(-3, 4, (48, 48)), 0, 255).astype(np.uint8))
                labels.append((s + q) % 3)
                subject.append(f"S{s:03d}")
    np.savez_compressed(path, images=np.stack(images), label=np.array(labels, np.int8),
                        class_names=np.array(["a", "b", "c"]), subject=np.array(subject))
    return path


def test_near_duplicates_finds_frames_of_one_sequence_and_not_other_faces():
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 256, (20, 48, 48), dtype=np.uint8)
    moved = np.clip(faces.astype(np.int16) + rng.integers(-3, 4, faces.shape), 0, 255).astype(np.uint8)
    assert near_duplicates(faces[:10], moved[:10]) == 10  # each frame's neighbour is in "train"
    assert near_duplicates(faces[:10], moved[10:]) == 0  # other faces are not twins


def test_data_with_subject_ids_is_split_by_subject_and_a_random_split_is_flagged(tmp_path):
    path = video_npz(tmp_path / "lab.npz")
    grouped = load_dataset("folder", {"folds": 3}, str(path))
    assert "grouped by 'subject'" in grouped.notes["split_rule"] and "leakage" not in grouped.notes
    assert grouped.notes["subjects_in_train_and_test"] == 0
    assert grouped.notes["near_duplicates"]["test_images_with_a_train_twin"] == 0
    leaky = load_dataset("folder", {"folds": 3, "split": "random"}, str(path))
    assert leaky.notes["subjects_in_train_and_test"] > 0
    assert "near-identical twin in train" in leaky.notes["leakage"]


@pytest.mark.slow
def test_folds_all_expands_one_job_per_fold_and_the_report_pools_them(tmp_path):
    path = video_npz(tmp_path / "lab.npz")
    spec = {"name": "cv", "datasets": [{"name": "folder", "id": "lab", "path": str(path), "options": {"folds": 3},
                                        "folds": [0, 1]},
                                       {"name": "folder", "id": "lab-random", "path": str(path),
                                        "options": {"folds": 3, "split": "random"}, "folds": [2]}],
            "models": [{"id": "r", "arch": "resnet18"}], "seeds": [0],
            "train": {"epochs": 1, "batch_size": 16, "input_size": 32, "in_chans": 1}}
    (tmp_path / "s.yaml").write_text(json.dumps(spec))
    plan = api.plan_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", estimate=False)
    assert [(p.job.split_label, p.job.seed) for p in plan.jobs] == [("lab/f0", 0), ("lab/f1", 0), ("lab-random/f2", 0)]
    assert len({p.job.id for p in plan.jobs}) == 3
    assert plan.leakage() and all("lab-random" in line for line in plan.leakage())
    # a fold's job is the job of a spec naming that fold in its options
    single = {**spec, "datasets": [{**spec["datasets"][0], "folds": None, "options": {"folds": 3, "fold": 1}}]}
    (tmp_path / "one.yaml").write_text(json.dumps(single))
    assert api.load(tmp_path / "one.yaml")[1][0].id == plan.jobs[1].job.id

    result = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--runs-dir", str(tmp_path / "runs"), "--no-estimate"])
    assert result.exit_code == 0, result.output
    assert "leakage: dataset lab-random" in result.output
    records = [r for r in discover(tmp_path / "runs" / "cv") if r.job.dataset.id == "lab"]
    (row,) = [r for r in fold_table(records) if r["dataset"] == "lab"]
    per_fold = {}
    for r in records:
        per_fold.setdefault(r.job.dataset.options["fold"], []).append(r.metrics()["test"]["last"]["accuracy"])
    want = [np.mean(per_fold[f]) for f in sorted(per_fold)]
    assert row["folds"] == pytest.approx(dict(enumerate(want))) and row["std"] == pytest.approx(np.std(want, ddof=1))
    assert pooled_ci(records, "last") is not None  # folds joined per seed: every image once per seed
    api.report_spec("cv", tmp_path / "runs", tmp_path / "reports")
    page = (tmp_path / "reports" / "cv" / "report.md").read_text()
    assert "Cross-validation folds" in page and "## Leakage" in page and "| lab-random | 1 |" in page
    assert len({r.label for r in discover(tmp_path / "runs" / "cv")}) == 1  # folds pool like seeds: one experiment


@pytest.mark.parametrize("entry, needle", [
    ({"name": "synthfer", "folds": "all"}, "has no cross-validation folds"),
    ({"name": "folder", "path": "x.npz", "options": {"folds": 3}, "folds": [3]}, "fold 3 out of range for k = 3"),
])
def test_bad_folds_are_one_line(tmp_path, entry, needle):
    spec = {"name": "cv", "datasets": [entry], "models": [{"id": "r", "arch": "resnet18"}]}
    with pytest.raises(FerbenchError, match=needle):
        run_spec_dict(tmp_path, spec)


@pytest.mark.realdata
def test_ckplus48_subject_folds_are_disjoint_and_random_folds_leak(real_data):
    z = np.load(real_data / "ckplus48" / "ckplus48.npz")
    seen = []
    for fold in range(10):
        ds = load_dataset("ckplus48", {"fold": fold}, data_root=str(real_data))
        assert ds.classes == ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
        assert ds.notes["subjects_in_train_and_test"] == 0 and "leakage" not in ds.notes
        seen.append(len(ds.splits["test"]))
    assert sum(seen) == len(z["images"]) == 981  # the ten test folds cover every image once
    leaky = load_dataset("ckplus48", {"split": "random"}, data_root=str(real_data))
    assert leaky.notes["near_duplicates"]["test_images_with_a_train_twin"] > len(leaky.splits["test"]) // 2


def test_cross_dataset_evaluation_scores_the_mapped_classes_and_drops_the_rest(tmp_path):
    import torch

    from ferbench.engine.evaluate import predict
    from ferbench.trained import load_run

    rng = np.random.default_rng(3)
    target = tmp_path / "lab.npz"
    labels = np.array([0, 1, 2, 3] * 6, np.int8)  # anger, contempt, happy, sadness
    np.savez_compressed(target, images=rng.integers(0, 256, (24, 48, 48), dtype=np.uint8), label=labels,
                        class_names=np.array(["anger", "contempt", "happy", "sadness"]))
    cross = {"id": "lab", "name": "folder", "path": str(target), "options": {"groups_key": None},
             "map": {"angry": "anger", "happy": "happy", "sad": "sadness"}}
    spec = {"name": "x", "datasets": [{"name": "synthfer", "options": {"n_train": 48, "n_val": 16, "n_test": 12},
                                       "cross": [cross]}],
            "models": [{"id": "r", "arch": "resnet18"}], "train": {"epochs": 1, "batch_size": 16, "input_size": 32}}
    (outcome,) = run_spec_dict(tmp_path, spec)
    run = tmp_path / "runs" / "x" / outcome.job.id
    entry = json.loads((run / "metrics.json").read_text())["cross"]["lab"]
    assert entry["classes"] == ["anger", "happy", "sadness"] and entry["dropped_classes"] == ["contempt"]
    assert entry["images"] == 18  # the six contempt images are dropped
    arrays = np.load(run / "predictions.npz")
    tm = load_run(run)
    kept = labels != 1
    images = load_dataset("folder", {"groups_key": None}, str(target))
    every = np.concatenate([images.splits[s].images for s in ("train", "val", "test")])
    every_labels = np.concatenate([images.splits[s].labels for s in ("train", "val", "test")])
    logits = predict(tm.model, every[every_labels != 1], tm.job.train, torch.device("cpu"))
    source = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    mapped = logits[:, [source.index(c) for c in ("angry", "happy", "sad")]]
    np.testing.assert_allclose(arrays["cross.lab.last.logits"], mapped, rtol=1e-6)
    want = (mapped.argmax(1) == np.array([{0: 0, 2: 1, 3: 2}[y] for y in every_labels[every_labels != 1]])).mean()
    assert entry["last"]["accuracy"] == pytest.approx(want) and kept.sum() == 18
    api.report_spec("x", tmp_path / "runs", tmp_path / "reports")
    assert "| r | synthfer | lab (folder) |" in (tmp_path / "reports" / "x" / "report.md").read_text()
    cross["map"] = {"angry": "rage"}
    with pytest.raises(FerbenchError, match=r"datasets.synthfer.cross.lab.map: 'rage' is not a class of the target"):
        run_spec_dict(tmp_path, {**spec, "name": "y"})
