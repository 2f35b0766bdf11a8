"""RAF-DB and generic folder/npz datasets, built as tiny trees in the real layouts."""

import numpy as np
import pytest
from PIL import Image

from ferbench.data import load_dataset
from ferbench.data.folder import grouped_folds
from ferbench.errors import FerbenchError


def make_rafdb(root, n_train=40, n_test=14):
    rng = np.random.default_rng(0)
    (root / "rafdb" / "EmoLabel").mkdir(parents=True)
    img_dir = root / "rafdb" / "Image" / "aligned"
    img_dir.mkdir(parents=True)
    lines, truth = [], {}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(1, n + 1):
            name = f"{split}_{i:05d}.jpg"
            label = (i % 7) + 1
            px = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
            Image.fromarray(px).save(img_dir / f"{split}_{i:05d}_aligned.jpg", quality=95)
            lines.append(f"{name} {label}")
            truth[name] = label
    (root / "rafdb" / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


def test_rafdb_layout_labels_and_val_rule(tmp_path):
    make_rafdb(tmp_path)
    ds = load_dataset("rafdb", {"size": 48, "val_fraction": 0.2}, data_root=str(tmp_path))
    assert ds.classes[0] == "surprise" and ds.classes[6] == "neutral"
    assert len(ds.splits["test"]) == 14
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == 40
    assert ds.splits["train"].images.shape[1:] == (48, 48, 3)  # RGB, as the papers
    # label 1 (Surprise) -> class 0: train_00007 has label (7 % 7) + 1 = 1
    assert "stratified 0.2" in ds.notes["val_rule"]
    again = load_dataset("rafdb", {"size": 48, "val_fraction": 0.2}, data_root=str(tmp_path))
    assert np.array_equal(again.splits["val"].labels, ds.splits["val"].labels)


def test_rafdb_bad_inputs(tmp_path):
    make_rafdb(tmp_path)
    lab = tmp_path / "rafdb" / "EmoLabel" / "list_patition_label.txt"
    text = lab.read_text()
    lab.write_text(text.replace("train_00003.jpg 4", "train_00003.jpg 9"))
    with pytest.raises(FerbenchError, match=r"line 3: expected '<name>.jpg <label 1-7>'"):
        load_dataset("rafdb", data_root=str(tmp_path))
    lab.write_text(text)
    (tmp_path / "rafdb" / "Image" / "aligned" / "train_00002_aligned.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FerbenchError, match="train_00002_aligned.jpg: image does not decode"):
        load_dataset("rafdb", data_root=str(tmp_path))
    with pytest.raises(FerbenchError, match="list_patition_label.txt .*file not found"):
        load_dataset("rafdb", data_root=str(tmp_path / "missing"))


def test_image_tree(tmp_path):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for c in ("happy", "sad"):
            d = tmp_path / "tree" / split / c
            d.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 256, (60, 60), dtype=np.uint8)).save(d / f"{i}.png")
    ds = load_dataset("folder", {"classes": ["sad", "happy"], "size": 32}, path=str(tmp_path / "tree"))
    assert ds.classes == ["sad", "happy"] and len(ds.splits["test"]) == 12
    assert ds.splits["train"].images.shape[1:] == (32, 32) and len(ds.splits["val"]) == 2


def test_npz_grouped_folds_never_split_a_subject(tmp_path):
    rng = np.random.default_rng(2)
    subjects = np.repeat([f"S{i:03d}" for i in range(10)], 6)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (60, 48, 48), dtype=np.uint8),
             label=rng.integers(0, 3, 60).astype(np.int8), subject=subjects, class_names=np.array(["a", "b", "c"]))
    seen_test = set()
    for fold in range(5):
        ds = load_dataset("folder", {"groups_key": "subject", "folds": 5, "fold": fold}, path=str(tmp_path / "d.npz"))
        assert sum(len(s) for s in ds.splits.values()) == 60
    f = grouped_folds(subjects, 5)
    for s in np.unique(subjects):
        assert len(set(f[subjects == s])) == 1
        seen_test.add(int(f[subjects == s][0]))
    assert seen_test == set(range(5))


@pytest.mark.realdata
def test_ckplus_subject_folds(real_data):
    ds = load_dataset("folder", {"groups_key": "subject", "folds": 10, "fold": 0}, path=str(real_data / "ckplus48" / "ckplus48.npz"))
    assert ds.classes == ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
    assert sum(len(s) for s in ds.splits.values()) == 981


