"""The Python API under the CLI: plan, run, report and compare a spec, list models, read a dataset.

Every `ferbench` command is parse -> one call here -> print; a Python user or a test gets the same
results without a subprocess. Nothing here prints or reads argv: a run reports what it does through
`RunHooks` (the CLI's shows progress bars). Bad input raises `FerbenchError` (one line) before
anything is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferbench import RUNS_DIR
from ferbench.errors import FerbenchError, JobFailed
from ferbench.spec import Job, Spec, expand, load_spec

LONG_RUN_S = 24 * 3600  # a spec estimated longer than this gets a warning before it starts


@dataclass
class PlannedJob:
    job: Job
    status: str  # done | resume | new | evaluate (no training) | failed (runs again) | other data | model changed | unverifiable
    epochs_done: int
    estimate_s: float | None  # what is left of it; None when not estimated
    conflict: str | None = None  # why its record cannot be reused (status "other data", "model changed", "unverifiable")
    trained_in: str | None = None  # status evaluate: the finished record whose training it reuses
    problem: str | None = None  # why the job's model cannot run (it will fail with this reason; the rest runs)
    estimate_max_s: float | None = None  # under early stopping, the time if it never stops early (else = estimate_s)
    refused_donors: list[str] = field(default_factory=list)  # records that would hold its training but do not check

    @property
    def most_s(self) -> float | None:
        return self.estimate_s if self.estimate_max_s is None else self.estimate_max_s


@dataclass
class Plan:
    """A spec expanded, with what each job would do on `device` and how long it would take."""

    spec: Spec
    profile: str | None
    device: Any
    runs_dir: Path
    jobs: list[PlannedJob] = field(default_factory=list)
    datasets: dict[str, Any] = field(default_factory=dict)

    @property
    def estimate_s(self) -> float | None:
        """Seconds left to run, the fewest: jobs under early stopping counted until the earliest epoch
        they can stop at (`estimate.epochs_left`)."""
        return self._total("estimate_s")

    @property
    def estimate_max_s(self) -> float | None:
        """Seconds left if no job stops early (equal to estimate_s without early stopping)."""
        return self._total("most_s")

    def _total(self, attr: str) -> float | None:
        left = [getattr(p, attr) for p in self.jobs if p.status != "done" and not p.problem]  # a job that cannot run costs nothing
        if any(s is None for s in left) or (not left and any(p.problem for p in self.jobs)):
            return None
        return sum(left)

    def estimate_text(self) -> str | None:
        """'3 h 10 min', or 'at least 3 h 10 min (early stopping decides; at most 15.8 days)'."""
        from ferbench.estimate import format_seconds

        low, high = self.estimate_s, self.estimate_max_s
        if low is None:
            return None
        if high is None or high <= low:
            return format_seconds(low)
        return f"at least {format_seconds(low)} (early stopping decides; at most {format_seconds(high)})"

    def problems(self) -> list[str]:
        """A line per job whose model cannot run: it will fail with this reason and the rest will run."""
        return [f"{p.job.id} will fail: {p.problem}" for p in self.jobs if p.problem]

    def warning(self) -> str | None:
        """A line for a spec that would run for days, naming the spec's smaller profiles."""
        total = self.estimate_s  # the fewest: a run early stopping may end sooner is not warned about by its cap
        if total is None or total < LONG_RUN_S:
            return None
        smaller = [p for p in self.spec.profiles if p != self.profile]
        hint = f"; try --profile {' or --profile '.join(smaller)}" if smaller else ""
        return f"estimated {self.estimate_text()} on {self.device}{hint} (`ferbench plan` lists each job)"

    def leakage(self) -> list[str]:
        """A line per dataset split whose test set is not independent of its training set (subjects
        on both sides, near-identical images across them): `data.leakage` notes."""
        from ferbench.runner import dataset_key

        out = []
        for j in self.jobs:
            note = self.datasets[dataset_key(j.job)].notes.get("leakage")
            line = f"dataset {j.job.dataset.id} ({j.job.dataset.options or 'default split'}): {note}" if note else None
            if line and line not in out:
                out.append(line)
        return out


