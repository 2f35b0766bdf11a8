"""`run_job`: the only place where data, model and engine meet. Launchers decide where it runs.

`prepare` validates every job (model names and options, dataset options, data files) and loads each
dataset once, before anything is written. Then `run_job` goes through named phases:

1. claim: take the job folder's lock; a finished job is skipped, a held one reported as locked;
2. build: the seeded model, its pretrained weights, the frozen teacher;
3. fit: train, resuming from the folder's checkpoint if there is one;
4. evaluate: logits and metrics on the eval splits, for the last and the best-validation model;
5. record: predictions, metrics, and the manifest marked complete (or failed, with the reason).

One `Manifest` object owns `manifest.json` from the claim to the end.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from ferbench.data import FerDataset, load_dataset, parse_options
from ferbench.data.kernels import chosen as chosen_kernels
from ferbench.errors import FerbenchError, JobFailed, first_line
from ferbench.fileio import read_text_bounded, sha256_file
from ferbench.hostmem import keep_freed_memory
from ferbench.machine import environment
from ferbench.memory import check_job_batches
from ferbench.models import build_model, check_logits, check_options, create_model, get_variant
from ferbench.records import (CHECKPOINT_FILE, COMPLETE, COST_FIELD, FAILED, HISTORY_FILE, JOB_FILE, MANIFEST_FILE, METRICS_FILE,
                              PREDICTIONS_FILE, RUNNING, copied_record, damaged, folder_problem, is_complete, job_lock, read_job,
                              read_manifest, remove_orphans, write_json_atomic, write_npz_atomic, write_text_atomic)
from ferbench.spec import Job


@dataclass
class Outcome:
    job: Job
    status: str  # complete | skipped | failed | locked
    seconds: float = 0.0
    test_acc: float | None = None
    reason: str = ""


def dataset_key(job: Job) -> str:
    """Jobs with equal keys share one loaded dataset."""
    d = job.dataset
    return json.dumps([d.name, d.options, d.path, d.subset.model_dump() if d.subset else None,
                       [t.model_dump() for t in d.cross]], sort_keys=True)


def prepare(jobs: list[Job], data_root: str | None) -> dict[str, FerDataset]:
    """Validate every job and load each distinct dataset once. Raises FerbenchError, writes nothing."""
    from ferbench.engine.losses import check_targets
    from ferbench.engine.sinks import check_available
    from ferbench.engine.weights import read_state_dict
    from ferbench.hub import resolve_weights

    check_available(sorted({name for j in jobs for name in j.log}))
    for j in jobs:
        if j.train.epochs == 0 and not j.model.weights:
            raise FerbenchError(f"models.{j.model.id}: train.epochs: 0 evaluates pretrained weights without training, "
                                "but the model names no weights: (a file, timm:<tag> or hf-hub:<org>/<repo>)")
        check_options(j.model.arch, j.model.options, where=f"models.{j.model.id}: ")
        parse_options(j.dataset.name, j.dataset.options, where=f"datasets.{j.dataset.id}: ")
    files = [j.model.weights for j in jobs if j.model.weights] + [j.model.teacher.weights for j in jobs if j.model.teacher]
    for weights in dict.fromkeys(files):
        read_state_dict(resolve_weights(weights).path)  # missing, not cached or unloadable: one line before any record
    loaded: dict[str, FerDataset] = {}
    for j in jobs:
        key = dataset_key(j)
        if key not in loaded:
            subset = j.dataset.subset.model_dump() if j.dataset.subset else None
            loaded[key] = load_dataset(j.dataset.name, j.dataset.options, j.dataset.path, data_root, subset)
            load_cross_targets(j, loaded[key], data_root)
        check_targets(j.train, loaded[key].splits["train"].targets is not None,
                      j.depends_on is not None or j.model.teacher is not None, j.dataset.id, where=f"models.{j.model.id}: ")
    return loaded


def load_cross_targets(job: Job, ds: FerDataset, data_root: str | None) -> None:
    """The datasets the job's dataset entry names under `cross`, loaded into `ds.cross` beside their
    class maps (checked here: one line for a bad target or map, before any record)."""
    from ferbench.data.crossmap import class_map

    for t in job.dataset.cross:
        where = f"datasets.{job.dataset.id}.cross.{t.id}"
        parse_options(t.name, t.options, where=f"{where}: ")
        target = load_dataset(t.name, t.options, t.path, data_root)
        ds.cross[t.id] = target, class_map(ds.classes, target.classes, t.map, where)


def data_conflict(job: Job, ds: FerDataset, job_dir: Path, manifest: dict[str, Any]) -> str | None:
    """Why the job's existing record (its folder `job_dir`, its `manifest`) cannot be reused with `ds`, or None.

    A job id leaves the data's location out (a moved dataset is still found), so the record says what
    it was made from: the content digest of the arrays (`FerDataset.content_digest`), or, in records
    made before it, the sha256 of each source file."""
    recorded, now = manifest.get("data_content_sha256"), ds.content_digest()
    if recorded is None:
        old, new = set((manifest.get("data_files") or {}).values()), set(ds.files.values())
        if not old or not new or old == new:
            return None
        recorded, now = ",".join(sorted(old))[:12], ",".join(sorted(new))[:12]
    if recorded == now:
        return None
    return (f"{job_dir}: this record was made from other data than dataset {job.dataset.id!r} now holds (sha256 "
            f"{recorded[:12]}... there, {now[:12]}... now); move the record away or use another --runs-dir")


def model_source(job: Job) -> dict[str, str]:
    """What defines the model a job builds, as the manifest records it: for a researcher's model
    (`module:function`, or a variant registered by another package) the sha256 of the file defining its
    builder, so an edit is another model; for ferbench's own variants, the ferbench version."""
    import inspect

    from ferbench import __version__

    build = get_variant(job.model.arch).build
    if getattr(build, "__module__", "").startswith("ferbench."):
        return {"builtin": f"ferbench {__version__}"}
    path = inspect.getsourcefile(build)
    digest = sha256_file(Path(path)) if path and Path(path).is_file() else "unknown (no source file)"
    return {"module": f"{build.__module__}:{build.__qualname__}", "file": str(path), "sha256": digest}


