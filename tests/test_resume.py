"""Interrupted runs resume exactly: the same predictions, bit for bit, on the CPU."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ferbench.runner import prepare, run_job
from ferbench.spec import expand, spec_from_dict

pytestmark = pytest.mark.slow  # every test here trains or starts processes

SPEC = {
    "name": "resume",
    "datasets": [{"name": "synthfer", "options": {"n_train": 128, "n_val": 32, "n_test": 32}}],
    "models": [{"id": "e", "arch": "emonext-atto", "train": {"ema": {"decay": 0.9}}}],
    "train": {"epochs": 3, "batch_size": 32, "input_size": 32, "augment": {"rotation": 15, "scale": [0.9, 1.1]}},
}


def _preds(job_dir: Path) -> dict:
    with np.load(job_dir / "predictions.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    import torch

    job = expand(spec_from_dict(SPEC, "x"))[0]
    data = prepare([job], None)
    runs = tmp_path_factory.mktemp("ref")
    out = run_job(job, runs, next(iter(data.values())), torch.device("cpu"))
    assert out.status == "complete"
    return job, data, _preds(runs / job.spec / job.id)


@pytest.mark.parametrize("kill_at", [1, 6, 4 + 4 + 2])  # mid-epoch 1, mid-epoch 2, mid-epoch 3
def test_interrupted_run_gives_identical_predictions(reference, tmp_path, kill_at, kill_after):
    import torch

    job, data, ref = reference
    ds = next(iter(data.values()))
    with pytest.raises(KeyboardInterrupt):
        run_job(job, tmp_path, ds, torch.device("cpu"), kill_after(kill_at))
    out = run_job(job, tmp_path, ds, torch.device("cpu"))
    assert out.status == "complete"
    got = _preds(tmp_path / job.spec / job.id)
    assert got.keys() == ref.keys()
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k


def test_sigkill_then_rerun_completes_identically(reference, tmp_path):
    job, _, ref = reference
    spec = tmp_path / "resume.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    import torch

    # the reference ran in this process: the same thread count gives the same CPU kernels' rounding
    cmd = [sys.executable, "-m", "ferbench", "run", str(spec), "--threads", str(torch.get_num_threads())]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "runs" / "resume" / job.id / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the kill landed mid-run: the process died by the signal, the record is unfinished, epochs are left
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself (exit {proc.returncode}) before the kill"
    manifest = yaml.safe_load((ckpt.parent / "manifest.json").read_text())
    assert manifest["status"] == "running"
    assert 1 <= len((ckpt.parent / "history.csv").read_text().splitlines()) - 1 < SPEC["train"]["epochs"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    got = _preds(tmp_path / "runs" / "resume" / job.id)
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k
