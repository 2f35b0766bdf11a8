"""Leakage checks on a split: near-identical images across train and test, subjects on both sides.

A FER dataset cut from videos (CK+, Oulu-CASIA, MMI) holds consecutive frames of one face; a random
split puts one frame in train and its neighbour in test, and the test then measures recall of
training images. `near_duplicates` counts test images with a twin in train by a difference hash
(dHash: the image shrunk to 17x16, one bit per horizontal neighbour pair, 256 bits), within a Hamming
distance that tolerates re-encoding and the small motion between frames. Measured on CK+48: a
frame's nearest other frame of its own sequence is at median 9 bits (90 % within 17), its nearest
frame of another subject at least 29 (1 % within 34); the 64-bit dHash of 9x8 cannot tell those
apart on aligned faces (1 vs 1 bit). Pure numpy and PIL.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HASH_SIDE = 16  # 16 rows x 16 neighbour pairs = 256 bits
HASH_DISTANCE = 20  # bits of 256 (see above: between a sequence's frames and different people's faces)


def dhash(images: np.ndarray) -> np.ndarray:
    """(N, 4) uint64 words of the 256-bit difference hashes of uint8 (N, H, W) or (N, H, W, 3) images."""
    from PIL import Image

    grey = images if images.ndim == 3 else images.mean(axis=-1).astype(np.uint8)
    size = (HASH_SIDE + 1, HASH_SIDE)
    small = np.stack([np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BOX), dtype=np.int16) for im in grey])
    bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(grey), HASH_SIDE * HASH_SIDE)
    return np.packbits(bits, axis=1).view(np.uint64)


def near_duplicates(train: np.ndarray, test: np.ndarray, max_distance: int = HASH_DISTANCE, chunk: int = 512) -> int:
    """How many test images have a train image within `max_distance` bits of their dHash."""
    if not len(train) or not len(test):
        return 0
    a, b = dhash(test), dhash(train)
    hits = 0
    for start in range(0, len(a), chunk):
        dist = np.bitwise_count(a[start:start + chunk, None, :] ^ b[None, :, :]).sum(axis=-1, dtype=np.int64)
        hits += int((dist.min(axis=1) <= max_distance).sum())
    return hits


def leakage_notes(train_images: np.ndarray, test_images: np.ndarray, train_groups: np.ndarray | None,
                  test_groups: np.ndarray | None, group_name: str | None) -> dict[str, Any]:
    """What a run records about its split's leakage, and a `leakage` warning line when there is any."""
    twins = near_duplicates(train_images, test_images)
    notes: dict[str, Any] = {"near_duplicates": {
        "test_images_with_a_train_twin": twins, "test_images": int(len(test_images)),
        "rule": f"{HASH_SIDE * HASH_SIDE}-bit difference hash within Hamming distance {HASH_DISTANCE}"}}
    problems = []
    if train_groups is not None and test_groups is not None:
        shared = np.intersect1d(train_groups, test_groups)
        notes["subjects_in_train_and_test"] = int(len(shared))
        if len(shared):
            problems.append(f"{len(shared)} of {len(np.unique(test_groups))} test {group_name} ids also appear in train")
    if twins:
        problems.append(f"{twins} of {len(test_images)} test images have a near-identical twin in train")
    if problems:
        notes["leakage"] = "; ".join(problems) + ": the test accuracy is not subject-independent"
    return notes