def model_conflict(job: Job, job_dir: Path, manifest: dict[str, Any]) -> str | None:
    """Why the job's existing record was made by another model than the job builds now (the user's
    module was edited), or None; records made before the source was recorded are not second-guessed."""
    recorded = manifest.get("model_source")
    if not isinstance(recorded, dict):
        return None
    now = model_source(job)
    key = "sha256" if "sha256" in now else "builtin"  # where a file lives does not matter, its content does
    if recorded.get(key) == now[key]:
        return None
    return (f"{job_dir}: this record was made by another version of model {job.model.id!r} ({key} "
            f"{str(recorded.get(key))[:24]} there, {now[key][:24]} now); move the record away or use another --runs-dir")


def record_conflict(job: Job, ds: FerDataset, job_dir: Path, manifest: dict[str, Any]) -> tuple[str, str] | None:
    """(status, reason) when a job's existing record cannot be reused, resumed or overwritten: it was made
    from other data, or by another version of the model, or cannot be verified (its manifest does not
    read, or a checkpoint has none: nothing says what it was trained on), or its folder is not ours to
    write (a symbolic link, not a folder); None when it can."""
    if problem := folder_problem(job_dir):
        return "unverifiable", problem
    if manifest.get("status") == "unreadable":
        return "unverifiable", (f"{job_dir}: {manifest.get('failure', 'manifest unreadable')}: a record that cannot be "
                                "verified is never resumed or reused; move it away or use another --runs-dir")
    if manifest.get("status") == "incomplete" and (job_dir / CHECKPOINT_FILE).exists():
        return "unverifiable", (f"{job_dir}: a {CHECKPOINT_FILE} without a manifest saying what it was trained on is "
                                "never resumed; move it away or use another --runs-dir")
    if why := data_conflict(job, ds, job_dir, manifest):
        return "other data", why
    reused = manifest.get("status") == COMPLETE or (job_dir / CHECKPOINT_FILE).exists()  # else it simply runs again
    if reused and (why := model_conflict(job, job_dir, manifest)):
        return "model changed", why
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """A job's `manifest.json`: created `running` at the claim, written whole (atomically) at each
    change of status; only the writing rank (rank 0 under torchrun) touches the file."""

    def __init__(self, job_dir: Path, writes: bool, **fields: Any) -> None:
        self.path, self.writes = job_dir / MANIFEST_FILE, writes
        self.data: dict[str, Any] = {"status": RUNNING, **fields, "started": _now()}
        self._save()

    def add(self, **fields: Any) -> None:
        """Add fields, written with the next change of status."""
        self.data.update(fields)

    def finish(self, status: str, seconds: float, **fields: Any) -> None:
        self.data.update(status=status, finished=_now(), seconds=seconds, **fields)
        self._save()

    def _save(self) -> None:
        if self.writes:
            write_json_atomic(self.path, self.data)


