"""The `ferbench` command line: parsing, rich output and exit codes. Logic lives in the modules."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from ferbench import RUNS_DIR
from ferbench.errors import FerbenchError, first_line, one_line

def _click_exceptions() -> Any:
    """The exceptions module of the click Typer parses with: Typer 0.2x vendors it as typer._click."""
    import typer.core

    vendored = getattr(typer.core, "_click", None)
    if vendored is None:
        import click as vendored
    return vendored.exceptions


class OneLineErrors(TyperGroup):
    """Click's own refusals (an unknown option, a value that is not an integer, a missing argument) as
    one `error:` line naming the command's --help, exit 2, like every other refusal; Typer would draw
    a multi-line box. Help asked for (no arguments, --help) is shown as it is."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        cx = _click_exceptions()
        try:
            check_environment()
        except FerbenchError as e:
            err.print(f"[bold red]error:[/] {escape(one_line(str(e)))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except getattr(cx, "NoArgsIsHelpError", ()) as e:  # click >= 8.2 raises it for no_args_is_help
            e.show()
            sys.exit(e.exit_code)
        except cx.ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            err.print(f"[bold red]error:[/] {escape(' '.join(e.format_message().split()))}{escape(where)}",
                      highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except (typer.Abort, getattr(cx, "Abort", typer.Abort)):
            err.print("aborted")
            sys.exit(1)
        except OSError as e:  # the last guard: what the file system refused, as one line naming the file
            import errno

            if e.errno == errno.EPIPE:
                sys.exit(1)
            where = f"{e.filename}: " if e.filename else ""
            err.print(f"[bold red]error:[/] {escape(one_line(where + (e.strerror or first_line(e))))}", highlight=False,
                      soft_wrap=True)
            sys.exit(2)
        sys.exit(code if isinstance(code, int) else 0)


def check_environment() -> None:
    """The sizes ferbench reads from the environment, checked before any command runs (one line)."""
    from ferbench.fileio import NPZ_LIMIT_ENV, TABLE_LIMIT_ENV, env_gib
    from ferbench.memory import MEMORY_ENV

    for name in (NPZ_LIMIT_ENV, TABLE_LIMIT_ENV, MEMORY_ENV):
        env_gib(name, None)
    if os.environ.get("FERBENCH_CACHE"):
        from ferbench.data.cache import cache_dir

        where = cache_dir()
        if where.exists() and not where.is_dir():
            raise FerbenchError(f"FERBENCH_CACHE={where}: not a folder (ferbench keeps decoded datasets and its kernel "
                                "choices there)")


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproduce facial-emotion-recognition papers and report how close the reproduction came.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets: counts per split and class, figures.")
app.add_typer(data_app, name="data")
console = Console()
err = Console(stderr=True)


def _home(value: Any) -> Any:
    """Every path option's and argument's `~` / `~user`, expanded the same way (the shell leaves
    `--out=~/x` alone); a `~user` with no such user is one line."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_home(v) for v in value]
    from ferbench.fileio import expand_user

    try:
        expanded = expand_user(value)
    except FerbenchError as e:
        _fail(str(e))
    return expanded if isinstance(value, Path) else str(expanded)


# the options `plan` and `run` share
SpecArg = Annotated[Path, typer.Argument(help="benchmark spec (YAML)", callback=_home)]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p", help="shrink the spec, e.g. smoke or cpu")]
SetOpt = Annotated[list[str], typer.Option("--set", "-s", help="override a spec value: key=value (repeatable)")]
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="where run records go", callback=_home)]
DataRootOpt = Annotated[Optional[str], typer.Option("--data-root", help="folder holding the datasets (else FERBENCH_DATA)",
                                                    callback=_home)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N")]
EstimateOpt = Annotated[bool, typer.Option("--estimate/--no-estimate", help="time a short probe of each model first")]


def _warn(msg: str) -> None:
    err.print(f"[bold yellow]warning:[/] {escape(one_line(msg))}", highlight=False, soft_wrap=True)  # user text verbatim, one line


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(one_line(msg))}", highlight=False, soft_wrap=True)  # user text verbatim, one line
    raise typer.Exit(code)


class RichEpochs:
    """Progress bars over epochs and batches for one job."""

    def __init__(self, bar: Progress, label: str):
        self.bar, self.label = bar, label
        self.epochs = bar.add_task(f"{label} epochs", total=None)
        self.batches = bar.add_task("  batches", total=None)

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        self.bar.update(self.epochs, total=epochs, completed=epoch)
        self.bar.reset(self.batches, total=batches)

    def advance(self) -> None:
        self.bar.advance(self.batches)

    def steps(self, first_step: int, epoch: int, losses: list[float], lrs: list[float]) -> None: ...

    def note(self, text: str) -> None:
        self.bar.console.print(f"  {self.label}: {escape(text)}", highlight=False)

    def end_epoch(self, row: dict[str, Any]) -> None:
        self.bar.update(self.epochs, completed=row["epoch"])
        val = f" val {row['val_acc']:.3f}" if "val_acc" in row else ""
        self.bar.console.print(
            f"  {self.label} epoch {row['epoch']}: loss {row['train_loss']:.3f} train {row['train_acc']:.3f}{val} "
            f"({row['seconds']:.1f}s)", highlight=False)

    def close(self) -> None:
        self.bar.remove_task(self.epochs)
        self.bar.remove_task(self.batches)


def _opt(x: float | None, fmt: str) -> str:
    """A number for a table cell, "–" when the record holds none (never a made-up 0)."""
    return "–" if x is None else format(x, fmt)


def _overrides(set_: list[str], **launcher: Any) -> list[tuple[str, Any]]:
    """`--set key=value` items, then the launcher flags as `launcher.<field>` overrides."""
    from ferbench.specfile import parse_set

    return parse_set(set_) + [(f"launcher.{k}", v) for k, v in launcher.items() if v is not None]


def _plan_table(plan: Any) -> Table:
    from ferbench.estimate import format_seconds

    # the id is what a user copies: shown whole (it already names model, dataset and seed), the rest wraps
    t = Table(title=f"{plan.spec.name}: {len(plan.jobs)} jobs on {plan.device}")
    t.add_column("job id (model__dataset__seed__hash)", no_wrap=True, min_width=max((len(p.job.id) for p in plan.jobs), default=6))
    folds = any(p.job.fold is not None for p in plan.jobs)
    if folds:
        t.add_column("fold")
    t.add_column("status")
    t.add_column("estimated time left")
    for p in plan.jobs:
        status = f"resume after epoch {p.epochs_done}" if p.status == "resume" else p.status
        status += " (cannot run)" if p.problem else ""
        est = "-" if p.estimate_s is None else format_seconds(p.estimate_s)
        if p.estimate_s is not None and p.most_s is not None and p.most_s > p.estimate_s:
            est = f"at least {est} (at most {format_seconds(p.most_s)})"
        t.add_row(p.job.id, *([str(p.job.fold)] if folds else []), status, est)
    return t


def _plan_json(plan: Any) -> dict[str, Any]:
    return {"spec": plan.spec.name, "profile": plan.profile, "device": str(plan.device), "estimate_s": plan.estimate_s,
            "estimate_max_s": plan.estimate_max_s,
            "jobs": [{"id": p.job.id, "model": p.job.model.id, "dataset": p.job.dataset.id, "fold": p.job.fold, "seed": p.job.seed,
                      "depends_on": p.job.depends_on, "status": p.status, "epochs_done": p.epochs_done,
                      "estimate_s": p.estimate_s, "estimate_max_s": p.most_s, "problem": p.problem} for p in plan.jobs]}


@app.command()
def plan(
    spec: SpecArg,
    profile: ProfileOpt = None,
    set_: SetOpt = [],
    runs_dir: RunsDirOpt = Path(RUNS_DIR),
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    estimate: EstimateOpt = True,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A dry run: SPEC's jobs, their ids, which are finished, and each one's estimated time on DEVICE."""
    from ferbench import api

    try:
        p = api.plan_spec(spec, profile, _overrides(set_), runs_dir, data_root, device, estimate)
    except FerbenchError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(_plan_json(p), indent=2))
        return
    console.print(_plan_table(p))
    if p.estimate_s is not None:
        console.print(f"left to run: {p.estimate_text()} on {p.device} (a probe of a few images per model; rough)",
                      highlight=False)
    if p.warning():
        _warn(p.warning())
    for line in p.leakage():
        _warn(f"leakage: {line}")
    for line in p.problems():
        _warn(line)


class RichRun:
    """The run command's hooks: a header, progress bars per job, a line per finished job."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=console, transient=True)
        self.current: RichEpochs | None = None
        self.started = False
        self.running = ""  # the job in progress, for the interrupt message

    def start(self, plan: Any, launcher: str) -> None:
        import torch

        est = "" if plan.estimate_s is None else f", estimated {plan.estimate_text()}"
        console.print(f"[bold]{plan.spec.name}[/]: {len(plan.jobs)} jobs on {plan.device} ({torch.get_num_threads()} "
                      f"threads, {launcher}{est}) -> {escape(str(plan.runs_dir / plan.spec.name))}", highlight=False)
        if plan.warning():
            _warn(plan.warning())
        for line in plan.leakage():
            _warn(f"leakage: {line}")
        for line in plan.problems():
            _warn(line)
        self.started = True
        self.bar.start()

    def progress_for(self, job: Any) -> RichEpochs:
        if self.current is not None:
            self.current.close()
        self.current = RichEpochs(self.bar, f"{job.model.id}/{job.split_label}/s{job.seed}")
        self.running = f"job {job.id}"
        return self.current

    def outcome(self, o: Any) -> None:
        acc = "" if o.test_acc is None else f" test acc {o.test_acc:.4f}"
        why = f" ({escape(o.reason)})" if o.reason else ""
        self.bar.console.print(f"{o.status:>9} {o.job.id}{acc}{why}", highlight=False, soft_wrap=True)

    def done(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
        self.bar.stop()


@app.command()
def run(
    spec: SpecArg,
    profile: ProfileOpt = None,
    set_: SetOpt = [],
    runs_dir: RunsDirOpt = Path(RUNS_DIR),
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    estimate: EstimateOpt = True,
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="local (default) or submitit; else the spec's launcher block"),
    workers: Optional[int] = typer.Option(None, "--workers", help="local launcher: jobs in N separate processes"),
    executor: Optional[str] = typer.Option(None, "--executor", help="submitit executor: auto, slurm, local, debug"),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="SLURM GPUs per job"),
    cpus: Optional[int] = typer.Option(None, "--cpus", help="SLURM CPUs per job"),
    mem_gb: Optional[int] = typer.Option(None, "--mem-gb", help="SLURM memory per job"),
    time_min: Optional[int] = typer.Option(None, "--time-min", help="SLURM time limit per job (minutes)"),
    log: list[str] = typer.Option([], "--log", help="also log to a tracker (repeatable): tensorboard (each job folder's tensorboard/), "
                                   "mlflow (MLFLOW_TRACKING_URI, else <runs-dir>/mlflow.db), csv (each job folder's csv/)"),
) -> None:
    """Train and evaluate every (model x dataset x seed) job of SPEC; finished jobs are skipped,
    interrupted ones resume from their last checkpoint."""
    from ferbench import api

    hooks = RichRun()
    try:
        api.check_loggers(log)
        overrides = _overrides(set_, name=launcher, workers=workers, executor=executor, partition=partition,
                               gpus_per_node=gpus, cpus_per_task=cpus, mem_gb=mem_gb, timeout_min=time_min,
                               log=log or None)
        outcomes = api.run_spec(spec, profile, overrides, runs_dir, data_root, device, threads, hooks, estimate)
    except FerbenchError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        where = f" during {hooks.running}" if hooks.running else ""
        err.print(f"interrupted{escape(where)}: finished jobs are kept; run the same command again to resume "
                  "from the last end-of-epoch checkpoint", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    if not hooks.started:  # a data-parallel rank > 0: rank 0 reports
        return
    _outcome_table(outcomes)


def _outcome_table(outcomes: list[Any]) -> None:
    """The jobs' outcomes as a table; exit 1 when any failed or was left untrained."""
    table = Table(title=f"{outcomes[0].job.spec}: test accuracy (last epoch)")
    for col in ("model", "dataset", "seed", "status", "test acc", "seconds"):
        table.add_column(col)
    for o in outcomes:
        acc = "-" if o.test_acc is None else f"{o.test_acc:.4f}"
        table.add_row(o.job.model.id, o.job.split_label, str(o.job.seed), o.status, acc, f"{o.seconds:.1f}")
    console.print(table)
    if any(o.status in ("failed", "untrained") for o in outcomes):
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    spec: SpecArg,
    profile: ProfileOpt = None,
    set_: SetOpt = [],
    runs_dir: RunsDirOpt = Path(RUNS_DIR),
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Evaluate without training: each job of SPEC whose training a finished record holds (it differs
    only in evaluation settings, e.g. --set eval.tta=tencrop) or that has train.epochs: 0 with
    weights: gets an ordinary run record; the others are listed as untrained."""
    from ferbench import api

    hooks = RichRun()
    try:
        outcomes = api.run_spec(spec, profile, _overrides(set_), runs_dir, data_root, device, None, hooks, False, train=False)
    except FerbenchError as e:
        _fail(str(e))
    if hooks.started:
        _outcome_table(outcomes)


@app.command()
def report(
    target: Optional[str] = typer.Argument(None, help="spec name (under --runs-dir) or a runs folder; default: every spec",
                                           callback=_home),
    runs_dir: Path = typer.Option(Path(RUNS_DIR), "--runs-dir", callback=_home),
    out: Path = typer.Option(Path("reports"), "--out", help="reports go to OUT/<spec>/ and OUT/index.html", callback=_home),
    formats: str = typer.Option("md,html", "--format", help="any of md,html,csv,json,latex (csv/json: one row per job; "
                                "latex: the paper's table layout)"),
    with_records: bool = typer.Option(False, "--with-records", help="publish: copy the records behind each page (no "
                                      "checkpoints) to OUT/<spec>/records/ and render the page from them"),
) -> None:
    """Render Markdown and self-contained HTML reports from run records (never trains). A spec whose
    page is published with its records (OUT/<spec>/records/) renders to OUT/<spec>-local/ unless
    --with-records publishes."""
    from ferbench import api
    from ferbench.report.render import LOCAL_SUFFIX

    try:
        written = api.report_spec(target, runs_dir, out, formats, with_records)
    except FerbenchError as e:
        _fail(str(e))
    for p in written:
        console.print(f"wrote {p}", markup=False, highlight=False)
    for page in sorted({p.parent for p in written if p.parent.name.endswith(LOCAL_SUFFIX)}):
        console.print(f"note: {page.with_name(page.name[:-len(LOCAL_SUFFIX)])} is a published page that rests on its "
                      f"records; this report went to {page} (--with-records publishes)", markup=False, highlight=False)


@app.command()
def compare(
    a: str = typer.Argument(..., help="model family (resface, emonext, resnet, convnext), arch or model id"),
    b: str = typer.Argument(..., help="the other side"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="only this dataset id"),
    runs_dir: Path = typer.Option(Path(RUNS_DIR), "--runs-dir", callback=_home),
    as_json: bool = typer.Option(False, "--json"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write index.html, report.md and a figure here (linked from OUT/../index.html if present)", callback=_home),
) -> None:
    """Two families side by side: is A better than B with the run (seed) as the unit, then image-level statements about these trained models, accuracy and cost."""
    from ferbench import api

    try:
        res, written = api.compare(a, b, runs_dir, dataset, out)
    except FerbenchError as e:
        _fail(str(e))
    if res["records_from"] != str(runs_dir):
        err.print(f"no run records under {runs_dir}: comparing the published records under {res['records_from']}",
                  markup=False, highlight=False)
    for p in written:
        err.print(f"wrote {p}", markup=False, highlight=False)
    if as_json:
        print(json.dumps(res, indent=2))
        return
    for d, r in res["datasets"].items():
        t = Table(title=escape(f"{a} vs {b} on {d} (test, last epoch, mean over seeds)"))
        for c in ("side", "model", "seeds", "acc %", "bal. acc %", "macro-F1 %", "params M", "GMACs", "latency ms"):
            t.add_column(c)
        for v in r["variants"]:
            t.add_row(v["side"], v["model"], str(v["n"]), f"{100 * v['accuracy']:.2f}", f"{100 * v['balanced_accuracy']:.2f}",
                      f"{100 * v['macro_f1']:.2f}", _opt(v["params"] and v["params"] / 1e6, ".2f"), _opt(v["gmacs"], ".3f"),
                      _opt(v["latency_ms"], ".1f"))
        console.print(t)
        for p in r["pairs"]:
            if "note" in p:
                console.print(f"  {p['a']} vs {p['b']}: {p['note']}", markup=False)
                continue
            sl = p["seed_level"]
            ci = f" [{100 * sl['ci'][0]:+.2f}, {100 * sl['ci'][1]:+.2f}]" if sl["ci"] else ""
            console.print(f"  runs: {p['a']} - {p['b']}: {100 * sl['mean_diff']:+.2f} points{ci} over {sl['seeds']} paired "
                          f"seed(s), paired t p={'-' if sl['p_value'] is None else format(sl['p_value'], '.3g')}, "
                          f"P(a run of A beats one of B)={sl['p_a_beats_b']:.2f}: {sl['reading']}",
                          markup=False, highlight=False)
            lo, hi = p["acc_diff_ci95"]
            per_seed = "; ".join(f"s{m['seed']} b={m['b']} c={m['c']} p={m['p_value']:.3g}" for m in p["mcnemar_per_seed"])
            console.print(f"  these trained models on this test set: {100 * p['acc_diff']:+.2f} points [{100 * lo:+.2f}, "
                          f"{100 * hi:+.2f}] (test images resampled), paired permutation p={p['paired_test']['p_value']:.3g} over "
                          f"{p['n_images']} images; McNemar per seed: {per_seed}; agreement {100 * p['agreement']:.1f}%",
                          highlight=False)


@app.command()
def models(
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    claims: bool = typer.Option(False, "--claims", help="measured params/GMACs beside the papers' claims (Markdown)"),
) -> None:
    """List every registered model variant with its parameter count (7 classes, 224 input)."""
    from ferbench import api

    if claims:
        from ferbench.published_sizes import claims_markdown

        rows = api.size_claims()
        print(json.dumps(rows, indent=2) if as_json else claims_markdown(rows))
        return
    rows = api.list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title="ferbench models (params with a 7-class head)")
    for c in ("name", "family", "params (M)", "paper variant", "options"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], r["family"], f"{r['params'] / 1e6:.2f}", "yes" if r["paper"] else "extension", ", ".join(r["options"]))
    console.print(t)


@app.command()
def cost(
    model: str = typer.Argument(..., help="model variant, e.g. emonext-tiny"),
    input_size: int = typer.Option(224, "--input-size"),
    num_classes: int = typer.Option(7, "--num-classes"),
    in_chans: int = typer.Option(3, "--in-chans"),
    option: list[str] = typer.Option([], "--option", "-o", help="model option key=value (repeatable)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A model's cost: params, GMACs, GFLOPs (= 2 x GMACs) and CPU latency at batch 1, eval mode."""
    from ferbench import api
    from ferbench.specfile import parse_set

    try:
        opts = dict(parse_set(option))
        res = api.model_cost(model, input_size, num_classes, in_chans, **opts)
    except FerbenchError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(res, indent=2))
        return
    console.print(f"{model} at {input_size}x{input_size}, {num_classes} classes: {res['params'] / 1e6:.2f}M params, "
                  f"{res['gmacs']:.3f} GMACs ({res['gflops']:.3f} GFLOPs), {res['latency_ms']:.1f} ms CPU latency "
                  f"(IQR {res['latency_iqr_ms']:.2f} ms, torch.utils.benchmark, {res['threads']} thread(s))")




