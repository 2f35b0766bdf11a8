import numpy as np
import pytest

from ferbench.data import load_dataset
from ferbench.data.fer2013 import CLASSES
from ferbench.errors import FerbenchError
from tests.conftest import write_fer_csv

COUNTS = {  # REFERENCE.md §1: what any correct loader must produce
    "train": [3995, 436, 4097, 7215, 4830, 3171, 4965],
    "val": [467, 56, 496, 895, 653, 415, 607],
    "test": [491, 55, 528, 879, 594, 416, 626],
}


def test_small_csv_round_trips_pixels_labels_and_splits(small_fer):
    path, info = small_fer
    ds = load_dataset("fer2013", data_root=str(path.parent.parent))
    assert ds.classes == CLASSES
    for split in ("train", "val", "test"):
        truth = info["truth"][split]
        s = ds.splits[split]
        assert len(s) == len(truth)
        got = sorted((int(l), im.tobytes()) for l, im in zip(s.labels, s.images))
        want = sorted((c, im.tobytes()) for c, im in truth)
        assert got == want
    assert ds.counts()["train"]["total"] == 28 and ds.counts()["val"]["per_class"]["fear"] == 1


def test_plain_csv_and_explicit_path(tmp_path, small_fer):
    _, info = small_fer
    p = write_fer_csv(tmp_path / "plain.csv", info["rows"])
    ds = load_dataset("fer2013", path=str(p))
    assert len(ds.splits["train"]) == 28


def test_cache_serves_the_second_load_and_is_invalidated_when_the_file_changes(tmp_path, small_fer, monkeypatch):
    import ferbench.data.fer2013 as fer

    _, info = small_fer
    p = write_fer_csv(tmp_path / "c.csv", info["rows"])
    a = load_dataset("fer2013", path=str(p))
    real_parse = fer.parse_csv
    monkeypatch.setattr(fer, "parse_csv", lambda path: pytest.fail("the cached arrays were parsed again"))
    again = load_dataset("fer2013", path=str(p))
    assert np.array_equal(again.splits["train"].images, a.splits["train"].images)
    monkeypatch.setattr(fer, "parse_csv", real_parse)
    rows = list(info["rows"])
    rows[0] = (rows[0][0], np.zeros((48, 48), np.uint8), "PrivateTest")
    write_fer_csv(p, rows)
    b = load_dataset("fer2013", path=str(p))
    assert len(b.splits["test"]) == len(a.splits["test"]) + (rows[0][2] != info["rows"][0][2])
    assert (b.splits["test"].images == 0).all(axis=(1, 2)).any()


def _bad(tmp_path, rows=None, text=None):
    p = tmp_path / "bad.csv"
    if text is not None:
        p.write_text(text)
    else:
        write_fer_csv(p, rows)
    with pytest.raises(FerbenchError) as e:
        load_dataset("fer2013", path=str(p))
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    return msg


GOOD = " ".join(["7"] * 2304)


def test_bad_inputs_are_refused_with_the_line(tmp_path):
    assert "expected columns emotion,pixels,Usage" in _bad(tmp_path, text="emotion,pix,Usage\n0,1,Training\n")
    assert "line 3: expected 2304 pixel values" in _bad(tmp_path, [(0, GOOD, "Training"), (1, "1 2 3", "Training")])
    assert "line 2: pixels must be integers" in _bad(tmp_path, [(0, GOOD.replace("7", "x", 1), "Training")])
    assert "line 2: pixel value out of range" in _bad(tmp_path, [(0, "256 " + " ".join(["1"] * 2303), "Training")])
    assert "line 2: Usage 'Validation'" in _bad(tmp_path, [(0, GOOD, "Validation")])
    assert "line 2: emotion '9' is not an integer 0-6" in _bad(tmp_path, [(9, GOOD, "Training")])
    assert "not a readable CSV" in _bad(tmp_path, text="")
    assert "split 'test' is empty" in _bad(tmp_path, [(0, GOOD, "Training"), (1, GOOD, "PublicTest")])


def test_missing_file_names_the_expected_path(tmp_path):
    with pytest.raises(FerbenchError, match=r"expected .*fer2013/fer2013.csv.gz .*file not found"):
        load_dataset("fer2013", data_root=str(tmp_path))


@pytest.mark.realdata
def test_real_fer2013_counts(real_data):
    ds = load_dataset("fer2013", data_root=str(real_data))
    for split, counts in COUNTS.items():
        assert np.bincount(ds.splits[split].labels, minlength=7).tolist() == counts
    # the well-known head of fer2013.csv (row 0 is Training)
    assert ds.splits["train"].images[0, 0, :5].tolist() == [70, 80, 82, 72, 58]
