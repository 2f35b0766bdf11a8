"""`run_job`: the only place where data, model and engine meet. Launchers decide where it runs.

Flow: `prepare` validates every job (model names and options, dataset options, data files) and
loads each dataset once, before anything is written; then each job takes its folder's lock, skips
itself if complete, resumes from its checkpoint if one exists, and writes its run record.
"""

from __future__ import annotations

import contextlib
import copy
import json
import platform
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ferbench import __version__
from ferbench.data import FerDataset, load_dataset, parse_options
from ferbench.errors import FerbenchError, JobFailed
from ferbench.hostmem import keep_freed_memory
from ferbench.models import check_options, create_model
from ferbench.runs import COMPLETE, FAILED, RUNNING, is_complete, job_lock, write_json_atomic, write_npz_atomic, write_text_atomic
from ferbench.spec import Job

import yaml


@dataclass
class Outcome:
    job: Job
    status: str  # complete | skipped | failed | locked
    seconds: float = 0.0
    test_acc: float | None = None
    reason: str = ""


def dataset_key(job: Job) -> str:
    d = job.dataset
    return json.dumps([d.name, d.options, d.path, d.subset.model_dump() if d.subset else None], sort_keys=True)


def prepare(jobs: list[Job], data_root: str | None) -> dict[str, FerDataset]:
    """Validate every job and load each distinct dataset once. Raises FerbenchError, writes nothing."""
    for j in jobs:
        check_options(j.model.arch, j.model.options, where=f"models.{j.model.id}: ")
        parse_options(j.dataset.name, j.dataset.options, where=f"datasets.{j.dataset.id}: ")
    loaded: dict[str, FerDataset] = {}
    for j in jobs:
        key = dataset_key(j)
        if key not in loaded:
            subset = j.dataset.subset.model_dump() if j.dataset.subset else None
            loaded[key] = load_dataset(j.dataset.name, j.dataset.options, j.dataset.path, data_root, subset)
        t = j.train
        if t.loss in ("ldl", "sampled") and t.ldl_source == "votes" and loaded[key].splits["train"].targets is None:
            raise FerbenchError(f"models.{j.model.id}: train.loss={t.loss} needs target distributions, but dataset "
                                f"{j.dataset.id!r} has no annotator votes (use ldl_source: teacher with depends_on)")
    return loaded


def check_writable(runs_dir: Path) -> None:
    """Fail before any work if runs_dir cannot hold records: try a temporary file where it will go."""
    import tempfile

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


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: Any) -> dict[str, Any]:
    import timm
    import torch

    from ferbench.engine.optim import implementation

    env = {
        "ferbench": __version__, "git_commit": _git_commit(), "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__, "timm": timm.__version__,
        "numpy": np.__version__, "device": str(device), "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "host_allocator": keep_freed_memory(), "optimizer_implementation": implementation(device.type),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["determinism_note"] = ("CUDA: grid_sample (STN, augmentation) and adaptive pooling have no deterministic "
                                   "backward; results are repeatable on the CPU, close but not bitwise on CUDA")
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def pick_device(name: str = "auto") -> Any:
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FerbenchError(f"--device {name}: CUDA is not available on this machine")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned convolutions; recorded in each manifest's environment
    return device


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_teacher(job: Job, runs_dir: Path, num_classes: int, device: Any):
    """The frozen LDG teacher: the depends_on job's best-validation weights."""
    from ferbench.engine.train import load_checkpoint

    tdir = runs_dir / job.spec / job.depends_on
    if not is_complete(tdir):
        raise JobFailed(f"teacher job {job.depends_on} is not complete")
    tjob = Job.model_validate(yaml.safe_load((tdir / "job.yaml").read_text())["job"])
    ck = load_checkpoint(tdir / "checkpoint.pt")
    model = create_model(tjob.model.arch, num_classes, tjob.train.input_size, tjob.train.in_chans, **tjob.model.options)
    model.load_state_dict(ck.get("best_state") or ck["model"])
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if (tjob.train.input_size, tjob.train.in_chans, tjob.train.normalize) != (job.train.input_size, job.train.in_chans, job.train.normalize):
        raise JobFailed("teacher and student must share input_size, in_chans and normalize")
    return model