@contextlib.contextmanager
def claim(job_dir: Path, blocking: bool) -> Iterator[str | None]:
    """Phase 1: hold the job folder's lock; yields None to go ahead, or `locked` / `skipped`.
    Under torchrun rank 0 takes the lock and every rank gets its answer."""
    from ferbench.engine import dist

    main = dist.is_main()
    lock = job_lock(job_dir, blocking or dist.world()[1] > 1) if main else contextlib.nullcontext(True)
    with lock as got:
        if got and main:
            remove_orphans(job_dir)  # temporary files of a writer killed mid-write; none is live while we hold the lock
        if not dist.broadcast(got):
            yield "locked"
        elif dist.broadcast(is_complete(job_dir) if main else None):
            yield "skipped"
        else:
            yield None


def run_job(job: Job, runs_dir: Path, ds: FerDataset, device: Any, progress: Any = None, blocking: bool = False) -> Outcome:
    """Train and evaluate one job into runs_dir/<spec>/<job-id>/; resumable and idempotent."""
    from ferbench.engine import dist
    from ferbench.engine.checkpoint import CheckpointWriter
    from ferbench.engine.sinks import Tracked
    from ferbench.engine.train import NoProgress, precision

    keep_freed_memory()  # every process that trains: local, --workers, submitit, torchrun
    progress = progress or NoProgress()
    job_dir = runs_dir / job.spec / job.id
    t0 = time.perf_counter()
    with claim(job_dir, blocking) as held:
        if held == "locked":
            return Outcome(job, "locked", reason="another ferbench process holds this job")
        if held == "skipped":
            return Outcome(job, "skipped", test_acc=stored_test_accuracy(job_dir) if dist.is_main() else None)
        if dist.is_main():
            write_text_atomic(job_dir / JOB_FILE, yaml.safe_dump({"id": job.id, "job": job.model_dump(mode="json")}, sort_keys=False))
        manifest = Manifest(
            job_dir, dist.is_main(), job_id=job.id, seed=job.seed,
            environment={**environment(device), "data_parallel_processes": dist.world()[1]},
            data_files=ds.files, data_content_sha256=ds.content_digest(), data_notes=ds.notes, classes=ds.classes,
            class_counts=ds.counts(), image_shape=list(ds.splits["train"].images.shape[1:]),
            fidelity={"recipe": job.recipe, **job.model.options}, model_source=model_source(job),
        )
        progress = Tracked(progress, job.log if dist.is_main() else [], job, job_dir, runs_dir)
        try:
            model, teacher = build(job, ds, runs_dir, device, manifest, progress)
            manifest.add(precision=precision(job.train, device))
            with CheckpointWriter() as writer:  # the last checkpoint is written while the test splits are evaluated
                res = train_phase(job, ds, model, teacher, device, runs_dir, manifest, progress, writer)
                arrays, metrics = evaluate(job, ds, res, device)
            if not dist.is_main():
                return Outcome(job, "complete", time.perf_counter() - t0)
            record(job, job_dir, ds.num_classes, arrays, metrics)
            manifest.finish(COMPLETE, time.perf_counter() - t0, kernels=chosen_kernels())
            progress.final(metrics, int(res.history[-1].get("step", 0)) if res.history else 0)
            return Outcome(job, "complete", time.perf_counter() - t0, stored_test_accuracy(job_dir))
        except (JobFailed, FerbenchError, RuntimeError, ValueError, OSError) as e:  # the record says why; the spec goes on
            reason = str(e) if isinstance(e, (JobFailed, FerbenchError)) else f"{type(e).__name__}: {first_line(e, 300)}"
            try:
                manifest.finish(FAILED, time.perf_counter() - t0, failure=reason)
            except FerbenchError as not_written:  # a full disk: the record stays `running`, so a rerun resumes it
                reason += f" (and the record could not be updated: {not_written})"
            return Outcome(job, "failed", time.perf_counter() - t0, reason=reason)
        finally:
            progress.close()


