"""No silent wrong result: a record that cannot be verified is never resumed, reused, pooled or
trusted; numbers on a page come from one source; anything pooled is checked to be poolable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from ferbench import api
from ferbench.cli import app
from ferbench.records import discover

SPEC = {"name": "fc", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 16}}],
        "models": [{"id": "a", "arch": "resnet18"}, {"id": "b", "arch": "convnext-atto"}],
        "seeds": [0, 1], "train": {"epochs": 1, "batch_size": 16, "input_size": 32}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fc")
    (folder / "s.yaml").write_text(yaml.safe_dump(SPEC))
    outcomes = api.run_spec(folder / "s.yaml", runs_dir=folder / "runs", estimate=False)
    assert [o.status for o in outcomes] == ["complete"] * 4
    return folder


def _copy(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished, tmp_path / "w")
    return tmp_path / "w"


def _job_dirs(folder: Path) -> list[Path]:
    return sorted((folder / "runs" / "fc").glob("*__*"))


@pytest.mark.parametrize("damage", ["unreadable-manifest", "checkpoint-without-manifest"])
def test_a_record_that_cannot_be_verified_is_never_resumed(finished, tmp_path, damage):
    w = _copy(finished, tmp_path)
    job_dir = _job_dirs(w)[0]
    if damage == "unreadable-manifest":
        (job_dir / "manifest.json").write_text("{not json")
    else:
        (job_dir / "manifest.json").unlink()
    plan = api.plan_spec(w / "s.yaml", runs_dir=w / "runs", estimate=False)
    assert [p.status for p in plan.jobs if p.job.id == job_dir.name] == ["unverifiable"]
    before = (job_dir / "checkpoint.pt").read_bytes()
    r = CliRunner().invoke(app, ["run", str(w / "s.yaml"), "--runs-dir", str(w / "runs"), "--no-estimate"])
    assert r.exit_code == 2 and "never resumed" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
    assert (job_dir / "checkpoint.pt").read_bytes() == before  # nothing overwritten


def test_seeds_made_from_other_data_are_never_pooled_or_paired(finished, tmp_path):
    w = _copy(finished, tmp_path)
    dirs = [d for d in _job_dirs(w) if d.name.startswith("a__")]
    seed1 = next(d for d in dirs if "__s1__" in d.name)
    manifest = json.loads((seed1 / "manifest.json").read_text())
    (seed1 / "manifest.json").write_text(json.dumps({**manifest, "data_content_sha256": "f" * 64}))
    records = discover(w / "runs" / "fc")
    bad = [r for r in records if r.path == seed1]
    assert bad[0].status == "unreadable" and "made from other data" in bad[0].manifest["failure"]
    assert all(r.complete for r in records if r.path != seed1)
    from ferbench.report.tables import paired_rows

    (row,) = paired_rows(records, [])
    assert row["seed_ids"] == [0]  # b's seed 1 has no comparable partner in a


def test_a_record_copied_under_another_name_is_never_counted_twice(finished, tmp_path):
    """A job folder copied (or renamed) within the runs folder holds the same job under a name that is
    not its id: it was pooled beside the original as a second run of that seed."""
    w = _copy(finished, tmp_path)
    original = next(d for d in _job_dirs(w) if d.name.startswith("a__") and "__s0__" in d.name)
    shutil.copytree(original, original.parent / "a-seed0-backup")
    records = discover(w / "runs" / "fc")
    copy = next(r for r in records if r.path.name == "a-seed0-backup")
    assert copy.status == "unreadable" and f"holds job {original.name}" in copy.manifest["failure"]
    from ferbench.report.tables import per_seed_accuracy

    a = [r for r in records if r.complete and r.job.model.id == "a"]
    assert {seed: images for seed, (_, images) in per_seed_accuracy(a, "last").items()} == {0: 16, 1: 16}  # not 32


def test_metrics_that_disagree_with_the_stored_predictions_are_not_trusted(finished, tmp_path):
    w = _copy(finished, tmp_path)
    job_dir = _job_dirs(w)[0]
    metrics = json.loads((job_dir / "metrics.json").read_text())
    metrics["test"]["last"]["accuracy"] = min(1.0, metrics["test"]["last"]["accuracy"] + 0.25)
    (job_dir / "metrics.json").write_text(json.dumps(metrics))
    (rec,) = [r for r in discover(w / "runs" / "fc") if r.path == job_dir]
    assert rec.status == "unreadable" and "disagrees with predictions.npz" in rec.manifest["failure"]
    job_dir = _job_dirs(w)[1]
    with np.load(job_dir / "predictions.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["test.labels"] = arrays["test.labels"] + 10**9
    np.savez(job_dir / "predictions.npz", **arrays)
    (rec,) = [r for r in discover(w / "runs" / "fc") if r.path == job_dir]
    assert rec.status == "unreadable" and "must be class indices" in rec.manifest["failure"]


def test_predict_refuses_weights_that_are_not_finite(finished, tmp_path):
    w = _copy(finished, tmp_path)
    job_dir = _job_dirs(w)[0]
    ck = torch.load(job_dir / "checkpoint.pt", weights_only=True)
    first = next(k for k, v in ck["model"].items() if v.is_floating_point())
    ck["model"][first] = torch.full_like(ck["model"][first], float("nan"))
    torch.save(ck, job_dir / "checkpoint.pt")
    from PIL import Image

    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "face.png")
    r = CliRunner().invoke(app, ["predict", str(job_dir), str(tmp_path / "face.png")])
    assert r.exit_code == 2 and "hold NaN or infinite values" in r.output and "Traceback" not in r.output


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("damage, needle", [
    ("image-shape-huge", "field 'image_shape' must be"),
    ("classes-huge", "field 'classes' must be 1 to 1000"),
    ("arch-module", "its model is Python code, 'planted_ferbench_mod:build'"),
    ("yaml-bomb", "once YAML aliases are expanded"),
    ("input-size-huge", "job.train.input_size"),
])
def test_records_are_untrusted_input_for_predict_and_export(finished, tmp_path, monkeypatch, damage, needle):
    """A damaged or planted record is one line for predict and export: never a traceback, a huge
    allocation or an import of the module it names."""
    import sys

    w = _copy(finished, tmp_path)
    job_dir = _job_dirs(w)[0]
    manifest = json.loads((job_dir / "manifest.json").read_text())
    job = yaml.safe_load((job_dir / "job.yaml").read_text())
    if damage == "image-shape-huge":
        manifest["image_shape"] = [100_000, 100_000]
    elif damage == "classes-huge":
        manifest["classes"] = [str(i) for i in range(100_000)]
    elif damage == "arch-module":  # an importable module that leaves a mark when imported
        (tmp_path / "planted_ferbench_mod.py").write_text(f"open({str(tmp_path / 'IMPORTED')!r}, 'w').close()\n"
                                                          "def build(num_classes, input_size, in_chans): pass\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        job["job"]["model"]["arch"] = "planted_ferbench_mod:build"
    elif damage == "input-size-huge":
        job["job"]["train"]["input_size"] = 100_000
    (job_dir / "manifest.json").write_text(json.dumps(manifest))
    (job_dir / "job.yaml").write_text(BOMB if damage == "yaml-bomb" else yaml.safe_dump(job))
    from PIL import Image

    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "face.png")
    for cmd in (["predict", str(job_dir), str(tmp_path / "face.png")],
                ["export", str(job_dir), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "m.pt").exists()
    assert not (tmp_path / "IMPORTED").exists() and "planted_ferbench_mod" not in sys.modules


def test_a_checkpoint_copied_from_another_job_is_never_resumed_or_predicted_from(finished, tmp_path):
    """Seed 1's folder holding seed 0's checkpoint (same architecture, so it loads): predict and export
    would have answered with seed 0's model, and a resume would have continued it as seed 1."""
    w = _copy(finished, tmp_path)
    seed0, seed1 = [d for d in _job_dirs(w) if d.name.startswith("a__")]
    shutil.copy(seed0 / "checkpoint.pt", seed1 / "checkpoint.pt")
    r = CliRunner().invoke(app, ["export", str(seed1), "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 2 and f"belongs to job {seed0.name}, not {seed1.name}" in r.stderr, r.output
    assert not (tmp_path / "m.pt").exists()
    manifest = json.loads((seed1 / "manifest.json").read_text())
    (seed1 / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))  # as if killed mid-run
    (seed1 / "metrics.json").unlink()
    outcomes = api.run_spec(w / "s.yaml", runs_dir=w / "runs", estimate=False)
    failed = {o.job.id: o.reason for o in outcomes if o.status == "failed"}
    assert list(failed) == [seed1.name] and "never resumed or used" in failed[seed1.name]
    assert torch.equal(torch.load(seed1 / "checkpoint.pt")["rng_torch"], torch.load(seed0 / "checkpoint.pt")["rng_torch"])
