"""Evaluation without training: a job that differs from a finished one only in evaluation settings
reuses its training; `train.epochs: 0` evaluates a weights file as it is; `ferbench eval` never trains."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from ferbench import api
from ferbench.cli import app
from ferbench.data import load_dataset
from ferbench.engine.evaluate import predict
from ferbench.trained import load_run
from tests.conftest import run_spec_dict

DATA = {"name": "synthfer", "options": {"n_train": 48, "n_val": 16, "n_test": 12}}
SPEC = {"name": "ev", "datasets": [DATA], "models": [{"id": "r", "arch": "resnet18"}],
        "train": {"epochs": 2, "batch_size": 16, "input_size": 32}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A spec and its runs folder with one finished job (no TTA); the job.yaml is rewritten as
    ferbench wrote it before jobs had a `log` field, so it stands for a record made by earlier code."""
    folder = tmp_path_factory.mktemp("ev")
    (outcome,) = run_spec_dict(folder, SPEC)
    job_yaml = folder / "runs" / "ev" / outcome.job.id / "job.yaml"
    doc = yaml.safe_load(job_yaml.read_text())
    doc["job"].pop("log")
    job_yaml.write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder, outcome.job.id


def _invoke(*args: str):
    return CliRunner().invoke(app, [*args])


@pytest.mark.slow
def test_a_new_tta_evaluates_the_finished_training_without_training(trained):
    folder, first = trained
    runs = folder / "runs"
    result = _invoke("plan", str(folder / "s.yaml"), "--runs-dir", str(runs), "--set", "eval.tta=flip", "--no-estimate")
    assert result.exit_code == 0 and "evaluate" in result.output
    result = _invoke("eval", str(folder / "s.yaml"), "--runs-dir", str(runs), "--set", "eval.tta=flip")
    assert result.exit_code == 0, result.output
    (new,) = [d for d in (runs / "ev").iterdir() if d.is_dir() and d.name != first]
    manifest = json.loads((new / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["trained_in"] == first
    assert (new / "history.csv").read_text() == (runs / "ev" / first / "history.csv").read_text()
    assert os.path.samefile(new / "checkpoint.pt", runs / "ev" / first / "checkpoint.pt")  # linked, not retrained
    test = load_dataset(DATA["name"], DATA["options"]).splits["test"]
    tm = load_run(runs / "ev" / first)
    want = predict(tm.model, test.images, tm.job.train, torch.device("cpu"), "flip")
    np.testing.assert_array_equal(np.load(new / "predictions.npz")["test.last.logits"], want)
    # both records are finished: `run` with either setting trains nothing
    for tta in ("none", "flip"):
        result = _invoke("run", str(folder / "s.yaml"), "--runs-dir", str(runs), "--set", f"eval.tta={tta}", "--no-estimate")
        assert result.exit_code == 0 and "skipped" in result.output
    api.report_spec("ev", runs, folder / "reports")
    assert "unreadable" not in (folder / "reports" / "ev" / "report.md").read_text()


def test_eval_leaves_a_job_that_needs_training_untrained(trained):
    folder, first = trained
    before = sorted(p.name for p in (folder / "runs" / "ev").iterdir())
    result = _invoke("eval", str(folder / "s.yaml"), "--runs-dir", str(folder / "runs"), "--set", "train.lr=0.5")
    assert result.exit_code == 1 and "untrained" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in (folder / "runs" / "ev").iterdir()) == before


def test_epochs_zero_evaluates_a_checkpoint_and_reproduces_its_runs_test_metrics(trained, tmp_path):
    folder, first = trained
    ck = folder / "runs" / "ev" / first / "checkpoint.pt"
    spec = {**SPEC, "name": "ev0", "models": [{"id": "r", "arch": "resnet18", "weights": str(ck)}],
            "train": {**SPEC["train"], "epochs": 0}}
    (outcome,) = run_spec_dict(tmp_path, spec)
    assert outcome.status == "complete", outcome.reason
    got = json.loads((tmp_path / "runs" / "ev0" / outcome.job.id / "metrics.json").read_text())
    own = json.loads((folder / "runs" / "ev" / first / "metrics.json").read_text())
    assert got["test"]["last"] == own["test"]["last"] and got["epochs_run"] == 0
    # a released checkpoint evaluated this way is a run: predict and export read it like any other
    tm = load_run(tmp_path / "runs" / "ev0" / outcome.job.id)
    test = load_dataset(DATA["name"], DATA["options"]).splits["test"]
    np.testing.assert_array_equal(predict(tm.model, test.images, tm.job.train, torch.device("cpu")),
                                  np.load(tmp_path / "runs" / "ev0" / outcome.job.id / "predictions.npz")["test.last.logits"])
    api.report_spec("ev0", tmp_path / "runs", tmp_path / "reports")  # a record without epochs reports like any other
    page = (tmp_path / "reports" / "ev0" / "report.md").read_text()
    assert "unreadable" not in page and f"{100 * own['test']['last']['accuracy']:.2f}" in page
    spec["models"][0].pop("weights")
    with pytest.raises(Exception, match="train.epochs: 0 evaluates pretrained weights"):
        run_spec_dict(tmp_path, spec)
