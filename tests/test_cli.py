"""End to end through the real console script: run, rerun, report, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "datasets": [{"name": "synthfer", "options": {"n_train": 96, "n_val": 32, "n_test": 48}}],
    "models": [{"id": "atto", "arch": "convnext-atto"}],
    "seeds": [0, 1],
    "train": {"epochs": 2, "batch_size": 32, "input_size": 32},
}


def ferbench(*args, cwd, env=None):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ferbench", *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=600)


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    spec = write_spec(d / "tiny.yaml", TINY)
    first = ferbench("run", spec, cwd=d)
    return d, spec, first


@pytest.mark.slow
def test_run_writes_complete_records(tiny_run):
    d, _, first = tiny_run
    assert first.returncode == 0, first.stderr
    jobs = sorted((d / "runs" / "tiny").glob("*/manifest.json"))
    assert len(jobs) == 2
    for mpath in jobs:
        manifest = json.loads(mpath.read_text())
        assert manifest["status"] == "complete"
        folder = mpath.parent
        for name in ("job.yaml", "history.csv", "metrics.json", "predictions.npz", "checkpoint.pt"):
            assert (folder / name).exists(), name
        metrics = json.loads((folder / "metrics.json").read_text())
        assert set(metrics["test"]) == {"last", "best"} and metrics["cost"]["params"] > 0
        assert not list(folder.glob(".*.tmp"))


@pytest.mark.slow
def test_second_run_trains_nothing(tiny_run):
    d, spec, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in (d / "runs").rglob("checkpoint.pt")}
    again = ferbench("run", spec, cwd=d)
    assert again.returncode == 0
    assert again.stdout.count("skipped") >= 2 and "epoch 1" not in again.stdout
    assert before == {p: p.stat().st_mtime_ns for p in (d / "runs").rglob("checkpoint.pt")}


def test_report_renders_html_and_markdown(tiny_run):
    d, _, _ = tiny_run
    r = ferbench("report", cwd=d)
    assert r.returncode == 0, r.stderr
    html = (d / "reports" / "tiny" / "index.html").read_text()
    md = (d / "reports" / "tiny" / "report.md").read_text()
    assert "Test accuracy" in html and "(n=2)" in html and "data:image/png;base64," in html
    assert "## Conditions" in md and (d / "reports" / "tiny" / "figures").is_dir()
    assert 'href="./tiny/index.html"' in (d / "reports" / "index.html").read_text()


def _assert_clean_failure(r, d, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr + r.stdout
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    assert not (d / "runs").exists()


def test_misspelt_key(tmp_path):
    bad = {**TINY, "train": {"epochz": 2}}
    r = ferbench("run", write_spec(tmp_path / "s.yaml", bad), cwd=tmp_path)
    _assert_clean_failure(r, tmp_path, "epochz", "unknown key")


def test_wrong_type(tmp_path):
    bad = {**TINY, "seeds": "many"}
    r = ferbench("run", write_spec(tmp_path / "s.yaml", bad), cwd=tmp_path)
    _assert_clean_failure(r, tmp_path, "seeds")


@pytest.mark.slow
def test_missing_dataset_file(tmp_path):
    bad = {**TINY, "datasets": [{"name": "fer2013"}]}
    r = ferbench("run", write_spec(tmp_path / "s.yaml", bad), "--data-root", tmp_path / "nowhere", cwd=tmp_path)
    _assert_clean_failure(r, tmp_path, "fer2013/fer2013.csv.gz", "file not found")


@pytest.mark.slow
def test_unknown_model_and_dataset(tmp_path):
    r = ferbench("run", write_spec(tmp_path / "s.yaml", {**TINY, "models": [{"id": "x", "arch": "resnet19"}]}), cwd=tmp_path)
    _assert_clean_failure(r, tmp_path, "unknown model 'resnet19'")
    r = ferbench("run", write_spec(tmp_path / "s.yaml", {**TINY, "datasets": [{"name": "oulu-casia"}]}), cwd=tmp_path)
    _assert_clean_failure(r, tmp_path, "unknown dataset 'oulu-casia'")


def test_data_info_json_for_synthfer(tmp_path):
    r = ferbench("data", "info", "synthfer", "--json", "-o", "n_train=70", cwd=tmp_path)
    info = json.loads(r.stdout)
    assert info["name"] == "synthfer" and info["splits"]["train"]["total"] == 70
    assert sum(info["splits"]["train"]["per_class"].values()) == 70


@pytest.mark.realdata
@pytest.mark.slow
def test_data_info_json_on_real_fer2013(real_data, tmp_path):
    r = ferbench("data", "info", "fer2013", "--json", "--data-root", real_data, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["splits"]["train"]["total"] == 28709
    assert info["splits"]["val"]["per_class"]["disgust"] == 56
    assert info["splits"]["test"]["per_class"]["neutral"] == 626


@pytest.mark.slow
def test_models_and_cost_json(tmp_path):
    r = ferbench("cost", "resnet18", "--num-classes", "1000", "--json", cwd=tmp_path)
    p = json.loads(r.stdout)
    assert set(p) >= {"params", "gmacs", "gflops", "latency_ms", "latency_iqr_ms", "input_size", "num_classes"}
    assert p["gflops"] == pytest.approx(2 * p["gmacs"]) and abs(p["gmacs"] - 1.82) < 0.02


@pytest.mark.slow
def test_plan_and_data_info_show_ids_and_totals_whole_in_80_columns(tmp_path, monkeypatch):
    """A job id is what a user copies, a total what they read: neither is cut in an 80-column terminal."""
    from rich.console import Console

    import ferbench.cli as cli
    from ferbench import api

    spec = {"name": "eighty", "datasets": [{"name": "synthfer", "id": "synthetic-faces-with-a-long-id",
                                            "options": {"n_train": 10_000, "n_val": 20, "n_test": 20}}],
            "models": [{"id": "a-rather-long-model-identifier", "arch": "resnet18"}], "seeds": [0, 1]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    plan = api.plan_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", estimate=False)
    narrow = Console(width=80, record=True, file=open(os.devnull, "w"))
    narrow.print(cli._plan_table(plan))
    shown = narrow.export_text()
    assert all(p.job.id in shown for p in plan.jobs) and max(map(len, shown.splitlines())) <= 80
    recorder = Console(width=80, record=True, file=open(os.devnull, "w"))
    monkeypatch.setattr(cli, "console", recorder)
    r = CliRunner().invoke(cli.app, ["data", "info", "synthfer", "-o", "n_train=10000", "-o", "n_val=20", "-o", "n_test=20"])
    assert r.exit_code == 0, r.stdout
    table = recorder.export_text()
    assert "10,000" in table and max(map(len, table.splitlines())) <= 80