def run_job(
    job: Job,
    runs_dir: Path,
    ds: FerDataset,
    device: Any,
    progress: Any = None,
    blocking: bool = False,
    stop_after_steps: int | None = None,
) -> Outcome:
    """Train and evaluate one job into runs_dir/<spec>/<job-id>/; resumable and idempotent."""
    import torch

    keep_freed_memory()  # every process that trains: local, --workers, submitit, torchrun

    from ferbench.engine import dist
    from ferbench.engine.train import CheckpointWriter, fit

    job_dir = runs_dir / job.spec / job.id
    t0 = time.perf_counter()
    main = dist.is_main()
    lock = job_lock(job_dir, blocking or dist.world()[1] > 1) if main else contextlib.nullcontext(True)
    with lock as got:
        if not dist.broadcast(got):
            return Outcome(job, "locked", reason="another ferbench process holds this job")
        if dist.broadcast(is_complete(job_dir) if main else None):
            return Outcome(job, "skipped", test_acc=_stored_acc(job_dir) if main else None)
        manifest: dict[str, Any] = {
            "status": RUNNING, "job_id": job.id, "seed": job.seed, "started": _now(),
            "environment": {**environment(device), "data_parallel_processes": dist.world()[1]},
            "data_files": ds.files, "data_notes": ds.notes, "classes": ds.classes, "class_counts": ds.counts(),
            "fidelity": {"recipe": job.recipe, **job.model.options},
        }
        if main:
            write_text_atomic(job_dir / "job.yaml", yaml.safe_dump({"id": job.id, "job": job.model_dump(mode="json")}, sort_keys=False))
            write_json_atomic(job_dir / "manifest.json", manifest)
        try:
            torch.manual_seed(job.seed)
            np.random.seed(job.seed % 2**32)
            model = create_model(job.model.arch, ds.num_classes, job.train.input_size, job.train.in_chans, **job.model.options)
            if job.model.weights:
                from ferbench.engine.weights import load_pretrained

                info = load_pretrained(model, job.model.weights)
                manifest["pretrained"] = {"file": job.model.weights, **info}
                if main:
                    write_json_atomic(job_dir / "manifest.json", manifest)
                if progress is not None and hasattr(progress, "note"):
                    progress.note(f"pretrained {job.model.weights}: loaded {len(info['loaded'])} tensors, "
                                  f"kept init for {len(info['kept_init'])}: {', '.join(info['kept_init'][:8])}"
                                  + (" ..." if len(info["kept_init"]) > 8 else ""))
            teacher = load_teacher(job, runs_dir, ds.num_classes, device) if job.depends_on else None
            with CheckpointWriter() as writer:  # the last checkpoint is written while the test splits are evaluated
                res = fit(model, ds, job.train, job.eval, job.seed, device, job_dir, teacher, progress, stop_after_steps,
                          writer)
                arrays, metrics = _evaluate(job, ds, res, device)
            if not main:
                return Outcome(job, "complete", time.perf_counter() - t0)
            metrics["profile"] = _profile(job, ds.num_classes)
            write_npz_atomic(job_dir / "predictions.npz", arrays)
            write_json_atomic(job_dir / "metrics.json", metrics)
            manifest.update(status=COMPLETE, finished=_now(), seconds=time.perf_counter() - t0)
            write_json_atomic(job_dir / "manifest.json", manifest)
            return Outcome(job, "complete", time.perf_counter() - t0, _stored_acc(job_dir))
        except JobFailed as e:
            manifest.update(status=FAILED, finished=_now(), failure=str(e))
            if main:
                write_json_atomic(job_dir / "manifest.json", manifest)
            return Outcome(job, "failed", time.perf_counter() - t0, reason=str(e))


def _evaluate(job: Job, ds: Any, res: Any, device: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Logits and classification reports on the job's eval splits, for the last and the best-validation model."""
    from ferbench.engine import dist
    from ferbench.engine.evaluate import predict
    from ferbench.metrics import classification_report

    arrays: dict[str, np.ndarray] = {}
    metrics: dict[str, Any] = {
        "best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "stopped_early": res.stopped_early,
        "tta": job.eval.tta, "classes": ds.classes,
        "selection": {"last": "model after the final epoch", "best": "model from the epoch with the best validation accuracy"},
    }
    best_model = None
    if res.best_state is not None:
        best_model = copy.deepcopy(res.model)
        best_model.load_state_dict(res.best_state)
    for split in job.eval.splits:
        s = ds.splits.get(split)
        if s is None:
            continue
        arrays[f"{split}.labels"] = s.labels
        if s.targets is not None:
            arrays[f"{split}.targets"] = s.targets
        metrics[split] = {}
        for which, m in (("last", res.model), ("best", best_model)):
            if m is None:
                continue
            logits = dist.sharded(lambda part: predict(m, part, job.train, device, job.eval.tta, job.eval.tta_resize_ratio), s.images)
            arrays[f"{split}.{which}.logits"] = logits
            metrics[split][which] = classification_report(logits, s.labels, ds.classes)
    return arrays, metrics


def _profile(job: Job, num_classes: int) -> dict[str, Any]:
    """Params and GMACs at the job's input size, latency at batch 1 on the CPU (eval mode)."""
    from ferbench.profile import count_flops, count_params, latency_ms

    m = create_model(job.model.arch, num_classes, job.train.input_size, job.train.in_chans, **job.model.options)
    flops = count_flops(m, job.train.input_size, job.train.in_chans)
    return {"params": count_params(m), "gmacs": flops / 2e9, "gflops": flops / 1e9,
            "latency_ms_cpu": latency_ms(m, job.train.input_size, job.train.in_chans, repeats=5),
            "input_size": job.train.input_size}


def _stored_acc(job_dir: Path) -> float | None:
    try:
        m = json.loads((job_dir / "metrics.json").read_text())
        return m["test"]["last"]["accuracy"]
    except (OSError, ValueError, KeyError):
        return None


def write_spec_snapshot(spec: Any, runs_dir: Path) -> None:
    """runs/<spec>/spec.yaml: the validated spec (claims, description) that report reads."""
    write_text_atomic(runs_dir / spec.name / "spec.yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def run_jobs(
    jobs: list[Job],
    runs_dir: Path,
    datasets: dict[str, FerDataset],
    device: Any,
    progress_for: Callable[[Job], Any] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """The in-process launcher: jobs in dependency order; jobs held by another process are
    revisited at the end with a blocking lock (so both processes finish with complete records)."""
    outcomes: dict[str, Outcome] = {}
    deferred: list[Job] = []
    failed: set[str] = set()
    for blocking, todo in ((False, jobs), (True, deferred)):
        for job in list(todo):
            if job.depends_on and job.depends_on in failed:
                o = Outcome(job, "failed", reason=f"teacher {job.depends_on} failed")
            else:
                o = run_job(job, runs_dir, datasets[dataset_key(job)], device,
                            progress_for(job) if progress_for else None, blocking)
            if o.status == "locked":
                deferred.append(job)
                continue
            if o.status == "failed":
                failed.add(job.id)
            outcomes[job.id] = o
            if on_outcome:
                on_outcome(o)
    return [outcomes[j.id] for j in jobs if j.id in outcomes]
