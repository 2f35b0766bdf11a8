"""Faces in photos for `predict --detect`: OpenCV's bundled Haar cascade, cropped as the training data was.

A model trained on FER-2013 has only seen faces framed the way FER-2013 frames them; a crop framed
otherwise (more hair, more background) is a different input. So the detector's box is turned into the
training data's frame: `FACE_FRAMES` holds, per dataset, how large the dataset's crop is against the
box this detector draws on the dataset's own images (and where its centre sits), measured by
`measure_frame` on the dataset itself (`tests/test_detect.py` re-measures it on the real data). A
dataset without a measured frame uses the box as drawn, and the output says so.

The detector needs no download: `opencv-python-headless` 4.x ships the cascade files (OpenCV 5 has
dropped them), `pip install 'ferbench[detect]'`. It finds frontal faces; profile and small faces
(under `MIN_FACE` pixels) are missed, and an image where it finds none is listed as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ferbench.errors import FerbenchError

CASCADE = "haarcascade_frontalface_default.xml"
SCALE_FACTOR, MIN_NEIGHBORS, MIN_FACE = 1.1, 5, 24  # detectMultiScale settings; MIN_FACE in pixels


@dataclass(frozen=True)
class Frame:
    """A dataset's face crop against the detector's box: side = scale x box side, centre = box centre +
    (dx, dy) x box side."""

    scale: float
    dx: float
    dy: float
    source: str


# measure_frame(images, upscale=4): FER-2013 on 3,000 images drawn with numpy's default_rng(0) (one
# face found in 2,287), CK+48 on all 981 (one face in each); FER+ relabels FER-2013's images.
_FER = Frame(1.038, 0.0, 0.005, "measured on 3,000 FER-2013 images (one face found in 2,287): medians")
FACE_FRAMES: dict[str, Frame] = {
    "fer2013": _FER,
    "ferplus": _FER,
    "ckplus48": Frame(0.980, -0.003, 0.0, "measured on all 981 CK+48 images (one face found in each): medians"),
}
BOX_AS_DRAWN = Frame(1.0, 0.0, 0.0, "no measured frame for this dataset: the detector's box as drawn")


def cascade() -> Any:
    """OpenCV's bundled frontal-face Haar cascade; one line when OpenCV or its cascade files are missing."""
    try:
        import cv2
    except ImportError:
        raise FerbenchError("--detect needs OpenCV: pip install 'ferbench[detect]'") from None
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise FerbenchError(f"--detect needs OpenCV 4 (OpenCV {cv2.__version__} ships no Haar cascades): "
                            "pip install 'opencv-python-headless>=4.8,<5'")
    detector = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
    if detector.empty():
        raise FerbenchError(f"--detect: OpenCV's {CASCADE} did not load from {cv2.data.haarcascades}")
    return detector


def find_faces(grey: np.ndarray, detector: Any) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h) of the frontal faces in a uint8 grey image, left to right."""
    found = detector.detectMultiScale(grey, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                      minSize=(MIN_FACE, MIN_FACE))
    return sorted((int(x), int(y), int(w), int(h)) for x, y, w, h in (found if len(found) else []))


def crop_box(box: tuple[int, int, int, int], frame: Frame) -> tuple[int, int, int, int]:
    """The square crop (left, top, right, bottom) the dataset's frame puts around a detector box."""
    x, y, w, h = box
    side = max(w, h) * frame.scale
    cx, cy = x + w / 2 + frame.dx * w, y + h / 2 + frame.dy * h
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    return left, top, left + int(round(side)), top + int(round(side))


def measure_frame(images: np.ndarray, detector: Any, upscale: int = 4) -> tuple[Frame, int]:
    """The frame of a dataset's square crops (uint8 (N, S, S) grey) against this detector: each image
    is upscaled (the detector misses faces under MIN_FACE) and padded by half its side with black (room
    for a box larger than the crop); images with exactly one face count. Returns the median frame and
    how many images counted."""
    import cv2

    side = images.shape[1]
    pad = side * upscale // 2
    ratios, dxs, dys = [], [], []
    for image in images:
        big = cv2.resize(image, (side * upscale, side * upscale), interpolation=cv2.INTER_CUBIC)
        big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        boxes = find_faces(big, detector)
        if len(boxes) != 1:
            continue
        x, y, w, h = ((v - pad) / upscale if i < 2 else v / upscale for i, v in enumerate(boxes[0]))
        ratios.append(side / w)
        dxs.append((side / 2 - (x + w / 2)) / w)
        dys.append((side / 2 - (y + h / 2)) / h)
    if not ratios:
        raise FerbenchError("the detector found one face in none of these images")
    return Frame(float(np.median(ratios)), float(np.median(dxs)), float(np.median(dys)), "measured"), len(ratios)
