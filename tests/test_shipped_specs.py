"""Every shipped spec runs for real at its smoke profile (same code path as the full settings).

synthfer specs need nothing; FER-2013/FER+ specs need FERBENCH_DATA; the RAF-DB spec runs on a tiny
RAF-DB tree built in the real layout (users bring the real one)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferbench.spec import load_spec
from tests.test_rafdb_folder import make_rafdb

pytestmark = pytest.mark.slow  # every test here trains or starts processes

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "benchmarks").glob("*.yaml"))


def needs(spec_path: Path) -> set[str]:
    """The datasets a spec reads: its entries and their cross-dataset targets."""
    return {n for d in load_spec(spec_path).datasets for n in (d.name, *(t.name for t in d.cross))}


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_smoke_profile_runs_and_reports(spec, tmp_path):
    names = needs(spec)
    if names & {"fer2013", "ferplus", "ckplus48"}:
        root = os.environ.get("FERBENCH_DATA")
        if not root:
            pytest.skip("needs FERBENCH_DATA (CI sets it to ../shared/data)")
    elif "rafdb" in names:
        root = str(make_rafdb(tmp_path / "data", n_train=48, n_test=16))
    else:
        root = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "ferbench", "run", str(spec), "--profile", "smoke", "--data-root", root],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "failed" not in r.stdout
    rep = subprocess.run([sys.executable, "-m", "ferbench", "report"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr
    name = load_spec(spec).name
    html = (tmp_path / "reports" / name / "index.html").read_text()
    assert "Test accuracy" in html and "Conditions" in html


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_cpu_and_default_settings_validate(spec):
    s = load_spec(spec)
    if "cpu" in s.profiles:  # at least 3 runs per experiment: seeds, or seeds x cross-validation folds
        from ferbench.spec import fold_entries

        cpu = load_spec(spec, "cpu")
        folds = min(len(fold_entries(d)) for d in cpu.datasets)
        assert len(cpu.seeds) * folds >= 3 if spec.stem != "quickstart" else True
    assert "smoke" in s.profiles