class RunHooks:
    """What a run tells its caller; the defaults ignore it all."""

    def start(self, plan: Plan, launcher: str) -> None: ...
    def progress_for(self, job: Job) -> Any: return None  # a progress sink for the job (engine.train.Progress)
    def outcome(self, outcome: Any) -> None: ...
    def done(self) -> None: ...


def check_loggers(names: list[str]) -> None:
    """`--log` values, checked as the flag they are (not as the spec field they become): one line."""
    from ferbench.spec import LOGGERS

    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise FerbenchError(f"--log {unknown[0]}: unknown logger (expected one of: {', '.join(LOGGERS)})")


def load(spec_path: str | Path, profile: str | None = None, overrides: list[tuple[str, Any]] | None = None
         ) -> tuple[Spec, list[Job]]:
    """A validated spec (profile and `key=value` overrides applied) and its jobs."""
    from ferbench.data import fold_count

    from ferbench.models import add_spec_folder

    spec = load_spec(spec_path, profile, overrides)
    add_spec_folder(Path(spec_path).parent)  # a spec's own model module may sit beside it
    return spec, expand(spec, profile, fold_count)


def plan_spec(spec_path: str | Path, profile: str | None = None, overrides: list[tuple[str, Any]] | None = None,
              runs_dir: str | Path = RUNS_DIR, data_root: str | None = None, device: str = "auto",
              estimate: bool = True) -> Plan:
    """The jobs a run would have, their ids, which are finished, and each one's estimated time left."""
    from ferbench.machine import pick_device
    from ferbench.runner import prepare

    spec, jobs = load(spec_path, profile, overrides)
    datasets = prepare(jobs, data_root)
    return _plan(spec, profile, jobs, datasets, Path(runs_dir), pick_device(device), estimate)


def _plan(spec: Spec, profile: str | None, jobs: list[Job], datasets: dict[str, Any], runs_dir: Path, device: Any,
          estimate: bool) -> Plan:
    from ferbench.estimate import epochs_done, epochs_left, job_seconds, probe
    from ferbench.memory import check_job_batches
    from ferbench.records import read_manifest
    from ferbench.runner import dataset_key, find_trained, record_conflict

    plan = Plan(spec, profile, device, runs_dir, datasets=datasets)
    for job in jobs:
        job_dir = runs_dir / job.spec / job.id
        manifest = read_manifest(job_dir)
        done = epochs_done(job_dir)
        state = {"complete": "done", "failed": "failed"}.get(manifest.get("status", ""), "resume" if done else "new")
        ds = datasets[dataset_key(job)]
        found = record_conflict(job, ds, job_dir, manifest)
        conflict = found[1] if found else None
        refused: list[str] = []
        donor = find_trained(job, ds, runs_dir, refused) if state in ("new", "failed") and job.train.epochs else None
        if found:
            state = found[0]
        elif donor is not None or (state == "new" and job.train.epochs == 0):
            state, done = "evaluate", job.train.epochs
        secs, most, problem = None, None, None
        if state in ("done", "other data", "model changed", "unverifiable"):
            secs = 0.0
        else:
            try:
                check_job_batches(job, ds.num_classes, device, len(ds.splits["train"]), train=state != "evaluate")
            except JobFailed as e:
                problem = str(e)
        if secs is None and estimate and problem is None:
            fewest, at_most = epochs_left(job, job_dir, done if state in ("resume", "evaluate") else 0)
            try:
                p = probe(job, ds.num_classes, device)
                secs, most = job_seconds(job, ds, p, fewest), job_seconds(job, ds, p, at_most)
            except JobFailed as e:
                problem = str(e)
        plan.jobs.append(PlannedJob(job, state, done, secs, conflict, donor.name if donor else None, problem, most, refused))
    return plan


