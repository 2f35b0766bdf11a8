"""The activation-memory bound (#36 item 4): counted on the meta device, a lower bound of what
autograd keeps, refused before anything large is allocated in plan, run, predict and bench."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ferbench.cli import app
from ferbench.memory import GIB, MEMORY_ENV, check_job_memory, device_memory, leaf_outputs
from ferbench.models import create_model
from ferbench.spec import Spec, expand

FAMILIES = ["deep-emotion", "mini-xception", "resnet18", "resface-r18", "convnext-atto", "emonext-atto", "resnet50"]


def saved_by_autograd(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward, parameters aside."""
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in kept.items() if ptr not in params)


@pytest.mark.parametrize("arch", FAMILIES)
def test_meta_count_is_at_most_what_autograd_keeps(arch: str) -> None:
    torch.manual_seed(0)
    counted, _ = leaf_outputs(create_model(arch, 7, 48, 1), 4, 1, 48, train=True)
    real = saved_by_autograd(create_model(arch, 7, 48, 1), torch.randn(4, 1, 48, 48))
    assert 0.5 * real < counted <= 1.05 * real, (counted, real)  # measured 0.62-1.03 (ResNet-50's added downsample)


def test_meta_count_equals_a_real_forwards_count() -> None:
    """Shapes on the meta device are the shapes of a real forward: same bytes, summed and largest."""
    real_total, real_largest = 0, 0

    def hook(module, inputs, output):
        nonlocal real_total, real_largest
        if output is not None and not any(output is i for i in inputs):
            real_total += output.numel() * output.element_size()
            real_largest = max(real_largest, output.numel() * output.element_size())

    model = create_model("resnet18", 7, 40, 3)
    for m in model.modules():
        if next(m.children(), None) is None:
            m.register_forward_hook(hook)
    model.train()
    model(torch.randn(3, 3, 40, 40))
    assert leaf_outputs(create_model("resnet18", 7, 40, 3), 3, 3, 40, train=True) == (real_total, real_largest)


def _job(**train):
    spec = Spec.model_validate({"name": "mem", "datasets": [{"name": "synthfer"}],
                                "models": [{"id": "m", "arch": "emonext-atto"}], "train": {"epochs": 1, **train}})
    return expand(spec)[0]


def test_refusal_names_the_field_and_the_memory(monkeypatch) -> None:
    monkeypatch.setenv(MEMORY_ENV, "2")
    job = _job(input_size=224, batch_size=64, eval_batch_size=8)
    with pytest.raises(Exception) as e:
        check_job_memory(job, 7, "cpu")
    line = str(e.value)
    assert "train.batch_size 64" in line and f"{MEMORY_ENV}=2 (2 GiB)" in line and "\n" not in line
    check_job_memory(job, 7, "cpu", train=False)  # its evaluation alone fits
    monkeypatch.setenv(MEMORY_ENV, "nan")
    with pytest.raises(Exception, match="expected a positive number of GiB"):
        device_memory("cpu")


def test_checking_never_moves_the_seeded_stream() -> None:
    """EmoNeXt's initialiser copies data, so its bound builds it for real: inside a forked stream."""
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_job_memory(_job(input_size=32, batch_size=8), 7, "cpu")
    assert torch.equal(torch.rand(3), expected)


def test_this_machine_has_a_memory_figure() -> None:
    have, source = device_memory("cpu")
    assert have > GIB and "memory" in source


def _cli(args: list[str], cwd: Path, **env: str):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args], env=env)
    finally:
        os.chdir(old)


def test_run_fails_that_job_before_allocating_and_runs_the_rest(tmp_path: Path) -> None:
    spec = {"name": "mem", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 8}}],
            "models": [{"id": "small", "arch": "deep-emotion"},
                       {"id": "huge", "arch": "convnext-atto", "train": {"batch_size": 65536}}],
            "train": {"epochs": 1, "input_size": 48, "batch_size": 16, "eval_batch_size": 16}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    plan = _cli(["plan", "s.yaml", "--no-estimate"], tmp_path)
    assert plan.exit_code == 0 and "will fail: convnext-atto at 48x48, train.batch_size 65536" in plan.stderr
    res = _cli(["run", "s.yaml"], tmp_path)
    assert res.exit_code == 1, res.stdout + res.stderr
    assert "failed huge" in res.stdout and "needs at least" in res.stdout
    records = {p.parent.name.split("__")[0]: yaml.safe_load(p.read_text())
               for p in (tmp_path / "runs" / "mem").glob("*/manifest.json")}
    assert records["small"]["status"] == "complete"
    assert records["huge"]["status"] == "failed" and "train.batch_size 65536" in records["huge"]["failure"]
    assert not list((tmp_path / "runs" / "mem").glob("huge__*/*.pt"))