def train_phase(job: Job, ds: FerDataset, model: Any, teacher: Any, device: Any, runs_dir: Path, manifest: Manifest,
                progress: Any, writer: Any) -> Any:
    """Phase 3: the trained models to evaluate. `train.epochs: 0` evaluates the weights as built; a job
    whose training a finished record already did (same `Job.training_id`, same data) reuses that
    record's stored models; anything else trains (resuming from the job's own checkpoint)."""
    import torch

    from ferbench.engine import dist
    from ferbench.engine.train import FitResult, fit

    job_dir = runs_dir / job.spec / job.id
    if job.train.epochs == 0:  # the weights as loaded, kept as the record's checkpoint (predict, export read it)
        from ferbench.engine.checkpoint import save_checkpoint

        if dist.is_main():
            save_checkpoint(job_dir / CHECKPOINT_FILE, {"model": model.state_dict(), "ema": None, "best_state": None,
                                                        "epoch": 0, "history": [], "rng_torch": torch.get_rng_state()})
        fmt = torch.channels_last if job.train.channels_last else torch.contiguous_format
        return FitResult(model.to(device, memory_format=fmt).eval(), None, -1, 0, False, [])
    donor = None
    if not (job_dir / CHECKPOINT_FILE).exists() and dist.world()[1] == 1:
        donor = find_trained(job, ds, runs_dir)
    if donor is None:
        return fit(model, ds, job.train, job.eval, job.seed, device, job_dir, teacher, progress, writer)
    progress.note(f"evaluating the training of {donor.name} (it differs from this job only in evaluation settings)")
    return reuse_training(job, donor, model, device, job_dir, manifest)


def find_trained(job: Job, ds: FerDataset, runs_dir: Path, refused: list[str] | None = None) -> Path | None:
    """A complete record of this spec, with its checkpoint, whose training is this job's (equal
    `training_id`), whose data is this job's data and whose files check (`records.damaged`); None if
    there is none. A record that would have served but cannot be verified (damaged files, or a job.yaml
    or manifest that does not read, in a folder of this job's model, dataset and seed) is never a
    donor: given a list, `refused` gets a line naming it and why."""
    want, kin = job.training_id, job.id.rsplit("__", 1)[0]
    for job_yaml in sorted((runs_dir / job.spec).glob("*/job.yaml")):
        folder = job_yaml.parent
        if folder.name == job.id or not (folder / CHECKPOINT_FILE).is_file():
            continue
        manifest = read_manifest(folder)
        try:
            other = read_job(folder)
        except FerbenchError as e:
            if folder.name.rsplit("__", 1)[0] == kin and refused is not None:
                refused.append(f"{folder.name}: {str(e).removeprefix(f'{folder}/')}")
            continue
        if other.training_id != want:
            continue
        problem = manifest.get("failure") if manifest.get("status") == "unreadable" else None
        if problem is None:
            problem = copied_record(folder, other)
        if problem is None and manifest.get("status") == COMPLETE and record_conflict(job, ds, folder, manifest) is None:
            problem = damaged(folder)
            if problem is None:
                return folder
        if problem and refused is not None:
            refused.append(f"{folder.name}: {problem}")
    return None


def reuse_training(job: Job, donor: Path, model: Any, device: Any, job_dir: Path, manifest: Manifest) -> Any:
    """The donor record's final and best models, as `fit` would have returned them; its checkpoint is
    linked (or copied) into this job's folder and its history copied, so the record stands alone."""
    import os
    import shutil

    import torch

    from ferbench.engine.checkpoint import load_checkpoint
    from ferbench.engine.train import FitResult
    from ferbench.trained import selected_state

    ck_path = job_dir / CHECKPOINT_FILE
    try:
        os.link(donor / CHECKPOINT_FILE, ck_path)
    except OSError:
        shutil.copyfile(donor / CHECKPOINT_FILE, ck_path)
    if (donor / HISTORY_FILE).is_file():
        write_text_atomic(job_dir / HISTORY_FILE, read_text_bounded(donor / HISTORY_FILE))
    ck = load_checkpoint(ck_path)
    model.load_state_dict(selected_state(ck, job, "last", donor))
    fmt = torch.channels_last if job.train.channels_last else torch.contiguous_format
    donor_manifest = read_manifest(donor)
    manifest.add(trained_in=donor.name, **{k: donor_manifest[k] for k in ("pretrained", "teacher", "precision") if k in donor_manifest})
    epochs = int(ck.get("epoch") or 0)
    return FitResult(model.to(device, memory_format=fmt).eval(), ck.get("best_state"), int(ck.get("best_epoch", -1)),
                     len(ck.get("history") or []), epochs < job.train.epochs, ck.get("history") or [])


