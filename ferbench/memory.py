"""Will a job's batches fit in the device's memory? Refused before anything large is allocated.

The spec bounds one batch of inputs (`spec.MAX_BATCH_INPUT_GB`); activations take far more (a
ConvNeXt at 1024 px and batch 32 needs over 100 GiB) and, on the CPU, the kernel kills the process
without a word. So before a job trains, its model runs one forward on PyTorch's `meta` device
(shapes only: no memory, milliseconds) with a hook on every leaf module, and the bytes of their
outputs give a lower bound of what the job needs:

- training keeps, for the backward pass, at least every leaf module's output at the training batch,
  beside the parameters, their gradients and two optimizer moments (4 x the parameters);
- evaluation (no autograd) holds at least its largest single leaf output at the evaluation batch
  times its TTA views, beside the parameters.

An output that is one of its module's inputs (an in-place ReLU, an Identity) is not counted twice.
Against the tensors autograd actually saves (`torch.autograd.graph.saved_tensors_hooks`, unique
storages, batch 4) the leaf outputs come to 0.62-0.99 of them for Deep-Emotion, mini-Xception, ResNet-18,
ResFace-R18, ConvNeXt and EmoNeXt and 1.00-1.03 for the ResNet-50s (their downsample branch's output
is added, not saved); `tests/test_memory.py` pins that. The process's peak is higher still (the
backward pass's gradients, the allocator): measured here for one Adam step, the bound was 0.53-0.86
of the peak's growth (ResNet-18 at 224 px, batch 32: 802 MiB bounded, 1,132 MiB grown). A bound that
errs low never refuses a run that would have fitted. The device's memory is the CPU's physical memory (or the cgroup's
limit, when lower) or the CUDA device's total; `FERBENCH_MEMORY_GB` replaces it (to raise it for
swap, or to lower it on a shared machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from ferbench.errors import FerbenchError, JobFailed
from ferbench.fileio import env_gib
from ferbench.spec import TTA_VIEWS, Job

MEMORY_ENV = "FERBENCH_MEMORY_GB"
GIB = 2**30


@dataclass(frozen=True)
class Need:
    """A lower bound of a job's memory, in bytes, for its training step and its evaluation batch."""

    train: int
    eval: int