@app.command()
def bench(
    which: str = typer.Argument("all", help="data, train, eval, csv, all (the CPU rows), small (Deep-Emotion and mini-Xception: harness vs bare loop, memory formats, processes vs threads), gpu, or trace (an epoch under torch.profiler)"),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="for the FER-2013 CSV rows (else FERBENCH_DATA)", callback=_home),
    as_json: bool = typer.Option(False, "--json"),
    device: str = typer.Option("cuda", "--device", help="gpu: the device to measure"),
    model: list[str] = typer.Option([], "--model", help="gpu: arch=recipe (repeatable; default emonext-tiny and resface-r18)"),
    size: int = typer.Option(224, "--size", help="gpu: input size"),
    batch: int = typer.Option(64, "--batch", help="gpu: batch size"),
    images: int = typer.Option(6400, "--images", help="gpu/trace: images per epoch"),
    epochs: int = typer.Option(3, "--epochs", min=1, help="gpu: epochs per timed fit (and as many bare epochs)"),
    compile_: bool = typer.Option(False, "--compile", help="gpu: torch.compile both loops"),
    graphs: bool = typer.Option(False, "--graphs", help="gpu: both loops replay each step as one CUDA graph (train.cuda_graphs)"),
) -> None:
    """Measure the harness against reference pipelines, side by side, and print the ratios."""
    from ferbench import api

    try:
        res = api.bench(which, data_root, device, model, size, batch, images, epochs, compile_, graphs)
    except FerbenchError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(res, indent=2))
        return
    hw = res["hardware"]
    console.print(f"machine: {hw.get('gpu', hw['cpu'])}, {hw['cores']} cores, {hw['torch_threads']} torch threads, "
                  f"BLAS {hw['blas']}, flags {' '.join(hw['cpu_flags']) or '-'}", highlight=False)
    for k in res["kernels"]:
        console.print(f"kernel {k['op']} at {k['shape']}: {k['kernel']} ({k['why']})", highlight=False)
    rows = res["rows"]
    if which == "trace":
        _print_trace(rows)
        return
    t = Table(title=f"ferbench bench {which}")
    for c in ("name", "ours /s", "reference /s", "ratio", "conditions"):
        t.add_column(c)
    for r in rows:
        if "skipped" in r:
            t.add_row(r["name"], "-", "-", "-", f"skipped: {r['skipped']}")
            continue
        extra = {k: v for k, v in r.items() if k not in ("name", "ours_per_s", "reference_per_s", "ratio", "threads")}
        t.add_row(r["name"], f"{r['ours_per_s']:.1f}", "-" if r["reference_per_s"] is None else f"{r['reference_per_s']:.1f}",
                  "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", ", ".join(f"{k}={v}" for k, v in extra.items()))
    console.print(t)


