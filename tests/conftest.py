"""Shared fixtures: an isolated cache per test session, small datasets in the real file formats."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests run single-threaded: on a shared 2-core machine two threads per process stall each other, and
# a subprocess a test starts inherits this. A test about threading passes its own count.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's cache; real-data tests share one session cache."""
    old = os.environ.get("FERBENCH_CACHE")
    os.environ["FERBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("FERBENCH_CACHE", None)
    else:
        os.environ["FERBENCH_CACHE"] = old


class KillAfter:
    """A run's progress sink that interrupts it after `steps` training steps, as a kill would."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...
    def end_epoch(self, row: dict) -> None: ...
    def steps(self, first_step: int, epoch: int, losses: list, lrs: list) -> None: ...
    def note(self, text: str) -> None: ...

    def advance(self) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


@pytest.fixture
def kill_after() -> type[KillAfter]:
    """The KillAfter sink class: `run_job(..., progress=kill_after(3))` stops in the third step."""
    return KillAfter


@pytest.fixture
def real_data() -> Path:
    root = os.environ.get("FERBENCH_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("FERBENCH_DATA is not set to the shared datasets folder (CI sets it to ../shared/data)")
    return Path(root)


def write_fer_csv(path: Path, rows: list[tuple[int, np.ndarray | str, str]], gz: bool = False) -> Path:
    """Write a Kaggle-format fer2013.csv (emotion,pixels,Usage); pixels may be a raw string."""
    lines = ["emotion,pixels,Usage"]
    for emo, px, usage in rows:
        s = px if isinstance(px, str) else " ".join(str(int(v)) for v in np.asarray(px).ravel())
        lines.append(f"{emo},{s},{usage}")
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def small_fer(tmp_path) -> tuple[Path, dict]:
    """A 42-row fer2013.csv under <root>/fer2013/ with known images, labels and splits."""
    rng = np.random.default_rng(0)
    rows, truth = [], {"train": [], "val": [], "test": []}
    usage_split = [("Training", "train", 4), ("PublicTest", "val", 1), ("PrivateTest", "test", 1)]
    for usage, split, per_class in usage_split:
        for c in range(7):
            for _ in range(per_class):
                img = rng.integers(0, 256, (48, 48), dtype=np.uint8)
                rows.append((c, img, usage))
                truth[split].append((c, img))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    path = write_fer_csv(tmp_path / "data" / "fer2013" / "fer2013.csv.gz", rows, gz=True)
    return path, {"rows": rows, "truth": truth}


def run_spec_dict(folder: Path, spec: dict, runs_dir: Path | None = None, name: str = "s.yaml") -> list:
    """Write `spec` to folder/name and run it into runs_dir (default folder/runs) without the time
    probe; the jobs' outcomes."""
    import yaml

    from ferbench import api

    (folder / name).write_text(yaml.safe_dump(spec))
    return api.run_spec(folder / name, runs_dir=runs_dir or folder / "runs", estimate=False)