def run_spec(spec_path: str | Path, profile: str | None = None, overrides: list[tuple[str, Any]] | None = None,
             runs_dir: str | Path = RUNS_DIR, data_root: str | None = None, device: str = "auto",
             threads: int | None = None, hooks: RunHooks | None = None, estimate: bool = True,
             train: bool = True) -> list[Any]:
    """Train and evaluate every job of a spec (finished ones skipped, interrupted ones resumed) with
    the spec's launcher (`overrides` may set `launcher.*`); returns each job's `Outcome`.

    With `train=False` (`ferbench eval`) nothing trains: a job is evaluated when a finished record
    holds its training (it differs only in evaluation settings) or it has `train.epochs: 0`; any
    other unfinished job is returned as `untrained` and left alone."""
    from ferbench.engine import dist
    from ferbench.machine import check_threads
    from ferbench.records import check_writable
    from ferbench.runner import prepare

    hooks = hooks or RunHooks()
    runs_dir = Path(runs_dir)
    check_threads(threads)
    spec, jobs = load(spec_path, profile, overrides)
    check_writable(runs_dir)
    datasets = prepare(jobs, data_root)
    ddp = dist.init_from_env()
    try:
        return _run_jobs(spec, profile, jobs, datasets, runs_dir, data_root, device, threads, hooks, estimate, train, ddp)
    finally:
        if ddp:
            dist.finish()


def _run_jobs(spec: Spec, profile: str | None, jobs: list[Job], datasets: dict, runs_dir: Path, data_root: str | None,
              device: str, threads: int | None, hooks: RunHooks, estimate: bool, train: bool, ddp: bool) -> list[Any]:
    """run_spec's work once the spec is loaded and its data prepared (inside the process group, if any)."""
    import torch

    from ferbench.engine import dist
    from ferbench.launch import cpu_layout, run_local, run_submitit, run_workers, submitit_executor
    from ferbench.machine import LAYOUT_ENV, pick_device
    from ferbench.memory import check_workers_memory
    from ferbench.records import write_spec_snapshot
    from ferbench.runner import Outcome, dataset_key

    dev = dist.local_device() if ddp and device == "auto" else pick_device(device)
    lc = spec.launcher
    if ddp and (lc.name != "local" or lc.workers > 1):
        raise FerbenchError("under torchrun each job runs data-parallel in-process: drop --launcher/--workers")
    if threads:
        torch.set_num_threads(threads)
    plan = _plan(spec, profile, jobs, datasets, runs_dir, dev, estimate and not ddp and lc.name == "local")
    conflict = next((p.conflict for p in plan.jobs if p.conflict), None)
    if conflict:  # a record made from other data, by another model or unverifiable is never reused, resumed or overwritten
        raise FerbenchError(conflict)
    all_jobs = jobs
    untrained = [] if train else [p for p in plan.jobs if p.status not in ("done", "evaluate")]
    jobs = [j for j in jobs if j not in [p.job for p in untrained]]
    if not dist.is_main():  # data-parallel ranks > 0 compute, rank 0 reports and writes
        return run_local(jobs, runs_dir, datasets, dev)
    executor = submitit_executor(runs_dir, lc) if lc.name == "submitit" else None
    to_train = [p.job for p in plan.jobs if p.status in ("new", "resume", "failed") and p.job in jobs]
    classes = {j.id: datasets[dataset_key(j)].num_classes for j in to_train}
    workers, threads, layout = cpu_layout(to_train, dev, lc, threads, classes, {p.job.id: p.estimate_s for p in plan.jobs})
    if lc.name == "local" and workers > 1:
        check_workers_memory(to_train, classes, workers, dev)
    write_spec_snapshot(spec, runs_dir)
    os.environ[LAYOUT_ENV] = json.dumps(layout)  # each job's manifest records it (spawned workers inherit it)
    hooks.start(plan, "submitit" if lc.name == "submitit" else (f"{workers} workers x {threads or torch.get_num_threads()} "
                                                                 "thread(s)" if workers > 1 else "local"))
    try:
        if lc.name == "submitit":
            outcomes = run_submitit(jobs, executor, runs_dir, data_root, str(dev), threads, hooks.outcome)
        elif workers > 1:
            outcomes = run_workers(jobs, runs_dir, data_root, str(dev), workers, threads, hooks.outcome)
        else:
            outcomes = run_local(jobs, runs_dir, datasets, dev, hooks.progress_for, hooks.outcome)
        for p in untrained:
            why = (f"the record that would hold its training cannot be verified and is never reused ({p.refused_donors[0]})"
                   if p.refused_donors else "no finished record holds its training")
            outcomes.append(Outcome(p.job, "untrained", reason=f"{why}: `ferbench run` it"))
            hooks.outcome(outcomes[-1])
    finally:
        os.environ.pop(LAYOUT_ENV, None)
        hooks.done()
    if not untrained:
        return outcomes
    by_id = {o.job.id: o for o in outcomes}
    return [by_id[j.id] for j in all_jobs if j.id in by_id]


