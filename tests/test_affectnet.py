"""AffectNet on a generated miniature in the released layout: both protocols, the validation set as
test, face boxes, dropped codes, bad tables in one line; class-balanced sampling."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ferbench.data import load_dataset
from ferbench.data.affectnet import CODES
from ferbench.engine.train import epoch_order
from ferbench.errors import FerbenchError
from tests.conftest import run_spec_dict

HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks", "expression",
          "valence", "arousal"]


def miniature(root: Path, per_code: int = 3, seed: int = 0) -> Path:
    """<root>/affectnet with training.csv, validation.csv and Manually_Annotated_Images/: every code
    0-10 `per_code` times per table; each image is black with a white face box (so a crop is white)."""
    rng = np.random.default_rng(seed)
    base = root / "affectnet"
    for table in ("training", "validation"):
        rows = []
        for code in range(11):
            for i in range(per_code):
                w, h = int(rng.integers(60, 120)), int(rng.integers(60, 120))
                box = (int(rng.integers(0, 10)), int(rng.integers(0, 10)), w // 2, h // 2)
                img = np.zeros((h, w, 3), np.uint8)
                img[box[1]:box[1] + box[3], box[0]:box[0] + box[2]] = (255, 255, 255)
                rel = f"{code + 100}/{table}_{code}_{i}.jpg"
                (base / "Manually_Annotated_Images" / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(base / "Manually_Annotated_Images" / rel, quality=95)
                rows.append([rel, *box, ";".join(["10.5"] * 136), code, "0.1", "-0.2"])
        with (base / f"{table}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([HEADER, *rows])
    return root


def test_both_protocols_drop_the_right_codes_and_test_on_the_validation_set(tmp_path):
    root = miniature(tmp_path)
    eight = load_dataset("affectnet", {"size": 32, "val_fraction": 0.3}, data_root=str(root))
    assert eight.classes == CODES and len(CODES) == 8
    assert len(eight.splits["test"]) == 8 * 3 and sorted(set(eight.splits["test"].labels)) == list(range(8))
    assert len(eight.splits["train"]) + len(eight.splits["val"]) == 8 * 3
    assert "validation set" in eight.notes["test_split"] and "none (3 train, 3 validation)" in eight.notes["protocol"]
    assert eight.splits["test"].images.shape[1:] == (32, 32, 3)
    assert eight.splits["test"].images.mean() > 240  # cropped to the white face box
    seven = load_dataset("affectnet", {"size": 32, "protocol": "7class", "color": "grey", "val_fraction": 0.3}, data_root=str(root))
    assert seven.classes == CODES[:7] and 7 not in seven.splits["test"].labels
    assert "contempt (3 train, 3 validation)" in seven.notes["protocol"] and seven.splits["test"].images.ndim == 3


def test_a_spec_runs_both_protocols_with_balanced_sampling(tmp_path, monkeypatch):
    root = miniature(tmp_path, per_code=4)
    monkeypatch.setenv("FERBENCH_DATA", str(root))
    spec = {"name": "an", "datasets": [{"name": "affectnet", "id": "an8", "options": {"size": 32, "val_fraction": 0.3}},
                                       {"name": "affectnet", "id": "an7", "options": {"size": 32, "protocol": "7class", "val_fraction": 0.3}}],
            "models": [{"id": "r", "arch": "resnet18"}],
            "train": {"epochs": 1, "batch_size": 8, "input_size": 32, "sampler": "balanced"}}
    outcomes = run_spec_dict(tmp_path, spec)
    assert [o.status for o in outcomes] == ["complete", "complete"]
    m = json.loads((tmp_path / "runs" / "an" / outcomes[1].job.id / "manifest.json").read_text())
    assert m["classes"] == CODES[:7] and "not public" in m["data_notes"]["test_split"]


@pytest.mark.parametrize("edit, needle", [
    (lambda rows: [r[:1] + r[2:] for r in rows], "face_x missing"),
    (lambda rows: rows[:1] + [rows[1][:6] + ["11"] + rows[1][7:]] + rows[2:], "line 2: expression must be a code 0-10, got 11"),
    (lambda rows: rows[:1] + [rows[1][:6] + ["happy"] + rows[1][7:]] + rows[2:], "line 2: expression must be an integer"),
])
def test_bad_tables_are_one_line(tmp_path, edit, needle):
    root = miniature(tmp_path, per_code=1)
    path = root / "affectnet" / "training.csv"
    rows = list(csv.reader(path.open()))
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(edit(rows))
    with pytest.raises(FerbenchError, match=needle):
        load_dataset("affectnet", {"size": 16, "val_fraction": 0.3}, data_root=str(root))


def test_a_missing_image_is_named(tmp_path):
    root = miniature(tmp_path, per_code=1)
    victim = next((root / "affectnet" / "Manually_Annotated_Images").rglob("training_0_0.jpg"))
    victim.unlink()
    with pytest.raises(FerbenchError, match="training_0_0.jpg: file not found"):
        load_dataset("affectnet", {"size": 16, "val_fraction": 0.3}, data_root=str(root))


def test_balanced_sampling_makes_every_class_equally_likely():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    tr = SimpleNamespace(cfg=SimpleNamespace(sampler="balanced"), images=labels, labels=labels)
    order = epoch_order(tr, torch.Generator().manual_seed(0))
    share = np.bincount(labels[order].numpy(), minlength=3) / len(order)
    assert len(order) == 1000 and np.allclose(share, 1 / 3, atol=0.05)
    tr.cfg.sampler = "uniform"
    assert sorted(epoch_order(tr, torch.Generator().manual_seed(0)).tolist()) == list(range(1000))
