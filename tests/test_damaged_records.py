"""Run records damaged or planted field by field: `report` lists each one as unreadable with the file
and field and renders the rest; `compare` leaves it out and says so in one line; `predict` and
`export` refuse it in one line and `eval` never reuses its training. A full disk during
`run` keeps the previous checkpoint and a later run resumes exactly; during `report` it ends in one
line with no page left without its figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from ferbench import api
from ferbench.cli import app
from tests.conftest import run_spec_dict

SPEC = {"name": "dm", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 16}}],
        "models": [{"id": "m", "arch": "resnet18"}, {"id": "n", "arch": "resnet18", "train": {"lr": 0.05}}],
        "train": {"epochs": 1, "batch_size": 16, "input_size": 24}}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pristine")
    run_spec_dict(d, SPEC)
    return d / "runs"


def _yaml(edit):
    def damage(job_dir: Path) -> None:
        job = yaml.safe_load((job_dir / "job.yaml").read_text())
        edit(job)
        (job_dir / "job.yaml").write_text(yaml.safe_dump(job))
    return damage


def _json(name, edit):
    def damage(job_dir: Path) -> None:
        obj = json.loads((job_dir / name).read_text())
        edit(obj)
        (job_dir / name).write_text(json.dumps(obj))
    return damage


def _npz(edit):
    def damage(job_dir: Path) -> None:
        with np.load(job_dir / "predictions.npz") as z:
            arrays = {k: z[k] for k in z.files}
        edit(arrays)
        np.savez(job_dir / "predictions.npz", **arrays)
    return damage


def _replace_with_folder(name):
    def damage(job_dir: Path) -> None:
        (job_dir / name).unlink()
        (job_dir / name).mkdir()
    return damage


def _planted(name, kind):
    """The file replaced by a link to /dev/zero (it never ends), a named pipe (a read blocks) or a sparse
    65 MiB file (over what ferbench reads for a record's text)."""
    def damage(job_dir: Path) -> None:
        (job_dir / name).unlink()
        if kind == "zero":
            (job_dir / name).symlink_to("/dev/zero")
        elif kind == "pipe":
            os.mkfifo(job_dir / name)
        else:
            with open(job_dir / name, "wb") as f:
                f.truncate(65 << 20)
    return damage


CASES = [
    ("job-invalid-yaml", lambda d: (d / "job.yaml").write_text("job: [\n"), "job.yaml: unreadable (ParserError)"),
    ("job-not-a-mapping", lambda d: (d / "job.yaml").write_text("- 1\n"), "job.yaml: expected a mapping"),
    ("job-binary", lambda d: (d / "job.yaml").write_bytes(b"\xff\xfe\x00"), "job.yaml: unreadable (UnicodeDecodeError)"),
    ("job-without-train", _yaml(lambda j: j["job"].pop("train")), "job.yaml: field 'job.train' missing"),
    ("job-model-a-string", _yaml(lambda j: j["job"].update(model="x")), "job.yaml: field 'job.model' has the wrong type"),
    ("job-seed-a-string", _yaml(lambda j: j["job"].update(seed="x")), "field 'job.seed' has the wrong type"),
    ("job-lr-a-string", _yaml(lambda j: j["job"]["train"].update(lr="fast")), "field 'job.train.lr' has the wrong type"),
    ("manifest-a-list", lambda d: (d / "manifest.json").write_text("[1]"), "manifest.json: expected a mapping"),
    ("manifest-invalid-json", lambda d: (d / "manifest.json").write_text("{"), "manifest.json: unreadable (JSONDecodeError)"),
    ("manifest-environment-a-string", _json("manifest.json", lambda m: m.update(environment="x")), "field 'environment' has the wrong type"),
    ("manifest-counts-without-classes", _json("manifest.json", lambda m: m.pop("classes")), "field 'class_counts' must map"),
    ("metrics-without-test", _json("metrics.json", lambda m: m.pop("test")), "metrics.json: field 'test' missing"),
    ("metrics-accuracy-a-string", _json("metrics.json", lambda m: m["test"]["last"].update(accuracy="high")),
     "metrics.json: test.last: field 'accuracy' has the wrong type"),
    ("metrics-classes-a-number", _json("metrics.json", lambda m: m.update(classes=3)), "field 'classes' must be a list"),
    ("metrics-ragged-confusion", _json("metrics.json", lambda m: m["test"]["last"].update(confusion=[[1, 2], [3]])),
     "test.last.confusion must be a 7x7 table"),
    ("metrics-without-recall", _json("metrics.json", lambda m: m["test"]["best"].pop("per_class_recall")),
     "test.best: field 'per_class_recall' missing"),
    ("metrics-cost-a-string", _json("metrics.json", lambda m: m.update(cost="x")), "field 'cost' must be a mapping"),
    ("metrics-old-profile-a-string", _json("metrics.json", lambda m: m.update(profile="x")), "field 'profile' must be a mapping"),
    ("metrics-a-folder", _replace_with_folder("metrics.json"), "metrics.json: unreadable (NotAPlainFile)"),
    ("metrics-over-64-mib", _planted("metrics.json", "sparse"), "metrics.json: unreadable (FileTooLarge)"),
    ("manifest-link-to-dev-zero", _planted("manifest.json", "zero"), "manifest.json: unreadable (NotAPlainFile)"),
    ("job-a-pipe", _planted("job.yaml", "pipe"), "job.yaml: unreadable (NotAPlainFile)"),
    ("predictions-a-pipe", _planted("predictions.npz", "pipe"), "predictions.npz: unreadable (array file must be a regular file"),
    ("predictions-without-labels", _npz(lambda a: a.pop("test.labels")), "array 'test.labels' missing"),
    ("predictions-short-labels", _npz(lambda a: a.update({"test.labels": a["test.labels"][:3]})), "must be float (3, 7), got float32 (16, 7)"),
    ("predictions-1d-logits", _npz(lambda a: a.update({"test.last.logits": a["test.last.logits"][:, 0]})), "test.last.logits must be float"),
    ("predictions-float-labels", _npz(lambda a: a.update({"test.labels": a["test.labels"] + 0.5})), "test.labels must be a 1-D integer array"),
    ("predictions-wrong-targets", _npz(lambda a: a.update({"test.targets": a["test.targets"][:, :3]})), "test.targets must be float (16, 7)"),
    ("history-ragged", lambda d: (d / "history.csv").write_text("epoch,val_acc\nx,y\n,,,\n"), "history.csv: line 2 is not a row of numbers"),
    ("history-binary", lambda d: (d / "history.csv").write_bytes(b"\xff\xfe\x00\x00"), "history.csv: unreadable (UnicodeDecodeError)"),
    ("history-a-folder", _replace_with_folder("history.csv"), "history.csv: unreadable (NotAPlainFile)"),
    ("history-link-to-dev-zero", _planted("history.csv", "zero"), "history.csv: unreadable (NotAPlainFile)"),
    ("spec-snapshot-invalid", lambda d: (d.parent / "spec.yaml").write_text("claims: [\n"), "description and claims left out"),
    ("spec-snapshot-bad-claim", lambda d: (d.parent / "spec.yaml").write_text("claims: [{model: m}]\n"), "claims invalid"),
]


def _report_and_compare(runs_parent: Path):
    old = os.getcwd()
    os.chdir(runs_parent)
    try:
        return CliRunner().invoke(app, ["report"]), CliRunner().invoke(app, ["compare", "m", "n"])
    finally:
        os.chdir(old)


RECORD_CASES = [c for c in CASES if not c[0].startswith("spec-")]


@pytest.mark.slow
def test_report_lists_every_damaged_record_and_renders_the_rest(pristine, tmp_path):
    """Each case damages its own copy of model m's record (one runs folder, one report: rendering a
    page per case would cost minutes); the intact model n must still fill the tables."""
    runs = tmp_path / "runs"
    shutil.copytree(pristine, runs)
    original = next((runs / "dm").glob("m__*"))
    for i, (name, damage, _) in enumerate(RECORD_CASES):
        copy = runs / "dm" / f"{original.name}-{i:02d}-{name}"
        shutil.copytree(original, copy)
        damage(copy)
    shutil.rmtree(original)
    r, c = _report_and_compare(tmp_path)
    assert r.exit_code == 0 and r.exception is None, r.stdout + r.stderr
    md = (tmp_path / "reports" / "dm" / "report.md").read_text().replace("\\", "")  # Markdown escapes off
    failed = md[md.index("## Failed and incomplete runs"):].split("\n## ")[0]
    for i, (name, _, reason) in enumerate(RECORD_CASES):
        row = next((ln for ln in failed.splitlines() if f"-{i:02d}-{name} " in ln), None)
        assert row is not None and "unreadable" in row and reason in row, (name, row)
    assert "| n " in md  # the intact model's results are still in the tables
    assert c.exit_code == 2, c.stdout
    assert c.exception is None or isinstance(c.exception, SystemExit), c.stdout
    assert "Traceback" not in c.stdout + c.stderr
    assert len(c.stderr.strip().splitlines()) == 1 and f"{len(RECORD_CASES)} damaged record(s) were left out" in c.stderr


@pytest.mark.parametrize("name, damage, reason", [c for c in CASES if c[0].startswith("spec-")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_a_damaged_spec_snapshot_leaves_the_page_without_claims_only(pristine, tmp_path, name, damage, reason):
    runs = tmp_path / "runs"
    shutil.copytree(pristine, runs)
    damage(next((runs / "dm").glob("m__*")))
    r, c = _report_and_compare(tmp_path)
    assert r.exit_code == 0 and c.exit_code == 0, r.stdout + r.stderr + c.stdout + c.stderr
    md = (tmp_path / "reports" / "dm" / "report.md").read_text().replace("\\", "")
    assert reason in md and "| m " in md and "| n " in md


@pytest.mark.slow
def test_predict_export_and_eval_refuse_every_damaged_record_in_one_line(pristine, tmp_path):
    """The same catalogue through the commands that use a record's weights: predict and export refuse
    a damaged record with the file and field (fail closed: its checkpoint is not trusted either), eval
    never reuses its training and says which record and why. Nothing is written for a refusal."""
    from PIL import Image

    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "face.png")
    only_m = {**SPEC, "models": SPEC["models"][:1]}  # eval's job ids as in the full spec: m's training is the donor
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({**only_m, "eval": {"tta": "flip"}}))
    for name, damage, reason in RECORD_CASES:
        runs = tmp_path / name / "runs"
        shutil.copytree(pristine, runs)
        job_dir = next((runs / "dm").glob("m__*"))
        damage(job_dir)
        before = sorted(p.name for p in (runs / "dm").iterdir())
        for cmd in (["predict", str(job_dir), str(tmp_path / "face.png")],
                    ["export", str(job_dir), "--format", "torchscript", "--out", str(tmp_path / name / "m.pt")]):
            r = CliRunner().invoke(app, cmd)
            assert r.exit_code == 2 and (r.exception is None or isinstance(r.exception, SystemExit)), (name, cmd[0], r.output)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and reason in lines[0] and str(job_dir.name) in lines[0], (name, cmd[0], r.stderr)
        assert not (tmp_path / name / "m.pt").exists()
        r = CliRunner().invoke(app, ["eval", str(tmp_path / "m.yaml"), "--runs-dir", str(runs)])
        assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), (name, r.output)
        said = " ".join(r.stdout.split())
        assert "never reused" in said and job_dir.name in said and " ".join(reason.split()) in said, (name, said)
        assert sorted(p.name for p in (runs / "dm").iterdir()) == before  # no record made from it
        shutil.rmtree(tmp_path / name)  # each case's copy of the records (257 MB) is checked: 32 kept filled 8 GB


