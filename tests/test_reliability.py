"""No stale or wrong result counts as finished, no record lies, and faults end in one clear line."""

import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from ferbench import api
from ferbench.errors import FerbenchError
from ferbench.records import discover

TRAIN = {"epochs": 2, "batch_size": 16, "input_size": 24}


def _npz(path, seed):
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (80, 24, 24), dtype=np.uint8), label=rng.integers(0, 3, 80))
    return path


def _spec(tmp_path, data_path, name="rel", epochs=2):
    spec = {"name": name, "datasets": [{"name": "folder", "path": str(data_path), "options": {"size": 24}}],
            "models": [{"id": "r", "arch": "resnet18"}], "train": {**TRAIN, "epochs": epochs}}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_a_record_made_from_other_data_is_never_reused(tmp_path):
    runs = tmp_path / "runs"
    first = _npz(tmp_path / "faces.npz", 0)
    (o,) = api.run_spec(_spec(tmp_path, first), runs_dir=runs, estimate=False)
    assert o.status == "complete"
    # the same data moved elsewhere: the same job, finished
    moved = tmp_path / "moved" / "faces.npz"
    moved.parent.mkdir()
    moved.write_bytes(first.read_bytes())
    (again,) = api.run_spec(_spec(tmp_path, moved), runs_dir=runs, estimate=False)
    assert again.status == "skipped" and again.job.id == o.job.id
    # other content under the job's id: refused before anything runs or is written
    (tmp_path / "other").mkdir()
    other = _npz(tmp_path / "other" / "faces.npz", 1)
    before = (runs / "rel" / o.job.id / "metrics.json").read_bytes()
    with pytest.raises(FerbenchError, match="this record was made from other data than dataset 'folder' now holds"):
        api.run_spec(_spec(tmp_path, other), runs_dir=runs, estimate=False)
    assert (runs / "rel" / o.job.id / "metrics.json").read_bytes() == before
    plan = api.plan_spec(_spec(tmp_path, other), runs_dir=runs, estimate=False)
    assert [p.status for p in plan.jobs] == ["other data"]
    assert (rec := discover(runs)[0]).manifest["data_content_sha256"]
    assert rec.manifest["kernels"]  # what the record was computed with


def test_non_finite_logits_fail_the_job_instead_of_completing_it(tmp_path, monkeypatch):
    import ferbench.engine.evaluate as evaluate

    real = evaluate.predict
    monkeypatch.setattr(evaluate, "predict", lambda *a, **k: real(*a, **k) * np.nan)
    (o,) = api.run_spec(_spec(tmp_path, _npz(tmp_path / "faces.npz", 0), epochs=1), runs_dir=tmp_path / "runs",
                        estimate=False)
    assert o.status == "failed" and "non-finite logits on the val split (last model)" in o.reason
    (rec,) = discover(tmp_path / "runs")
    assert rec.status == "failed" and not (rec.path / "predictions.npz").exists()


