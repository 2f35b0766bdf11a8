"""Launchers decide where `run_job` executes; they never change what a job computes.

- local (default): in-process, one job after another (`run_local`).
- local with workers > 1: separate processes (spawn), at most `workers` at a time (`run_workers`).
- submitit: one SLURM job per ferbench job through submitit's AutoExecutor (or its `local` and
  `debug` executors, which the tests use). Optional extra: `pip install ferbench[cluster]`.
Every launcher applies the same dependency rule (`Teachers`): a job runs after its teacher, and
fails without running when its teacher failed. Finished jobs are skipped inside `run_job`, so
re-running a spec after some cluster jobs failed runs only those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ferbench.data import FerDataset
from ferbench.errors import FerbenchError, first_line
from ferbench.runner import Outcome, dataset_key, run_job
from ferbench.spec import Job, LauncherConfig

OnOutcome = Callable[[Outcome], None]


class Teachers:
    """The dependency rule every launcher shares: the students of failed teachers fail, unrun."""

    def __init__(self) -> None:
        self.failed: set[str] = set()

    def blocked(self, job: Job) -> Outcome | None:
        """The failed outcome of `job` if its teacher failed, else None (run it)."""
        if job.depends_on in self.failed:
            self.failed.add(job.id)
            return Outcome(job, "failed", reason=f"teacher {job.depends_on} failed")
        return None

    def seen(self, outcome: Outcome) -> None:
        if outcome.status == "failed":
            self.failed.add(outcome.job.id)


def waves(jobs: list[Job]) -> list[list[Job]]:
    """Group jobs so that every job comes in a later wave than the job it depends on."""
    depth: dict[str, int] = {}
    for j in jobs:  # expand() lists dependencies first
        depth[j.id] = depth[j.depends_on] + 1 if j.depends_on in depth else 0
    out: list[list[Job]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for j in jobs:
        out[depth[j.id]].append(j)
    return out


def run_local(jobs: list[Job], runs_dir: Path, datasets: dict[str, FerDataset], device: Any,
              progress_for: Callable[[Job], Any] | None = None, on_outcome: OnOutcome | None = None) -> list[Outcome]:
    """The in-process launcher: jobs in dependency order; jobs held by another process are
    revisited at the end with a blocking lock (so both processes finish with complete records)."""
    outcomes: dict[str, Outcome] = {}
    deferred: list[Job] = []
    teachers = Teachers()
    for blocking, todo in ((False, jobs), (True, deferred)):
        for job in list(todo):
            o = teachers.blocked(job) or run_job(job, runs_dir, datasets[dataset_key(job)], device,
                                                 progress_for(job) if progress_for else None, blocking)
            if o.status == "locked":
                deferred.append(job)
                continue
            teachers.seen(o)
            outcomes[job.id] = o
            if on_outcome:
                on_outcome(o)
    return [outcomes[j.id] for j in jobs if j.id in outcomes]


def execute_one(job_json: str, runs_dir: str, data_root: str | None, device: str, threads: int | None) -> dict[str, Any]:
    """Run one job in this process (the function a worker or a SLURM job calls)."""
    import torch

    from ferbench.machine import pick_device
    from ferbench.runner import prepare

    if threads:
        torch.set_num_threads(threads)
    job = Job.model_validate_json(job_json)
    data = prepare([job], data_root)
    o = run_job(job, Path(runs_dir), next(iter(data.values())), pick_device(device), blocking=True)
    return {"id": job.id, "status": o.status, "seconds": o.seconds, "test_acc": o.test_acc, "reason": o.reason}


def _outcome(job: Job, r: dict[str, Any]) -> Outcome:
    return Outcome(job, r["status"], r.get("seconds", 0.0), r.get("test_acc"), r.get("reason", ""))


def run_waves(jobs: list[Job], submit: Callable[[Job], Any], collect: Callable[[Job, Any], Outcome],
              on_outcome: OnOutcome | None = None) -> list[Outcome]:
    """Submit each wave, then collect its outcomes; a wave starts when the one before it has ended."""
    outcomes: list[Outcome] = []
    teachers = Teachers()
    for wave in waves(jobs):
        handles = []
        for j in wave:
            o = teachers.blocked(j)
            if o is not None:
                outcomes.append(o)
                if on_outcome:
                    on_outcome(o)
            else:
                handles.append((j, submit(j)))
        for j, h in handles:
            o = collect(j, h)
            teachers.seen(o)
            outcomes.append(o)
            if on_outcome:
                on_outcome(o)
    return outcomes


def run_workers(jobs: list[Job], runs_dir: Path, data_root: str | None, device: str, workers: int,
                threads: int | None, on_outcome: OnOutcome | None = None) -> list[Outcome]:
    """Jobs in `workers` spawned processes at a time, wave by wave."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    def collect(j: Job, fut: Any) -> Outcome:
        try:
            return _outcome(j, fut.result())
        except FerbenchError as e:
            return Outcome(j, "failed", reason=str(e))

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        submit = lambda j: pool.submit(execute_one, j.model_dump_json(), str(runs_dir), data_root, device, threads)  # noqa: E731
        return run_waves(jobs, submit, collect, on_outcome)