def build(job: Job, ds: FerDataset, runs_dir: Path, device: Any, manifest: Manifest, progress: Any) -> tuple[Any, Any]:
    """Phase 2: the model initialised from the job's seed (plus its pretrained weights), and the
    frozen teacher for a `depends_on` job (else None)."""
    import torch

    torch.manual_seed(job.seed)
    np.random.seed(job.seed % 2**32)
    model = build_model(job, ds.num_classes)
    if job.model.weights:
        from ferbench.hub import resolve_weights
        from ferbench.engine.weights import load_pretrained, untrained

        source = resolve_weights(job.model.weights)
        info = load_pretrained(model, source.path, get_variant(job.model.arch).checkpoint_filter)
        manifest.add(pretrained={**source.record(), **info})
        kept = untrained(info)
        if kept and job.train.epochs == 0:
            raise JobFailed(f"train.epochs: 0 evaluates {job.model.weights} as it is, but {len(kept)} tensors of "
                            f"{job.model.arch} did not load from it ({', '.join(kept[:4])}): the file must hold the whole "
                            "model for these classes")
        progress.note(f"pretrained {job.model.weights}: loaded {len(info['loaded'])} tensors, "
                      f"kept init for {len(kept)}: {', '.join(kept[:8])}" + (" ..." if len(kept) > 8 else ""))
    check_logits(model, ds.num_classes, job.train.input_size, job.train.in_chans)
    check_job_batches(job, ds.num_classes, device, len(ds.splits["train"]))  # before a batch that cannot fit or cannot train
    teacher = load_teacher(job, runs_dir, ds.num_classes, device) if job.depends_on else None
    if job.model.teacher is not None:
        teacher = teacher_from_file(job, ds.num_classes, device, manifest)
    return model, teacher


def load_teacher(job: Job, runs_dir: Path, num_classes: int, device: Any):
    """The frozen LDG teacher: the depends_on job's best-validation weights."""
    from ferbench.engine.checkpoint import load_checkpoint

    tdir = runs_dir / job.spec / job.depends_on
    if not is_complete(tdir):
        raise JobFailed(f"teacher job {job.depends_on} is not complete")
    tjob = read_job(tdir)
    ck = load_checkpoint(tdir / CHECKPOINT_FILE)
    model = build_model(tjob, num_classes)
    model.load_state_dict(ck.get("best_state") or ck["model"])
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if (tjob.train.input_size, tjob.train.in_chans, tjob.train.normalize) != (job.train.input_size, job.train.in_chans, job.train.normalize):
        raise JobFailed("teacher and student must share input_size, in_chans and normalize")
    return model


