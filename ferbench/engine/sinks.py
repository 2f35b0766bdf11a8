"""Opt-in experiment trackers besides the terminal (`launcher.log`, `ferbench run --log ...`).

A sink listens to the training loop like the terminal's progress bars (`engine.train.Progress`) and
hands a tracker what the run record holds: the job's hyper-parameters and id when the job opens, each
step's loss and learning rate and each epoch's history row as they happen, the final test metrics
when the record is written. Off by default; never part of a job's identity; the run record is the
same with or without it. A tracker that fails (a full disk, an unreachable server) costs one warning
line and is dropped for the rest of the job: the record, not the tracker, is what a run produces.

- `tensorboard`: event files under the job folder's `tensorboard/` (epoch rows at step = epoch,
  per-step `step/loss` and `step/lr` at the global step, final metrics as `final/...`, the job as text).
- `mlflow`: one MLflow run per job, named by the job id (tags `ferbench.job_id`, `ferbench.spec`) in
  an experiment named by the spec. The store is `MLFLOW_TRACKING_URI` when set, else a local SQLite
  file `<runs-dir>/mlflow.db` (MLflow 3 refuses its old `./mlruns` folder store; `mlflow ui
  --backend-store-uri sqlite:///<runs-dir>/mlflow.db` reads this one). A resumed job continues its run.
- `csv`: `csv/params.csv` (name,value) and `csv/metrics.csv` (step,epoch,name,value: per-step
  `step/loss` and `step/lr`, each epoch row's numbers at its last step, the final metrics as
  `test/last/accuracy`, ...), readable with the csv module alone.

Steps are handed over once per epoch (the losses stay on the device until then, as the loop keeps
them), so a tracker never adds a device sync per step. The loss is rank 0's batch mean.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from ferbench.engine.train import NoProgress
from ferbench.errors import FerbenchError
from ferbench.fileio import read_text_bounded, write_text_atomic

EXTRAS = {"tensorboard": ("tensorboard", "log"), "mlflow": ("mlflow", "mlflow")}  # sink: (module, pip extra)


def check_available(names: list[str]) -> None:
    """One line, before any record is written, for a sink whose package is not installed."""
    for name in names:
        module, extra = EXTRAS.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise FerbenchError(f"--log {name} needs the {module} package: pip install 'ferbench[{extra}]'")


def job_params(job: Any) -> dict[str, str]:
    """The job's fields as flat `name: text` pairs (`train.lr`, `model.options.drop_rate`, ...), with
    its id: what a tracker shows as the run's hyper-parameters. `log` is left out (not part of a job)."""
    flat: dict[str, str] = {"job_id": job.id}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value if isinstance(value, str) else json.dumps(value)

    walk("", {k: v for k, v in job.model_dump(mode="json").items() if k != "log"})
    return flat


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """A record's metrics.json as flat numbers per split and selection: `test/last/accuracy`, ..."""
    out: dict[str, float] = {}
    for split in ("test", "val"):
        for selection, m in (metrics.get(split) or {}).items():
            for key in ("accuracy", "balanced_accuracy", "macro_f1", "ece"):
                if isinstance(m, dict) and isinstance(m.get(key), (int, float)):
                    out[f"{split}/{selection}/{key}"] = float(m[key])
    return out


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in ("epoch", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Sink(NoProgress):
    """A tracker: the Progress calls, plus the steps of an epoch, the final metrics and a close."""

    def steps(self, first_step: int, epoch: int, losses: list[float], lrs: list[float]) -> None: ...
    def final(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self, finished: bool) -> None: ...


class TensorBoardSink(Sink):
    def __init__(self, log_dir: Path, params: dict[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))  # a resumed job appends to the same folder
        self.writer.add_text("job", "\n".join(f"    {k}: {v}" for k, v in params.items()))

    def steps(self, first_step: int, epoch: int, losses: list[float], lrs: list[float]) -> None:
        for i, (loss, lr) in enumerate(zip(losses, lrs)):
            self.writer.add_scalar("step/loss", loss, global_step=first_step + i)
            self.writer.add_scalar("step/lr", lr, global_step=first_step + i)

    def end_epoch(self, row: dict[str, Any]) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, global_step=int(row["epoch"]))
        self.writer.flush()

    def note(self, text: str) -> None:
        self.writer.add_text("notes", text)

    def final(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"final/{key}", value, global_step=step)

    def close(self, finished: bool) -> None:
        self.writer.close()