def report_spec(target: str | None = None, runs_dir: str | Path = RUNS_DIR, out: str | Path = "reports",
                formats: str = "md,html", with_records: bool = False) -> list[Path]:
    """Render reports/<spec>/index.html and report.md (and the reports index) from run records;
    `formats` adds exports: csv, json (tidy results, verdicts), latex (the paper's table layout)."""
    from ferbench.report import render_reports
    from ferbench.report.exports import parse_formats

    return render_reports(target, Path(runs_dir), Path(out), tuple(parse_formats(formats)), with_records)


def compare(a: str, b: str, runs_dir: str | Path = RUNS_DIR, dataset: str | None = None,
            out: str | Path | None = None, published: str | Path | None = "reports") -> tuple[dict[str, Any], list[Path]]:
    """Two families (or model ids) side by side with paired statistics; also written under `out` if given.
    With no complete run under `runs_dir`, the records published under `published` are compared."""
    from ferbench.records import check_outside_records
    from ferbench.report.compare import compare as compare_records, write_compare

    if out is not None:
        check_outside_records(Path(out))
    result = compare_records(a, b, Path(runs_dir), dataset, Path(published) if published else None)
    written = write_compare(result, Path(out), Path(published) if published else None) if out is not None else []
    return result, written


def find_run(run: str | Path, runs_dir: str | Path = RUNS_DIR) -> Path:
    """A run folder named by its path, or as <spec>/<job-id> under `runs_dir`."""
    path = Path(run)
    if not path.is_dir() and (Path(runs_dir) / path).is_dir():
        path = Path(runs_dir) / path
    if not path.is_dir():
        raise FerbenchError(f"{run}: no such run folder (give runs/<spec>/<job-id>, or <spec>/<job-id> under --runs-dir)")
    return path


