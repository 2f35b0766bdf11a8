"""Experiment trackers (`--log csv mlflow tensorboard`): what each receives, read back with its own
reader (the mlflow client, pandas-free csv, TensorBoard's EventAccumulator), across an interrupted
and resumed job. Everything is local: MLflow writes to a SQLite file in the test's folder."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ferbench.engine.sinks import CsvSink, Tracked, final_metrics, job_params
from ferbench.engine.train import NoProgress
from ferbench.runner import prepare, run_job
from ferbench.spec import expand, spec_from_dict

SPEC = {
    "name": "tracked",
    "datasets": [{"name": "synthfer", "options": {"n_train": 64, "n_val": 16, "n_test": 16}}],
    "models": [{"id": "r", "arch": "resnet18"}],
    "train": {"epochs": 3, "batch_size": 16, "input_size": 32},
}
STEPS = 3 * 64 // 16


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


class Lines(NoProgress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(text)


@pytest.mark.slow
def test_csv_mlflow_tensorboard_receive_the_record_across_a_resume(tmp_path, monkeypatch, kill_after):
    import torch

    pytest.importorskip("mlflow", reason="--log mlflow needs the mlflow extra: pip install 'ferbench[mlflow]'")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = expand(spec_from_dict({**SPEC, "launcher": {"log": ["csv", "mlflow", "tensorboard"]}}, "x"))[0]
    ds = next(iter(prepare([job], None).values()))
    with pytest.raises(KeyboardInterrupt):  # killed in the second epoch
        run_job(job, tmp_path, ds, torch.device("cpu"), kill_after(STEPS // 3 + 2))
    out = run_job(job, tmp_path, ds, torch.device("cpu"))
    assert out.status == "complete"
    job_dir = tmp_path / job.spec / job.id
    history = _rows(job_dir / "history.csv")
    metrics = json.loads((job_dir / "metrics.json").read_text())

    # csv: parameters, each step once (the resumed epoch was not logged twice), epoch rows, final metrics
    params = {r["name"]: r["value"] for r in _rows(job_dir / "csv" / "params.csv")}
    assert params["job_id"] == job.id and params["train.batch_size"] == "16" and params["model.arch"] == "resnet18"
    rows = _rows(job_dir / "csv" / "metrics.csv")
    by_name: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        assert int(r["step"]) not in by_name[r["name"]], f"{r['name']} at step {r['step']} twice"
        by_name[r["name"]][int(r["step"])] = float(r["value"])
    assert sorted(by_name["step/loss"]) == list(range(1, STEPS + 1))
    per_epoch = STEPS // 3
    for e, h in enumerate(history):  # four full batches: the epoch's loss is the mean of its steps
        losses = [by_name["step/loss"][s] for s in range(e * per_epoch + 1, (e + 1) * per_epoch + 1)]
        np.testing.assert_allclose(np.mean(losses), float(h["train_loss"]), rtol=1e-5)  # history.csv keeps 6 digits
        np.testing.assert_allclose(by_name["val_acc"][int(h["step"])], float(h["val_acc"]), rtol=1e-5)
        if e + 1 < len(history):  # the lr an epoch ends with is the one the next epoch's first step uses
            assert by_name["step/lr"][(e + 1) * per_epoch + 1] == pytest.approx(float(h["lr"]), rel=1e-5)
    assert by_name["test/last/accuracy"][STEPS] == metrics["test"]["last"]["accuracy"]

    # mlflow: one run per job, continued after the interruption, finished, read back with its client
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == job.id
    assert run.data.tags["ferbench.job_id"] == job.id and run.data.params["train.lr"] == params["train.lr"]
    loss = client.get_metric_history(run.info.run_id, "step/loss")
    assert sorted({m.step for m in loss}) == list(range(1, STEPS + 1))
    assert [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_acc"), key=lambda m: m.step)][-3:] \
        == pytest.approx([float(h["val_acc"]) for h in history])
    assert run.data.metrics["final/test/last/accuracy"] == pytest.approx(metrics["test"]["last"]["accuracy"])

    # tensorboard: per-step scalars at the global step, final metrics
    events = EventAccumulator(str(job_dir / "tensorboard"))
    events.Reload()
    assert sorted({s.step for s in events.Scalars("step/loss")}) == list(range(1, STEPS + 1))
    assert events.Scalars("final/test/last/accuracy")[-1].value == pytest.approx(metrics["test"]["last"]["accuracy"])


def test_csv_sink_drops_steps_it_is_about_to_repeat(tmp_path):
    first = CsvSink(tmp_path, {"job_id": "j"})
    first.steps(1, 1, [1.0, 0.9], [0.1, 0.1])
    first.end_epoch({"epoch": 1, "step": 2, "train_loss": 0.95})
    first.steps(3, 2, [0.8, 0.7], [0.1, 0.1])  # logged, then killed before the checkpoint of epoch 2
    resumed = CsvSink(tmp_path, {"job_id": "j"})
    resumed.steps(3, 2, [0.85, 0.75], [0.1, 0.1])
    rows = [(int(r["step"]), r["name"], float(r["value"])) for r in _rows(tmp_path / "metrics.csv")]
    assert rows == [(1, "step/loss", 1.0), (1, "step/lr", 0.1), (2, "step/loss", 0.9), (2, "step/lr", 0.1),
                    (2, "train_loss", 0.95), (3, "step/loss", 0.85), (3, "step/lr", 0.1), (4, "step/loss", 0.75),
                    (4, "step/lr", 0.1)]


def test_a_failing_tracker_costs_one_line_and_the_job_goes_on(tmp_path, monkeypatch):
    job = expand(spec_from_dict({**SPEC, "launcher": {"log": ["csv"]}}, "x"))[0]
    terminal = Lines()
    tracked = Tracked(terminal, ["csv"], job, tmp_path / "job", tmp_path)
    monkeypatch.setattr(CsvSink, "end_epoch", lambda self, row: (_ for _ in ()).throw(OSError("No space left on device")))
    tracked.end_epoch({"epoch": 1, "step": 4, "train_loss": 1.0})
    tracked.end_epoch({"epoch": 2, "step": 8, "train_loss": 0.9})  # dropped: no second warning
    tracked.close()
    assert terminal.lines == ["--log csv stopped: OSError: No space left on device (the run record is unaffected)"]


def test_parameters_and_final_metrics_are_flat():
    job = expand(spec_from_dict(SPEC, "x"))[0]
    params = job_params(job)
    assert params["job_id"] == job.id and params["train.epochs"] == "3" and "log" not in params
    assert all(isinstance(v, str) for v in params.values())
    flat = final_metrics({"test": {"last": {"accuracy": 0.5, "n": 10, "confusion": [[1]]}}, "val": None})
    assert flat == {"test/last/accuracy": 0.5}


def test_mlflow_takes_the_tracking_uri_from_the_environment(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="--log mlflow needs the mlflow extra: pip install 'ferbench[mlflow]'")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    job = expand(spec_from_dict(SPEC, "x"))[0]
    terminal = Lines()
    tracked = Tracked(terminal, ["mlflow"], job, tmp_path / "job", tmp_path / "runs")
    tracked.final({"test": {"last": {"accuracy": 0.25}}}, 12)
    tracked.close()
    assert terminal.lines == [] and not (tmp_path / "runs" / "mlflow.db").exists()
    link = json.loads((tmp_path / "job" / "mlflow.json").read_text())
    run = MlflowClient(tracking_uri=uri).get_run(link["run_id"])
    assert link["tracking_uri"] == uri and run.info.status == "FINISHED"
    assert run.data.metrics == {"final/test/last/accuracy": 0.25} and run.data.params["job_id"] == job.id