def test_a_kill_between_checkpoint_and_history_loses_no_row(tmp_path):
    runs = tmp_path / "runs"
    spec = _spec(tmp_path, _npz(tmp_path / "faces.npz", 0))
    (o,) = api.run_spec(spec, runs_dir=runs, estimate=False)
    job_dir = runs / "rel" / o.job.id
    full = (job_dir / "history.csv").read_text()
    # as if killed after the last checkpoint's rename, before its history row and the record's end
    (job_dir / "history.csv").write_text("".join(full.splitlines(keepends=True)[:-1]))
    manifest = json.loads((job_dir / "manifest.json").read_text())
    (job_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    (job_dir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # and a half-written one
    (again,) = api.run_spec(spec, runs_dir=runs, estimate=False)
    assert again.status == "complete"
    rows = list(csv.DictReader((job_dir / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert not list(job_dir.glob(".*.tmp"))


def test_out_of_range_pixels_are_refused_not_wrapped(tmp_path):
    from ferbench.data import load_dataset

    ok = " ".join(["7"] * 2304)
    wraps = " ".join(["7"] * 10 + ["4294967305"] + ["7"] * 2293)  # int32 would read 9
    rows = ["emotion,pixels,Usage"] + [f"0,{ok},Training"] * 3 + [f"1,{wraps},PublicTest", f"2,{ok},PrivateTest"]
    (tmp_path / "fer2013").mkdir()
    (tmp_path / "fer2013" / "fer2013.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(FerbenchError, match=r"fer2013.csv: line 5: pixel value 4294967305 out of range 0-255"):
        load_dataset("fer2013", {}, None, str(tmp_path))


def test_a_key_written_twice_is_an_error_naming_its_line(tmp_path):
    from ferbench.spec import load_spec

    p = tmp_path / "dup.yaml"
    p.write_text("name: dup\ndatasets: [{name: synthfer}]\nmodels: [{id: r, arch: resnet18}]\n"
                 "train: {epochs: 1}\ntrain: {epochs: 50}\n")
    with pytest.raises(FerbenchError, match=r"dup.yaml: invalid YAML at line 5, column 1: duplicate key 'train'"):
        load_spec(p)
    merged = tmp_path / "merge.yaml"  # a merge key is not a duplicate, and its keys may be overridden
    merged.write_text("name: m\ndatasets: [{name: synthfer}]\nbase: &b {epochs: 1, lr: 0.1}\n"
                      "models: [{id: r, arch: resnet18}]\ntrain: {<<: *b, epochs: 3}\n")
    with pytest.raises(FerbenchError, match="base: unknown key"):  # parsed; the schema then refuses `base`
        load_spec(merged)


def test_user_text_is_printed_verbatim(tmp_path):
    from ferbench.cli import app

    odd = tmp_path / "a[/]b[bold]x[/bold].yaml"
    r = CliRunner().invoke(app, ["run", str(odd)])
    assert r.exit_code == 2 and f"{odd}: spec file not found" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_ctrl_c_says_what_was_interrupted_and_how_to_resume(tmp_path):
    spec = {"name": "ctrlc", "datasets": [{"name": "synthfer", "options": {"n_train": 4000, "n_val": 16, "n_test": 16}}],
            "models": [{"id": "r", "arch": "resnet18"}], "train": {"epochs": 50, "batch_size": 32, "input_size": 32}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(spec))
    # Ctrl-C as a terminal delivers it: a test suite started in the background (`pytest &` in a script)
    # ignores SIGINT, and its children inherit that, so the child's default handler is restored first
    p = subprocess.Popen([sys.executable, "-m", "ferbench", "run", "c.yaml", "--no-estimate"], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list((tmp_path / "runs" / "ctrlc").glob("*/manifest.json")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130
    assert "interrupted during job r__synthfer__s0__" in err and "run the same command again to resume" in err


def test_a_job_refused_after_its_record_opened_fails_alone_and_the_spec_goes_on(tmp_path):
    spec = {"name": "mixed", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 8}}],
            "models": [{"id": "ok", "arch": "resnet18"},
                       {"id": "tiny-stn", "arch": "emonext-atto", "train": {"input_size": 8}},  # refused at build
                       {"id": "crash", "arch": "convnext-atto"},  # a torch error at its first forward: 24 px is too small
                       {"id": "after", "arch": "resnet18", "options": {}, "train": {"lr": 0.05}}],
            "train": {"epochs": 1, "batch_size": 16, "input_size": 24}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    outcomes = {o.job.model.id: o for o in api.run_spec(tmp_path / "m.yaml", runs_dir=tmp_path / "runs", estimate=False)}
    assert [outcomes[m].status for m in ("ok", "tiny-stn", "crash", "after")] == ["complete", "failed", "failed", "complete"]
    assert "too small for the STN" in outcomes["tiny-stn"].reason
    assert outcomes["crash"].reason.startswith("the model cannot take 3x24x24 input: RuntimeError: ")
    assert "\n" not in outcomes["crash"].reason
    recs = {r.job.model.id: r for r in discover(tmp_path / "runs")}
    assert recs["tiny-stn"].status == "failed" and "too small for the STN" in recs["tiny-stn"].manifest["failure"]


def test_a_yaml_alias_bomb_under_profiles_is_refused_at_once(tmp_path):
    from ferbench.spec import load_spec

    levels = ["    l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 values
    p = tmp_path / "bomb.yaml"
    p.write_text("name: bomb\ndatasets: [{name: synthfer}]\nmodels: [{id: r, arch: resnet18}]\nprofiles:\n  smoke:\n"
                 + "\n".join(levels) + "\n")
    with pytest.raises(FerbenchError, match=r"bomb.yaml: more than 20,000 values once YAML aliases are expanded"):
        load_spec(p, "smoke")  # refused while counting: expanding 10^9 values would never return


def test_hostile_strings_stay_text_and_reports_stay_in_their_folder(tmp_path):
    import shutil

    rng = np.random.default_rng(0)
    classes = np.array(["<img src=x onerror=alert(1)>", "a|b", "ok"])
    np.savez(tmp_path / "faces.npz", images=rng.integers(0, 256, (60, 24, 24), dtype=np.uint8),
             label=rng.integers(0, 3, 60), classes=classes)
    spec = {"name": "hostile", "description": "<script>alert('d')</script> & | pipes",
            "datasets": [{"name": "folder", "path": str(tmp_path / "faces.npz"), "options": {"size": 24, "classes_key": "classes"}}],
            "models": [{"id": "r", "arch": "resnet18"}], "train": {"epochs": 1, "batch_size": 16, "input_size": 24}}
    (tmp_path / "h.yaml").write_text(yaml.safe_dump(spec))
    runs = tmp_path / "runs"
    api.run_spec(tmp_path / "h.yaml", runs_dir=runs, estimate=False)
    evil = tmp_path / "javascript:alert(1)"
    shutil.copytree(runs / "hostile", evil)
    out = tmp_path / "site" / "reports"
    api.report_spec(str(evil), runs, out)
    md = (out / "javascript:alert(1)" / "report.md").read_text()
    assert "<script" not in md and "<img" not in md and "&lt;script&gt;" in md and "&lt;img src=x" in md
    html = (out / "javascript:alert(1)" / "index.html").read_text()
    assert "<script>alert" not in html and "<img src=x" not in html
    index = (out / "index.html").read_text()
    assert 'href="./javascript%3Aalert%281%29/index.html"' in index and 'href="javascript:' not in index
    # a target spelled with `..` is its real folder's report, never a write beside OUT
    job_dir = next((runs / "hostile").glob("r__*"))
    written = api.report_spec(str(job_dir / ".."), runs, out)  # once wrote into OUT/.. ("..")
    assert out / "hostile" / "index.html" in written
    assert sorted(p.name for p in out.parent.iterdir()) == ["reports"]


@pytest.mark.slow
def test_errors_name_the_block_the_user_wrote(tmp_path):
    from ferbench.cli import app

    base = {"name": "t", "datasets": [{"name": "synthfer"}], "models": [{"id": "r", "arch": "resnet18"}]}
    (tmp_path / "top.yaml").write_text(yaml.safe_dump({**base, "train": {"epoch": 2}}))
    r = CliRunner().invoke(app, ["plan", str(tmp_path / "top.yaml"), "--no-estimate"])
    assert r.exit_code == 2 and f"{tmp_path / 'top.yaml'}: train: epoch: unknown key" in r.output
    models = [{"id": "r", "arch": "resnet18", "train": {"epoch": 2}}]
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({**base, "models": models}))
    r = CliRunner().invoke(app, ["plan", str(tmp_path / "model.yaml"), "--no-estimate"])
    assert r.exit_code == 2 and "models[0] (r) train: epoch: unknown key" in r.output
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump({**base, "train": {"epochs": 1}}))
    r = CliRunner().invoke(app, ["run", str(tmp_path / "ok.yaml"), "--runs-dir", str(tmp_path / "runs"),
                                 "--launcher", "submitit", "--executor", "slurm", "--no-estimate"])
    assert r.exit_code == 2 and "--executor slurm: submitit cannot start it here" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("options, expected", [
    ({"stn": "maybe"}, "option stn='maybe': Input should be a valid boolean"),
    ({"drop_path_rate": float("nan")}, "option drop_path_rate=nan: Input should be less than 1"),
    ({"attention": "fetaure"}, "option attention='fetaure': Input should be 'batch' or 'feature'"),
])
def test_model_option_values_are_checked_before_any_record(tmp_path, options, expected):
    spec = {"name": "opts", "datasets": [{"name": "synthfer", "options": {"n_train": 32}}],
            "models": [{"id": "e", "arch": "emonext-atto", "options": options}], "train": {"epochs": 1}}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(FerbenchError, match=f"models.e: model 'emonext-atto': {expected}"):
        api.run_spec(tmp_path / "o.yaml", runs_dir=tmp_path / "runs", estimate=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_report_lists_a_damaged_record_and_renders_the_rest(tmp_path):
    spec = {"name": "dmg", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 16}}],
            "models": [{"id": "r", "arch": "resnet18"}], "seeds": [0, 1, 2],
            "train": {"epochs": 1, "batch_size": 16, "input_size": 24}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(spec))
    runs = tmp_path / "runs"
    ids = [o.job.id for o in api.run_spec(tmp_path / "d.yaml", runs_dir=runs, estimate=False)]
    npz = runs / "dmg" / ids[0] / "predictions.npz"
    npz.write_bytes(npz.read_bytes()[:100])  # truncated
    (runs / "dmg" / ids[1] / "metrics.json").write_text("{not json")
    api.report_spec("dmg", runs, tmp_path / "reports")
    html = (tmp_path / "reports" / "dmg" / "index.html").read_text()
    assert "predictions.npz: unreadable (not a readable .npz of plain arrays" in html and "metrics.json: unreadable (JSONDecodeError)" in html
    assert "(n=1)" in (tmp_path / "reports" / "dmg" / "report.md").read_text()  # the intact seed's results
    recs = {r.id: r for r in discover(runs)}
    assert recs[ids[0]].status == recs[ids[1]].status == "unreadable" and recs[ids[2]].complete


def test_a_full_disk_under_the_cache_costs_speed_never_the_job(tmp_path, monkeypatch):
    """The cache (prepared arrays, file digests, kernel choices) is an optimisation: when it cannot be
    written (ENOSPC at every write under it) the job completes and no partial cache entry is left."""
    import errno

    from ferbench import fileio

    cache = tmp_path / "cache"
    monkeypatch.setenv("FERBENCH_CACHE", str(cache))
    real_save, real_atomic = np.save, fileio.write_atomic

    def full(path, *a, **k):
        if str(path).startswith(str(cache)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, *a, **k)

    def full_atomic(path, fill):
        if str(path).startswith(str(cache)):
            raise FerbenchError(f"{path}: cannot write (No space left on device); the previous version, if any, is intact")
        return real_atomic(path, fill)

    monkeypatch.setattr(np, "save", full)
    monkeypatch.setattr(fileio, "write_atomic", full_atomic)
    (o,) = api.run_spec(_spec(tmp_path, _npz(tmp_path / "d.npz", 0)), runs_dir=tmp_path / "runs", estimate=False)
    assert o.status == "complete", o.reason
    left = [p for p in cache.rglob("*") if p.is_file() or p.name.startswith(".")] if cache.exists() else []
    assert left == [], left  # no partial entry, temporary folder or file


def test_a_checkpoint_planted_as_a_pipe_fails_the_job_instead_of_hanging(tmp_path):
    """Resuming reads checkpoint.pt: a named pipe there would block torch.load forever. The job fails
    with one line naming the file. (A daemon thread feeds the pipe bytes after 20 s, so a regression
    fails on the reason, an unloadable file, instead of hanging the suite.)"""
    import os
    import threading

    spec = _spec(tmp_path, _npz(tmp_path / "d.npz", 0))
    (o,) = api.run_spec(spec, runs_dir=tmp_path / "runs", estimate=False)
    job_dir = next((tmp_path / "runs" / "rel").glob("r__*"))
    manifest = json.loads((job_dir / "manifest.json").read_text())
    (job_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    for name in ("metrics.json", "predictions.npz", "checkpoint.pt"):
        (job_dir / name).unlink()
    os.mkfifo(job_dir / "checkpoint.pt")

    def feed():
        time.sleep(20)
        with open(job_dir / "checkpoint.pt", "wb") as f:
            f.write(b"not a checkpoint")

    threading.Thread(target=feed, daemon=True).start()
    (o,) = api.run_spec(spec, runs_dir=tmp_path / "runs", estimate=False)
    assert o.status == "failed" and "checkpoint.pt" in o.reason and "not a regular file" in o.reason, o.reason