def predict(run: str | Path, inputs: list[str | Path], which: str = "last", tta: str | None = None,
            runs_dir: str | Path = RUNS_DIR, out: str | Path | None = None, *, detect: bool = False,
            batch_size: int | None = None, device: str = "cpu", top_k: int = 1, trust_code: bool = False) -> Any:
    """Class probabilities for image files and folders from a finished run's model (`predict.Predictions`):
    face crops, or with `detect` every face found in photos; also written to `out` (.csv or .json)
    when given, if any image was predicted."""
    from ferbench.predict import check_device, predict_files, write_predictions
    from ferbench.spec import TTA_MODES
    from ferbench.trained import load_run

    if tta is not None and tta not in TTA_MODES:
        raise FerbenchError(f"--tta {tta!r}: expected {', '.join(TTA_MODES[:-1])} or {TTA_MODES[-1]}")
    if batch_size is not None and not 1 <= batch_size <= 4096:
        raise FerbenchError(f"--batch-size {batch_size}: expected 1 to 4096 images")
    if top_k < 1:
        raise FerbenchError(f"--top-k {top_k}: expected at least 1")
    if out is not None and Path(out).suffix.lower() not in (".csv", ".json"):
        raise FerbenchError(f"--out {out}: expected a .csv or .json file")
    if out is not None:
        from ferbench.records import check_outside_records

        check_outside_records(Path(out).parent)
    device = check_device(device)
    if detect:
        from ferbench.detect import cascade

        cascade()  # OpenCV missing: one line before the model loads
    result = predict_files(load_run(find_run(run, runs_dir), which, trust_code), list(inputs), tta, detect=detect,
                           batch_size=batch_size, device=device, top_k=top_k)
    if out is not None and result.files:
        write_predictions(result, Path(out))
    return result


def export(run: str | Path, fmt: str = "onnx", which: str = "last", out: str | Path | None = None,
           runs_dir: str | Path = RUNS_DIR, tolerance: float = 1e-4, trust_code: bool = False) -> Any:
    """A finished run's model as ONNX, TorchScript or a torch.export program, with its sidecar JSON and parity check (`export.Exported`)."""
    from ferbench.export import default_path, export_model
    from ferbench.trained import load_run

    from ferbench.export import SUFFIX

    if fmt not in SUFFIX:
        raise FerbenchError(f"--format {fmt!r}: expected {', '.join(SUFFIX)}")
    if not 0 < tolerance < float("inf"):
        raise FerbenchError(f"--tolerance {tolerance}: expected a positive number (the largest logit difference accepted)")
    from ferbench.records import check_outside_records

    if out is not None:  # before the model loads
        check_outside_records(Path(out).parent)
    tm = load_run(find_run(run, runs_dir), which, trust_code)
    if out is None:  # the default exports/ folder too, when run from inside a runs folder
        check_outside_records(default_path(tm, fmt).parent)
    return export_model(tm, fmt, Path(out) if out else default_path(tm, fmt), tolerance)


def size_claims() -> list[dict[str, Any]]:
    """Measured params and GMACs beside the papers' published sizes (`models --claims`)."""
    from ferbench.published_sizes import claims_table

    return claims_table()


def model_cost(name: str, input_size: int = 224, num_classes: int = 7, in_chans: int = 3,
               **options: Any) -> dict[str, Any]:
    """Params, GMACs, GFLOPs and the median batch-1 CPU latency of a model (`ferbench cost`)."""
    from ferbench.cost import model_cost as measure

    return measure(name, input_size, num_classes, in_chans, **options)


def plot_dataset(name: str, out: str | Path, data_root: str | None = None, path: str | None = None,
                 options: dict[str, Any] | None = None) -> list[Path]:
    """Class bars per split, example faces, annotator agreement (`ferbench data plot`); the files written."""
    from ferbench.records import check_outside_records
    from ferbench.report.datafigs import plot_dataset as plot

    check_outside_records(Path(out))
    return plot(name, Path(out), data_root, path, options or {})


def list_models() -> list[dict[str, Any]]:
    """Every registered variant with its family, parameter count (7 classes, 224 input) and options."""
    from ferbench.cost import count_params
    from ferbench.models import create_model, variants

    return [{"name": name, "family": v.family, "params": count_params(create_model(name, 7, 224)), "paper": v.paper,
             "options": list(v.options), "description": v.description} for name, v in sorted(variants().items())]


