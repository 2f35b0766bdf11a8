"""Kernels chosen by measurement: every candidate gives the same result (to float rounding), the
choice is remembered per machine, can be pinned, and is recorded with each run and benchmark."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from ferbench.data import augment, kernels
from ferbench.errors import FerbenchError

UPSAMPLES = {"blocksparse": augment._upsample_blocksparse, "gather": augment._upsample_gather,
             "native": augment._upsample_native}


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch, tmp_path):
    """Each test starts with no choice made in this process and its own machine store."""
    monkeypatch.setattr(kernels, "_MEMO", {})
    monkeypatch.setenv("FERBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FERBENCH_KERNELS", raising=False)


@pytest.mark.parametrize("name", UPSAMPLES)
@pytest.mark.parametrize("n,n_in,n_out,chans", [(5, 48, 224, 3), (3, 48, 224, 1), (2, 48, 236, 3), (4, 37, 50, 3),
                                                (2, 7, 224, 1), (3, 48, 49, 3)])
def test_every_upsample_kernel_is_interpolate_to_float_rounding(name, n, n_in, n_out, chans):
    y = torch.rand(n, 1, n_in, n_in, generator=torch.Generator().manual_seed(n_in))
    ref = F.interpolate(y, size=(n_out, n_out), mode="bilinear", align_corners=False).expand(-1, chans, -1, -1)
    out = UPSAMPLES[name](y, n_out, chans)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("name", augment.GRID_KERNELS)
def test_every_grid_kernel_is_affine_grid_to_float_rounding(name, monkeypatch):
    monkeypatch.setenv("FERBENCH_KERNELS", f"grid={name}")
    theta = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(0))
    ref = F.affine_grid(theta, [6, 1, 48, 48], align_corners=False)
    assert (augment.affine_grid(theta, 48) - ref).abs().max() < 1e-5
    assert kernels.chosen() == {"grid@48x48x6": name}


def test_the_default_stays_unless_another_is_clearly_faster_in_every_round(monkeypatch):
    assert kernels.pick({"mm": 1.0, "addcmul": 0.8}) == "mm"  # within the noise: keep the default's rounding
    assert kernels.pick({"mm": 1.0, "addcmul": 0.5}) == "addcmul"
    assert kernels.pick({"blocksparse": 10.0, "gather": 4.0, "native": 5.0}) == "gather"
    rounds = iter([{"mm": 4.3, "addcmul": 3.0}, {"mm": 0.1, "addcmul": 0.8}])  # a load swing in round 1
    monkeypatch.setattr(kernels, "measure", lambda c: next(rounds))
    assert kernels.decide({"mm": None, "addcmul": None})[0] == "mm"


def test_a_choice_is_measured_once_per_machine_and_remembered(monkeypatch, tmp_path):
    calls = {"fast": 0, "slow": 0}

    def timed(name, seconds):
        def run():
            calls[name] += 1
            return seconds
        return run

    monkeypatch.setattr(kernels, "measure", lambda c: {name: 10.0 if name == "slow" else 1.0 for name in c})
    assert kernels.choose("op", "s", {"slow": timed("slow", 0), "fast": timed("fast", 0)}) == "fast"
    store = json.loads((tmp_path / "cache" / "kernels.json").read_text())
    (entry,) = store.values()
    assert entry["kernel"] == "fast" and "at least 25% faster than the default in every round" in entry["why"] and entry["machine"] == kernels.machine_key()
    # another process on this machine: no new measurement, the same choice
    monkeypatch.setattr(kernels, "_MEMO", {})
    monkeypatch.setattr(kernels, "measure", lambda c: pytest.fail("measured twice on one machine"))
    assert kernels.choose("op", "s", {"slow": timed("slow", 0), "fast": timed("fast", 0)}) == "fast"
    assert kernels.explain()[0]["kernel"] == "fast"


def test_a_pin_wins_and_a_bad_pin_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("FERBENCH_KERNELS", "upsample=native")
    y = torch.rand(2, 1, 48, 48)
    out = augment.upsample_bilinear(y, 224, 3)
    assert torch.equal(out, augment._upsample_native(y, 224, 3))
    assert kernels.explain()[0]["why"] == "pinned by FERBENCH_KERNELS"
    monkeypatch.setenv("FERBENCH_KERNELS", "upsample=fastest")
    with pytest.raises(FerbenchError, match="upsample='fastest': expected one of blocksparse, gather, native"):
        augment.upsample_bilinear(y, 224, 3)


@pytest.mark.slow
def test_a_run_records_its_kernels_and_a_benchmark_its_machine(tmp_path):
    from ferbench import api
    from ferbench.cli import app
    from ferbench.records import discover

    spec = {"name": "k", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 8}}],
            "models": [{"id": "m", "arch": "resnet18"}], "train": {"epochs": 1, "batch_size": 16, "input_size": 32}}
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(spec))
    api.run_spec(tmp_path / "k.yaml", runs_dir=tmp_path / "runs", estimate=False)
    (rec,) = discover(tmp_path / "runs")
    assert rec.manifest["kernels"] == {"grid@32x32x16": "mm"} or rec.manifest["kernels"] == {"grid@32x32x16": "addcmul"}

    res = CliRunner().invoke(app, ["bench", "gpu", "--device", "cpu", "--model", "resnet18=resface-paper",
                                   "--size", "64", "--batch", "4", "--images", "8", "--epochs", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    hw = out["hardware"]
    assert hw["cpu"] and hw["cores"] >= 1 and hw["torch_threads"] == torch.get_num_threads() and "blas" in hw
    assert {k["op"] for k in out["kernels"]} == {"grid", "upsample"} and all(k["why"] for k in out["kernels"])
    text = CliRunner().invoke(app, ["bench", "gpu", "--device", "cpu", "--model", "resnet18=resface-paper",
                                    "--size", "64", "--batch", "4", "--images", "8", "--epochs", "1"]).output
    assert "machine: " in text and "kernel upsample at 4x48->64x3: " in text