def test_workers_side_by_side_are_bounded_together(tmp_path: Path) -> None:
    """Each job fits alone; four at once (a worker process each, plus their activations) do not: the
    run is refused before anything is written, and says how many fit."""
    spec = {"name": "wk", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 8}}],
            "models": [{"id": "r", "arch": "resnet18"}], "seeds": [0, 1, 2, 3],
            "train": {"epochs": 1, "input_size": 64, "batch_size": 256, "eval_batch_size": 16}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    job = expand(Spec.model_validate(spec))[0]
    from ferbench.memory import WORKER_PROCESS_BYTES, cached_need

    one = cached_need(job, 7).train + WORKER_PROCESS_BYTES
    gib = f"{2.5 * one / GIB:.6f}"  # two at once fit, four do not
    res = _cli(["run", "s.yaml", "--workers", "4", "--no-estimate"], tmp_path, **{MEMORY_ENV: gib})
    assert res.exit_code == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert line.startswith("error: launcher.workers 4: 4 jobs at once need at least") and "\n" not in line
    assert "2 at once fit, lower --workers" in line and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()
    with pytest.raises(Exception, match="less than or equal to 1024"):
        Spec.model_validate({**spec, "launcher": {"workers": 1025}})


def test_predict_refuses_a_batch_that_cannot_fit(tmp_path: Path) -> None:
    spec = {"name": "p", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 8}}],
            "models": [{"id": "m", "arch": "deep-emotion"}], "train": {"epochs": 1, "input_size": 48, "batch_size": 16}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert _cli(["run", "s.yaml"], tmp_path).exit_code == 0
    run = next((tmp_path / "runs" / "p").glob("m__*"))
    from PIL import Image

    Image.new("L", (48, 48), 128).save(tmp_path / "face.png")
    res = _cli(["predict", run, "face.png", "--batch-size", "4096", "--tta", "tencrop"], tmp_path, **{MEMORY_ENV: "0.05"})
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "--batch-size 4096 x 10 TTA views needs at least" in res.stderr and "lower --batch-size" in res.stderr
    assert _cli(["predict", run, "face.png", "--batch-size", "4"], tmp_path, **{MEMORY_ENV: "0.05"}).exit_code == 0


@pytest.mark.parametrize("args, needle", [(["--size", "100000"], "--size 100000: expected 8 to 1024"),
                                          (["--batch", "0"], "--batch 0: expected 1 to 65536"),
                                          (["--images", "3"], "--images 3: expected one batch (64)"),
                                          (["--size", "1024", "--batch", "256"], "needs at least")])
def test_bench_sizes_are_bounded_before_allocating(tmp_path: Path, args: list[str], needle: str) -> None:
    res = _cli(["bench", "gpu", "--device", "cpu", *args], tmp_path)
    assert res.exit_code == 2 and needle in res.stderr and res.stderr.count("\n") == 1, res.stderr


@pytest.mark.parametrize("train, needle", [
    ({"batch_size": 1}, "train.batch_size 1 trains on one image"),
    ({"batch_size": 8, "drop_last": False}, "the epoch's last batch (25 training images, batch 8, drop_last: false)")])
def test_a_one_image_step_that_batchnorm_refuses_fails_before_training(tmp_path: Path, train: dict, needle: str) -> None:
    """Found by tests/test_fuzz_run.py: a step of one image at a 1x1 BatchNorm map raised ValueError
    out of `plan`'s probe (a traceback) and mid-epoch in `run`; now plan names it and the job fails first."""
    spec = {"name": "one", "datasets": [{"name": "synthfer", "options": {"n_train": 25, "n_val": 8, "n_test": 8}}],
            "models": [{"id": "m", "arch": "mini-xception"}], "train": {"epochs": 1, "input_size": 16, **train}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    plan = _cli(["plan", "s.yaml"], tmp_path)
    assert plan.exit_code == 0 and needle in plan.stderr and "BatchNorm" in plan.stderr, plan.stderr
    res = _cli(["run", "s.yaml"], tmp_path)
    assert res.exit_code == 1 and needle in res.stdout and res.exception is None or isinstance(res.exception, SystemExit)
    assert not list((tmp_path / "runs" / "one").glob("*/history.csv"))  # not a single epoch was started
    spec["train"].update(input_size=48)  # 3x3 maps: nine values per channel, one image trains
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert _cli(["run", "s.yaml"], tmp_path).exit_code == 0


@pytest.mark.parametrize("env, needle", [
    ({"FERBENCH_MAX_NPZ_GB": "abc"}, "FERBENCH_MAX_NPZ_GB='abc': expected a positive number of GiB"),
    ({"FERBENCH_MAX_NPZ_GB": "-1"}, "FERBENCH_MAX_NPZ_GB='-1'"),
    ({"FERBENCH_MAX_NPZ_GB": "1e400"}, "FERBENCH_MAX_NPZ_GB='1e400'"),
    ({MEMORY_ENV: "nan"}, f"{MEMORY_ENV}='nan'"),
    ({"FERBENCH_MAX_TABLE_GB": "0"}, "FERBENCH_MAX_TABLE_GB='0'"),
    ({"FERBENCH_CACHE": "/dev/null"}, "FERBENCH_CACHE=/dev/null: not a folder")])
def test_sizes_from_the_environment_are_checked_before_any_command(tmp_path: Path, env: dict, needle: str) -> None:
    """A bad FERBENCH_MAX_NPZ_GB used to list every record as unreadable on a published page (exit 0),
    or crash with OverflowError at 1e400; a cache that is a device failed every job."""
    res = _cli(["report", "--runs-dir", "nowhere"], tmp_path, **env)
    assert res.exit_code == 2 and needle in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "reports").exists()