def data_info(name: str, options: dict[str, Any] | None = None, path: str | None = None,
              data_root: str | None = None) -> dict[str, Any]:
    """Per split: total and per-class counts of a dataset (what survives its label protocol), and the
    training split's per-channel pixel mean and std in [0, 1] (what `normalize: custom` takes)."""
    from ferbench.data import load_dataset
    from ferbench.data.augment import split_channel_stats

    ds = load_dataset(name, options or {}, path, data_root)
    mean, std = split_channel_stats(ds.splits["train"].images)
    return {"name": ds.name, "classes": ds.classes, "splits": ds.counts(),
            "train_channel_stats": {"mean": [round(v, 8) for v in mean], "std": [round(v, 8) for v in std]}}


BENCH_KINDS = ("data", "train", "eval", "csv", "all", "small", "gpu", "trace")


MAX_BENCH_IMAGES = 1_000_000  # the synthetic epoch's 48x48 images: 2.3 GB


def check_bench_sizes(models: dict[str, str], device: Any, size: int, batch: int, images: int) -> None:
    """One line for a `bench gpu/trace` size a spec would refuse, or a batch that cannot fit (the
    loops hold up to 8 pre-made batches beside the training step: `memory.model_need`)."""
    from ferbench.memory import GIB, MEMORY_ENV, device_memory, model_need
    from ferbench.models import create_model
    from ferbench.spec import INPUT_SIZES

    if not INPUT_SIZES[0] <= size <= INPUT_SIZES[1]:
        raise FerbenchError(f"--size {size}: expected {INPUT_SIZES[0]} to {INPUT_SIZES[1]} pixels")
    if not 1 <= batch <= 65536:
        raise FerbenchError(f"--batch {batch}: expected 1 to 65536 images")
    if not batch <= images <= MAX_BENCH_IMAGES:
        raise FerbenchError(f"--images {images}: expected one batch ({batch}) to {MAX_BENCH_IMAGES:,} images")
    have, source = device_memory(device)
    for arch in models:
        need = model_need(lambda: create_model(arch, 7, size), 3, size, batch, batch)
        made = min(8, images // batch) * batch * 3 * size * size * 4
        if need is not None and need.train + made > have:
            raise FerbenchError(f"--batch {batch} at --size {size}: {arch} needs at least {(need.train + made) / GIB:.3g} GiB "
                                f"(activations counted on the meta device, 8 pre-made batches), above {source} "
                                f"({have / GIB:.3g} GiB): lower --batch or --size ({MEMORY_ENV} sets the memory to assume)")


def bench(which: str = "all", data_root: str | None = None, device: str = "cuda", models: list[str] | None = None,
          size: int = 224, batch: int = 64, images: int = 6400, epochs: int = 3, compile: bool = False,
          graphs: bool = False) -> dict[str, Any]:
    """`ferbench bench WHICH`: {"which", "hardware", "kernels", "rows"}: the rows measured, the machine
    they ran on, and the kernels the batch pipeline chose (with the timings behind each choice)."""
    from ferbench.data.kernels import explain
    from ferbench.machine import hardware, pick_device

    if which not in BENCH_KINDS:
        raise FerbenchError(f"bench {which!r}: expected one of {', '.join(BENCH_KINDS)}")
    dev = None
    if which in ("gpu", "trace"):
        from ferbench.bench.gpu import DEFAULT_MODELS, parse_models, run_gpu_bench

        dev = pick_device(device)
        chosen = parse_models(models or [])
        check_bench_sizes(chosen or DEFAULT_MODELS, dev, size, batch, images)
        if which == "gpu":
            rows = run_gpu_bench(dev, chosen, size, batch, images, compile, epochs=epochs, graphs=graphs)
        else:
            from ferbench.bench.torchprof import trace_epoch

            rows = [trace_epoch(arch, recipe, dev, size, batch, images) for arch, recipe in (chosen or DEFAULT_MODELS).items()]
    elif which == "small":
        from ferbench.bench.small import run_small

        rows = run_small()
    else:
        from ferbench.bench.cpu import run_bench

        rows = run_bench(which, data_root)
    return {"which": which, "hardware": hardware(dev), "kernels": explain(), "rows": rows}
