"""The bad-input catalogue: each malformed input gives one line naming the file/field/value and what
was expected, exit code 2, no traceback, and nothing written under runs/ or reports/."""

from __future__ import annotations

import copy
import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from ferbench.cli import app
from tests.conftest import write_fer_csv

GOOD = {
    "name": "bad",
    "datasets": [{"name": "synthfer", "options": {"n_train": 64, "n_val": 16, "n_test": 16}}],
    "models": [{"id": "m", "arch": "convnext-atto"}],
    "train": {"epochs": 1, "batch_size": 32, "input_size": 32},
}
PX = " ".join(["9"] * 2304)


def invoke(args: list[str], cwd: Path):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def check(result, cwd: Path, *needles: str) -> None:
    out = (result.stdout or "") + (result.stderr or "")
    assert result.exit_code == 2, out
    assert "Traceback" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), out
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    assert not (cwd / "runs").exists() and not (cwd / "reports").exists()


def spec_with(tmp_path: Path, mutate=None, text: str | None = None) -> Path:
    p = tmp_path / "spec.yaml"
    if text is not None:
        p.write_bytes(text.encode("utf-8", "surrogateescape"))
        return p
    d = copy.deepcopy(GOOD)
    if mutate:
        mutate(d)
    p.write_text(yaml.safe_dump(d))
    return p


def _set(path, value):
    def f(d):
        node = d
        *head, last = path
        for k in head:
            node = node[k]
        node[last] = value
    return f


