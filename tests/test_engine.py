"""Engine behaviour through real runs: LDL from votes and from a teacher job, divergence, concurrency.

Runs go through the Python API in-process (`ferbench.api`), as the CLI calls it; only the test of
two concurrent runners needs separate processes."""

import json
import subprocess
import sys

import pytest
import yaml

from ferbench import api
from ferbench.errors import FerbenchError
from ferbench.records import discover

DATA = [{"name": "synthfer", "options": {"n_train": 64, "n_val": 32, "n_test": 32}}]
TRAIN = {"epochs": 1, "batch_size": 32, "input_size": 32}


def run(spec: dict, cwd) -> list:
    """Run a spec in-process into cwd/runs; the jobs' outcomes."""
    p = cwd / f"{spec['name']}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return api.run_spec(p, runs_dir=cwd / "runs", estimate=False)


def records(cwd, name):
    return {r.job.model.id: r for r in discover(cwd / "runs" / name)}


@pytest.mark.slow
def test_ldl_from_votes_and_from_a_teacher_job(tmp_path):
    spec = {
        "name": "ldl", "datasets": DATA, "train": TRAIN,
        "models": [
            {"id": "student", "arch": "resface-r18", "depends_on": "teacher",
             "train": {"loss": "ldl", "ldl_source": "teacher"}},
            {"id": "teacher", "arch": "resnet18"},
            {"id": "votes", "arch": "resface-r18", "options": {"csa_fusion": "product"}, "train": {"loss": "ldl"}},
        ],
    }
    outcomes = run(spec, tmp_path)
    assert [o.status for o in outcomes] == ["complete"] * 3, [o.reason for o in outcomes]
    assert [o.job.model.id for o in outcomes].index("teacher") < [o.job.model.id for o in outcomes].index("student")
    recs = records(tmp_path, "ldl")
    assert all(rec.complete for rec in recs.values())
    assert recs["student"].job.depends_on == recs["teacher"].id
    assert recs["votes"].manifest["fidelity"]["csa_fusion"] == "product"

    result, _ = api.compare("resface", "resnet", tmp_path / "runs", out=tmp_path / "cmp")
    res = result["datasets"]["synthfer"]
    assert {v["model"] for v in res["variants"]} == {"student", "votes", "teacher"}
    pair = res["pairs"][0]
    assert pair["n_images"] == 32 and 0 < pair["paired_test"]["p_value"] <= 1 and pair["acc_diff_ci95"][0] <= pair["acc_diff"]
    assert [m["seed"] for m in pair["mcnemar_per_seed"]] == [0] and pair["paired_test"]["unit"] == "test image"
    assert (tmp_path / "cmp" / "index.html").exists() and (tmp_path / "cmp" / "report.md").exists()
    with pytest.raises(FerbenchError, match="no complete runs of 'emonext'"):
        api.compare("resface", "emonext", tmp_path / "runs")
    # a fresh clone has no runs/: compare reads the records published beside the pages
    api.report_spec("ldl", tmp_path / "runs", tmp_path / "reports", with_records=True)
    again, _ = api.compare("resface", "resnet", tmp_path / "clone-runs", published=tmp_path / "reports")
    assert again["records_from"] == str(tmp_path / "reports")
    assert again["datasets"]["synthfer"]["pairs"][0]["acc_diff"] == pair["acc_diff"]
    api.compare("resface", "resnet", tmp_path / "runs", out=tmp_path / "reports" / "cmp",
                published=tmp_path / "reports")  # in the reports folder: its index lists it as a page
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "Paired comparison, resface vs resnet. synthfer: " in index and "An earlier rendering" not in index

    # a run of another spec (another experiment's conditions) is listed but never paired
    other = {"name": "other", "datasets": DATA, "train": {**TRAIN, "input_size": 24}, "models": [{"id": "base24", "arch": "resnet18"}]}
    assert [o.status for o in run(other, tmp_path)] == ["complete"]
    res = api.compare("resface", "resnet", tmp_path / "runs")[0]["datasets"]["synthfer"]
    assert "base24" in {v["model"] for v in res["variants"]}
    assert {(p["a"], p["b"]) for p in res["pairs"]} == {("student", "teacher"), ("votes", "teacher")}


