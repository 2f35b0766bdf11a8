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


def lay_out_released_wheels(spec: Path, wheels: Path) -> None:
    """For each `pypi:` weights name of the spec, a wheel the test makes, holding a file of the named
    format at the named path (a mini-Xception HDF5 file in Keras's layout, random weights), so the
    released-weights path runs end to end offline; the numbers are not the released model's."""
    import zipfile

    from ferbench.hub import PYPI_NAME
    from ferbench.models.minixception import MiniXception
    from tests.test_small_published_models import write_keras_h5

    for m in load_spec(spec).models:
        match = PYPI_NAME.match(m.weights or "")
        if not match:
            continue
        package, version, member = match.groups()
        assert m.arch == "mini-xception" and member.endswith(".hdf5"), "a test wheel for this model is not written yet"
        wheels.mkdir(parents=True, exist_ok=True)
        write_keras_h5(wheels / "m.hdf5", MiniXception(7, 64, 1).eval())
        with zipfile.ZipFile(wheels / f"{package.replace('-', '_')}-{version}-py3-none-any.whl", "w") as z:
            z.write(wheels / "m.hdf5", member)


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
    env = {**os.environ, "FERBENCH_OFFLINE": "1"}  # tests never download: released weights come from a test wheel
    lay_out_released_wheels(spec, Path(os.environ["FERBENCH_CACHE"]) / "wheels")  # the session's isolated cache
    r = subprocess.run([sys.executable, "-m", "ferbench", "run", str(spec), "--profile", "smoke", "--data-root", root],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "failed" not in r.stdout
    rep = subprocess.run([sys.executable, "-m", "ferbench", "report"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert rep.returncode == 0, rep.stderr
    name = load_spec(spec).name
    html = (tmp_path / "reports" / name / "index.html").read_text()
    assert "Test accuracy" in html and "Conditions" in html


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_cpu_and_default_settings_validate(spec):
    s = load_spec(spec)
    if "cpu" in s.profiles:  # at least 3 runs per experiment: seeds, or seeds x cross-validation folds
        from ferbench.data import fold_count
        from ferbench.spec import fold_entries

        cpu = load_spec(spec, "cpu")
        folds = min(len(fold_entries(d, fold_count)) for d in cpu.datasets)
        assert len(cpu.seeds) * folds >= 3 if spec.stem != "quickstart" else True
    assert "smoke" in s.profiles
