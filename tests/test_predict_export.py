"""A finished run's model outside training: read back exactly, `predict` on image files, `export`."""

from __future__ import annotations

import csv
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ferbench import api
from ferbench.cli import app
from ferbench.data import load_dataset
from ferbench.engine.evaluate import predict as predict_logits
from ferbench.errors import FerbenchError
from ferbench.trained import load_run
from tests.conftest import run_spec_dict

DATA = {"name": "synthfer", "options": {"n_train": 48, "n_val": 16, "n_test": 12}}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished EmoNeXt-atto run (EMA on, as its recipe, flip TTA): its folder."""
    folder = tmp_path_factory.mktemp("trained")
    spec = {"name": "t", "datasets": [DATA], "models": [{"id": "e", "arch": "emonext-atto", "recipe": "emonext-paper"}],
            "train": {"epochs": 2, "batch_size": 16, "input_size": 32, "early_stopping_patience": None},
            "eval": {"tta": "flip"}}
    (outcome,) = run_spec_dict(folder, spec)
    assert outcome.status == "complete"
    return folder / "runs" / "t" / outcome.job.id


def test_a_run_read_back_reproduces_its_own_test_logits_exactly(finished_run):
    stored = np.load(finished_run / "predictions.npz")
    test = load_dataset(DATA["name"], DATA["options"]).splits["test"]
    for which in ("last", "best"):
        tm = load_run(finished_run, which)
        assert tm.job.train.ema is not None and tm.image_shape == (48, 48) and not tm.colour
        logits = predict_logits(tm.model, test.images, tm.job.train, torch.device("cpu"), tm.job.eval.tta)
        np.testing.assert_array_equal(logits, stored[f"test.{which}.logits"])


def _write_images(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        paths.append(folder / f"face{i:02d}.png")
        Image.fromarray(im).save(paths[-1])
    return paths


def test_predict_on_a_folder_refuses_a_corrupt_image_and_predicts_the_rest(finished_run, tmp_path):
    test = load_dataset(DATA["name"], DATA["options"]).splits["test"]
    paths = _write_images(tmp_path / "faces", test.images)
    (tmp_path / "faces" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    colour = np.stack([test.images[0]] * 3, axis=-1)
    (tmp_path / "faces" / "sub").mkdir()
    Image.fromarray(colour).resize((160, 160)).save(tmp_path / "faces" / "sub" / "big_colour.jpg")  # any size, colour
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(app, ["predict", str(finished_run), str(tmp_path / "faces"), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "broken.jpg: image does not decode" in result.output and "Traceback" not in result.output
    rows = list(csv.DictReader(out.open()))
    classes = json.loads((finished_run / "metrics.json").read_text())["classes"]
    assert list(rows[0]) == ["file", "prediction", *classes] and len(rows) == len(paths) + 1
    # the lossless PNGs of the test images get exactly the run's own (flip-TTA, last model) probabilities
    stored = torch.softmax(torch.from_numpy(np.load(finished_run / "predictions.npz")["test.last.logits"]), 1).numpy()
    by_file = {r["file"]: r for r in rows}
    for path, p in zip(paths, stored):
        row = by_file[str(path)]
        np.testing.assert_allclose([float(row[c]) for c in classes], p, atol=1e-6)
        assert row["prediction"] == classes[int(np.argmax(p))]
    assert abs(sum(float(by_file[str(tmp_path / "faces" / "sub" / "big_colour.jpg")][c]) for c in classes) - 1) < 1e-4


def test_predict_json_and_tta_and_refusals(finished_run, tmp_path):
    test = load_dataset(DATA["name"], DATA["options"]).splits["test"]
    paths = _write_images(tmp_path / "faces", test.images[:3])
    res = api.predict(finished_run, [str(p) for p in paths], tta="tencrop", out=tmp_path / "p.json")
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["tta"] == "tencrop" and len(doc["predictions"]) == 3 and doc["refused"] == [] and res.refused == []
    result = CliRunner().invoke(app, ["predict", str(finished_run), str(tmp_path / "nothing-here.png")])
    assert result.exit_code == 2 and "no such file or folder" in result.output and "nothing written" in result.output
    with pytest.raises(FerbenchError, match="--tta 'sideways'"):
        api.predict(finished_run, paths, tta="sideways")
    with pytest.raises(FerbenchError, match="expected a .csv or .json"):
        api.predict(finished_run, paths, out=tmp_path / "p.txt")


def test_load_run_refuses_what_it_cannot_use(finished_run, tmp_path):
    with pytest.raises(FerbenchError, match="not a run folder"):
        load_run(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("job.yaml", "manifest.json"):
        (copy / name).write_bytes((finished_run / name).read_bytes())
    with pytest.raises(FerbenchError, match="no checkpoint.pt"):
        load_run(copy)
    (copy / "manifest.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(FerbenchError, match="not complete"):
        load_run(copy)
    with pytest.raises(FerbenchError, match="--which 'worst'"):
        load_run(finished_run, "worst")


@pytest.mark.slow
def test_onnx_export_of_emonext_matches_pytorch(finished_run, tmp_path):
    """EmoNeXt's spatial transformer (affine_grid + grid_sample) through ONNX opset 18 and onnxruntime."""
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime as ort

    res = api.export(finished_run, "onnx", out=tmp_path / "e.onnx")
    assert res.max_abs_diff <= 1e-4
    model = onnx.load(str(res.path))
    assert "GridSample" in {n.op_type for n in model.graph.node}
    side = json.loads(res.sidecar.read_text())
    assert side["opset"] == 18 and side["classes"] == load_run(finished_run).classes
    assert side["input"]["shape"] == ["batch", 3, 32, 32] and "repeat the grey channel" in side["input"]["preprocessing"]
    # a batch of another size runs too (the batch dimension is dynamic) and agrees with PyTorch
    tm = load_run(finished_run)
    x = torch.randn(3, 3, 32, 32)
    session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], tm.model(x).numpy(), atol=1e-4)


