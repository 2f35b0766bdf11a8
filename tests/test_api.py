"""The Python API under the CLI: plan, run, the shared dependency rule, estimates, the one bootstrap."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from ferbench import api
from ferbench.estimate import Probe, epochs_left, format_seconds, job_seconds
from ferbench.launch import Teachers, run_local, run_waves
from ferbench.metrics import bootstrap_mean_ci
from ferbench.runner import Outcome
from ferbench.spec import expand, load_spec

SPEC = {
    "name": "apispec",
    "datasets": [{"name": "synthfer", "options": {"n_train": 64, "n_val": 16, "n_test": 32}}],
    "models": [{"id": "r", "arch": "resnet18"}],
    "seeds": [0, 1],
    "train": {"epochs": 2, "batch_size": 32, "input_size": 24},
    "profiles": {"tiny": {"train.epochs": 1}},
}


@pytest.fixture
def spec_file(tmp_path):
    p = tmp_path / "apispec.yaml"
    p.write_text(yaml.safe_dump(SPEC))
    return p


class Hooks(api.RunHooks):
    """Records what a run tells its caller; optionally interrupts the first job after some steps."""

    def __init__(self, kill: type | None = None, steps: int = 0) -> None:
        self.plans, self.outcomes, self.kill, self.steps = [], [], kill, steps

    def start(self, plan, launcher):
        self.plans.append((plan, launcher))

    def progress_for(self, job):
        return self.kill(self.steps) if self.kill else None

    def outcome(self, o):
        self.outcomes.append(o)


@pytest.mark.slow
def test_plan_lists_expands_ids_and_follows_a_run_to_the_end(spec_file, tmp_path, kill_after):
    runs = tmp_path / "runs"
    ids = [j.id for j in expand(load_spec(spec_file))]
    plan = api.plan_spec(spec_file, runs_dir=runs, device="cpu")
    assert [p.job.id for p in plan.jobs] == ids
    assert [p.status for p in plan.jobs] == ["new", "new"]
    assert all(p.estimate_s > 0 for p in plan.jobs) and plan.estimate_s == sum(p.estimate_s for p in plan.jobs)
    assert plan.warning() is None

    with pytest.raises(KeyboardInterrupt):  # killed in epoch 2 of the first job
        api.run_spec(spec_file, runs_dir=runs, device="cpu", hooks=Hooks(kill_after, steps=3), estimate=False)
    plan = api.plan_spec(spec_file, runs_dir=runs, device="cpu")
    assert [(p.status, p.epochs_done) for p in plan.jobs] == [("resume", 1), ("new", 0)]
    assert plan.jobs[0].estimate_s < plan.jobs[1].estimate_s  # one epoch left against two

    hooks = Hooks()
    outcomes = api.run_spec(spec_file, runs_dir=runs, device="cpu", hooks=hooks)
    assert [o.status for o in outcomes] == ["complete", "complete"] and hooks.outcomes == outcomes
    (started, launcher), = hooks.plans
    assert launcher == "local" and [p.status for p in started.jobs] == ["resume", "new"]
    plan = api.plan_spec(spec_file, runs_dir=runs, device="cpu", estimate=False)
    assert [p.status for p in plan.jobs] == ["done", "done"] and plan.estimate_s == 0.0
    again = api.run_spec(spec_file, runs_dir=runs, device="cpu", estimate=False)
    assert [o.status for o in again] == ["skipped", "skipped"]


@pytest.mark.slow
def test_run_spec_in_process_writes_what_the_cli_writes(spec_file, tmp_path):
    (o,) = api.run_spec(spec_file, "tiny", [("seeds", [0])], tmp_path / "api", estimate=False)
    r = subprocess.run([sys.executable, "-m", "ferbench", "run", str(spec_file), "-p", "tiny", "--set", "seeds=[0]",
                        "--runs-dir", str(tmp_path / "cli"), "--no-estimate"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    api_dir, cli_dir = (tmp_path / d / "apispec" / o.job.id for d in ("api", "cli"))
    assert (api_dir / "predictions.npz").read_bytes() == (cli_dir / "predictions.npz").read_bytes()

    def history(d):  # all but the wall-clock column
        rows = [line.split(",") for line in (d / "history.csv").read_text().splitlines()]
        keep = [i for i, k in enumerate(rows[0]) if k != "seconds"]
        return [[r[i] for i in keep] for r in rows]

    assert history(api_dir) == history(cli_dir)


def test_plan_command_prints_ids_and_json(spec_file, tmp_path):
    from ferbench.cli import app

    r = CliRunner().invoke(app, ["plan", str(spec_file), "--runs-dir", str(tmp_path / "runs"), "--json", "--no-estimate"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [j["id"] for j in out["jobs"]] == [j.id for j in expand(load_spec(spec_file))]
    assert out["estimate_s"] is None and {j["status"] for j in out["jobs"]} == {"new"}
    bad = CliRunner().invoke(app, ["plan", str(spec_file), "--set", "train.epochs=zero"])
    assert bad.exit_code == 2 and "train: epochs" in bad.output and "zero" in bad.output


def test_a_spec_estimated_at_days_gets_a_warning_naming_its_profiles(spec_file):
    spec = load_spec(spec_file)
    job = expand(spec)[0]
    plan = api.Plan(spec, None, "cpu", None, [api.PlannedJob(job, "new", 0, 3 * 86400.0)])
    assert plan.warning() == ("estimated 3.0 days on cpu; try --profile tiny (`ferbench plan` lists each job)")
    plan.jobs[0].estimate_s = 3600.0
    assert plan.warning() is None


def test_job_seconds_counts_epochs_left_and_the_final_evaluation(spec_file):
    from ferbench.runner import prepare

    job = expand(load_spec(spec_file))[0]
    ds = next(iter(prepare([job], None).values()))
    p = Probe(train_s_per_image=0.01, eval_s_per_image=0.001)
    per_epoch = 64 * 0.01 + 16 * 0.001  # two batches of 32, the validation split
    final = (16 + 32) * 1 * 0.001 * 2  # val and test, one view, last and best model
    assert job_seconds(job, ds, p) == pytest.approx(2 * per_epoch + final)
    assert job_seconds(job, ds, p, epochs=1) == pytest.approx(per_epoch + final)
    assert format_seconds(42) == "42 s" and format_seconds(200) == "3 min 20 s" and format_seconds(3900) == "1 h 05 min"



def test_early_stopping_is_estimated_from_the_fewest_epochs_and_shows_its_cap(spec_file, tmp_path):
    """mini-xception-code's cap is 10,000 epochs and early stopping ends it: the estimate counts until
    the earliest epoch it can stop at (its best validation epoch + patience) and names the cap."""
    job = expand(load_spec(spec_file))[0]
    stopping = job.model_copy(update={"train": job.train.model_copy(
        update={"epochs": 10000, "early_stopping_patience": 51, "monitor": "val_loss"})})
    assert epochs_left(job) == (2, 2)  # no early stopping: the cap
    assert epochs_left(stopping) == (52, 10000)  # a new job's best is at least its first epoch
    d = tmp_path / "job"
    d.mkdir()
    rows = ["epoch,val_loss,val_acc"] + [f"{e},{1.0 - 0.01 * min(e, 30) + (0.005 if e == 31 else 0)},0.5" for e in range(1, 41)]
    (d / "history.csv").write_text("\n".join(rows) + "\n")
    assert epochs_left(stopping, d, 40) == (30 + 51 - 40, 10000 - 40)  # best val_loss at epoch 30
    by_acc = stopping.model_copy(update={"train": stopping.train.model_copy(update={"monitor": "val_acc"})})
    assert epochs_left(by_acc, d, 40) == (1 + 51 - 40, 9960)  # val_acc never improved after epoch 1
    assert epochs_left(stopping, d, 90) == (0, 9910)  # past its stopping epoch (a resumed run stops at once)

    spec = load_spec(spec_file)
    plan = api.Plan(spec, None, "cpu", None, [api.PlannedJob(stopping, "new", 0, 3600.0, estimate_max_s=3 * 86400.0)])
    assert plan.estimate_s == 3600.0 and plan.estimate_max_s == 3 * 86400.0
    assert plan.estimate_text() == "at least 1 h 00 min (early stopping decides; at most 3.0 days)"
    assert plan.warning() is None  # the cap alone does not warn: the run can end in an hour
    plan.jobs[0].estimate_s = 2 * 86400.0
    assert plan.warning() == ("estimated at least 2.0 days (early stopping decides; at most 3.0 days) on cpu; "
                              "try --profile tiny (`ferbench plan` lists each job)")


def _jobs(spec_file):
    spec = load_spec(spec_file)
    spec.models.append(spec.models[0].model_copy(update={"id": "student", "depends_on": "r"}))
    spec.seeds = [0]
    return expand(spec)  # r, then its student


def test_every_launcher_fails_the_students_of_a_failed_teacher_unrun(spec_file, monkeypatch):
    teacher, student = _jobs(spec_file)
    ran, told = [], []

    def collect(job, handle):
        ran.append(job.model.id)
        return Outcome(job, "failed" if job.model.id == "r" else "complete", reason="boom")

    outs = run_waves([teacher, student], submit=lambda j: None, collect=collect, on_outcome=told.append)
    assert ran == ["r"] and [(o.job.model.id, o.status) for o in outs] == [("r", "failed"), ("student", "failed")]
    assert outs[1].reason == f"teacher {teacher.id} failed" and told == outs

    import ferbench.launch as launch

    monkeypatch.setattr(launch, "run_job", lambda job, *a, **k: collect(job, None))
    ran.clear()
    outs = run_local([teacher, student], None, {launch.dataset_key(teacher): None}, "cpu")
    assert ran == ["r"] and [o.status for o in outs] == ["failed", "failed"]
    rule = Teachers()
    rule.seen(Outcome(teacher, "complete"))
    assert rule.blocked(student) is None


def test_the_one_bootstrap_resamples_images_and_keeps_their_seeds_together():
    rng = np.random.default_rng(3)
    hits = rng.random((3, 200)) < 0.6
    # by hand: the same draws, each seed's mean over the drawn images, averaged over seeds
    idx = np.random.default_rng(0).integers(0, 200, (1000, 200))
    means = np.array([np.mean([hits[s, i].mean() for s in range(3)]) for i in idx])
    assert bootstrap_mean_ci(hits) == pytest.approx((np.quantile(means, 0.025), np.quantile(means, 0.975)), abs=1e-12)
    # one seed: the plain percentile bootstrap, to the bit
    y = rng.integers(0, 7, 300)
    pred = np.where(rng.random(300) < 0.5, y, 0)
    hit = (y == pred).astype(float)
    draws = hit[np.random.default_rng(0).integers(0, 300, (1000, 300))].mean(1)
    assert bootstrap_mean_ci(hit) == (float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975)))
    # identical seeds add nothing: the CI of three copies is the CI of one
    assert bootstrap_mean_ci(np.stack([hit] * 3)) == pytest.approx(bootstrap_mean_ci(hit), abs=1e-12)