SPEC_CASES = [
    ("yaml-syntax", None, "name: x\nmodels: [\n", ["invalid YAML at line"]),
    ("not-a-mapping", None, "- a\n- b\n", ["expected a mapping at the top level"]),
    ("empty-file", None, "", ["expected a mapping at the top level"]),
    ("unknown-top-key", _set(["modles"], []), None, ["modles: unknown key"]),
    ("unknown-train-key", _set(["train", "epochz"], 1), None, ["epochz: unknown key"]),
    ("unknown-model-key", _set(["models", 0, "archh"], "x"), None, ["models[0].archh: unknown key"]),
    ("seeds-type", _set(["seeds"], "many"), None, ["seeds"]),
    ("epochs-type", _set(["train", "epochs"], "ten"), None, ["epochs", "expected an integer", "'ten'"]),
    ("epochs-string-number", _set(["train", "epochs"], "3"), None, ["train: epochs: expected an integer, not a string"]),
    ("epochs-bool", _set(["train", "epochs"], True), None, ["train: epochs: expected an integer, not a boolean"]),
    ("seed-bool", _set(["seeds"], [True]), None, ["seeds: expected an integer, not a boolean"]),
    ("lr-bool", _set(["train", "lr"], True), None, ["train: lr: expected a number, not a boolean"]),
    ("min-lr-above-lr", _set(["train", "min_lr"], 1.0), None, ["min_lr 1 is above lr 0.1"]),
    ("jobs-too-many", _set(["seeds"], list(range(10_001))), None, ["10,001 jobs (1 models x 1 datasets/folds x 10001 seeds)",
                                                                     "more than the 10,000"]),
    ("nesterov-without-momentum", _set(["train"], {"epochs": 1, "optimizer": "sgd", "momentum": 0.0, "nesterov": True}),
     None, ["nesterov: true needs momentum above 0"]),  # found by tests/test_fuzz_run.py: the job failed with torch's ValueError
    ("scale-inverted", _set(["train", "augment"], {"scale": [1.2, 0.8]}), None, ["low <= high"]),
    ("scale-zero", _set(["train", "augment"], {"scale": [0, 1.0]}), None, ["augment.scale[0]", "greater than 0"]),
    ("tta-ratio-huge", _set(["eval"], {"tta_resize_ratio": 1e6}), None, ["tta_resize_ratio", "less than or equal to 4"]),
    ("eval-without-test", _set(["eval"], {"splits": ["val"]}), None, ["leaves out test"]),
    ("name-newline", _set(["name"], "bad\n"), None, ["must be 1-80 letters"]),
    ("name-reserved", _set(["name"], "index.html"), None, ["a name the reports folder uses"]),
    ("name-local", _set(["name"], "bad-local"), None, ["a name the reports folder uses"]),
    ("dataset-ids-repeated", _set(["datasets"], [{"name": "synthfer"}, {"name": "synthfer"}]), None,
     ["dataset ids must be unique, repeated: synthfer"]),
    ("epochs-negative", _set(["train", "epochs"], -1), None, ["epochs", "greater than or equal to 0"]),
    ("epochs-zero-without-weights", _set(["train", "epochs"], 0), None, ["train.epochs: 0", "names no weights"]),
    ("batch-negative", _set(["train", "batch_size"], -4), None, ["batch_size", "greater than or equal to 1"]),
    ("input-size-zero", _set(["train", "input_size"], 0), None, ["input_size"]),
    ("label-smoothing", _set(["train", "label_smoothing"], 1.5), None, ["label_smoothing"]),
    ("optimizer-enum", _set(["train", "optimizer"], "adagrad"), None, ["optimizer", "'adagrad'"]),
    ("unknown-arch", _set(["models", 0, "arch"], "resnet19"), None, ["unknown model 'resnet19'"]),
    ("unknown-dataset", _set(["datasets", 0, "name"], "oulu-casia"), None, ["unknown dataset 'oulu-casia'"]),
    ("unknown-recipe", _set(["models", 0, "recipe"], "magic"), None, ["unknown recipe 'magic'"]),
    ("duplicate-ids", lambda d: d["models"].append({"id": "m", "arch": "resnet18"}), None, ["unique"]),
    ("depends-unknown", _set(["models", 0, "depends_on"], "ghost"), None, ["'ghost'"]),
    ("model-option", _set(["models", 0, "options"], {"stn": False}), None, ["unknown option 'stn'"]),
    ("dataset-option-value", _set(["datasets", 0, "options", "n_train"], -1), None, ["n_train", "-1"]),
    ("dataset-option-key", _set(["datasets", 0, "options", "n_trian"], 5), None, ["unknown option", "n_trian"]),
    ("subset-zero", _set(["datasets", 0, "subset"], {"train": 0}), None, ["subset.train"]),
    ("bad-id", _set(["models", 0, "id"], "a/b"), None, ["id 'a/b'"]),
    ("seed-negative", _set(["seeds"], [-1]), None, ["seeds[0]", "greater than or equal to 0"]),
    ("seed-beyond-32-bits", _set(["seeds"], [2**40]), None, ["seeds[0]", "4294967295"]),
    ("seeds-empty", _set(["seeds"], []), None, ["seeds", "at least 1 item"]),
    ("seeds-repeated", _set(["seeds"], [1, 1]), None, ["seeds must be unique"]),
    ("id-too-long", _set(["models", 0, "id"], "a" * 300), None, ["models[0].id", "(300 characters)", "1-80"]),
    ("name-too-long", _set(["name"], "n" * 81), None, ["name", "1-80"]),
    ("name-path", _set(["name"], "../x"), None, ["name '../x'"]),
    ("lr-nan", _set(["train", "lr"], float("nan")), None, ["lr"]),
    ("lr-infinite", _set(["train", "lr"], float("inf")), None, ["lr", "finite"]),
    ("datasets-empty", _set(["datasets"], []), None, ["datasets", "at least 1 item"]),
    ("models-empty", _set(["models"], []), None, ["models", "at least 1 item"]),
    ("claim-value-text", _set(["claims"], [{"model": "m", "dataset": "synthfer", "value": "high", "source": "x"}]), None,
     ["claims[0].value", "'high'"]),
    ("claim-over-100", _set(["claims"], [{"model": "m", "dataset": "synthfer", "value": 150, "source": "x"}]), None,
     ["claims[0].value", "150"]),
    ("claim-no-source", _set(["claims"], [{"model": "m", "dataset": "synthfer", "value": 50}]), None, ["claims[0].source"]),
    ("depends-on-itself", _set(["models", 0, "depends_on"], "m"), None, ["dependency cycle through 'm'"]),
    ("yaml-python-tag", None, "!!python/object/apply:os.system ['touch PWNED']\n", ["could not determine a constructor"]),
    ("binary-file", None, "\udcff\udcfe", ["not a UTF-8 text file"]),
    ("launcher-name", _set(["launcher"], {"name": "k8s"}), None, ["launcher.name", "'k8s'"]),
    ("launcher-workers", _set(["launcher"], {"workers": 0}), None, ["launcher.workers"]),
    ("input-size-huge", _set(["train", "input_size"], 4096), None, ["input_size", "1024"]),
]