def teacher_from_file(job: Job, num_classes: int, device: Any, manifest: Manifest):
    """The frozen teacher a model entry names by file (`teacher: {arch, weights}`): built for this
    job's classes and input, every tensor loaded (a teacher that kept any init would teach noise)."""
    from ferbench.hub import resolve_weights
    from ferbench.engine.weights import load_pretrained, untrained

    t = job.model.teacher
    source = resolve_weights(t.weights)
    model = create_model(t.arch, num_classes, job.train.input_size, job.train.in_chans, **t.options)
    info = load_pretrained(model, source.path, get_variant(t.arch).checkpoint_filter)
    if kept := untrained(info):
        raise JobFailed(f"teacher {t.weights}: {len(kept)} tensors of {t.arch} with {num_classes} classes "
                        f"did not load ({', '.join(kept[:4])}): the teacher must match its arch and classes")
    manifest.add(teacher={**source.record(), "arch": t.arch, "loaded": len(info["loaded"]), "unused": info["unused"]})
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def evaluate(job: Job, ds: FerDataset, res: Any, device: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Phase 4: logits and classification reports on the job's eval splits, for the last and the
    best-validation model."""
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
            logits = job_logits(job, m, s.images, device)
            if not np.isfinite(logits).all():
                raise JobFailed(f"non-finite logits on the {split} split ({which} model): the weights are not finite")
            arrays[f"{split}.{which}.logits"] = logits
            metrics[split][which] = classification_report(logits, s.labels, ds.classes)
    evaluate_cross(job, ds, res.model, best_model, device, arrays, metrics)
    return arrays, metrics


def job_logits(job: Job, model: Any, images: np.ndarray, device: Any) -> np.ndarray:
    """Logits of `images` under the job's evaluation transform and TTA, sharded across data-parallel ranks."""
    from ferbench.engine import dist
    from ferbench.engine.evaluate import predict, sampling_dropout

    def logits(part: np.ndarray) -> np.ndarray:
        with sampling_dropout(model, job.eval.dropout_at_eval, job.seed):
            return predict(model, part, job.train, device, job.eval.tta, job.eval.tta_resize_ratio, keep_mode=True)

    return dist.sharded(logits, images)


def evaluate_cross(job: Job, ds: FerDataset, last: Any, best: Any, device: Any, arrays: dict[str, np.ndarray],
                   metrics: dict[str, Any]) -> None:
    """Cross-dataset evaluation: each `cross` target's images through the last and best models,
    scored on the target classes the map keeps (`data.crossmap`); arrays under `cross.<id>.*` with the
    target-class logits, metrics under metrics["cross"][id]."""
    from ferbench.metrics import classification_report

    for t in job.dataset.cross:
        target, cmap = ds.cross[t.id]
        parts = [target.splits[s] for s in (("train", "val", "test") if t.split == "all" else ("test",)) if s in target.splits]
        images = np.concatenate([p.images for p in parts])
        rows, labels = cmap.target_labels(np.concatenate([p.labels for p in parts]), target.classes)
        images = images[rows]
        if images.ndim == 4 and job.train.in_chans == 1 or images.ndim == 3 and ds.splits["train"].images.ndim == 4:
            raise JobFailed(f"cross target {t.id}: its images are {'colour' if images.ndim == 4 else 'grey'}, "
                            "unlike the training images (load it with the matching colour option)")
        arrays[f"cross.{t.id}.labels"] = labels
        entry: dict[str, Any] = {"dataset": t.name, "split": t.split, "classes": cmap.classes, "dropped_classes": cmap.dropped,
                                 "images": int(len(labels)), "map": t.map or "same names"}
        for which, m in (("last", last), ("best", best)):
            if m is None:
                continue
            logits = job_logits(job, m, images, device)
            scores = cmap.target_logits(logits)
            arrays[f"cross.{t.id}.{which}.logits"] = scores
            entry[which] = classification_report(scores, labels, cmap.classes)
        metrics.setdefault("cross", {})[t.id] = entry


def record(job: Job, job_dir: Path, num_classes: int, arrays: dict[str, np.ndarray], metrics: dict[str, Any]) -> None:
    """Phase 5: predictions and metrics (with the model's cost at the job's input size) on disk."""
    from ferbench.cost import model_cost

    cost = model_cost(job.model.arch, job.train.input_size, num_classes, job.train.in_chans, **job.model.options)
    metrics[COST_FIELD] = {"params": cost["params"], "gmacs": cost["gmacs"], "gflops": cost["gflops"],
                           "latency_ms_cpu": cost["latency_ms"], "latency_iqr_ms_cpu": cost["latency_iqr_ms"],
                           "input_size": job.train.input_size}
    write_npz_atomic(job_dir / PREDICTIONS_FILE, arrays)
    write_json_atomic(job_dir / METRICS_FILE, metrics)


def stored_test_accuracy(job_dir: Path) -> float | None:
    """The last-epoch test accuracy a finished record holds, if any."""
    try:
        m = json.loads(read_text_bounded(job_dir / METRICS_FILE))
        return m["test"]["last"]["accuracy"]
    except (OSError, ValueError, KeyError):
        return None
