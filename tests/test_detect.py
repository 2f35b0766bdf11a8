"""`predict --detect`: the detector's frame for each dataset, re-measured on the real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ferbench.detect import FACE_FRAMES, BOX_AS_DRAWN, Frame, crop_box

DATA = os.environ.get("FERBENCH_DATA")
needs_data = pytest.mark.skipif(not DATA, reason="FERBENCH_DATA is not set: the frames are measured on the real datasets")


def test_crop_box_puts_the_frame_around_the_box():
    assert crop_box((100, 50, 40, 40), BOX_AS_DRAWN) == (100, 50, 140, 90)
    # twice the side, centred 0.25 of a side lower: the crop a dataset with a taller frame would hold
    assert crop_box((100, 50, 40, 40), Frame(2.0, 0.0, 0.25, "t")) == (80, 40, 160, 120)
    assert crop_box((0, 0, 30, 40), BOX_AS_DRAWN) == (-5, 0, 35, 40)  # square, past the edge (filled black)


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("name", ["fer2013", "ckplus48"])
def test_the_recorded_frame_is_what_the_dataset_measures(name):
    pytest.importorskip("cv2", reason="--detect needs OpenCV: pip install 'ferbench[detect]'")
    from ferbench.detect import cascade, measure_frame

    if name == "fer2013":
        from ferbench.data.fer2013 import load_arrays

        images = load_arrays(Path(DATA) / "fer2013" / "fer2013.csv.gz")["images"]
    else:
        with np.load(Path(DATA) / "ckplus48" / "ckplus48.npz") as z:
            images = z["images"]
    sample = images[np.random.default_rng(1).choice(len(images), 400, replace=False)]  # not the images it was set from
    frame, counted = measure_frame(sample, cascade())
    want = FACE_FRAMES[name]
    assert counted >= 250
    assert abs(frame.scale - want.scale) < 0.02 and abs(frame.dx - want.dx) < 0.01 and abs(frame.dy - want.dy) < 0.01