@pytest.mark.parametrize("name, mutate, text, needles", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec(tmp_path, name, mutate, text, needles):
    p = spec_with(tmp_path, mutate, text)
    check(invoke(["run", p, "--data-root", tmp_path / "nodata"], tmp_path), tmp_path, *needles)


def test_missing_spec_file(tmp_path):
    check(invoke(["run", tmp_path / "nope.yaml"], tmp_path), tmp_path, "nope.yaml: spec file not found")


def test_unknown_profile_and_bad_set(tmp_path):
    p = spec_with(tmp_path)
    check(invoke(["run", p, "--profile", "gpu"], tmp_path), tmp_path, "no profile 'gpu'")
    check(invoke(["run", p, "--set", "train.epochs"], tmp_path), tmp_path, "expected key=value")
    check(invoke(["run", p, "--set", "models.zz.train.lr=1"], tmp_path), tmp_path, "no list item with id or name 'zz'")
    check(invoke(["run", p, "--set", "train.epochs=[1"], tmp_path), tmp_path, "not valid YAML")


def fer_spec(tmp_path, csv: Path) -> Path:
    return spec_with(tmp_path, _set(["datasets"], [{"name": "fer2013", "path": str(csv)}]))


def fer_rows(n=3):
    return [(i % 7, PX, u) for i, u in enumerate(["Training"] * n + ["PublicTest", "PrivateTest"])]


DATA_CASES = [
    ("wrong-columns", "emotion,pixel,Usage\n0,1,Training\n", ["expected columns emotion,pixels,Usage"]),
    ("short-row", [(0, PX, "Training"), (1, "1 2 3", "Training")], ["line 3", "expected 2304 pixel values"]),
    ("non-numeric-pixel", [(0, PX.replace("9", "a", 1), "Training")], ["line 2", "integers 0-255"]),
    ("pixel-range", [(0, "300 " + " ".join(["1"] * 2303), "Training")], ["line 2", "out of range"]),
    ("unknown-usage", [(0, PX, "Valid")], ["line 2", "Usage 'Valid'"]),
    ("emotion-range", [(7, PX, "Training")], ["line 2", "emotion '7'"]),
    ("emotion-text", [("x", PX, "Training")], ["line 2", "emotion 'x'"]),
    ("empty-split", [(0, PX, "Training"), (1, PX, "PublicTest")], ["split 'test' is empty"]),
    ("not-a-csv", b"\x1f\x8b\x08garbage", ["not a readable CSV"]),
]


@pytest.mark.parametrize("name, content, needles", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_fer2013_file(tmp_path, name, content, needles):
    csv = tmp_path / ("fer.csv.gz" if isinstance(content, bytes) else "fer.csv")
    if isinstance(content, bytes):
        csv.write_bytes(content)
    elif isinstance(content, str):
        csv.write_text(content)
    else:
        write_fer_csv(csv, content)
    check(invoke(["run", fer_spec(tmp_path, csv)], tmp_path), tmp_path, str(csv), *needles)


TARGET_CASES = [
    ("ldl-without-votes", {"loss": "ldl"}, ["models.m: dataset 'fer2013' has no annotator votes", "train.loss=ldl"]),
    ("sampled-without-votes", {"loss": "sampled"}, ["train.loss=sampled needs them"]),
    ("multi-target-without-votes", {"loss": "multi_target"}, ["models.m: dataset 'fer2013'", "multi_target needs FER+'s"]),
    ("teacher-without-teacher", {"loss": "ldl", "ldl_source": "teacher"}, ["models.m: train.ldl_source=teacher needs a teacher"]),
]


@pytest.mark.parametrize("name, train, needles", TARGET_CASES, ids=[c[0] for c in TARGET_CASES])
def test_loss_whose_targets_the_data_lacks(tmp_path, name, train, needles):
    """The loss/target rule (`losses.check_targets`) is checked for every job before any record."""
    csv = write_fer_csv(tmp_path / "fer.csv", fer_rows())
    p = spec_with(tmp_path, lambda d: d.update(datasets=[{"name": "fer2013", "path": str(csv)}]) or d["train"].update(train))
    check(invoke(["run", p], tmp_path), tmp_path, *needles)


def test_missing_data_file(tmp_path):
    p = spec_with(tmp_path, _set(["datasets"], [{"name": "fer2013"}]))
    check(invoke(["run", p, "--data-root", tmp_path / "nowhere"], tmp_path), tmp_path, "fer2013.csv.gz", "file not found")


def test_bad_ferplus_votes(tmp_path):
    write_fer_csv(tmp_path / "d" / "fer2013" / "fer2013.csv", fer_rows())
    (tmp_path / "d" / "ferplus").mkdir()
    head = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    rows = [f"{u},fer{i:07d}.png,10,0,0,0,0,0,0,0,0,0" for i, (_, _, u) in enumerate(fer_rows())]
    rows[1] = rows[1].replace(",10,", ",-3,", 1)
    (tmp_path / "d" / "ferplus" / "fer2013new.csv").write_text(head + "\n".join(rows) + "\n")
    p = spec_with(tmp_path, _set(["datasets"], [{"name": "ferplus"}]))
    check(invoke(["run", p, "--data-root", tmp_path / "d"], tmp_path), tmp_path, "line 3", "column 'neutral'", "'-3'")


def test_image_that_will_not_decode(tmp_path):
    from tests.test_rafdb_folder import make_rafdb

    make_rafdb(tmp_path / "d", n_train=8, n_test=4)
    (tmp_path / "d" / "rafdb" / "Image" / "aligned" / "test_00002_aligned.jpg").write_bytes(b"\xff\xd8 broken")
    p = spec_with(tmp_path, _set(["datasets"], [{"name": "rafdb"}]))
    check(invoke(["run", p, "--data-root", tmp_path / "d"], tmp_path), tmp_path, "test_00002_aligned.jpg: image does not decode")


def test_npz_missing_array(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((4, 8, 8), np.uint8))
    p = spec_with(tmp_path, _set(["datasets"], [{"name": "folder", "path": str(tmp_path / "x.npz")}]))
    check(invoke(["run", p], tmp_path), tmp_path, "array 'label' missing")


def test_weights_file_missing_or_hostile(tmp_path):
    p = spec_with(tmp_path, _set(["models", 0, "weights"], str(tmp_path / "none.pth")))
    r = invoke(["run", p], tmp_path)
    assert r.exit_code == 2 and "none.pth: weights file not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unwritable_runs_dir(tmp_path):
    if os.geteuid() == 0:
        target = Path("/proc/ferbench-runs")  # even root cannot create files in /proc
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        target = ro / "runs"
    r = invoke(["run", spec_with(tmp_path), "--runs-dir", target], tmp_path)
    assert r.exit_code == 2 and "not writable" in r.stderr, r.stderr


def test_runs_dir_that_is_a_file(tmp_path):
    (tmp_path / "runsfile").write_text("x")
    r = invoke(["run", spec_with(tmp_path), "--runs-dir", tmp_path / "runsfile"], tmp_path)
    assert r.exit_code == 2 and "exists and is not a folder" in r.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    d = tmp_path_factory.mktemp("fin")
    p = spec_with(d)
    r = invoke(["run", p], d)
    assert r.exit_code == 0, r.stdout
    return d, p


def _plant(d: Path, spec: Path, content: bytes) -> Path:
    """Reset the finished job to an interrupted state whose checkpoint is `content`."""
    job_dir = next((d / "runs" / "bad").glob("m__*"))
    manifest = json.loads((job_dir / "manifest.json").read_text())
    manifest = {k: v for k, v in manifest.items() if k not in ("finished", "seconds", "failure")}
    (job_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))  # killed mid-run
    (job_dir / "checkpoint.pt").write_bytes(content)
    return job_dir


@pytest.mark.parametrize("kind", ["other-model", "truncated", "pickle"])
def test_bad_checkpoints(finished, kind):
    d, spec = finished
    job_dir = next((d / "runs" / "bad").glob("m__*"))
    good = (job_dir / "checkpoint.pt").read_bytes()
    if kind == "other-model":
        import io

        buf = io.BytesIO()
        ck = torch.load(io.BytesIO(good), weights_only=True)
        ck["model"] = {"fc.weight": torch.zeros(3, 3)}
        torch.save(ck, buf)
        content, needle = buf.getvalue(), "does not match this job's model"
    elif kind == "truncated":
        content, needle = good[: len(good) // 3], "not a loadable ferbench checkpoint"
    else:
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch PWNED",))

        content, needle = pickle.dumps({"model": Evil()}), "not a loadable ferbench checkpoint"
    _plant(d, spec, content)
    old = os.getcwd()
    os.chdir(d)
    try:
        r = CliRunner().invoke(app, ["run", str(spec)])
    finally:
        os.chdir(old)
    # the job fails with the reason (and how to restart it) in its record and on screen; the spec goes on
    assert r.exit_code == 1, r.stdout
    assert needle in r.stdout and "delete the file to restart this job from scratch" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    manifest = json.loads((job_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and needle in manifest["failure"]
    assert not (d / "PWNED").exists()
    (job_dir / "checkpoint.pt").write_bytes(good)


def npz_spec(tmp_path: Path, **arrays) -> Path:
    np.savez(tmp_path / "x.npz", **arrays)
    return spec_with(tmp_path, _set(["datasets"], [{"name": "folder", "path": str(tmp_path / "x.npz")}]))


IMGS, LABELS = np.zeros((8, 16, 16), np.uint8), np.arange(8) % 2
NPZ_CASES = [
    ("images-1d", {"images": np.zeros(8, np.uint8), "label": LABELS}, ["'images' must be uint8 (N, H, W)"]),
    ("images-float", {"images": IMGS.astype(np.float32), "label": LABELS}, ["'images' must be uint8", "float32"]),
    ("labels-short", {"images": IMGS, "label": LABELS[:5]}, ["'label' must be integers, one per image (8)"]),
    ("labels-float", {"images": IMGS, "label": LABELS + 0.5}, ["'label' must be integers", "float64"]),
    ("labels-negative", {"images": IMGS, "label": LABELS - 3}, ["class indices >= 0", "-3"]),
    ("labels-beyond-classes", {"images": IMGS, "label": LABELS * 5, "classes": np.array(["a", "b"])},
     ["labels must be in 0..1 for 2 classes", "found 5"]),
    ("object-array", {"images": np.array([object()] * 8, dtype=object), "label": LABELS}, ["not a readable .npz of plain arrays"]),
    ("labels-a-billion", {"images": IMGS, "label": np.array([0, 1, 2, 3, 4, 5, 6, 10**9])},
     ["labels go up to 1000000000", "more than the 1000 classes"]),
]


@pytest.mark.parametrize("name, arrays, needles", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_bad_npz(tmp_path, name, arrays, needles):
    p = npz_spec(tmp_path, **arrays)
    if name == "labels-beyond-classes":
        p = spec_with(tmp_path, _set(["datasets"], [{"name": "folder", "path": str(tmp_path / "x.npz"), "options": {"classes_key": "classes"}}]))
    check(invoke(["run", p], tmp_path), tmp_path, "x.npz", *needles)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_a_table_over_the_bound_is_refused_before_pandas_reads_it(tmp_path, monkeypatch, gz):
    """A 3 GB FER-2013 CSV of one line had pandas killed at 23 GB; a small .gz can decompress to
    gigabytes. The bound (here lowered to 10 KB: the table is about 100 KB) refuses both in one line."""
    import gzip

    monkeypatch.setenv("FERBENCH_MAX_TABLE_GB", "0.00001")
    csv = tmp_path / ("fer.csv.gz" if gz else "fer.csv")
    write_fer_csv(tmp_path / "fer.csv", fer_rows(9))  # rows no other test writes: never in the parsed-array cache
    if gz:
        csv.write_bytes(gzip.compress((tmp_path / "fer.csv").read_bytes()))
    check(invoke(["run", fer_spec(tmp_path, csv)], tmp_path), tmp_path, str(csv),
          "larger than the 1e-05 GiB ferbench reads for a dataset table", "FERBENCH_MAX_TABLE_GB raises it")
    monkeypatch.setenv("FERBENCH_MAX_TABLE_GB", "1")
    os.unlink(csv)
    os.mkfifo(csv)
    check(invoke(["run", fer_spec(tmp_path, csv)], tmp_path), tmp_path, str(csv), "not a regular file")


def test_npz_declaring_more_than_the_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("FERBENCH_MAX_NPZ_GB", "0.000001")  # about 1 KB: the 8 x 16 x 16 images are 2 KB
    p = npz_spec(tmp_path, images=IMGS, label=LABELS)
    check(invoke(["run", p], tmp_path), tmp_path, "x.npz: its arrays decompress to", "FERBENCH_MAX_NPZ_GB raises it")


def test_spec_that_is_a_pipe_or_too_large(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    check(invoke(["run", tmp_path / "pipe.yaml"], tmp_path), tmp_path, "pipe.yaml: spec file must be a regular file, not a pipe, socket or device")
    (tmp_path / "big.yaml").write_text("name: big\n" + "# " + "x" * (1 << 20) + "\n")
    check(invoke(["run", tmp_path / "big.yaml"], tmp_path), tmp_path, "more than the 1,048,576 a spec may have")


def test_allocations_are_bounded_from_declared_sizes(tmp_path):
    big = _set(["datasets"], [{"name": "synthfer", "options": {"n_train": 1_000_000}}])
    check(invoke(["run", spec_with(tmp_path, big)], tmp_path), tmp_path, "n_train", "less than or equal to 100000")
    def huge(d):
        d["train"] = {"epochs": 1, "input_size": 1024, "eval_batch_size": 256}
        d["eval"] = {"tta": "tencrop"}
    check(invoke(["run", spec_with(tmp_path, huge)], tmp_path), tmp_path, "30.0 GiB", "above 8 GiB: lower train.eval_batch_size")
    def resized(d):  # one view, but each image resized x4 before its crop: 16x the pixels of the view
        d["train"] = {"epochs": 1, "input_size": 1024, "eval_batch_size": 256}
        d["eval"] = {"tta": "none", "tta_resize_ratio": 4.0}
    check(invoke(["run", spec_with(tmp_path, resized)], tmp_path), tmp_path, "resized x4 before cropping is 48.0 GiB")


def test_npz_that_is_not_a_zip(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04garbage")
    p = spec_with(tmp_path, _set(["datasets"], [{"name": "folder", "path": str(tmp_path / "x.npz")}]))
    check(invoke(["run", p], tmp_path), tmp_path, "x.npz: not a readable .npz of plain arrays")


def image_tree(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _big_png(path: Path) -> None:
    """An 8000x8000 grey PNG (64 megapixels) that compresses to a few kilobytes: a decompression bomb."""
    from PIL import Image

    Image.new("L", (8000, 8000)).save(path)


TREE_CASES = [
    ("huge-image", lambda t: _big_png(t / "train" / "a" / "big.png"), ["big.png: image", "more than the 40 megapixels"]),
    ("text-as-png", lambda t: (t / "train" / "a" / "x.png").write_text("not a png"), ["x.png: image does not decode"]),
    ("truncated-png", lambda t: (t / "test" / "b" / "y.png").write_bytes((t / "test" / "b" / "0.png").read_bytes()[:40]),
     ["y.png: image does not decode"]),
    ("empty-class-folder", lambda t: (t / "train" / "c").mkdir(), ["class folder(s) 'c' hold no images"]),
    ("no-test-folder", lambda t: __import__("shutil").rmtree(t / "test"), ["expected train/ and test/ folders"]),
]


@pytest.mark.parametrize("name, damage, needles", TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_bad_image_tree(tmp_path, monkeypatch, name, damage, needles):
    tree = image_tree(tmp_path / "t")
    damage(tree)
    p = spec_with(tmp_path, _set(["datasets"], [{"name": "folder", "path": str(tree)}]))
    monkeypatch.setenv("FERBENCH_CACHE", str(tmp_path / "cache"))  # restored after the test, whatever it was
    check(invoke(["run", p], tmp_path), tmp_path, *needles)


def _hostile_pickle(path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    path.write_bytes(pickle.dumps({"fc.weight": Evil()}))


WEIGHTS_CASES = [
    ("hostile-pickle", _hostile_pickle, ["not a loadable weights file", "never runs code"]),
    ("plain-pickle", lambda p: p.write_bytes(pickle.dumps({"a": 1})), ["not a loadable weights file"]),
    ("a-tensor", lambda p: torch.save(torch.zeros(3), p), ["no state dict of tensors found (top-level keys: none"]),
    ("empty-file", lambda p: p.write_bytes(b""), ["not a loadable weights file"]),
    ("a-folder", lambda p: p.mkdir(), ["weights file not found"]),
]


@pytest.mark.parametrize("name, make, needles", WEIGHTS_CASES, ids=[c[0] for c in WEIGHTS_CASES])
def test_bad_weights_file(tmp_path, name, make, needles):
    make(tmp_path / "w.pth")
    p = spec_with(tmp_path, _set(["models", 0, "weights"], str(tmp_path / "w.pth")))
    check(invoke(["run", p], tmp_path), tmp_path, "w.pth", *needles)
    assert not (tmp_path / "PWNED").exists()


def test_runs_dir_that_is_a_symlink_loop(tmp_path):
    os.symlink("loop", tmp_path / "loop")
    r = invoke(["run", spec_with(tmp_path), "--runs-dir", "loop"], tmp_path)
    assert r.exit_code == 2 and "runs directory path cannot be resolved" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_spec_path_that_is_a_folder(tmp_path):
    (tmp_path / "sd").mkdir()
    check(invoke(["run", tmp_path / "sd"], tmp_path), tmp_path, "spec file must be a regular file, not a folder")


CLI_CASES = [
    (["run", "SPEC", "--device", "cuda:3"], ["--device cuda:3"]),
    (["run", "SPEC", "--set", "models.5.arch=resnet18"], ["index 5 out of range"]),
    (["run", "SPEC", "--device", "tpu"], ["--device tpu: expected auto, cpu, cuda"]),
    (["run", "SPEC", "--threads", "-1"], ["--threads -1: expected 1..1024"]),
    (["run", "SPEC", "--threads", "100000"], ["--threads 100000: expected 1..1024"]),
    (["run", "SPEC", "--log", "wandb"], ["--log wandb: unknown logger (expected one of: tensorboard, mlflow, csv)"]),  # the flag, not the spec
    (["compare", "a", "b", "--runs-dir", "."], ["no complete runs of 'a'"]),
    (["data", "info", "nope"], ["unknown dataset 'nope'"]),
    (["cost", "resnet19"], ["unknown model 'resnet19'"]),
    (["bench", "profile"], ["profile"]),  # `bench trace` since 2026-12-04: the old name is refused, not run
    (["report", "--runs-dir", "nowhere"], ["nowhere"]),
]


@pytest.mark.parametrize("args, needles", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_bad_command_line(tmp_path, args, needles):
    if "SPEC" in args and args[0] == "run" and "--device" in args:
        import torch as _t

        if _t.cuda.device_count() > 3:
            pytest.skip("this machine has a cuda:3")
    spec = spec_with(tmp_path)
    check(invoke([spec if a == "SPEC" else a for a in args], tmp_path), tmp_path, *needles)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc")
def test_a_data_file_that_fails_mid_read_is_named(tmp_path):
    """/proc/self/mem stats as a regular file and fails its first read with EIO, an error that names no
    file: the line printed was `error: Input/output error`."""
    p = spec_with(tmp_path, lambda d: d.update(datasets=[{"name": "fer2013", "path": "/proc/self/mem"}]))
    check(invoke(["run", p], tmp_path), tmp_path, "/mem: cannot be read (Input/output error)")


@pytest.mark.parametrize("mutate", [
    lambda d: d["models"][0].update(weights="~nosuchuser/w.pt"),
    lambda d: d.update(datasets=[{"name": "fer2013", "path": "~nosuchuser/data"}]),
    lambda d: d.update(datasets=[{"name": "ckplus48", "path": "~nosuchuser/ck.npz"}])])
def test_a_home_folder_that_does_not_exist_in_a_spec_field_is_one_line(tmp_path, mutate):
    """pathlib's expanduser raised RuntimeError (a traceback) for a `~user` with no such user in a spec's
    weights or dataset path; every path ferbench is given now expands through fileio.expand_user."""
    check(invoke(["run", spec_with(tmp_path, mutate)], tmp_path), tmp_path, "~nosuchuser", "no such user's home folder")
