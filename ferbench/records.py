"""The run-record format: `runs/<spec>/<job-id>/`, atomic writes, per-job locks, discovery.

A spec's folder also holds `spec.yaml`, the validated spec (claims, description) that report reads.

Files: job.yaml, manifest.json, history.csv, metrics.json, predictions.npz, checkpoint.pt.
Every file is written to a temporary name in the same folder, flushed, fsynced and renamed, so a
crash leaves the previous version intact. A record is complete only when its manifest says so.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from ferbench import recordcheck
from ferbench.recordcheck import (  # noqa: F401  (the record's file names: defined beside the checks, read from here)
    CHECKPOINT_FILE, COST_FIELD, HISTORY_FILE, JOB_FILE, MANIFEST_FILE, METRICS_FILE, PREDICTIONS_FILE, SPEC_FILE,
    metrics_cost)
from ferbench.fileio import (  # noqa: F401  (the record format's writers; their home is the leaf fileio)
    MAX_SPEC_BYTES, load_npz, read_json, read_text_bounded, write_atomic, write_bytes_atomic, write_json_atomic, write_npz_atomic, write_text_atomic)
from ferbench.errors import FerbenchError, first_line, one_line
from ferbench.spec import IDENTITY_DEFAULTS, Job

COMPLETE, RUNNING, FAILED = "complete", "running", "failed"


LOCK_FILE = ".lock"


def folder_problem(job_dir: Path) -> str | None:
    """Why `job_dir` (runs/<spec>/<job-id>) cannot hold a record of ours, or None: it or its spec's folder
    is a symbolic link (every write would land wherever it points) or not a folder, or its lock file is
    not a regular file (a folder or a pipe)."""
    import stat

    for d in (job_dir.parent, job_dir):
        if d.is_symlink():
            return f"{d}: is a symbolic link; ferbench never writes a record through one (remove it)"
        if d.exists() and not d.is_dir():
            return f"{d}: exists and is not a folder; remove it or use another --runs-dir"
    lock = job_dir / LOCK_FILE
    if lock.is_symlink() or (lock.exists() and not stat.S_ISREG(lock.lstat().st_mode)):
        return f"{lock}: not a regular file (a link, folder, pipe or device); remove it"
    return None


def copied_record(folder: Path, job: Job) -> str | None:
    """Why the record in `folder` is not `job`'s own, or None: its folder name is not the job's id (a
    record copied or renamed within a runs folder), so it would count one run twice."""
    if job.id == folder.name:
        return None
    return f"{JOB_FILE}: holds job {job.id}, not this folder's (a record copied or renamed): one job has one record, never counted twice"


def check_outside_records(folder: Path, option: str = "--out") -> None:
    """One line when `folder`, where an output is about to be written, is among run records: inside a
    job folder (it or an ancestor holds job.yaml), or a spec's folder of records or a runs folder
    itself (it holds <job>/job.yaml or <spec>/<job>/job.yaml). An export there replaced a record's
    checkpoint.pt; a report there mixed its pages into the records."""
    folder = Path(folder).absolute()
    for a in (folder, *folder.parents):
        if (a / JOB_FILE).is_file():
            raise FerbenchError(f"{option} {folder}: inside the run record {a}; ferbench never writes its outputs "
                                "among run records (choose a folder outside the runs folder)")
    if next(folder.glob(f"*/{JOB_FILE}"), None) or next(folder.glob(f"*/*/{JOB_FILE}"), None):
        raise FerbenchError(f"{option} {folder}: a folder of run records; ferbench never writes its outputs among "
                            "run records (choose a folder outside the runs folder)")


@contextlib.contextmanager
def job_lock(job_dir: Path, blocking: bool) -> Iterator[bool]:
    """Hold an exclusive lock on a job folder (`filelock`: flock on Unix, msvcrt on Windows, so
    report and compare import everywhere); yields False if non-blocking and already held. A folder
    that is not ours to write (`folder_problem`) is one line, before anything is made in it."""
    from filelock import FileLock, Timeout

    if problem := folder_problem(job_dir):
        raise FerbenchError(problem)
    job_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(job_dir / LOCK_FILE), is_singleton=False)
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
    job_yaml: dict[str, Any]  # job.yaml as read ({"id", "job"}); `job` is its validated form
    manifest: dict[str, Any]
    label: str = ""  # the model id, plus the profile/condition when one model ran under several
    typed: Job | None = field(default=None, repr=False, compare=False)  # `discover` hands over the Job it validated

    @property
    def job(self) -> Job:
        """The job as its type: what report and compare read (validated once)."""
        if self.typed is None:
            self.typed = Job.model_validate(self.job_yaml["job"])
        return self.typed

    @property
    def condition(self) -> str:
        """The job's condition hash (`Job.condition`): equal for the seeds of one experiment."""
        return self.job.condition()

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return self.manifest.get("status", "incomplete")

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    @property
    def data_digest(self) -> str | None:
        """The sha256 of the arrays the job trained and tested on (None in records made before it was kept)."""
        return self.manifest.get("data_content_sha256")

    def same_data(self, other: "RunRecord") -> bool:
        """Whether two records were made from the same data: equal digests, where both recorded one."""
        return self.data_digest is None or other.data_digest is None or self.data_digest == other.data_digest

    def metrics(self) -> dict[str, Any]:
        p = self.path / METRICS_FILE
        return read_json(p) if p.exists() else {}

    def predictions(self) -> dict[str, np.ndarray]:
        p = self.path / PREDICTIONS_FILE
        if not p.exists():
            return {}
        return load_npz(p)

    def history(self) -> list[dict[str, Any]]:
        p = self.path / HISTORY_FILE
        if not p.exists():
            return []
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(read_text_bounded(p)))]