def test_divergence_fails_the_job_and_the_spec_continues(tmp_path):
    spec = {
        "name": "nan", "datasets": DATA, "train": {**TRAIN, "epochs": 2},
        "models": [{"id": "boom", "arch": "resnet18", "train": {"lr": 1e30, "momentum": 0.0}},
                   {"id": "fine", "arch": "convnext-atto"}],
    }
    outcomes = {o.job.model.id: o for o in run(spec, tmp_path)}
    assert outcomes["boom"].status == "failed" and outcomes["fine"].status == "complete"
    recs = records(tmp_path, "nan")
    assert recs["boom"].status == "failed"
    assert "non-finite loss at epoch 1, step" in recs["boom"].manifest["failure"]
    assert recs["fine"].complete
    api.report_spec(runs_dir=tmp_path / "runs", out=tmp_path / "reports")
    html = (tmp_path / "reports" / "nan" / "index.html").read_text()
    assert "Failed and incomplete runs" in html and "non-finite loss" in html


@pytest.mark.slow
def test_two_runners_on_one_spec_run_each_job_once(tmp_path):
    spec = {"name": "two", "datasets": DATA, "train": TRAIN, "seeds": [0, 1, 2],
            "models": [{"id": "a", "arch": "convnext-atto"}]}
    p = tmp_path / "two.yaml"
    p.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "ferbench", "run", str(p), "--threads", "1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [pr.communicate(timeout=600) for pr in procs]
    assert all(pr.returncode == 0 for pr in procs), outs
    recs = discover(tmp_path / "runs" / "two")
    assert len(recs) == 3 and all(r.complete for r in recs)
    for r in recs:
        trained = sum(f"complete {r.id}" in out for out, _ in outs)
        skipped = sum(f"skipped {r.id}" in out for out, _ in outs)
        assert (trained, skipped) == (1, 1), (r.id, outs)
        json.loads((r.path / "metrics.json").read_text())


def test_lr_schedules_apply_warmup():
    """warmup_steps ramps the lr linearly for every schedule (it was once ignored by `step`)."""
    from ferbench.engine.optim import lr_factor
    from ferbench.spec import TrainConfig

    step = lr_factor(TrainConfig(schedule="step", epochs=9, step_size=3, gamma=0.1, warmup_steps=4), steps_per_epoch=10)
    assert [round(step(i), 6) for i in (0, 1, 3, 4, 29, 30, 60)] == [0.25, 0.5, 1.0, 1.0, 1.0, 0.1, 0.01]
    cos = lr_factor(TrainConfig(schedule="cosine", epochs=2, warmup_steps=4), steps_per_epoch=10)
    assert cos(0) == 0.25 and cos(3) == 1.0 and cos(19) < 0.05
    plain = lr_factor(TrainConfig(schedule="step", epochs=9, step_size=3, gamma=0.1), steps_per_epoch=10)
    assert plain(0) == 1.0 and plain(30) == 0.1


def test_checkpoint_writer_context_closes_and_lets_the_block_error_win(tmp_path, monkeypatch):
    import pytest
    import torch

    from ferbench.engine import checkpoint as engine_checkpoint
    from ferbench.engine.checkpoint import CheckpointWriter, load_checkpoint

    state = {"model": {"w": torch.arange(6.0)}, "epoch": 3}
    with CheckpointWriter() as w:
        w.submit(tmp_path / "checkpoint.pt", state, tmp_path / "history.csv", [{"epoch": 3, "train_loss": 0.5}])
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint.pt")["model"]["w"], torch.arange(6.0))
    assert (tmp_path / "history.csv").read_text() == "epoch,train_loss\n3,0.5\n"

    def broken_save(path, state):
        raise OSError("disk full")

    monkeypatch.setattr(engine_checkpoint, "save_checkpoint", broken_save)
    with pytest.raises(OSError, match="disk full"):  # a failed write surfaces when the writer closes
        with CheckpointWriter() as w:
            w.submit(tmp_path / "other.pt", state, tmp_path / "h.csv", [])
    with pytest.raises(KeyError):  # the block's own error is not replaced by the writer's
        with CheckpointWriter() as w:
            w.submit(tmp_path / "other.pt", state, tmp_path / "h.csv", [])
            raise KeyError("from the block")
    assert not (tmp_path / "other.pt").exists() and not list(tmp_path.glob(".other.pt.*"))


