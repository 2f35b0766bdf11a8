"""The bad-input catalogue: each malformed input gives one line naming the file/field/value and what
was expected, exit code 2, no traceback, and nothing written under runs/ or reports/."""

from __future__ import annotations

import copy
import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from ferbench.cli import app
from tests.conftest import write_fer_csv

GOOD = {
    "name": "bad",
    "datasets": [{"name": "synthfer", "options": {"n_train": 64, "n_val": 16, "n_test": 16}}],
    "models": [{"id": "m", "arch": "convnext-atto"}],
    "train": {"epochs": 1, "batch_size": 32, "input_size": 32},
}
PX = " ".join(["9"] * 2304)


def invoke(args: list[str], cwd: Path):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def check(result, cwd: Path, *needles: str) -> None:
    out = (result.stdout or "") + (result.stderr or "")
    assert result.exit_code == 2, out
    assert "Traceback" not in out and result.exception is None or isinstance(result.exception, SystemExit), out
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    assert not (cwd / "runs").exists() and not (cwd / "reports").exists()


def spec_with(tmp_path: Path, mutate=None, text: str | None = None) -> Path:
    p = tmp_path / "spec.yaml"
    if text is not None:
        p.write_text(text)
        return p
    d = copy.deepcopy(GOOD)
    if mutate:
        mutate(d)
    p.write_text(yaml.safe_dump(d))
    return p


def _set(path, value):
    def f(d):
        node = d
        *head, last = path
        for k in head:
            node = node[k]
        node[last] = value
    return f


SPEC_CASES = [
    ("yaml-syntax", None, "name: x\nmodels: [\n", ["invalid YAML at line"]),
    ("not-a-mapping", None, "- a\n- b\n", ["expected a mapping at the top level"]),
    ("empty-file", None, "", ["expected a mapping at the top level"]),
    ("unknown-top-key", _set(["modles"], []), None, ["modles: unknown key"]),
    ("unknown-train-key", _set(["train", "epochz"], 1), None, ["epochz: unknown key"]),
    ("unknown-model-key", _set(["models", 0, "archh"], "x"), None, ["models[0].archh: unknown key"]),
    ("seeds-type", _set(["seeds"], "many"), None, ["seeds"]),
    ("epochs-type", _set(["train", "epochs"], "ten"), None, ["epochs", "valid integer", "'ten'"]),
    ("epochs-zero", _set(["train", "epochs"], 0), None, ["epochs", "greater than or equal to 1"]),
    ("batch-negative", _set(["train", "batch_size"], -4), None, ["batch_size", "greater than or equal to 1"]),
    ("input-size-zero", _set(["train", "input_size"], 0), None, ["input_size"]),
    ("label-smoothing", _set(["train", "label_smoothing"], 1.5), None, ["label_smoothing"]),
    ("optimizer-enum", _set(["train", "optimizer"], "adam"), None, ["optimizer", "'adam'"]),
    ("unknown-arch", _set(["models", 0, "arch"], "resnet19"), None, ["unknown model 'resnet19'"]),
    ("unknown-dataset", _set(["datasets", 0, "name"], "affectnet"), None, ["unknown dataset 'affectnet'"]),
    ("unknown-recipe", _set(["models", 0, "recipe"], "magic"), None, ["unknown recipe 'magic'"]),
    ("duplicate-ids", lambda d: d["models"].append({"id": "m", "arch": "resnet18"}), None, ["unique"]),
    ("depends-unknown", _set(["models", 0, "depends_on"], "ghost"), None, ["'ghost'"]),
    ("model-option", _set(["models", 0, "options"], {"stn": False}), None, ["unknown option 'stn'"]),
    ("dataset-option-value", _set(["datasets", 0, "options", "n_train"], -1), None, ["n_train", "-1"]),
    ("dataset-option-key", _set(["datasets", 0, "options", "n_trian"], 5), None, ["unknown option", "n_trian"]),
    ("subset-zero", _set(["datasets", 0, "subset"], {"train": 0}), None, ["subset.train"]),
    ("bad-id", _set(["models", 0, "id"], "a/b"), None, ["id 'a/b'"]),
    ("ldl-without-votes", lambda d: d.update(datasets=[{"name": "fer2013"}]) or d["train"].update(loss="ldl"), None, ["fer2013"]),
]