def test_rafdb_in_colour_end_to_end(tmp_path):
    """RGB arrays from the generated colour tree through augmentation, ImageNet normalisation, a
    3-channel model and ten-crop TTA, to a complete record; grey stays an option."""
    import json

    import yaml

    from ferbench import api
    from ferbench.data import load_dataset

    root = make_rafdb(tmp_path / "d", n_train=70, n_test=14)
    ds = load_dataset("rafdb", {"size": 32}, data_root=str(root))
    x = ds.splits["train"].images
    assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8 and not np.array_equal(x[..., 0], x[..., 1])
    assert ds.notes["color"].startswith("RGB")
    grey = load_dataset("rafdb", {"size": 32, "color": "grey"}, data_root=str(root))
    assert grey.splits["train"].images.shape[1:] == (32, 32)
    spec = {"name": "rgb", "datasets": [{"name": "rafdb", "options": {"size": 32}}],
            "models": [{"id": "m", "arch": "resnet18"}], "eval": {"tta": "tencrop"},
            "train": {"epochs": 1, "batch_size": 8, "input_size": 28, "in_chans": 3, "normalize": "imagenet",
                      "augment": {"resize_ratio": 1.1, "rotation": 10}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    (o,) = api.run_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", data_root=str(root), estimate=False)
    assert o.status == "complete", o.reason
    manifest = json.loads((tmp_path / "runs" / "rgb" / o.job.id / "manifest.json").read_text())
    assert manifest["data_notes"]["color"].startswith("RGB")
    spec["train"]["in_chans"] = 1
    spec["train"]["normalize"] = "half"
    (tmp_path / "s1.yaml").write_text(yaml.safe_dump(spec))
    (bad,) = api.run_spec(tmp_path / "s1.yaml", runs_dir=tmp_path / "runs1", data_root=str(root), estimate=False)
    assert bad.status == "failed" and "train.in_chans must be 3" in bad.reason


def test_rafdb_without_validation_selects_nothing_on_it(tmp_path):
    import json

    import yaml

    from ferbench import api
    from ferbench.data import load_dataset

    root = make_rafdb(tmp_path / "d", n_train=28, n_test=14)
    ds = load_dataset("rafdb", {"size": 32, "val": "none"}, data_root=str(root))
    assert set(ds.splits) == {"train", "test"} and len(ds.splits["train"]) == 28
    assert "selects its reported epoch on the test set" in ds.notes["val_rule"]
    spec = {"name": "noval", "datasets": [{"name": "rafdb", "options": {"size": 32, "val": "none"}}],
            "models": [{"id": "m", "arch": "resnet18"}], "eval": {"test_each_epoch": True},
            "train": {"epochs": 2, "batch_size": 8, "input_size": 24}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    (o,) = api.run_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", data_root=str(root), estimate=False)
    assert o.status == "complete", o.reason
    metrics = json.loads((tmp_path / "runs" / "noval" / o.job.id / "metrics.json").read_text())
    assert "val" not in metrics and set(metrics["test"]) == {"last"}  # no best-validation model exists


def test_rafdb_normalised_by_its_own_statistics(tmp_path):
    """EfficientFace's RAF-DB constants by name; a training split's own statistics computed by
    `data info`, checked against numpy, used as normalize: custom and recorded in the job."""
    import torch

    from ferbench import api
    from ferbench.data.augment import CHANNEL_STATS, finish
    from ferbench.spec import TrainConfig

    # zengqunzhao/EfficientFace main.py, lines 96-97 ("# RAF-DB")
    assert CHANNEL_STATS["rafdb-efficientface"] == ((0.57535914, 0.44928582, 0.40079932), (0.20735591, 0.18981615, 0.18132027))
    x = torch.rand(2, 3, 4, 4)
    mean, std = torch.tensor(CHANNEL_STATS["rafdb-efficientface"]).view(2, 1, 3, 1, 1)
    torch.testing.assert_close(finish(x, 3, "rafdb-efficientface"), (x - mean) / std)
    root = make_rafdb(tmp_path / "d", n_train=30, n_test=10)
    info = api.data_info("rafdb", {"size": 32, "val": "none"}, data_root=str(root))
    train = load_dataset("rafdb", {"size": 32, "val": "none"}, data_root=str(root)).splits["train"].images / 255.0
    np.testing.assert_allclose(info["train_channel_stats"]["mean"], train.mean(axis=(0, 1, 2)), atol=1e-8)
    np.testing.assert_allclose(info["train_channel_stats"]["std"], train.std(axis=(0, 1, 2)), atol=1e-8)
    cfg = TrainConfig(in_chans=3, normalize="custom", norm_mean=info["train_channel_stats"]["mean"],
                      norm_std=info["train_channel_stats"]["std"])
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.norm_mean, cfg.norm_std))
    torch.testing.assert_close(finish(x, 3, cfg.normalize, cfg.norm_mean, cfg.norm_std), (x - m) / s)
    for bad in ({"normalize": "custom"}, {"norm_mean": [0.5] * 3, "norm_std": [0.2] * 3},
                {"normalize": "custom", "norm_mean": [0.5], "norm_std": [0.2]},
                {"normalize": "rafdb-efficientface", "in_chans": 1}):
        with pytest.raises(ValueError):
            TrainConfig(**{"in_chans": 3, **bad})