def test_torchscript_export_and_a_failed_parity_check_writes_nothing(finished_run, tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["export", str(finished_run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 0 and "max abs logit difference" in result.output
    with warnings.catch_warnings():  # PyTorch 2.10+ marks torch.jit deprecated
        warnings.simplefilter("ignore")
        assert torch.jit.load(str(tmp_path / "m.pt")) is not None
    assert (tmp_path / "m.json").exists()
    from ferbench import export

    monkeypatch.setitem(export.WRITERS, "torchscript",
                        (export._write_torchscript, lambda path, x: np.full((len(x), 7), 1e3, np.float32)))
    result = CliRunner().invoke(app, ["export", str(finished_run), "--format", "torchscript", "--out", str(tmp_path / "n.pt")])
    assert result.exit_code == 2 and "differs from PyTorch" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]
    result = CliRunner().invoke(app, ["export", str(finished_run), "--format", "tflite"])
    assert result.exit_code == 2 and "expected onnx, torchscript, pt2" in result.output


@pytest.mark.slow
def test_pt2_export_loads_back_with_a_dynamic_batch(finished_run, tmp_path):
    res = api.export(finished_run, "pt2", out=tmp_path / "m.pt2")
    assert res.max_abs_diff <= 1e-4
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(torch.export.load(str(res.path)).module()(x).numpy(), load_run(finished_run).model(x).numpy(),
                                   atol=1e-4)


@pytest.mark.slow
def test_tensorboard_event_files_only_when_asked(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = {"name": "tb", "datasets": [DATA], "models": [{"id": "r", "arch": "resnet18"}],
            "train": {"epochs": 2, "batch_size": 16, "input_size": 32}}
    (plain,) = run_spec_dict(tmp_path, spec)
    assert not any((tmp_path / "runs").rglob("events.out.tfevents.*"))
    (logged,) = run_spec_dict(tmp_path, {**spec, "launcher": {"log": ["tensorboard"]}}, runs_dir=tmp_path / "runs2")
    assert logged.job.id == plain.job.id  # a sink is not part of what the job computes
    events = EventAccumulator(str(tmp_path / "runs2" / "tb" / logged.job.id / "tensorboard"))
    events.Reload()
    history = list(csv.DictReader((tmp_path / "runs2" / "tb" / logged.job.id / "history.csv").open()))
    for key in ("train_loss", "val_acc"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        np.testing.assert_allclose([s.value for s in scalars], [float(r[key]) for r in history], rtol=1e-5)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--log", "wandb", "--runs-dir", str(tmp_path / "r3")])
    assert result.exit_code == 2 and "--log wandb: unknown logger" in result.output and "tensorboard" in result.output
    assert not (tmp_path / "r3").exists()


def _photo_with_two_faces(folder: Path) -> tuple[Path, Path, list[tuple[int, int]]]:
    """A photo holding matplotlib's Grace Hopper sample twice (its face at (155, 105, 222, 222) in the
    sample) on a grey canvas, and a photo with no face; the offsets pasted at."""
    import matplotlib

    hopper = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    canvas = Image.new("RGB", (1400, 700), (128, 128, 128))
    offsets = [(20, 50), (720, 120)]
    for xy in offsets:
        canvas.paste(hopper, xy)
    folder.mkdir(parents=True, exist_ok=True)
    canvas.save(folder / "two.png")
    Image.new("RGB", (300, 200), (90, 140, 60)).save(folder / "empty.png")
    return folder / "two.png", folder / "empty.png", offsets


def test_predict_detect_finds_each_face_and_crops_it_as_a_crop_would_be(finished_run, tmp_path):
    pytest.importorskip("cv2", reason="--detect needs OpenCV: pip install 'ferbench[detect]'")
    from ferbench.detect import BOX_AS_DRAWN, crop_box
    from ferbench.data.pixels import as_training_image

    two, empty, offsets = _photo_with_two_faces(tmp_path / "photos")
    out = tmp_path / "faces.csv"
    result = CliRunner().invoke(app, ["predict", str(finished_run), str(tmp_path / "photos"), "--detect", "--top-k", "3",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"no face found: {empty}" in result.output and "wrote" in result.output
    rows = list(csv.DictReader(out.open()))
    classes = json.loads((finished_run / "metrics.json").read_text())["classes"]
    assert list(rows[0]) == ["file", "face", "x", "y", "w", "h", "prediction", "top1", "top1_p", "top2", "top2_p",
                             "top3", "top3_p", *classes]
    faces = [r for r in rows if r["file"] == str(two)]
    assert [r["face"] for r in faces] == ["0", "1"]
    assert [r for r in rows if r["file"] == str(empty)] == [{**{k: "" for k in rows[0]}, "file": str(empty), "face": "none"}]
    photo = Image.open(two)
    for r, (ox, oy) in zip(faces, offsets):
        box = tuple(int(r[k]) for k in "xywh")
        assert abs(box[0] - (ox + 155)) <= 12 and abs(box[1] - (oy + 105)) <= 12 and abs(box[2] - 222) <= 24
        # the face's row is what predict gives the crop saved on its own (this run's dataset has no measured frame)
        crop = as_training_image(photo.crop(crop_box(box, BOX_AS_DRAWN)), (48, 48))
        Image.fromarray(crop).save(tmp_path / "crop.png")
        alone = api.predict(finished_run, [tmp_path / "crop.png"])
        np.testing.assert_allclose([float(r[c]) for c in classes], alone.probabilities[0], atol=2e-6)
        probs = [float(r[f"top{k}_p"]) for k in (1, 2, 3)]
        assert r["top1"] == r["prediction"] and probs == sorted(probs, reverse=True)
    res = api.predict(finished_run, [two, empty], detect=True, out=tmp_path / "faces.json")
    doc = json.loads((tmp_path / "faces.json").read_text())
    assert doc["no_face"] == [str(empty)] and doc["detector"]["frame"]["source"].startswith("no measured frame")
    assert len(doc["predictions"]) == 2 and res.boxes is not None


def test_predict_batch_size_device_and_top_k(finished_run, tmp_path):
    test = load_dataset(DATA["name"], DATA["options"]).splits["test"]
    paths = _write_images(tmp_path / "faces", test.images)
    whole = api.predict(finished_run, paths)
    ones = api.predict(finished_run, paths, batch_size=1, top_k=99)  # one image per forward pass; k capped at the classes
    np.testing.assert_allclose(ones.probabilities, whole.probabilities, atol=1e-6)
    assert ones.top_k == len(whole.classes) and ones.rows()[0][f"top{ones.top_k}"] in whole.classes
    for args, message in ((["--device", "tpu"], "--device 'tpu': expected cpu, cuda"),
                          (["--batch-size", "0"], "--batch-size 0: expected 1 to 4096"),
                          (["--top-k", "0"], "--top-k 0: expected at least 1")):
        result = CliRunner().invoke(app, ["predict", str(finished_run), str(paths[0]), *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    if not torch.cuda.is_available():
        result = CliRunner().invoke(app, ["predict", str(finished_run), str(paths[0]), "--device", "cuda"])
        assert result.exit_code == 2 and "--device cuda: no such CUDA device here" in result.output


def _follow(steps: list[dict], path: Path) -> torch.Tensor:
    """The sidecar's steps, done the way a user outside ferbench would do them from its words."""
    import torch.nn.functional as F

    im = Image.open(path)
    x = None
    for s in steps:
        if s["step"] == "decode":
            im = im.convert(s["mode"])
        elif s["step"] == "resize" and x is None:
            im = im.resize(tuple(s["size"]), Image.Resampling.BILINEAR) if im.size != tuple(s["size"]) else im
        elif s["step"] == "to_float":
            a = np.asarray(im, np.float32) / 255
            x = torch.from_numpy(a[None, None] if a.ndim == 2 else a.transpose(2, 0, 1)[None].copy())
        elif s["step"] == "resize":
            assert s["interpolation"] == "bilinear"
            x = F.interpolate(x, size=tuple(s["size"][::-1]), mode="bilinear", align_corners=s["align_corners"],
                              antialias=s["antialias"])
        elif s["step"] == "repeat_channels":
            x = x.expand(-1, s["times"], -1, -1)
        elif s["step"] == "normalize":
            x = (x - torch.tensor(s["mean"]).view(1, -1, 1, 1)) / torch.tensor(s["std"]).view(1, -1, 1, 1)
        else:
            raise AssertionError(f"a step the sidecar names but a user could not follow: {s}")
    return x


def test_the_sidecar_steps_followed_by_hand_give_the_network_input(finished_run, tmp_path):
    from ferbench.trained import decode_image, preprocess, preprocessing_steps

    tm = load_run(finished_run)
    steps = preprocessing_steps(tm)
    normalise = ["normalize"] if tm.job.train.normalize != "none" else []
    assert [s["step"] for s in steps] == ["decode", "resize", "to_float", "resize", "repeat_channels", *normalise]
    assert all(s.get("interpolation", "bilinear") == "bilinear" for s in steps)
    rng = np.random.default_rng(0)
    for name, size in (("small.png", (48, 48)), ("photo.jpg", (160, 120))):  # the training size, and one to shrink
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(tmp_path / name)
    for normalize in ("none", "half", "imagenet"):
        job = tm.job.model_copy(update={"train": tm.job.train.model_copy(update={"normalize": normalize})})
        variant = dataclasses.replace(tm, job=job)
        for name in ("small.png", "photo.jpg"):
            want = preprocess(variant, decode_image(tmp_path / name, tm.image_shape)[None])
            torch.testing.assert_close(_follow(preprocessing_steps(variant), tmp_path / name), want, atol=1e-6, rtol=0)
