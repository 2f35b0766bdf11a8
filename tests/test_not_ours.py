"""Never replace or reach what is not ours: output targets that are links, pipes, devices or folders;
a user's own index.html beside a compare page; linked files in a runs folder being published;
linked page folders; `~` in every path option."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ferbench import api
from ferbench.cli import app
from ferbench.errors import FerbenchError
from ferbench.fileio import write_text_atomic

SPEC = {"name": "ours", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 16}}],
        "models": [{"id": "a", "arch": "resnet18"}], "train": {"epochs": 1, "batch_size": 16, "input_size": 24}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ours")
    (folder / "s.yaml").write_text(yaml.safe_dump(SPEC))
    (o,) = api.run_spec(folder / "s.yaml", runs_dir=folder / "runs", estimate=False)
    assert o.status == "complete"
    return folder


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_a_write_never_replaces_a_link_a_pipe_or_a_folder(tmp_path, kind):
    target = tmp_path / "out.csv"
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("theirs")
    if kind == "symlink":
        target.symlink_to(elsewhere)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    with pytest.raises(FerbenchError, match="out.csv: (is a symbolic link|exists and is a)"):
        write_text_atomic(target, "ours")
    assert elsewhere.read_text() == "theirs"
    assert target.is_symlink() if kind == "symlink" else (target.is_fifo() if kind == "fifo" else target.is_dir())


def test_predict_out_onto_a_link_is_one_line(finished, tmp_path):
    job_dir = next((finished / "runs" / "ours").glob("a__*"))
    from PIL import Image
    import numpy as np

    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "face.png")
    (tmp_path / "theirs.csv").write_text("theirs")
    (tmp_path / "p.csv").symlink_to(tmp_path / "theirs.csv")
    r = CliRunner().invoke(app, ["predict", str(job_dir), str(tmp_path / "face.png"), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 2 and "is a symbolic link" in r.output and "Traceback" not in r.output
    assert (tmp_path / "theirs.csv").read_text() == "theirs"


def test_compare_writes_only_inside_the_folder_named(finished, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html>my own site</html>")
    spec2 = {**SPEC, "name": "ours2", "models": [{"id": "b", "arch": "convnext-atto"}], "train": {**SPEC["train"], "input_size": 32}}
    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    (tmp_path / "s2.yaml").write_text(yaml.safe_dump(spec2))
    api.run_spec(tmp_path / "s2.yaml", runs_dir=runs, estimate=False)
    r = CliRunner().invoke(app, ["compare", "resnet", "convnext", "--runs-dir", str(runs), "--out", str(site / "cmp")])
    assert r.exit_code == 0, r.output
    assert (site / "index.html").read_text() == "<html>my own site</html>" and (site / "cmp" / "index.html").exists()
    # found by tests/test_fuzz_cli.py: a ferbench index in a folder the user did not name was rewritten (the
    # parent of --out held one from an earlier `report --out`); only the reports folder's own index links it
    api.report_spec("ours", runs, site / "other")
    before = (site / "other" / "index.html").read_text()
    r = CliRunner().invoke(app, ["compare", "resnet", "convnext", "--runs-dir", str(runs), "--out", str(site / "other" / "cmp")])
    assert r.exit_code == 0 and (site / "other" / "index.html").read_text() == before, r.output
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        api.report_spec("ours", runs, "reports")
        r = CliRunner().invoke(app, ["compare", "resnet", "convnext", "--runs-dir", str(runs), "--out", "reports/cmp"])
    finally:
        os.chdir(old)
    assert r.exit_code == 0 and 'href="./cmp/index.html"' in (tmp_path / "reports" / "index.html").read_text(), r.output


def test_publishing_never_copies_a_linked_file_or_writes_through_a_linked_folder(finished, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    job_dir = next((runs / "ours").glob("a__*"))
    secret = tmp_path / "secret.txt"
    secret.write_text("not a record")
    (job_dir / "history.csv").unlink()
    (job_dir / "history.csv").symlink_to(secret)
    api.report_spec("ours", runs, tmp_path / "reports", with_records=True)
    published = tmp_path / "reports" / "ours" / "records" / "ours" / job_dir.name
    assert (published / "metrics.json").exists() and not (published / "history.csv").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(tmp_path / "reports" / "ours" / "figures")
    (tmp_path / "reports" / "ours" / "figures").symlink_to(elsewhere)
    with pytest.raises(FerbenchError, match="figures: is a symbolic link"):
        api.report_spec("ours", runs, tmp_path / "reports", with_records=True)
    assert not any(elsewhere.iterdir())


def test_tilde_expands_in_every_path_option(finished, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(finished))
    r = CliRunner().invoke(app, ["report", "ours", "--runs-dir", "~/runs", "--out", "~/rep"])
    assert r.exit_code == 0, r.output
    assert (finished / "rep" / "ours-local" / "index.html").exists() or (finished / "rep" / "ours" / "index.html").exists()
    assert not Path("~").exists()
    r = CliRunner().invoke(app, ["plan", "~nosuchuser_ferbench/s.yaml"])
    assert r.exit_code == 2 and "no such user's home folder" in r.output


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_page_that_fails_halfway_leaves_the_previous_page_whole(finished, tmp_path, monkeypatch):
    """A full disk (the fifth file of the page fails) or a crash while rendering: the page folder is
    the one before, byte for byte, no staging folder is left and the line names the page's own path."""
    from ferbench import fileio

    reports = tmp_path / "reports"
    api.report_spec("ours", finished / "runs", reports, with_records=True)
    before = _tree(reports / "ours")
    real, calls = fileio.write_atomic, []

    def full_disk(path, fill):
        calls.append(path)
        if len(calls) == 5:
            raise FerbenchError(f"{path}: cannot write (No space left on device); the previous version, if any, is intact")
        real(path, fill)

    monkeypatch.setattr(fileio, "write_atomic", full_disk)
    with pytest.raises(FerbenchError) as e:
        api.report_spec("ours", finished / "runs", reports, with_records=True)
    assert str(e.value).startswith(f"{reports / 'ours'}/") and "staging" not in str(e.value)
    assert _tree(reports / "ours") == before and sorted(p.name for p in reports.iterdir()) == ["index.html", "ours"]
    monkeypatch.setattr(fileio, "write_atomic", real)
    import ferbench.report.render as render

    monkeypatch.setattr(render, "page_summary", lambda ctx: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        api.report_spec("ours", finished / "runs", reports)
    assert _tree(reports / "ours") == before and sorted(p.name for p in reports.iterdir()) == ["index.html", "ours"]


def test_a_killed_report_leaves_nothing_the_next_one_keeps(finished, tmp_path):
    """A staging folder left by a process that no longer runs is removed by the next report and is
    never listed on the index; one of a process still running is left alone."""
    import subprocess

    reports = tmp_path / "reports"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = reports / f".ours.staging-{dead.pid}"
    (stale / "figures").mkdir(parents=True)
    (stale / "index.html").write_text("half a page")
    running = subprocess.Popen(["sleep", "60"])
    try:
        live = reports / f".ours.staging-{running.pid}"
        (live / "index.html").parent.mkdir()
        (live / "index.html").write_text("being written")
        api.report_spec("ours", finished / "runs", reports)
        assert not stale.exists() and live.exists() and (reports / "ours" / "index.html").exists()
        assert ".ours" not in (reports / "index.html").read_text()
    finally:
        running.kill()
        running.wait()


@pytest.mark.parametrize("kind", ["job-link", "job-file", "spec-link", "lock-folder", "lock-fifo"])
def test_a_record_is_never_written_through_a_link_or_into_what_is_not_a_folder(finished, tmp_path, kind):
    """A job's folder, or its spec's, planted as a link (to a system folder, say) would take every record
    file there; a lock that is a folder or a pipe would fail or block. One line before anything is
    written, exit 2, and plan shows the job as unverifiable."""
    job_id = next((finished / "runs" / "ours").glob("a__*")).name
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec_dir = runs / "ours"
    spec_dir.mkdir(parents=True)
    if kind == "job-link":
        (spec_dir / job_id).symlink_to(elsewhere)
    elif kind == "job-file":
        (spec_dir / job_id).write_text("not a folder")
    elif kind == "spec-link":
        spec_dir.rmdir()
        spec_dir.symlink_to(elsewhere)
    else:
        (spec_dir / job_id).mkdir()
        (spec_dir / job_id / ".lock").mkdir() if kind == "lock-folder" else os.mkfifo(spec_dir / job_id / ".lock")
    shutil.copy(finished / "s.yaml", tmp_path / "s.yaml")
    res = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--runs-dir", str(runs), "--no-estimate"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
    assert ("is a symbolic link" if "link" in kind else "not a folder" if kind == "job-file" else "not a regular file") in res.stderr
    assert not any(elsewhere.iterdir())
    plan = CliRunner().invoke(app, ["plan", str(tmp_path / "s.yaml"), "--runs-dir", str(runs), "--no-estimate"])
    assert plan.exit_code == 0 and "unverifiable" in plan.stdout, plan.output


def test_files_written_together_are_all_new_or_all_old(tmp_path):
    """A model and its sidecar, a compare page's four files: a failure while writing the second (a full
    disk) leaves the first as it was, and no temporary file behind."""
    from ferbench.fileio import write_together

    a, b = tmp_path / "m.pt", tmp_path / "m.json"
    a.write_text("old model")
    b.write_text("old sidecar")

    def full(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(FerbenchError, match="m.json: cannot write .No space left on device.; the previous version"):
        write_together([(a, lambda tmp: tmp.write_text("new model")), (b, full)])
    assert a.read_text() == "old model" and b.read_text() == "old sidecar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]
    write_together([(a, lambda tmp: tmp.write_text("new model")), (b, lambda tmp: tmp.write_text("new sidecar"))])
    assert (a.read_text(), b.read_text()) == ("new model", "new sidecar")
    with pytest.raises(FerbenchError, match="same name"):
        write_together([(a, lambda tmp: None), (tmp_path / "." / "m.pt", lambda tmp: None)])


def test_export_never_lets_its_sidecar_replace_the_model(finished, tmp_path):
    """`--out m.json`: the sidecar's name is the model's own; it wrote the model, then replaced it with
    the sidecar and said 'wrote m.json and m.json'. Refused in one line, nothing made."""
    job_dir = next((finished / "runs" / "ours").glob("a__*"))
    res = CliRunner().invoke(app, ["export", str(job_dir), "--format", "torchscript", "--out", str(tmp_path / "x" / "m.json")])
    assert res.exit_code == 2 and "its sidecar" in res.stderr and res.stderr.count("\n") == 1, res.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["report-into-runs", "report-into-spec", "export-onto-checkpoint", "predict-into-job",
                                     "compare-into-runs"])
def test_outputs_are_never_written_among_run_records(finished, tmp_path, command):
    """`export --out <job>/checkpoint.pt` replaced the record's checkpoint with a TorchScript file;
    `report --out runs` mixed pages into the records. Each is one line and the records stay as they were."""
    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    job_dir = next((runs / "ours").glob("a__*"))
    before = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()}
    from PIL import Image

    Image.new("L", (24, 24)).save(tmp_path / "face.png")
    args = {"report-into-runs": ["report", "--runs-dir", str(runs), "--out", str(runs)],
            "report-into-spec": ["report", "--runs-dir", str(runs), "--out", str(runs / "ours")],
            "export-onto-checkpoint": ["export", str(job_dir), "--format", "torchscript", "--out", str(job_dir / "checkpoint.pt")],
            "predict-into-job": ["predict", str(job_dir), str(tmp_path / "face.png"), "--out", str(job_dir / "p.csv")],
            "compare-into-runs": ["compare", "a", "a", "--runs-dir", str(runs), "--out", str(runs)]}[command]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
    assert "run records" in res.stderr and "choose" in res.stderr, res.stderr
    assert {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()} == before


def test_a_folder_given_to_predict_lists_its_pipes_and_devices(finished, tmp_path):
    """Inside a folder, an image name that is a pipe or a link to a device is listed as refused (it was
    passed over without a word); the real image is predicted."""
    from PIL import Image

    folder = tmp_path / "faces"
    folder.mkdir()
    Image.new("L", (24, 24)).save(folder / "real.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    res = api.predict(next((finished / "runs" / "ours").glob("a__*")), [folder])
    assert [Path(p).name for p in res.files] == ["real.png"]
    assert sorted(r.split(":")[0].rsplit("/", 1)[1] for r in res.refused) == ["pipe.png", "zero.png"]
    assert all("not a regular file" in r for r in res.refused)