def _num(v: Any) -> Any:
    if not isinstance(v, str):  # a short row's missing cells (None) or a long row's extras (a list)
        return v
    try:
        return float(v) if any(c in v for c in ".eEn") else int(v)
    except ValueError:
        return v


def read_manifest(job_dir: Path) -> dict[str, Any]:
    """A job folder's manifest, checked (`recordcheck.check_manifest`): the one reader for report,
    resume, reuse and plan. It fails closed: no manifest reads `{"status": "incomplete"}`, one that
    does not parse or check reads `{"status": "unreadable", "failure": why}`, so nothing treats a
    damaged record as complete."""
    path = job_dir / MANIFEST_FILE
    if not path.exists():
        return {"status": "incomplete"}
    try:
        manifest = json.loads(read_text_bounded(path))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return {"status": "unreadable", "failure": f"{MANIFEST_FILE}: unreadable ({type(e).__name__})"}
    problem = recordcheck.check_manifest(manifest)
    return {"status": "unreadable", "failure": one_line(problem)} if problem else manifest


def read_status(job_dir: Path) -> str:
    """The status a job folder's manifest records (`incomplete` or `unreadable` without a good one)."""
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
    try:
        runs_dir.resolve(strict=False)
    except (OSError, RuntimeError) as e:  # a symlink loop: ELOOP, or RuntimeError on older Pythons
        raise FerbenchError(f"{runs_dir}: runs directory path cannot be resolved ({first_line(e)})") from None
    if runs_dir.exists() and not runs_dir.is_dir():
        raise FerbenchError(f"{runs_dir}: runs directory path exists and is not a folder")
    probe = runs_dir
    while not probe.exists():
        if probe.is_symlink():
            raise FerbenchError(f"{runs_dir}: runs directory path is a broken or looping symlink ({probe})")
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
    write_text_atomic(runs_dir / spec.name / SPEC_FILE, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def discover(root: Path, unreadable: list[dict[str, str]] | None = None) -> list[RunRecord]:
    """All job folders under `root` (a runs dir or one spec's folder), sorted by path. A complete
    record whose files are damaged is returned with status `unreadable` and the reason; a folder
    whose job.yaml cannot be read at all is left out and, given a list, added to `unreadable`."""
    if not root.exists():
        raise FerbenchError(f"{root}: no such runs directory")
    out = []
    for job_yaml in sorted(root.rglob(JOB_FILE)):
        d = job_yaml.parent
        job, typed, problem = _read_job(job_yaml)
        if problem:
            if unreadable is not None:
                unreadable.append({"run": d.name, "status": "unreadable", "reason": problem})
            continue
        manifest = read_manifest(d)
        problem = damaged(d) if manifest.get("status") == COMPLETE else None
        if not problem and manifest.get("status") == COMPLETE and typed is not None:
            problem = copied_record(d, typed)
        if problem:  # shown with the failed runs; the rest of the report renders
            manifest = {**manifest, "status": "unreadable", "failure": problem}
        out.append(RunRecord(d, job, manifest, typed=typed))
    label_experiments(out)
    keep_poolable(out)
    return out


def keep_poolable(records: list[RunRecord]) -> None:
    """Seeds are pooled per (experiment, dataset, fold): a complete record made from other data than
    the group's first seed (another digest of the arrays) is marked unreadable with the reason, in
    place, so that no mean, interval or pairing mixes two datasets."""
    first: dict[tuple[str, str, Any], RunRecord] = {}
    for r in sorted((r for r in records if r.complete and r.data_digest), key=lambda r: (r.job.seed, str(r.path))):
        key = (r.label, r.job.dataset.id, r.job.fold)
        ref = first.setdefault(key, r)
        if not r.same_data(ref):
            r.manifest = {**r.manifest, "status": "unreadable", "failure": (
                f"made from other data (sha256 {r.data_digest[:12]}...) than {ref.id} of the same experiment "
                f"({ref.data_digest[:12]}...): never pooled with it")}


def _read_job(path: Path) -> tuple[dict[str, Any], Job | None, str | None]:
    """job.yaml as read, as a `Job`, and the first problem with it (then no Job): unparsable, a field
    report reads missing, or not a `Job` (the first validation error, with the field's path)."""
    from pydantic import ValidationError

    from ferbench.specfile import check_size, parse_yaml

    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            return {}, None, f"{JOB_FILE}: larger than a job ({size:,} bytes)"
        job = parse_yaml(read_text_bounded(path, MAX_SPEC_BYTES))
        check_size(job, JOB_FILE)  # YAML aliases expanded past any job's size: refused, as in specs
    except FerbenchError as e:
        return {}, None, str(e)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return {}, None, f"{JOB_FILE}: unreadable ({type(e).__name__})"
    problem = recordcheck.check_job(job)
    if problem:
        return job, None, one_line(problem)
    try:
        return job, Job.model_validate(job["job"]), None
    except ValidationError as e:
        err = e.errors()[0]
        return job, None, one_line(f"{JOB_FILE}: job.{'.'.join(map(str, err['loc']))}: {err['msg']}")


def read_job(job_dir: Path) -> Job:
    """A job folder's job.yaml as its type (resume, teachers, trained checkpoints); FerbenchError naming the file."""
    _, job, problem = _read_job(job_dir / JOB_FILE)
    if job is None:  # e.g. "runs/s/j/job.yaml: job.model.arch: Field required"
        raise FerbenchError(f"{job_dir}/{problem}")
    return job


def damaged(job_dir: Path) -> str | None:
    """What is wrong with a complete record's files (`_damage`), as one line whatever the files hold."""
    problem = _damage(job_dir)
    return None if problem is None else one_line(problem)


def _damage(job_dir: Path) -> str | None:
    """What is wrong with a complete record's metrics.json, predictions.npz or history.csv, if
    anything: each must parse and hold the fields report and compare read (`recordcheck`). The one
    check before a record is trusted anywhere: report and compare (`discover`), predict and export
    (`trained.load_run`), eval's reuse of a training (`runner.find_trained`)."""
    try:
        metrics = json.loads(read_text_bounded(job_dir / METRICS_FILE))
    except (OSError, ValueError) as e:
        return f"{METRICS_FILE}: unreadable ({type(e).__name__})"
    problem = recordcheck.check_metrics(metrics)
    if problem:
        return problem
    try:
        arrays = load_npz(job_dir / PREDICTIONS_FILE)
    except FerbenchError as e:
        return f"{PREDICTIONS_FILE}: unreadable ({str(e).split(': ', 1)[-1]})"
    problem = recordcheck.check_predictions(arrays, len(metrics["classes"])) or recordcheck.check_agreement(metrics, arrays)
    if problem:
        return problem
    try:
        rows = RunRecord(job_dir, {}, {}).history()
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return f"{HISTORY_FILE}: unreadable ({type(e).__name__})"
    return recordcheck.check_history(rows, job_dir / HISTORY_FILE)


def label_experiments(records: list[RunRecord]) -> None:
    """Label each record by its model id; where one (model, dataset) ran under several conditions, add
    what tells them apart, so that seeds of different experiments are never averaged together: the job
    fields whose values differ between the conditions (`deep-emotion [eval.dropout_at_eval=true]`) when
    at most three do, else the profile and condition hash (a smoke and a cpu profile in one folder)."""
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in records:
        key = (r.job.model.id, r.job.dataset.id)
        groups.setdefault(key, {}).setdefault(r.condition, _condition_fields(r.job))
    names = {key: _condition_names(conds) for key, conds in groups.items() if len(conds) > 1}
    for r in records:
        key = (r.job.model.id, r.job.dataset.id)
        if key not in names:
            r.label = r.job.model.id
        else:
            r.label = f"{r.job.model.id} [{names[key].get(r.condition) or (r.job.profile or 'default') + ' ' + r.condition[:6]}]"


_NOT_CONDITIONS = ("spec", "depends_on", "format")  # equal in one folder, or named by the model id already


def _condition_fields(job: Job) -> dict[str, Any]:
    """What a condition hashes, as dotted keys -> values, with the defaults the hash leaves out put back
    (`eval.dropout_at_eval=false` reads as such, not as a missing field)."""
    flat = _flat(job.condition_identity())
    for path, default in IDENTITY_DEFAULTS.items():
        flat.setdefault(".".join(path), default)
    return flat


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """A job dict as dotted keys -> leaf values, without the fields that never separate experiments."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if key not in _NOT_CONDITIONS:
            out.update(_flat(v, key))
    return out


def _condition_names(conditions: dict[str, dict[str, Any]]) -> dict[str, str]:
    """condition hash -> `field=value, ...` over the fields that differ between the conditions; empty when
    more than three differ or two conditions would read alike."""
    keys = sorted({k for c in conditions.values() for k in c}
                  - {k for k in next(iter(conditions.values())) if len({repr(c.get(k)) for c in conditions.values()}) == 1})
    if not keys or len(keys) > 3:
        return {}
    def show(v: Any) -> str:
        return "true" if v is True else "false" if v is False else "none" if v is None else str(v)
    named = {h: ", ".join(f"{k.removeprefix('train.').removeprefix('model.')}={show(c.get(k))}" for k in keys)
             for h, c in conditions.items()}
    return named if len(set(named.values())) == len(named) else {}


RECORD_FILES = (JOB_FILE, MANIFEST_FILE, HISTORY_FILE, METRICS_FILE, PREDICTIONS_FILE)


def copy_records(spec_folder: Path, dest: Path) -> list[Path]:
    """Copy a spec's run records, without checkpoints, locks or temporary files, to dest/<spec>/:
    the evidence behind a published page, which report and compare read like a runs folder
    (`ferbench report --runs-dir reports/<page>/records`). Each file is written atomically."""
    out = []
    snapshot = spec_folder / SPEC_FILE
    if snapshot.is_file() and not snapshot.is_symlink():
        write_bytes_atomic(dest / spec_folder.name / SPEC_FILE, snapshot.read_bytes())
        out.append(dest / spec_folder.name / SPEC_FILE)
    for job_yaml in sorted(spec_folder.glob("*/job.yaml")):
        if job_yaml.parent.is_symlink():  # a linked job folder is not this runs folder's record
            continue
        for name in RECORD_FILES:
            src = job_yaml.parent / name
            if src.is_file() and not src.is_symlink():  # a link's target may be anything on the machine: never published
                target = dest / spec_folder.name / job_yaml.parent.name / name
                write_bytes_atomic(target, src.read_bytes())
                out.append(target)
    return out