class CsvSink(Sink):
    """Long-format CSV: one `step,epoch,name,value` row per number. A resumed job first drops the
    rows of steps it is about to repeat (those logged after its last checkpoint)."""

    FIELDS = ("step", "epoch", "name", "value")

    def __init__(self, folder: Path, params: dict[str, str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "params.csv", _csv_text([("name", "value"), *params.items()]))
        self.path = folder / "metrics.csv"
        self.trimmed = False

    def _append(self, rows: list[tuple[Any, ...]]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self.FIELDS)
            w.writerows(rows)

    def _trim_from(self, step: int) -> None:
        """Keep only rows logged before `step` (once, at the first steps this process logs)."""
        if self.trimmed or not self.path.exists():
            self.trimmed = True
            return
        kept = list(csv.reader(io.StringIO(read_text_bounded(self.path))))[1:]
        kept = [r for r in kept if r and r[0].isdigit() and int(r[0]) < step]
        write_text_atomic(self.path, _csv_text([self.FIELDS, *kept]))
        self.trimmed = True

    def steps(self, first_step: int, epoch: int, losses: list[float], lrs: list[float]) -> None:
        self._trim_from(first_step)
        rows = []
        for i, (loss, lr) in enumerate(zip(losses, lrs)):
            rows += [(first_step + i, epoch, "step/loss", repr(loss)), (first_step + i, epoch, "step/lr", repr(lr))]
        self._append(rows)

    def end_epoch(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        self._append([(step, row["epoch"], key, repr(value)) for key, value in _numbers(row).items()])

    def final(self, metrics: dict[str, float], step: int) -> None:
        self._append([(step, "", key, repr(value)) for key, value in metrics.items()])


def _csv_text(rows: list[tuple[Any, ...]] | list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


class MlflowSink(Sink):
    """One MLflow run per job through `MlflowClient` (no global active run: jobs of one process never
    share one). The run id is kept in the job folder's `mlflow.json`, so a resumed job continues it."""

    BATCH = 1000  # MLflow's limit on metrics per log_batch call (params: 100)

    def __init__(self, job: Any, job_dir: Path, runs_dir: Path, params: dict[str, str]) -> None:
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # their INFO lines would interleave with the progress bars
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{runs_dir.resolve() / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.link = job_dir / "mlflow.json"
        self.run_id = self._resume()
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(job.spec)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(
                job.spec, artifact_location=(runs_dir.resolve() / "mlartifacts").as_uri())
            run = self.client.create_run(exp_id, run_name=job.id, tags={"ferbench.job_id": job.id, "ferbench.spec": job.spec})
            self.run_id = run.info.run_id
            write_text_atomic(self.link, json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}) + "\n")
            from mlflow.entities import Param

            items = [Param(k, v[:6000]) for k, v in params.items()]  # MLflow's limit on a param's value
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def _resume(self) -> str | None:
        try:
            link = json.loads(read_text_bounded(self.link))
        except (OSError, ValueError):
            return None
        return link.get("run_id") if isinstance(link, dict) and link.get("tracking_uri") == self.uri else None

    def _log(self, values: list[tuple[str, float, int]]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, value, now, step) for key, value, step in values]
        for i in range(0, len(items), self.BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + self.BATCH])

    def steps(self, first_step: int, epoch: int, losses: list[float], lrs: list[float]) -> None:
        self._log([(name, v, first_step + i) for i, (loss, lr) in enumerate(zip(losses, lrs))
                   for name, v in (("step/loss", loss), ("step/lr", lr))])

    def end_epoch(self, row: dict[str, Any]) -> None:
        self._log([(key, value, int(row["epoch"])) for key, value in _numbers(row).items()])

    def final(self, metrics: dict[str, float], step: int) -> None:
        self._log([(f"final/{key}", value, step) for key, value in metrics.items()])

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "FAILED")


def open_sink(name: str, job: Any, job_dir: Path, runs_dir: Path) -> Sink:
    params = job_params(job)
    if name == "tensorboard":
        return TensorBoardSink(job_dir / "tensorboard", params)
    if name == "csv":
        return CsvSink(job_dir / "csv", params)
    if name == "mlflow":
        return MlflowSink(job, job_dir, runs_dir, params)
    raise FerbenchError(f"unknown logger {name!r}")


class Tracked(NoProgress):
    """The terminal's progress and the job's trackers. Each tracker call is guarded: a tracker that
    raises is named in one line on the terminal and dropped; training and the record go on."""

    def __init__(self, terminal: Any, names: list[str], job: Any, job_dir: Path, runs_dir: Path) -> None:
        self.terminal = terminal
        self.sinks: list[tuple[str, Sink]] = []
        self.finished = False
        for name in names:
            try:
                self.sinks.append((name, open_sink(name, job, job_dir, runs_dir)))
            except Exception as e:  # noqa: BLE001 - any failure of a tracker's library must not fail the job
                self._warn(name, e)

    def _warn(self, name: str, e: BaseException) -> None:
        self.terminal.note(f"--log {name} stopped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                           " (the run record is unaffected)")

    def _each(self, method: str, *args: Any) -> None:
        for entry in list(self.sinks):
            try:
                getattr(entry[1], method)(*args)
            except Exception as e:  # noqa: BLE001
                self.sinks.remove(entry)
                self._warn(entry[0], e)

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        self.terminal.start_epoch(epoch, epochs, batches)
        self._each("start_epoch", epoch, epochs, batches)

    def advance(self) -> None:
        self.terminal.advance()

    def steps(self, first_step: int, epoch: int, losses: list[float], lrs: list[float]) -> None:
        self.terminal.steps(first_step, epoch, losses, lrs)
        self._each("steps", first_step, epoch, losses, lrs)

    def end_epoch(self, row: dict[str, Any]) -> None:
        self.terminal.end_epoch(row)
        self._each("end_epoch", row)

    def note(self, text: str) -> None:
        self.terminal.note(text)
        self._each("note", text)

    def final(self, metrics: dict[str, Any], step: int) -> None:
        self.finished = True
        self._each("final", final_metrics(metrics), step)

    def close(self) -> None:
        self._each("close", self.finished)
        self.sinks = []