@pytest.mark.slow
def test_host_allocator_setting_is_applied_recorded_and_can_be_declined(tmp_path):
    code = "from ferbench.hostmem import keep_freed_memory as k; a = k(); assert k() == a; print(a)"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert on.startswith("glibc, mmap and trim thresholds 1 GiB") or on.startswith("system defaults (no glibc")
    env = {**__import__("os").environ, "FERBENCH_MALLOC": "system"}
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert off.strip() == "system defaults (FERBENCH_MALLOC=system)"
    # the CLI's first step: no torch import, and the huge-page switch set only with the kept heap
    probe = ("import os, sys; from ferbench.hostmem import apply_policy as a; a(); "
             "assert 'torch' not in sys.modules; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))")
    clean = {k: v for k, v in __import__("os").environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    thp_on = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=clean).stdout.strip()
    assert thp_on == ("1" if on.startswith("glibc") else "None")
    thp_off = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                             env={**clean, "FERBENCH_MALLOC": "system"}).stdout
    assert thp_off.strip() == "None"
    spec = {"name": "alloc", "datasets": DATA, "models": [{"id": "m", "arch": "resnet18"}], "seeds": [0], "train": TRAIN}
    p = tmp_path / "alloc.yaml"
    p.write_text(yaml.safe_dump(spec))
    cli = subprocess.run([sys.executable, "-m", "ferbench", "run", str(p)], cwd=tmp_path, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr  # the CLI process, which applies the policy first thing
    (rec,) = discover(tmp_path / "runs" / "alloc")
    assert rec.manifest["environment"]["host_allocator"] == on.strip()


def test_checkpoint_is_the_state_at_submit_even_if_training_changes_it_before_the_write(tmp_path):
    import torch

    from ferbench.engine.checkpoint import CheckpointWriter, load_checkpoint

    w = torch.zeros(1000)
    with CheckpointWriter() as writer:
        writer.submit(tmp_path / "checkpoint.pt", {"model": {"w": w}, "history": [{"epoch": 1}]}, tmp_path / "h.csv", [])
        w.add_(1.0)  # the next optimizer step, while the write may still be in flight
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint.pt")["model"]["w"], torch.zeros(1000))


def test_optimizer_implementation_is_fused_on_cuda_only():
    import torch

    from ferbench.engine.optim import build_optimizer, implementation
    from ferbench.spec import TrainConfig

    assert implementation("cuda") == "fused" and implementation("cpu") == "default"
    opt = build_optimizer(torch.nn.Linear(3, 2), TrainConfig(optimizer="adamw"))
    assert not opt.param_groups[0].get("fused")  # CPU: torch's default, as CPU runs have always used


def test_sampled_loss_trains_on_labels_drawn_from_the_targets(tmp_path):
    """FER+ "probability": each step draws a one-hot label from the vote distribution, not the majority label."""
    import numpy as np
    import torch

    from ferbench.data import FerDataset, Split
    from ferbench.engine.evaluate import predict
    from ferbench.engine.train import fit
    from ferbench.models import create_model
    from ferbench.spec import EvalConfig, TrainConfig

    rng = np.random.default_rng(0)
    n = 64
    images = rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)  # the majority labels say class 0 ...
    targets = np.zeros((n, 7), dtype=np.float32)
    targets[:, 2], targets[:, 5] = 0.5, 0.5  # ... the votes say classes 2 and 5, half each
    ds = FerDataset("votes", [str(i) for i in range(7)], {"train": Split(images, labels, targets=targets)})
    cfg = TrainConfig(epochs=3, batch_size=16, input_size=16, optimizer="sgd", lr=0.05, loss="sampled")
    torch.manual_seed(0)
    res = fit(create_model("resnet18", 7, 16), ds, cfg, EvalConfig(splits=["test"]), 0, torch.device("cpu"), tmp_path)
    probs = torch.softmax(torch.from_numpy(predict(res.model, images, cfg, torch.device("cpu"))), 1).mean(0)
    assert probs[2] + probs[5] > 0.8 and probs[0] < 0.1


@pytest.mark.parametrize("bad_call, where", [(57, "epoch 1, step 57"), (70, "epoch 2, step 70"), (3, "epoch 1, step 3")])
@pytest.mark.slow
def test_divergence_names_the_first_non_finite_step(tmp_path, monkeypatch, bad_call, where):
    """65 steps an epoch: the check after step 50 and the one at the epoch end each see only their own steps."""
    import numpy as np
    import torch

    import ferbench.engine.train as train
    from ferbench.data import FerDataset, Split
    from ferbench.errors import JobFailed
    from ferbench.models import create_model
    from ferbench.spec import EvalConfig, TrainConfig

    calls = {"n": 0}
    real = train.compute_loss

    def loss_going_bad(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] >= bad_call else loss  # and stays bad, as a diverged run does

    monkeypatch.setattr(train, "compute_loss", loss_going_bad)
    rng = np.random.default_rng(0)
    ds = FerDataset("t", [str(i) for i in range(7)],
                    {"train": Split(rng.integers(0, 256, (130, 8, 8), dtype=np.uint8), rng.integers(0, 7, 130))})
    cfg = TrainConfig(epochs=2, batch_size=2, input_size=8, optimizer="sgd", lr=0.01)
    with pytest.raises(JobFailed, match=f"non-finite loss at {where}$"):
        train.fit(create_model("resnet18", 7, 8), ds, cfg, EvalConfig(splits=["test"]), 0, torch.device("cpu"), tmp_path)