def _mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0


FULL = {"name": "fd", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 16}}],
        "models": [{"id": "m", "arch": "convnext-atto"}], "train": {"epochs": 3, "batch_size": 16, "input_size": 32}}


def test_a_full_disk_mid_run_keeps_the_previous_checkpoint_and_a_later_run_resumes_exactly(tmp_path):
    run_spec_dict(tmp_path, FULL, tmp_path / "whole")
    whole = next((tmp_path / "whole" / "fd").glob("m__*"))
    size = (whole / "checkpoint.pt").stat().st_size
    small = tmp_path / "small"
    if not _mount_tmpfs(small, size * 3 // 2):  # room for one checkpoint, not for the next one beside it
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    try:
        old = os.getcwd()
        os.chdir(tmp_path)
        try:
            r = CliRunner().invoke(app, ["run", "s.yaml", "--runs-dir", str(small / "runs")])
        finally:
            os.chdir(old)
        assert r.exit_code == 1, r.stdout
        assert r.exception is None or isinstance(r.exception, SystemExit), r.stdout
        assert "Traceback" not in r.stdout + r.stderr
        assert "no space left on the device" in r.stdout and "the previous checkpoint is intact" in r.stdout
        job = next((small / "runs" / "fd").glob("m__*"))
        manifest = json.loads((job / "manifest.json").read_text())
        assert manifest["status"] == "failed" and "no space left" in manifest["failure"]
        assert not list(job.glob(".*.tmp"))  # the failed write left nothing behind
        shutil.copytree(small / "runs", tmp_path / "bigger")
    finally:
        subprocess.run(["umount", str(small)], check=False)
    outcomes = api.run_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "bigger", estimate=False)
    assert [o.status for o in outcomes] == ["complete"]
    resumed = next((tmp_path / "bigger" / "fd").glob("m__*"))
    assert (resumed / "predictions.npz").read_bytes() == (whole / "predictions.npz").read_bytes()
    untimed = lambda path: [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]  # noqa: E731  (seconds differ)
    assert untimed(resumed / "history.csv") == untimed(whole / "history.csv")


