"""Launchers: process workers and submitit's local (real subprocesses) and debug executors give the
same records as the in-process launcher, and honour job dependencies."""

import subprocess
import sys

import numpy as np
import pytest
import yaml

from ferbench.records import discover

pytestmark = pytest.mark.slow  # every test here trains or starts processes

SPEC = {
    "name": "launch",
    "datasets": [{"name": "synthfer", "options": {"n_train": 64, "n_val": 16, "n_test": 32}}],
    "models": [{"id": "teacher", "arch": "convnext-atto"},
               {"id": "student", "arch": "convnext-atto", "depends_on": "teacher",
                "train": {"loss": "ldl", "ldl_source": "teacher"}}],
    "seeds": [0, 1],
    "train": {"epochs": 1, "batch_size": 32, "input_size": 32},
}


def run(cwd, *extra):
    p = cwd / "launch.yaml"
    p.write_text(yaml.safe_dump(SPEC))
    r = subprocess.run([sys.executable, "-m", "ferbench", "run", str(p), "--threads", "1", *extra], cwd=cwd,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return {rec.id: rec for rec in discover(cwd / "runs" / "launch")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run(tmp_path_factory.mktemp("inproc"))


def same_records(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].complete and b[k].complete
        pa, pb = a[k].predictions(), b[k].predictions()
        assert pa.keys() == pb.keys()
        for key in pa:
            assert np.array_equal(pa[key], pb[key]), (k, key)


def test_worker_processes(reference, tmp_path):
    same_records(reference, run(tmp_path, "--workers", "2"))


@pytest.mark.parametrize("executor", ["local", "debug"])
def test_submitit_executors(reference, tmp_path, executor):
    pytest.importorskip("submitit")
    got = run(tmp_path, "--launcher", "submitit", "--executor", executor)
    same_records(reference, got)
    # a re-run after success submits nothing that trains
    again = run(tmp_path, "--launcher", "submitit", "--executor", executor)
    assert {k: r.manifest["finished"] for k, r in again.items()} == {k: r.manifest["finished"] for k, r in got.items()}