def leaf_outputs(model: Any, batch: int, in_chans: int, size: int, train: bool) -> tuple[int, int]:
    """(sum, largest) of the bytes of every leaf module's outputs for one forward of a `batch` of
    `in_chans` x `size` x `size` float32 inputs, on the meta device (the model is moved there)."""
    import torch

    total, largest = 0, 0

    def hook(module: Any, inputs: Any, output: Any) -> None:
        nonlocal total, largest
        outs = output if isinstance(output, (tuple, list)) else (output,)
        fresh = [t for t in outs if isinstance(t, torch.Tensor) and not any(t is i for i in inputs)]  # not in-place, not Identity
        n = sum(t.numel() * t.element_size() for t in fresh)
        total, largest = total + n, max(largest, n)

    model = model.to("meta")
    handles = [m.register_forward_hook(hook) for m in model.modules() if next(m.children(), None) is None]
    try:
        model.train(train)
        with torch.no_grad():
            model(torch.empty(batch, in_chans, size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total, largest


def job_need(job: Job, num_classes: int) -> Need | None:
    """The lower bound for `job`, or None where it cannot be counted (see `model_need`)."""
    from ferbench.models import build_model

    t = job.train
    return model_need(lambda: build_model(job, num_classes), t.in_chans, t.input_size, t.batch_size,
                      t.eval_batch_size * TTA_VIEWS[job.eval.tta])


def meta_model(build: Callable[[], Any]) -> Any:
    """The model `build()` makes, on the meta device (built there where its constructor allows, else
    built for real and moved), or None where building fails (the runner reports that, with its reason)."""
    import torch

    with torch.random.fork_rng(devices=[]):  # a real build draws from the seeded stream: the job's draws stay its own
        try:
            try:
                with torch.device("meta"):
                    return build()
            except (NotImplementedError, RuntimeError):  # an initialiser that copies data
                return build().to("meta")
        except Exception:  # noqa: BLE001
            return None


def model_need(build: Callable[[], Any], in_chans: int, size: int, train_batch: int, eval_batch: int) -> Need | None:
    """The lower bound for the model `build()` makes (on the meta device where its constructor allows),
    or None where its forward cannot run on the meta device (a user's model that reads values): then
    nothing is refused on a guess."""
    model = meta_model(build)
    if model is None:
        return None
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        kept, _ = leaf_outputs(model, train_batch, in_chans, size, train=True)
        _, largest = leaf_outputs(model, eval_batch, in_chans, size, train=False)
    except Exception:  # noqa: BLE001 - any op without a meta kernel, or data-dependent control flow
        return None
    return Need(train=4 * params + kept, eval=params + largest)


def device_memory(device: Any) -> tuple[int, str]:
    """Bytes of memory a job on `device` may use, and where that figure comes from."""
    gb = env_gib(MEMORY_ENV, None)
    if gb is not None:
        return int(gb * GIB), f"{MEMORY_ENV}={os.environ[MEMORY_ENV].strip()}"
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"{torch.cuda.get_device_name(device)}'s memory"
    phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    return (limit, "the cgroup's memory limit") if limit and limit < phys else (phys, "this machine's memory")


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        return int(text) if text.isdigit() else None
    return None


_CACHE: dict[str, Need | None] = {}


def smallest_train_batch(job: Job, n_train: int) -> int:
    """The fewest images a training step of `job` can get: its batch, or the epoch's last partial
    batch when `train.drop_last` is false."""
    t = job.train
    tail = n_train % t.batch_size
    return min(t.batch_size, n_train) if t.drop_last or not tail else tail


def single_image_problem(job: Job, num_classes: int, n_train: int) -> str | None:
    """Why a training step of one image fails, where one can occur: PyTorch's BatchNorm refuses to
    normalise a single value per channel in training (a 1x1 map at batch 1), which would otherwise
    end the job mid-epoch with a ValueError. Found by a train-mode forward of one image on the meta
    device (the check is on shapes); None when no step has one image or the step works."""
    import torch

    from ferbench.models import build_model

    t = job.train
    if smallest_train_batch(job, n_train) != 1:
        return None
    model = meta_model(lambda: build_model(job, num_classes))
    if model is None:
        return None
    try:
        with torch.no_grad():
            model.train()(torch.empty(1, t.in_chans, t.input_size, t.input_size, device="meta"))
    except ValueError as e:
        if "more than 1 value per channel" not in str(e):
            return None
        where = ("train.batch_size 1" if t.batch_size == 1 else
                 f"the epoch's last batch ({n_train} training images, batch {t.batch_size}, drop_last: false)")
        return (f"{where} trains on one image, and {job.model.arch}'s BatchNorm at {t.input_size}x{t.input_size} "
                "then sees one value per channel, which PyTorch refuses in training: raise train.batch_size"
                + ("" if t.batch_size == 1 else " or set train.drop_last: true"))
    except Exception:  # noqa: BLE001 - anything else is the runner's to report, with its reason
        return None
    return None


def check_job_batches(job: Job, num_classes: int, device: Any, n_train: int, train: bool = True) -> None:
    """Everything known before training about `job`'s batches: that they fit in memory and that
    none trains on one image where BatchNorm refuses it (JobFailed, one line)."""
    check_job_memory(job, num_classes, device, train)
    if train and job.train.epochs and (problem := single_image_problem(job, num_classes, n_train)):
        raise JobFailed(problem)


def cached_need(job: Job, num_classes: int) -> Need | None:
    """`job_need`, cached per process by what changes the bound."""
    import json

    t = job.train
    key = json.dumps([job.model.arch, job.model.options, t.input_size, t.in_chans, t.batch_size, t.eval_batch_size,
                      job.eval.tta, num_classes], sort_keys=True, default=str)
    if key not in _CACHE:
        _CACHE[key] = job_need(job, num_classes)
    return _CACHE[key]


# A spawned worker process imports torch and ferbench before its job allocates anything: 407 MiB of
# private memory measured (torch 2.14, Linux x86-64, /proc/self/smaps_rollup); half of it is counted
# so that the bound errs low, as every bound here does.
WORKER_PROCESS_BYTES = 200 * 2**20


def check_workers_memory(jobs: list[Job], num_classes: dict[str, int], workers: int, device: Any) -> None:
    """FerbenchError (one line) when `workers` jobs at once cannot fit: the largest `workers` training
    bounds of `jobs` plus one worker process each exceed the device's memory. Each job alone is
    checked by `check_job_memory`; this is the sum that running them side by side allocates."""
    import torch

    at_once = min(workers, len(jobs))
    if at_once < 2:
        return
    process = WORKER_PROCESS_BYTES if torch.device(device).type == "cpu" else 0  # on CUDA it is the host's memory
    needs = sorted((n.train if (n := cached_need(j, num_classes[j.id])) else 0 for j in jobs), reverse=True)
    total = sum(needs[:at_once]) + at_once * process
    have, source = device_memory(device)
    if total > have:
        fit = sum(1 for k in range(1, at_once + 1) if sum(needs[:k]) + k * process <= have)
        what = f"{process // 2**20} MiB a worker process plus each job's" if process else "each job's"
        raise FerbenchError(f"launcher.workers {workers}: {at_once} jobs at once need at least {total / GIB:.3g} GiB "
                            f"({what} activations, counted on the meta device), above {source} "
                            f"({have / GIB:.3g} GiB): {fit} at once fit, lower --workers "
                            f"({MEMORY_ENV} sets the memory to assume)")


def check_job_memory(job: Job, num_classes: int, device: Any, train: bool = True,
                     eval_field: str = "train.eval_batch_size") -> None:
    """JobFailed (one line, naming the field to lower and how to raise the bound) when `job`'s
    lower bound exceeds the device's memory; `train=False` checks its evaluation alone, and
    `eval_field` names the option that sets its evaluation batch. Cached per process by what
    changes the bound."""
    t = job.train
    need = cached_need(job, num_classes)
    if need is None:
        return
    have, source = device_memory(device)
    checks = [("train.batch_size", t.batch_size, 1, need.train)] if train and t.epochs else []
    checks.append((eval_field, t.eval_batch_size, TTA_VIEWS[job.eval.tta], need.eval))
    for field, batch, views, bytes_ in checks:
        if bytes_ > have:
            lower = f"{field} or train.input_size" if field.startswith("train.") else field
            raise JobFailed(f"{job.model.arch} at {t.input_size}x{t.input_size}, {field} {batch}"
                            f"{f' x {views} TTA views' if views > 1 else ''} needs at least {bytes_ / GIB:.3g} GiB "
                            f"(activations counted on the meta device), above {source} ({have / GIB:.3g} GiB): "
                            f"lower {lower} ({MEMORY_ENV} sets the memory to assume)")
