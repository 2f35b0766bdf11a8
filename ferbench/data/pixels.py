"""Pixels as an official pipeline saw them: lossy re-encoding and resizing done the way a paper's code did.

Loaders hand the engine lossless uint8 arrays; some official pipelines did not train on those.
Deep-Emotion's `generate_data.py` writes every FER-2013 image as a JPEG with Pillow's default quality
(75) before training; mini-Xception's `datasets.py` resizes 48 -> 64 with `cv2.resize` (bilinear, in
uint8, so the resized pixels are rounded integers). These functions reproduce those steps on whole
arrays, with the libraries the official code used (Pillow, OpenCV), so the rounding is theirs, not an
imitation of it. OpenCV is optional (`pip install ferbench[keras]`): asking for its resize without it
is a one-line error.

Image files (RAF-DB, AffectNet and folder datasets, `predict`'s inputs) are decoded by `open_image`,
the one place that bounds their size (`fileio.MAX_IMAGE_PIXELS`, read from the header before any
pixel) and turns Pillow's many failure types into one line naming the file, and made training-sized
by `as_training_image`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ferbench.errors import FerbenchError, first_line


def reencode_jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Every image saved as a Pillow JPEG at `quality` and decoded again (grey (N, H, W) or colour
    (N, H, W, 3) uint8), as a pipeline that writes JPEG files and reads them back sees its data."""
    from PIL import Image

    out = np.empty_like(images)
    buf = io.BytesIO()
    for i, img in enumerate(images):
        buf.seek(0)
        buf.truncate()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf))
    return out


def resize_cv2_linear(images: np.ndarray, size: int) -> np.ndarray:
    """Every uint8 image resized to size x size by `cv2.resize(img, (size, size))` (INTER_LINEAR, the
    default), as mini-Xception's `DataManager._load_fer2013` does: the result is uint8, rounded by
    OpenCV's fixed-point arithmetic."""
    try:
        import cv2
    except ImportError:
        raise FerbenchError("resize_method cv2-linear needs OpenCV: pip install 'ferbench[keras]' "
                            "(opencv-python-headless)") from None
    out = np.empty((len(images), size, size) + images.shape[3:], dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = cv2.resize(img, (size, size))
    return out


def library_versions(jpeg: bool, cv2_resize: bool) -> dict[str, str]:
    """The versions of the libraries whose rounding the pixels now carry (recorded with the run)."""
    out = {}
    if jpeg:
        import PIL

        out["pillow"] = PIL.__version__
    if cv2_resize:
        import cv2

        out["opencv"] = cv2.__version__
    return out


def open_image(path: Path) -> Any:
    """An image file as a PIL image with its pixels read, under MAX_IMAGE_PIXELS (checked from the
    header, before any pixel is decoded); FerbenchError naming the file otherwise."""
    from PIL import Image, UnidentifiedImageError

    from ferbench.fileio import MAX_IMAGE_PIXELS

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise FerbenchError(f"{path}: image is {im.width}x{im.height}, more than the {MAX_IMAGE_PIXELS // 10**6} "
                                    "megapixels ferbench decodes (a face crop is far smaller)")
            im.load()
            return im.copy()
    except Image.DecompressionBombError:
        raise FerbenchError(f"{path}: image has more than the {MAX_IMAGE_PIXELS // 10**6} megapixels ferbench decodes "
                            "(a face crop is far smaller)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        # Pillow reports damaged files as any of these (SyntaxError for some broken headers)
        raise FerbenchError(f"{path}: image does not decode ({type(e).__name__}: {first_line(e, 100)})") from None


def as_training_image(im: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A PIL image as a training image of `shape` ((H, W) grey or (H, W, 3) colour) in uint8: converted,
    then resized with Pillow's bilinear filter (antialiased when it shrinks: its support grows with the factor)."""
    from PIL import Image

    im = im.convert("RGB" if len(shape) == 3 else "L")
    if im.size != (shape[1], shape[0]):
        im = im.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)