def submitit_executor(runs_dir: Path, cfg: LauncherConfig) -> Any:
    """The configured submitit executor; made before anything is written, so a launcher that cannot
    start here (no SLURM) fails with one line and leaves no runs folder behind."""
    try:
        import submitit
    except ImportError:
        raise FerbenchError("--launcher submitit needs the cluster extra: pip install 'ferbench[cluster]'") from None
    folder = runs_dir / ".submitit"
    try:
        ex = submitit.AutoExecutor(folder=folder) if cfg.executor == "auto" else submitit.AutoExecutor(folder=folder, cluster=cfg.executor)
    except Exception as e:  # noqa: BLE001  (e.g. the slurm executor on a machine without SLURM)
        raise FerbenchError(f"--executor {cfg.executor}: submitit cannot start it here ({first_line(e, 200)})") from None
    params: dict[str, Any] = {"timeout_min": cfg.timeout_min, "cpus_per_task": cfg.cpus_per_task, "name": "ferbench"}
    if ex.cluster == "slurm":
        params.update(slurm_partition=cfg.partition, gpus_per_node=cfg.gpus_per_node, mem_gb=cfg.mem_gb)
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def run_submitit(jobs: list[Job], ex: Any, runs_dir: Path, data_root: str | None, device: str,
                 threads: int | None, on_outcome: OnOutcome | None = None) -> list[Outcome]:
    """One cluster job per ferbench job through the executor `submitit_executor` made, wave by wave."""

    def collect(j: Job, h: Any) -> Outcome:
        try:
            return _outcome(j, h.result())
        except Exception as e:  # noqa: BLE001  (a cluster job can die in many ways; record and go on)
            return Outcome(j, "failed", reason=f"cluster job {h.job_id}: {first_line(e, 300, last=True)}")

    submit = lambda j: ex.submit(execute_one, j.model_dump_json(), str(runs_dir), data_root, device, threads)  # noqa: E731
    return run_waves(jobs, submit, collect, on_outcome)


SMALL_MODEL_GMACS = 0.05  # Deep-Emotion 0.004, mini-Xception 0.010; ResNet-18 at 48 px is 0.09
MIN_JOB_SECONDS = 120.0  # a worker process costs seconds to start: worth it only for jobs of minutes


def cpu_layout(jobs: list[Job], device: Any, launcher: Any, threads: int | None, num_classes: dict[str, int],
               estimates: dict[str, float | None]) -> tuple[int, int | None, dict[str, Any]]:
    """(workers, threads per job, the record of why) for a local CPU run.

    Small models (under SMALL_MODEL_GMACS a forward at their input size) use one core per thread
    poorly: with two or more jobs to run and neither `launcher.workers` nor `--threads` given, each
    job gets a one-thread process of its own, as many at once as there are cores (`ferbench bench
    small`: 1.24-1.44x the images/s of one two-thread process for mini-Xception on an idle 2-core EPYC, and
    two-thread processes stall each other when the machine is shared), provided `plan`'s estimate
    gives every job at least MIN_JOB_SECONDS (starting a process costs seconds; tiny jobs, and runs
    without an estimate, stay in this process with its progress display). Anything else runs as asked.
    """
    import os

    import torch

    asked = {"workers": launcher.workers, "threads_per_job": threads or torch.get_num_threads(), "rule": "as configured"}
    if (device.type != "cpu" or launcher.name != "local" or "workers" in launcher.model_fields_set
            or threads is not None or len(jobs) < 2
            or any(estimates.get(j.id) is None or estimates[j.id] < MIN_JOB_SECONDS for j in jobs)):
        return launcher.workers, threads, asked
    from ferbench.cost import model_cost

    costs = {}
    for j in jobs:
        key = (j.model.arch, repr(sorted(j.model.options.items())), j.train.input_size, j.train.in_chans)
        if key not in costs:
            costs[key] = model_cost(j.model.arch, j.train.input_size, num_classes.get(j.id, 7), j.train.in_chans,
                                    timed=False, **j.model.options)["gmacs"]
    if max(costs.values()) >= SMALL_MODEL_GMACS:
        return launcher.workers, threads, asked
    workers = min(os.cpu_count() or 1, len(jobs))
    return workers, 1, {"workers": workers, "threads_per_job": 1,
                        "rule": f"small models (at most {max(costs.values()):.3f} GMACs < {SMALL_MODEL_GMACS}): one "
                                "single-thread process per core, side by side"}