def _print_trace(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        console.print(f"[bold]{r['name']}[/] on {r['device']}, batch {r['batch']}, {r['bare']['steps']} steps")
        for loop in ("bare", "fit"):
            p = r[loop]
            busy = "" if p["device_busy_fraction"] is None else f", device busy {p['device_busy_fraction']:.0%}"
            console.print(f"  {loop:4s} {p['wall_s']:.2f} s, host syncs {p['host_syncs']} ({p['host_syncs_by_op']}), "
                          f"{p['launches_per_step']:.0f} {p['launches_counted']}/step{busy}")


@data_app.command("info")
def data_info(
    name: str = typer.Argument(..., help="dataset name, e.g. fer2013 or synthfer"),
    data_root: Optional[str] = typer.Option(None, "--data-root", callback=_home),
    path: Optional[str] = typer.Option(None, "--path", help="the dataset's file or folder", callback=_home),
    option: list[str] = typer.Option([], "--option", "-o", help="dataset option key=value (repeatable)"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="FER+ label protocol (majority, probability, crossentropy, multi_target)"),
    votes: Optional[str] = typer.Option(None, "--votes", help="FER+ vote table: fer2013new or label_csv (the official trainer's)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Per split: total and per-class counts (what survives the label protocol)."""
    from ferbench import api
    from ferbench.specfile import parse_set

    try:
        opts = dict(parse_set(option))
        opts.update({k: v for k, v in (("protocol", protocol), ("votes", votes)) if v is not None})
        info = api.data_info(name, opts, path, data_root)
    except FerbenchError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(info, indent=2))
        return
    t = Table(title=info["name"])
    t.add_column("split", no_wrap=True)
    # numbers are never cut: each count column is as wide as its widest count; class names fold instead
    widths = {c: max(len(f"{s['per_class'][c]:,}") for s in info["splits"].values()) for c in info["classes"]}
    t.add_column("total", justify="right", no_wrap=True,
                 min_width=max(len(f"{s['total']:,}") for s in info["splits"].values()))
    for c in info["classes"]:
        t.add_column(c, justify="right", overflow="fold", min_width=widths[c])
    for split, c in info["splits"].items():
        t.add_row(split, f"{c['total']:,}", *[f"{n:,}" for n in c["per_class"].values()])
    console.print(t)
    stats = info["train_channel_stats"]
    console.print(f"training split's own statistics (train: {{normalize: custom, norm_mean: {stats['mean']}, "
                  f"norm_std: {stats['std']}}})", highlight=False, markup=False)


@data_app.command("plot")
def data_plot(
    name: str = typer.Argument(..., help="dataset name"),
    out: Path = typer.Option(Path("reports/data"), "--out", callback=_home),
    data_root: Optional[str] = typer.Option(None, "--data-root", callback=_home),
    path: Optional[str] = typer.Option(None, "--path", callback=_home),
    option: list[str] = typer.Option([], "--option", "-o", help="dataset option key=value (repeatable)"),
) -> None:
    """Class bars per split, example faces, annotator agreement, FER-2013 vs FER+ distributions."""
    from ferbench import api
    from ferbench.specfile import parse_set

    try:
        for p in api.plot_dataset(name, out, data_root, path, dict(parse_set(option))):
            console.print(f"wrote {p}", markup=False, highlight=False)
    except FerbenchError as e:
        _fail(str(e))


RunArg = Annotated[str, typer.Argument(help="a finished run: runs/<spec>/<job-id>, or <spec>/<job-id> under --runs-dir",
                                       callback=_home)]
WhichOpt = Annotated[str, typer.Option("--which", help="last (the model the run's test numbers are for) or best (best validation epoch)")]


@app.command()
def predict(
    run: RunArg,
    images: list[str] = typer.Argument(..., help="face crops (or, with --detect, photos): image files or folders of them (searched recursively)", callback=_home),
    which: WhichOpt = "last",
    tta: Optional[str] = typer.Option(None, "--tta", help="none, flip or tencrop (default: as the run evaluated)"),
    detect: bool = typer.Option(False, "--detect", help="find the faces in each photo (OpenCV Haar cascade, pip install 'ferbench[detect]'), "
                                "crop them as the run's training data is cropped; one row per face with its box"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="images per forward pass (default: the run's eval batch)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:<index> or mps"),
    top_k: int = typer.Option(1, "--top-k", help="also list the k most probable classes per face"),
    trust_code: bool = typer.Option(False, "--trust-code", help="import the record's own model module (module:function)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write a .csv (one row per image or face) or .json here", callback=_home),
    runs_dir: Path = typer.Option(Path(RUNS_DIR), "--runs-dir", callback=_home),
) -> None:
    """Class probabilities for face crops, or with --detect for every face in photos, from a finished run's
    model. Undecodable images are refused one line each and the rest predicted; photos without a face are
    listed. Exit 1 when any image was refused, 2 when nothing was predicted."""
    from ferbench import api

    try:
        res = api.predict(run, images, which, tta, runs_dir, out, detect=detect, batch_size=batch_size,
                          device=device, top_k=top_k, trust_code=trust_code)
    except FerbenchError as e:
        _fail(str(e))
    for line in res.refused:
        err.print(f"[bold yellow]refused:[/] {escape(line)}", highlight=False, soft_wrap=True)
    for name in res.no_face:
        err.print(f"no face found: {escape(name)}", highlight=False, soft_wrap=True)
    if not res.files:
        _fail("no face was found in any image; nothing written" if detect and res.no_face
              else "no image could be predicted; nothing written")
    if out is not None:
        err.print(f"wrote {out} ({len(res.files)} {'faces' if detect else 'images'})", markup=False, highlight=False)
    else:
        _print_predictions(res)
    if res.refused:
        raise typer.Exit(1)


def _print_predictions(res: Any) -> None:
    t = Table(title=escape(f"{res.run} ({res.selection} model, TTA {res.tta})"))
    box = res.boxes is not None
    shown = ["file", *(["face", "box"] if box else []), "prediction", *(["top"] if res.top_k > 1 else []), *res.classes]
    for c in shown:
        t.add_column(escape(c))
    for row in res.rows():
        cells = [row["file"]]
        if box:
            cells += [str(row["face"]), f"{row['x']},{row['y']} {row['w']}x{row['h']}"]
        cells.append(row["prediction"])
        if res.top_k > 1:
            cells.append(", ".join(f"{row[f'top{k}']} {row[f'top{k}_p']:.2f}" for k in range(1, res.top_k + 1)))
        t.add_row(*map(escape, cells), *(f"{row[c]:.3f}" for c in res.classes))
    console.print(t)


@app.command()
def export(
    run: RunArg,
    fmt: str = typer.Option("onnx", "--format", help="onnx (opset 18, checked in onnxruntime), torchscript or pt2 (torch.export)"),
    which: WhichOpt = "last",
    out: Optional[Path] = typer.Option(None, "--out", help="the file to write (default exports/<job-id>-<which>.onnx|.pt|.pt2)", callback=_home),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="largest max-abs logit difference against PyTorch accepted"),
    runs_dir: Path = typer.Option(Path(RUNS_DIR), "--runs-dir", callback=_home),
    trust_code: bool = typer.Option(False, "--trust-code", help="import the record's own model module (module:function)"),
) -> None:
    """A finished run's model as ONNX, TorchScript or a torch.export program, with a JSON of its inputs and classes; the file is
    run against PyTorch on a batch and written only if the logits agree."""
    from ferbench import api

    try:
        res = api.export(run, fmt, which, out, runs_dir, tolerance, trust_code)
    except FerbenchError as e:
        _fail(str(e))
    console.print(f"wrote {escape(str(res.path))} and {escape(str(res.sidecar))}; parity on {res.batch} images: "
                  f"max abs logit difference {res.max_abs_diff:.3g}", highlight=False)


def main() -> None:
    from ferbench.hostmem import apply_policy

    apply_policy()  # before PyTorch's first allocation: huge pages are decided there
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted: finished jobs are kept; run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