@pytest.mark.parametrize("name, mutate, text, needles", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec(tmp_path, name, mutate, text, needles):
    p = spec_with(tmp_path, mutate, text)
    check(invoke(["run", p, "--data-root", tmp_path / "nodata"], tmp_path), tmp_path, *needles)


def test_missing_spec_file(tmp_path):
    check(invoke(["run", tmp_path / "nope.yaml"], tmp_path), tmp_path, "nope.yaml: spec file not found")


def test_unknown_profile_and_bad_set(tmp_path):
    p = spec_with(tmp_path)
    check(invoke(["run", p, "--profile", "gpu"], tmp_path), tmp_path, "no profile 'gpu'")
    check(invoke(["run", p, "--set", "train.epochs"], tmp_path), tmp_path, "expected key=value")
    check(invoke(["run", p, "--set", "models.zz.train.lr=1"], tmp_path), tmp_path, "no list item with id or name 'zz'")
    check(invoke(["run", p, "--set", "train.epochs=[1"], tmp_path), tmp_path, "not valid YAML")


def fer_spec(tmp_path, csv: Path) -> Path:
    return spec_with(tmp_path, _set(["datasets"], [{"name": "fer2013", "path": str(csv)}]))


def fer_rows(n=3):
    return [(i % 7, PX, u) for i, u in enumerate(["Training"] * n + ["PublicTest", "PrivateTest"])]


DATA_CASES = [
    ("wrong-columns", "emotion,pixel,Usage\n0,1,Training\n", ["expected columns emotion,pixels,Usage"]),
    ("short-row", [(0, PX, "Training"), (1, "1 2 3", "Training")], ["line 3", "expected 2304 pixel values"]),
    ("non-numeric-pixel", [(0, PX.replace("9", "a", 1), "Training")], ["line 2", "integers 0-255"]),
    ("pixel-range", [(0, "300 " + " ".join(["1"] * 2303), "Training")], ["line 2", "out of range"]),
    ("unknown-usage", [(0, PX, "Valid")], ["line 2", "Usage 'Valid'"]),
    ("emotion-range", [(7, PX, "Training")], ["line 2", "emotion '7'"]),
    ("emotion-text", [("x", PX, "Training")], ["line 2", "emotion 'x'"]),
    ("empty-split", [(0, PX, "Training"), (1, PX, "PublicTest")], ["split 'test' is empty"]),
    ("not-a-csv", b"\x1f\x8b\x08garbage", ["not a readable CSV"]),
]


@pytest.mark.parametrize("name, content, needles", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_fer2013_file(tmp_path, name, content, needles):
    csv = tmp_path / ("fer.csv.gz" if isinstance(content, bytes) else "fer.csv")
    if isinstance(content, bytes):
        csv.write_bytes(content)
    elif isinstance(content, str):
        csv.write_text(content)
    else:
        write_fer_csv(csv, content)
    check(invoke(["run", fer_spec(tmp_path, csv)], tmp_path), tmp_path, str(csv), *needles)


def test_missing_data_file(tmp_path):
    p = spec_with(tmp_path, _set(["datasets"], [{"name": "fer2013"}]))
    check(invoke(["run", p, "--data-root", tmp_path / "nowhere"], tmp_path), tmp_path, "fer2013.csv.gz", "file not found")


def test_bad_ferplus_votes(tmp_path):
    write_fer_csv(tmp_path / "d" / "fer2013" / "fer2013.csv", fer_rows())
    (tmp_path / "d" / "ferplus").mkdir()
    head = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    rows = [f"{u},fer{i:07d}.png,10,0,0,0,0,0,0,0,0,0" for i, (_, _, u) in enumerate(fer_rows())]
    rows[1] = rows[1].replace(",10,", ",-3,", 1)
    (tmp_path / "d" / "ferplus" / "fer2013new.csv").write_text(head + "\n".join(rows) + "\n")
    p = spec_with(tmp_path, _set(["datasets"], [{"name": "ferplus"}]))
    check(invoke(["run", p, "--data-root", tmp_path / "d"], tmp_path), tmp_path, "line 3", "column 'neutral'", "'-3'")


def test_image_that_will_not_decode(tmp_path):
    from tests.test_rafdb_folder import make_rafdb

    make_rafdb(tmp_path / "d", n_train=8, n_test=4)
    (tmp_path / "d" / "rafdb" / "Image" / "aligned" / "test_00002_aligned.jpg").write_bytes(b"\xff\xd8 broken")
    p = spec_with(tmp_path, _set(["datasets"], [{"name": "rafdb"}]))
    check(invoke(["run", p, "--data-root", tmp_path / "d"], tmp_path), tmp_path, "test_00002_aligned.jpg: image does not decode")


def test_npz_missing_array(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((4, 8, 8), np.uint8))
    p = spec_with(tmp_path, _set(["datasets"], [{"name": "folder", "path": str(tmp_path / "x.npz")}]))
    check(invoke(["run", p], tmp_path), tmp_path, "array 'label' missing")


def test_weights_file_missing_or_hostile(tmp_path):
    p = spec_with(tmp_path, _set(["models", 0, "weights"], str(tmp_path / "none.pth")))
    r = invoke(["run", p], tmp_path)
    assert r.exit_code == 2 and "none.pth: weights file not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unwritable_runs_dir(tmp_path):
    if os.geteuid() == 0:
        target = Path("/proc/ferbench-runs")  # even root cannot create files in /proc
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        target = ro / "runs"
    r = invoke(["run", spec_with(tmp_path), "--runs-dir", target], tmp_path)
    assert r.exit_code == 2 and "not writable" in r.stderr, r.stderr


def test_runs_dir_that_is_a_file(tmp_path):
    (tmp_path / "runsfile").write_text("x")
    r = invoke(["run", spec_with(tmp_path), "--runs-dir", tmp_path / "runsfile"], tmp_path)
    assert r.exit_code == 2 and "exists and is not a folder" in r.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    d = tmp_path_factory.mktemp("fin")
    p = spec_with(d)
    r = invoke(["run", p], d)
    assert r.exit_code == 0, r.stdout
    return d, p


def _plant(d: Path, spec: Path, content: bytes) -> Path:
    """Reset the finished job to an interrupted state whose checkpoint is `content`."""
    job_dir = next((d / "runs" / "bad").glob("m__*"))
    (job_dir / "manifest.json").unlink()
    (job_dir / "checkpoint.pt").write_bytes(content)
    return job_dir


@pytest.mark.parametrize("kind", ["other-model", "truncated", "pickle"])
def test_bad_checkpoints(finished, kind):
    d, spec = finished
    job_dir = next((d / "runs" / "bad").glob("m__*"))
    good = (job_dir / "checkpoint.pt").read_bytes()
    if kind == "other-model":
        import io

        buf = io.BytesIO()
        ck = torch.load(io.BytesIO(good), weights_only=True)
        ck["model"] = {"fc.weight": torch.zeros(3, 3)}
        torch.save(ck, buf)
        content, needle = buf.getvalue(), "does not match this job's model"
    elif kind == "truncated":
        content, needle = good[: len(good) // 3], "not a loadable ferbench checkpoint"
    else:
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch PWNED",))

        content, needle = pickle.dumps({"model": Evil()}), "not a loadable ferbench checkpoint"
    _plant(d, spec, content)
    old = os.getcwd()
    os.chdir(d)
    try:
        r = CliRunner().invoke(app, ["run", str(spec)])
    finally:
        os.chdir(old)
    # the job fails with the reason (and how to restart it) in its record and on screen; the spec goes on
    assert r.exit_code == 1, r.stdout
    assert needle in r.stdout and "delete the file to restart this job from scratch" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    manifest = json.loads((job_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and needle in manifest["failure"]
    assert not (d / "PWNED").exists()
    (job_dir / "checkpoint.pt").write_bytes(good)
