"""The GPU-session tooling, checked on the CPU: the fast augmentation path, `ferbench bench gpu`, the data pack."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ferbench.cli import app
from ferbench.data.augment import affine_grid, augment_batch, random_affine, to_unit
from ferbench.spec import AugmentConfig

from conftest import REPO

AUG = AugmentConfig(hflip=True, rotation=20.0, resize_ratio=236 / 224)


@pytest.mark.parametrize("size", [7, 48, 224])
def test_affine_grid_matches_torch(size):
    theta = random_affine(6, AUG, torch.Generator().manual_seed(size))
    ref = F.affine_grid(theta, [6, 1, size, size], align_corners=False)
    assert torch.allclose(affine_grid(theta, size), ref, atol=1e-6)


def test_cpu_upsample_path_matches_the_float_path():
    x = to_unit(torch.randint(0, 256, (5, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    out = augment_batch(x, 224, AUG, torch.Generator().manual_seed(1), out_chans=3)
    theta = random_affine(5, AUG, torch.Generator().manual_seed(1))
    warped = F.grid_sample(x, F.affine_grid(theta, [5, 1, 48, 48], align_corners=False), align_corners=False)
    ref = F.interpolate(warped, size=(224, 224), mode="bilinear", align_corners=False)
    assert out.shape == (5, 3, 224, 224) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max() <= 1e-5  # the same bilinear weights, applied as matrix products
    assert torch.equal(out[:, 0], out[:, 2])
    grey = augment_batch(x, 224, AUG, torch.Generator().manual_seed(1))
    assert grey.shape == (5, 1, 224, 224) and (grey[:, 0] - out[:, 0]).abs().max() <= 1e-5


@pytest.mark.parametrize("n_in,n_out", [(48, 224), (48, 236), (48, 226), (100, 224), (37, 50), (7, 224), (48, 49)])
def test_matrix_upsample_equals_interpolate(n_in, n_out):
    """One block size per gcd case: 16 blocks of 3 -> 14, 4 of 12 -> 59, 2 of 24 -> 113, coprime (one dense block)."""
    from ferbench.data.augment import upsample_bilinear

    y = torch.rand(3, 1, n_in, n_in, generator=torch.Generator().manual_seed(n_in))
    ref = F.interpolate(y, size=(n_out, n_out), mode="bilinear", align_corners=False)
    grey, rgb = upsample_bilinear(y, n_out), upsample_bilinear(y, n_out, 3)
    assert grey.shape == (3, 1, n_out, n_out) and rgb.shape == (3, 3, n_out, n_out)
    assert rgb.is_contiguous(memory_format=torch.channels_last)
    # grey and 3-channel batches are separate shapes, so each may run its own kernel (`kernels.choose`)
    assert (grey - ref).abs().max() < 1e-5 and (rgb - ref).abs().max() < 1e-5
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 0], rgb[:, 2])


def test_bench_gpu_rows_on_cpu():
    res = CliRunner().invoke(app, ["bench", "gpu", "--device", "cpu", "--model", "resnet18=resface-paper",
                                   "--size", "32", "--batch", "4", "--images", "8", "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)["rows"]
    assert row["name"] == "gpu_train_resnet18_32" and row["loss"] == "ldl" and row["optimizer"] == "sgd"
    assert row["ours_per_s"] > 0 and row["reference_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["ours_per_s"] / row["reference_per_s"])
    assert row["train_tflops"] == pytest.approx(row["ours_per_s"] * 6 * row["gmacs_forward"] / 1e3)
    assert 0 < row["fraction_of_measured_peak"] and row["datasheet_peak_tflops"] is None


def test_bench_gpu_times_several_epochs_per_fit():
    res = CliRunner().invoke(app, ["bench", "gpu", "--device", "cpu", "--model", "resnet18=resface-paper",
                                   "--size", "32", "--batch", "4", "--images", "8", "--epochs", "2", "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)["rows"]
    assert row["epochs"] == 2 and row["images_per_epoch"] == 8
    # fit's time split: its two epochs (as fit timed them) and the rest, which is start-up and checkpoints
    assert row["ours_in_epochs_per_s"] >= row["ours_per_s"] and row["ours_outside_epochs_s"] > 0
    in_epochs = 2 * 8 / row["ours_in_epochs_per_s"]
    assert in_epochs + row["ours_outside_epochs_s"] == pytest.approx(2 * 8 / row["ours_per_s"])
    assert row["in_epochs_ratio"] == pytest.approx(row["ours_in_epochs_per_s"] / row["reference_per_s"])
    # the bare loop ran one epoch after each of fit's: the reference rate is over exactly those
    assert row["method"].startswith("one bare epoch after each") and len(row["all_epochs"]) == 2
    assert sum(e["ours_s"] for e in row["all_epochs"]) == pytest.approx(in_epochs)
    assert 2 * 8 / sum(e["reference_s"] for e in row["all_epochs"]) == pytest.approx(row["reference_per_s"])


def test_epoch_interleaved_sink_runs_a_bare_epoch_after_each_fit_epoch_and_the_checkpoint_write():
    from ferbench.bench.gpu import EpochInterleaved
    from ferbench.engine.checkpoint import CheckpointWriter

    events: list[str] = []

    class Writer(CheckpointWriter):
        def close(self) -> None:
            events.append("wait")

    def bare_epoch() -> float:
        events.append("bare")
        return 0.25

    sink = EpochInterleaved(bare_epoch, Writer())
    for epoch in range(2):
        sink.start_epoch(epoch, 2, 3)
        for _ in range(3):
            sink.advance()
        sink.end_epoch({"epoch": epoch + 1, "seconds": 1.0})
    assert events == ["wait", "bare", "wait", "bare"]
    assert sink.bare_epochs == [0.25, 0.25] and [r["epoch"] for r in sink.rows] == [1, 2]


@pytest.mark.slow
def test_bench_gpu_takes_the_bare_epochs_out_of_fits_time(monkeypatch):
    """Bare epochs made 1.5 s slower run inside fit's wall time; none of it may count as fit's."""
    import time

    from ferbench.bench.gpu import LoopPair, bench_model

    real = LoopPair.bare_seconds

    def slow_bare(self, epochs, around=None):
        time.sleep(1.5)
        return real(self, epochs) + 1.5

    monkeypatch.setattr(LoopPair, "bare_seconds", slow_bare)
    row = bench_model("resnet18", "resface-paper", torch.device("cpu"), size=32, batch=4, n_images=8, epochs=2)
    assert all(e["reference_s"] >= 1.5 for e in row["all_epochs"])
    assert row["ours_outside_epochs_s"] < 1.0  # start-up and checkpoints only: no bare epoch in it
    assert row["ratio"] > 1  # a tiny model's 2-step epochs take well under the added 1.5 s


@pytest.mark.slow
def test_bench_trace_finds_no_per_step_host_syncs():
    """A fit epoch reads the device three times (divergence flag, loss sum, correct count), not once per step."""
    res = CliRunner().invoke(app, ["bench", "trace", "--device", "cpu", "--model", "resnet18=resface-paper",
                                   "--size", "32", "--batch", "4", "--images", "24", "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)["rows"]
    assert row["bare"]["steps"] == row["fit"]["steps"] == 6
    assert row["bare"]["host_syncs"] == 0
    assert row["fit"]["host_syncs"] == 3 and row["fit"]["host_syncs_by_op"] == {"aten::_local_scalar_dense": 3}
    assert row["fit"]["device_busy_fraction"] is None  # CPU: no device timeline
    assert row["fit"]["top_host_ops"] and all(o["self_host_ms"] >= 0 for o in row["fit"]["top_host_ops"])


@pytest.mark.parametrize("bad, expected", [(["--model", "nope=resface-paper"], "unknown arch 'nope'"),
                                           (["--model", "resnet18=fast"], "expected arch=recipe"),
                                           (["--images", "2", "--batch", "4"], "--images 2: expected one batch (4)")])
def test_bench_gpu_bad_input(bad, expected):
    res = CliRunner().invoke(app, ["bench", "gpu", "--device", "cpu", "--size", "32", "--model", "resnet18=resface-paper",
                                   *bad])
    assert res.exit_code == 2 and expected in res.output and "Traceback" not in res.output


def test_datapack_round_trip_is_byte_exact(small_fer, tmp_path):
    csv_gz, _ = small_fer
    src = csv_gz.parents[1]
    (src / "ferplus").mkdir()
    votes = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\nTraining,fer0000000.png,10,0,0,0,0,0,0,0,0,0\n"
    (src / "ferplus" / "fer2013new.csv").write_text(votes)
    script = REPO / "benchmarks" / "gpu" / "datapack.py"
    subprocess.run([sys.executable, str(script), "pack", str(src), str(tmp_path / "pack")], check=True)
    subprocess.run([sys.executable, str(script), "unpack", str(tmp_path / "pack"), str(tmp_path / "root")], check=True)
    assert (tmp_path / "root" / "fer2013" / "fer2013.csv").read_bytes() == gzip.decompress(csv_gz.read_bytes())
    assert (tmp_path / "root" / "ferplus" / "fer2013new.csv").read_text() == votes
    # a damaged pack is refused, not silently unpacked
    np.save(tmp_path / "pack" / "labels.npy", (np.load(tmp_path / "pack" / "labels.npy") + 1) % 7)
    bad = subprocess.run([sys.executable, str(script), "unpack", str(tmp_path / "pack"), str(tmp_path / "root2")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "does not match sha256" in bad.stderr
    assert not (tmp_path / "root2" / "fer2013" / "fer2013.csv").exists()


def test_bench_data_row_reports_interleaved_windows_and_the_best_of_each():
    from ferbench.bench.cpu import bench_data

    row = bench_data(48, batch=8, seconds=0.05, windows=2)
    assert row["name"] == "data_48" and row["batch"] == 8 and len(row["all_windows"]) == 2
    assert row["ours_per_s"] == max(w["ours_per_s"] for w in row["all_windows"])
    assert row["reference_per_s"] == max(w["reference_per_s"] for w in row["all_windows"])
    assert row["ratio"] == pytest.approx(row["ours_per_s"] / row["reference_per_s"])


def test_bench_eval_rows_share_our_windows_and_report_the_best_of_each():
    from ferbench.bench.cpu import bench_eval

    crop, bare = bench_eval(size=16, n=8, batch=4, windows=2, seconds=0.05)
    assert (crop["name"], bare["name"]) == ("eval_tencrop_vs_cropwise", "eval_tencrop_vs_bare")
    for row in (crop, bare):
        assert len(row["all_windows"]) == 2 and row["views"] == 10
        assert row["ours_per_s"] == max(w["ours_per_s"] for w in row["all_windows"])
        assert row["reference_per_s"] == max(w["reference_per_s"] for w in row["all_windows"])
    assert [w["ours_per_s"] for w in crop["all_windows"]] == [w["ours_per_s"] for w in bare["all_windows"]]


def test_bench_train_row_interleaves_the_loops_step_by_step_and_pools_the_repeats():
    from ferbench.bench.cpu import TRAIN_BENCH_CFG, bench_train

    row = bench_train(cfg=TRAIN_BENCH_CFG.model_copy(update={"input_size": 16, "batch_size": 8, "epochs": 2}), n=16, repeats=3)
    assert row["name"] == "train_epoch" and len(row["all_repeats"]) == 3 and row["images_per_epoch"] == 16
    # pooled: the row's rates are the harmonic means of the repeats' (same images in each)
    for side in ("ours_per_s", "reference_per_s"):
        hmean = 3 / sum(1 / r[side] for r in row["all_repeats"])
        assert row[side] == pytest.approx(hmean)
    assert row["step_ms_median"]["ours"] > 0 and row["step_ms_median"]["reference"] > 0
    assert len(row["ours_outside_steps_s"]) == 3 and all(t >= 0 for t in row["ours_outside_steps_s"])


def test_interleaved_sink_runs_one_bare_step_per_fit_step_after_the_checkpoint_write():
    import time

    from ferbench.bench.cpu import Interleaved
    from ferbench.engine.checkpoint import CheckpointWriter

    events: list[str] = []

    class Writer(CheckpointWriter):
        def close(self) -> None:
            events.append("wait")
            time.sleep(0.05)  # a write in flight: fit's time, not the bare loop's

    def bare():
        while True:
            events.append("bare")
            time.sleep(0.5)
            yield

    sink = Interleaved(bare(), Writer())
    sink.start_epoch(0, 1, 2)
    for _ in range(2):
        time.sleep(0.1)  # fit's step
        sink.advance()
    assert events == ["wait", "bare", "wait", "bare"]
    assert len(sink.fit_steps) == len(sink.bare_steps) == 2
    assert all(0.15 <= t < 0.45 for t in sink.fit_steps)  # step + wait, no bare step in it
    assert all(t >= 0.5 for t in sink.bare_steps)


def test_bench_train_charges_a_cost_added_to_fits_steps_to_fit_alone(monkeypatch):
    import time

    import ferbench.engine.train as train
    from ferbench.bench.cpu import TRAIN_BENCH_CFG, bench_train

    real = train.augment_batch

    def slow_augment(*args, **kwargs):
        time.sleep(0.4)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "augment_batch", slow_augment)
    row = bench_train(cfg=TRAIN_BENCH_CFG.model_copy(update={"input_size": 16, "batch_size": 8, "epochs": 1}), n=32, repeats=1)
    # a tiny model's step swings by tens of ms here; the added 400 ms stands out on fit's side only
    assert row["step_ms_median"]["ours"] - row["step_ms_median"]["reference"] >= 300
