"""The run-record format: `runs/<spec>/<job-id>/`, atomic writes, per-job locks, discovery.

A spec's folder also holds `spec.yaml`, the validated spec (claims, description) that report reads.

Files: job.yaml, manifest.json, history.csv, metrics.json, predictions.npz, checkpoint.pt.
Every file is written to a temporary name in the same folder, flushed, fsynced and renamed, so a
crash leaves the previous version intact. A record is complete only when its manifest says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

from ferbench.errors import FerbenchError
from ferbench.spec import condition_hash

COMPLETE, RUNNING, FAILED = "complete", "running", "failed"
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, fill: Callable[[Path], Any]) -> None:
    """Let `fill` write a temporary file (given by path) beside `path`, fsync it and rename it over
    `path`, so readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fill(Path(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda p: p.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def fill(p: Path) -> None:
        with open(p, "wb") as f:  # a file object: given a path, numpy would append ".npz" to it
            np.savez_compressed(f, **arrays)

    write_atomic(path, fill)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FerbenchError(f"{path}: unreadable JSON ({e.__class__.__name__}: {e})") from None


@contextlib.contextmanager
def job_lock(job_dir: Path, blocking: bool) -> Iterator[bool]:
    """Hold an exclusive lock on a job folder (`filelock`: flock on Unix, msvcrt on Windows, so
    report and compare import everywhere); yields False if non-blocking and already held."""
    from filelock import FileLock, Timeout

    job_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(job_dir / ".lock"), is_singleton=False)
    try:
        lock.acquire(timeout=-1 if blocking else 0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@dataclass
class RunRecord:
    """What report and compare read of one job folder."""

    path: Path
    job: dict[str, Any]
    manifest: dict[str, Any]
    label: str = ""  # the model id, plus the profile/condition when one model ran under several

    @property
    def condition(self) -> str:
        """The job's condition hash (`spec.condition_hash`): equal for the seeds of one experiment."""
        return condition_hash(self.job.get("job", {}))

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return self.manifest.get("status", "incomplete")

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    def metrics(self) -> dict[str, Any]:
        p = self.path / "metrics.json"
        return read_json(p) if p.exists() else {}

    def predictions(self) -> dict[str, np.ndarray]:
        p = self.path / "predictions.npz"
        if not p.exists():
            return {}
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def history(self) -> list[dict[str, Any]]:
        import csv

        p = self.path / "history.csv"
        if not p.exists():
            return []
        with p.open() as f:
            return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _num(v: str) -> Any:
    try:
        return float(v) if any(c in v for c in ".eEn") else int(v)
    except ValueError:
        return v


def read_manifest(job_dir: Path) -> dict[str, Any]:
    """A job folder's manifest ({} when there is none or it is unreadable)."""
    try:
        m = json.loads((job_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def read_status(job_dir: Path) -> str | None:
    """The status a job folder's manifest records (None: no readable manifest)."""
    return read_manifest(job_dir).get("status")


def remove_orphans(job_dir: Path) -> list[Path]:
    """Delete the temporary files (`.<name>.*.tmp`) an atomic write killed mid-way left behind; only
    call it holding the job's lock, when no write of the job can be in flight."""
    gone = []
    for p in job_dir.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            gone.append(p)
    return gone


def is_complete(job_dir: Path) -> bool:
    return read_status(job_dir) == COMPLETE


def check_writable(runs_dir: Path) -> None:
    """Fail before any work if runs_dir cannot hold records: try a temporary file where it will go."""
    if runs_dir.exists() and not runs_dir.is_dir():
        raise FerbenchError(f"{runs_dir}: runs directory path exists and is not a folder")
    probe = runs_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise FerbenchError(f"{runs_dir}: cannot create the runs directory ({probe} is not a folder)")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise FerbenchError(f"{runs_dir}: runs directory is not writable ({e.strerror})") from None


def write_spec_snapshot(spec: Any, runs_dir: Path) -> None:
    """runs/<spec>/spec.yaml: the validated spec (claims, description) that report reads."""
    write_text_atomic(runs_dir / spec.name / "spec.yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def discover(root: Path) -> list[RunRecord]:
    """All job folders under `root` (a runs dir or one spec's folder), sorted by path."""
    if not root.exists():
        raise FerbenchError(f"{root}: no such runs directory")
    out = []
    for job_yaml in sorted(root.rglob("job.yaml")):
        d = job_yaml.parent
        try:
            job = yaml.safe_load(job_yaml.read_text())
        except yaml.YAMLError:
            continue
        mpath = d / "manifest.json"
        try:
            manifest = json.loads(mpath.read_text()) if mpath.exists() else {"status": "incomplete"}
        except ValueError:
            manifest = {"status": "incomplete", "failure": "manifest.json unreadable"}
        problem = _damaged(d) if isinstance(manifest, dict) and manifest.get("status") == COMPLETE else None
        if problem:  # shown with the failed runs; the rest of the report renders
            manifest = {**manifest, "status": "unreadable", "failure": problem}
        out.append(RunRecord(d, job, manifest))
    label_experiments(out)
    return out


def _damaged(job_dir: Path) -> str | None:
    """What is wrong with a complete record's metrics.json or predictions.npz, if anything (a cheap
    check: the JSON parses to a mapping, the npz's index opens and lists arrays)."""
    import zipfile

    try:
        if not isinstance(json.loads((job_dir / "metrics.json").read_text()), dict):
            return "metrics.json: not a JSON mapping"
    except (OSError, ValueError) as e:
        return f"metrics.json: unreadable ({type(e).__name__})"
    try:
        with np.load(job_dir / "predictions.npz", allow_pickle=False) as z:
            if not z.files:
                return "predictions.npz: no arrays"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        return f"predictions.npz: unreadable ({type(e).__name__})"
    return None


def label_experiments(records: list[RunRecord]) -> None:
    """Label each record by its model id; where one (model, dataset) ran under several conditions
    (a smoke and a cpu profile in one runs folder, say), add the profile or condition hash, so that
    seeds of different experiments are never averaged together."""
    groups: dict[tuple[str, str], set[str]] = {}
    for r in records:
        j = r.job.get("job", {})
        groups.setdefault((j.get("model", {}).get("id", "?"), j.get("dataset", {}).get("id", "?")), set()).add(r.condition)
    for r in records:
        j = r.job.get("job", {})
        mid = j.get("model", {}).get("id", "?")
        if len(groups[(mid, j.get("dataset", {}).get("id", "?"))]) > 1:
            r.label = f"{mid} [{j.get('profile') or 'default'} {r.condition[:6]}]"
        else:
            r.label = mid
