"""Launchers decide where `run_job` executes; they never change what a job computes.

- local (default): in-process, one job after another (`runner.run_jobs`).
- local with workers > 1: separate processes (spawn), at most `workers` at a time.
- submitit: one SLURM job per ferbench job through submitit's AutoExecutor (or its `local` and
  `debug` executors, which the tests use). Optional extra: `pip install ferbench[cluster]`.
Dependencies are honoured the same way everywhere: jobs run in waves, a job's wave starts after its
teacher's finished. Finished jobs are skipped inside `run_job`, so re-running a spec after some
cluster jobs failed runs only those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ferbench.errors import FerbenchError
from ferbench.runner import Outcome
from ferbench.spec import Job, LauncherConfig


def waves(jobs: list[Job]) -> list[list[Job]]:
    """Group jobs so that every job comes in a later wave than the job it depends on."""
    depth: dict[str, int] = {}
    for j in jobs:  # expand() lists dependencies first
        depth[j.id] = depth[j.depends_on] + 1 if j.depends_on in depth else 0
    out: list[list[Job]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for j in jobs:
        out[depth[j.id]].append(j)
    return out


def execute_one(job_json: str, runs_dir: str, data_root: str | None, device: str, threads: int | None) -> dict[str, Any]:
    """Run one job in this process (the function a worker or a SLURM job calls)."""
    import torch

    from ferbench.runner import pick_device, prepare, run_job

    if threads:
        torch.set_num_threads(threads)
    job = Job.model_validate_json(job_json)
    data = prepare([job], data_root)
    o = run_job(job, Path(runs_dir), next(iter(data.values())), pick_device(device), blocking=True)
    return {"id": job.id, "status": o.status, "seconds": o.seconds, "test_acc": o.test_acc, "reason": o.reason}


def _outcome(job: Job, r: dict[str, Any]) -> Outcome:
    return Outcome(job, r["status"], r.get("seconds", 0.0), r.get("test_acc"), r.get("reason", ""))


def run_waves(jobs: list[Job], submit: Callable[[Job], Any], collect: Callable[[Job, Any], Outcome],
              on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Submit each wave, collect its outcomes, and fail the students of failed teachers."""
    outcomes: list[Outcome] = []
    failed: set[str] = set()
    for wave in waves(jobs):
        handles = []
        for j in wave:
            if j.depends_on in failed:
                failed.add(j.id)
                outcomes.append(Outcome(j, "failed", reason=f"teacher {j.depends_on} failed"))
            else:
                handles.append((j, submit(j)))
        for j, h in handles:
            o = collect(j, h)
            if o.status == "failed":
                failed.add(j.id)
            outcomes.append(o)
            if on_outcome:
                on_outcome(o)
    return outcomes


def run_workers(jobs: list[Job], runs_dir: Path, data_root: str | None, device: str, workers: int,
                threads: int | None, on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
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


def run_submitit(jobs: list[Job], runs_dir: Path, data_root: str | None, device: str, cfg: LauncherConfig,
                 threads: int | None, on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    try:
        import submitit
    except ImportError:
        raise FerbenchError("--launcher submitit needs the cluster extra: pip install 'ferbench[cluster]'") from None
    folder = runs_dir / ".submitit"
    ex = submitit.AutoExecutor(folder=folder) if cfg.executor == "auto" else submitit.AutoExecutor(folder=folder, cluster=cfg.executor)
    params: dict[str, Any] = {"timeout_min": cfg.timeout_min, "cpus_per_task": cfg.cpus_per_task, "name": "ferbench"}
    if ex.cluster == "slurm":
        params.update(slurm_partition=cfg.partition, gpus_per_node=cfg.gpus_per_node, mem_gb=cfg.mem_gb)
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})

    def collect(j: Job, h: Any) -> Outcome:
        try:
            return _outcome(j, h.result())
        except Exception as e:  # noqa: BLE001  (a cluster job can die in many ways; record and go on)
            msg = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
            return Outcome(j, "failed", reason=f"cluster job {h.job_id}: {msg}")

    submit = lambda j: ex.submit(execute_one, j.model_dump_json(), str(runs_dir), data_root, device, threads)  # noqa: E731
    return run_waves(jobs, submit, collect, on_outcome)