def test_a_full_disk_during_report_is_one_line_and_no_page_lacks_its_figures(pristine, tmp_path):
    tiny = tmp_path / "tiny"
    if not _mount_tmpfs(tiny, 64 * 1024):
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    try:
        r = CliRunner().invoke(app, ["report", "--runs-dir", str(pristine), "--out", str(tiny / "reports")])
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
        assert "cannot write (No space left on device)" in r.stderr
        assert not list((tiny / "reports").rglob("index.html")) and not list((tiny / "reports").rglob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def test_a_read_only_report_folder_is_one_line(pristine, tmp_path):
    out = Path("/proc/ferbench-reports") if os.geteuid() == 0 else tmp_path / "ro"
    if os.geteuid() != 0:
        out.mkdir()
        out.chmod(0o555)
    r = CliRunner().invoke(app, ["report", "--runs-dir", str(pristine), "--out", str(out / "reports")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "cannot write" in r.stderr, r.stderr


def test_a_launcher_that_cannot_start_writes_nothing(tmp_path):
    pytest.importorskip("submitit")
    if shutil.which("srun"):
        pytest.skip("this machine has SLURM")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(FULL))
    r = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--runs-dir", str(tmp_path / "runs"),
                                 "--launcher", "submitit", "--executor", "slurm"])
    assert r.exit_code == 2 and "submitit cannot start it here" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
