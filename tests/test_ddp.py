"""One job across 2 processes (torchrun, gloo on the CPU) equals the single-process run with the
same global batch, within float tolerance; only rank 0 writes records."""

import subprocess
import sys

import numpy as np
import pytest
import yaml

from ferbench.records import discover

pytestmark = pytest.mark.slow  # every test here trains or starts processes

SPEC = {
    "name": "ddp",
    "datasets": [{"name": "synthfer", "options": {"n_train": 128, "n_val": 32, "n_test": 32}}],
    "models": [{"id": "a", "arch": "convnext-atto"}, {"id": "r", "arch": "resface-r18", "train": {"loss": "ldl"}}],
    "train": {"epochs": 2, "batch_size": 32, "input_size": 32},
}


def test_two_process_ddp_matches_single_process(tmp_path):
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(SPEC))
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "ferbench", "run",
                          "d.yaml", "--threads", "1", "--runs-dir", "ddp"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    one = subprocess.run([sys.executable, "-m", "ferbench", "run", "d.yaml", "--threads", "1", "--runs-dir", "one"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    a = {r.id: r for r in discover(tmp_path / "ddp")}
    b = {r.id: r for r in discover(tmp_path / "one")}
    assert a.keys() == b.keys() and len(a) == 2
    for k in a:
        assert a[k].complete and a[k].manifest["environment"]["data_parallel_processes"] == 2
        if k.startswith("r__"):
            continue  # BatchNorm on the CPU sees each rank's rows (SyncBatchNorm is CUDA-only): runs, not equal
        pa, pb = a[k].predictions(), b[k].predictions()
        for key in pa:
            assert np.allclose(pa[key], pb[key], atol=1e-4, rtol=1e-4), (k, key, np.abs(pa[key] - pb[key]).max())
        assert [h["train_loss"] for h in a[k].history()] == pytest_approx([h["train_loss"] for h in b[k].history()])


def pytest_approx(xs):
    import pytest

    return pytest.approx(xs, rel=1e-3, abs=1e-4)
