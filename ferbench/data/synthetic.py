"""`synthfer`: procedurally rendered 48x48 grayscale faces, the built-in default dataset.

Each sample draws a ground-truth emotion distribution p over the 7 FER-2013 classes (a dominant
class mixed with a Dirichlet draw; `ambiguity` sets how mixed), and its face is rendered from the
p-weighted mix of expression prototypes (brow height and tilt, eye opening, mouth curve, opening
and width, nose wrinkle). Ten simulated annotators vote from p, as in FER+; the hard label is the
vote argmax and the normalised votes are the sample's target distribution. Nuisances: pose
(rotation, scale, translation, which a spatial transformer can undo), identity (face shape, eye
spacing, skin tone), lighting gradients, occlusion patches and pixel noise.

Everything is vectorised over the batch: shapes are soft masks evaluated on per-sample warped
coordinate grids, so rendering 10,000 faces takes about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ferbench.data import DatasetKind, FerDataset, Split

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SIZE = 48
GENERATOR_VERSION = 1  # bump whenever generate() changes, so cached faces are rebuilt
FER2013_PRIOR = np.array([3995, 436, 4097, 7215, 4830, 3171, 4965], dtype=np.float64)

# Expression prototypes. Columns: brow_raise, brow_inner (+ inner corners up, - V frown),
# eye_open, mouth_curve (+ smile, - frown), mouth_open, mouth_width, nose_wrinkle.
PROTOTYPES = np.array(
    [
        [-0.6, -1.0, -0.3, -0.3, 0.0, -0.2, 0.3],  # angry
        [-0.4, -0.4, -0.5, -0.7, 0.15, 0.0, 1.0],  # disgust
        [0.8, 0.8, 0.8, -0.2, 0.5, 0.4, 0.0],  # fear
        [0.1, 0.0, -0.2, 1.0, 0.3, 0.6, 0.0],  # happy
        [-0.1, 0.9, -0.3, -0.8, 0.0, -0.2, 0.0],  # sad
        [1.0, 0.2, 1.0, 0.0, 1.0, -0.3, 0.0],  # surprise
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # neutral
    ],
    dtype=np.float32,
)


class Options(BaseModel):
    """How the faces are generated; every field is recorded with each run."""

    model_config = ConfigDict(extra="forbid")
    # at most 100,000 faces a split: rendering one split takes ~9 KB a face in float32 (0.9 GB at the bound)
    n_train: int = Field(4000, ge=1, le=100_000)
    n_val: int = Field(1000, ge=1, le=100_000)
    n_test: int = Field(1000, ge=1, le=100_000)
    seed: int = Field(0, description="data seed (independent of the job's training seed)")
    ambiguity: float = Field(0.5, ge=0, le=1, description="max weight of the mixed-in Dirichlet draw")
    pose: float = Field(1.0, ge=0, le=3, description="scale of rotation (+-20 deg), zoom and shift")
    identity: float = Field(1.0, ge=0, le=3, description="scale of face-shape and skin-tone variation")
    lighting: float = Field(0.5, ge=0, le=2, description="strength of linear lighting gradients")
    occlusion: float = Field(0.2, ge=0, le=1, description="probability of an occluding patch")
    noise: float = Field(8.0, ge=0, le=64, description="pixel noise std in grey levels")
    expressiveness: float = Field(0.15, ge=0, le=1, description="per-sample feature jitter")
    annotators: int = Field(10, ge=1, le=100)
    class_prior: Literal["uniform", "fer2013"] = "uniform"


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """Smooth step: ~1 where x > 0, ~0 where x < 0, over `width` (normalised units)."""
    return 0.5 * (1.0 + np.tanh(x / width))


def _col(a: np.ndarray) -> np.ndarray:
    return a[:, None, None].astype(np.float32)


def render(features: np.ndarray, rng: np.random.Generator, o: Options) -> np.ndarray:
    """Render faces for an (N, 7) feature array; returns (N, 48, 48) uint8."""
    n = features.shape[0]
    f = [_col(features[:, j]) for j in range(features.shape[1])]
    brow_raise, brow_inner, eye_open, curve, mouth_open, mouth_width, wrinkle = f

    # pose: face coordinates (u, v) from image coordinates (x, y) in [-1, 1]
    lin = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE * 2 - 1
    y, x = np.meshgrid(lin, lin, indexing="ij")
    ang = _col(np.deg2rad(rng.uniform(-20, 20, n) * o.pose))
    scale = _col(1 + rng.uniform(-0.12, 0.12, n) * o.pose)
    tx, ty = (_col(rng.uniform(-0.1, 0.1, n) * o.pose) for _ in range(2))
    xs, ys = (x[None] - tx) / scale, (y[None] - ty) / scale
    cos, sin = np.cos(ang), np.sin(ang)
    u, v = cos * xs + sin * ys, -sin * xs + cos * ys
    au = np.abs(u)

    idv = [_col(rng.uniform(-1, 1, n) * o.identity) for _ in range(4)]
    bg = _col(rng.uniform(20, 110, n))
    skin = _col(rng.uniform(140, 215, n)) - 15 * idv[3]
    img = np.broadcast_to(bg, (n, SIZE, SIZE)).copy()

    face_a, face_b = 0.62 * (1 + 0.08 * idv[0]), 0.80 * (1 + 0.08 * idv[1])
    face = _soft(1 - np.sqrt((u / face_a) ** 2 + ((v - 0.05) / face_b) ** 2), 0.04)
    img += face * (skin - img)

    def paint(mask: np.ndarray, tone: np.ndarray | float) -> None:
        nonlocal img
        img = img + mask * (tone - img)

    # eyes
    ex = 0.26 * (1 + 0.10 * idv[2])
    eye_h = np.clip(0.055 * (1 + 0.9 * eye_open), 0.008, 0.16)
    eye = _soft(1 - np.sqrt(((au - ex) / 0.12) ** 2 + ((v + 0.18) / eye_h) ** 2), 0.05)
    paint(eye, skin * 0.2)
    # brows: a thick line per side, inner end raised by brow_inner
    brow_v = -0.35 - 0.10 * brow_raise
    t = np.clip((au - (ex - 0.14)) / 0.28, 0, 1)  # 0 at the inner end, 1 at the outer end
    line_v = brow_v - 0.09 * brow_inner * (1 - t) + 0.02
    on_span = _soft(0.15 - np.abs(au - ex), 0.02)
    brow = _soft(0.032 - np.abs(v - line_v), 0.012) * on_span
    paint(brow, skin * 0.25)
    # nose wrinkle: horizontal creases between the eyes, darker with the wrinkle feature
    crease = sum(_soft(0.016 - np.abs(v - c), 0.008) for c in (-0.06, 0.0, 0.06)) * _soft(0.1 - au, 0.02)
    paint(np.clip(crease * np.clip(wrinkle, 0, 1.5) * 0.6, 0, 1), skin * 0.35)
    # nose
    paint(_soft(0.02 - au, 0.01) * _soft(0.2 - np.abs(v - 0.12), 0.02) * 0.35, skin * 0.6)
    # mouth: lip line bent by the curve feature, then an opening
    mw = 0.28 * (1 + 0.35 * mouth_width)
    mv = 0.44 + 0.02 * idv[1]
    lip_v = mv + curve * 0.06 - curve * 0.12 * (u / mw) ** 2
    lip = _soft(0.03 - np.abs(v - lip_v), 0.012) * _soft(mw - au, 0.02)
    paint(lip, skin * 0.3)
    open_h = np.clip(0.13 * mouth_open, 0.0, 0.2)
    open_w = mw * (0.85 - 0.25 * np.clip(mouth_open, 0, 1))
    hole = _soft(1 - np.sqrt((u / open_w) ** 2 + ((v - lip_v) / (open_h + 1e-3)) ** 2), 0.08)
    paint(hole * (open_h > 0.01), skin * 0.1)

    # lighting gradient
    theta = _col(rng.uniform(0, 2 * np.pi, n))
    g = _col(rng.uniform(-1, 1, n) * o.lighting * 60)
    img = img + g * (np.cos(theta) * x[None] + np.sin(theta) * y[None])
    # occlusion patch
    occ = rng.random(n) < o.occlusion
    if occ.any():
        k = int(occ.sum())
        w, h = rng.integers(10, 22, k), rng.integers(8, 20, k)
        x0, y0 = rng.integers(0, SIZE - 10, k), rng.integers(0, SIZE - 8, k)
        tone = rng.uniform(0, 255, k)
        px = np.arange(SIZE)
        mx = (px[None] >= x0[:, None]) & (px[None] < (x0 + w)[:, None])
        my = (px[None] >= y0[:, None]) & (px[None] < (y0 + h)[:, None])
        mask = my[:, :, None] & mx[:, None, :]
        idx = np.flatnonzero(occ)
        img[idx] = np.where(mask, tone[:, None, None], img[idx])
    img = img + rng.normal(0, 1, img.shape).astype(np.float32) * o.noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def generate(n: int, seed: int, o: Options) -> Split:
    """n faces with their hard labels (vote argmax) and vote distributions."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    prior = np.full(k, 1 / k) if o.class_prior == "uniform" else FER2013_PRIOR / FER2013_PRIOR.sum()
    dominant = rng.choice(k, size=n, p=prior)
    mix = rng.uniform(0, o.ambiguity, n)[:, None]
    p = (1 - mix) * np.eye(k)[dominant] + mix * rng.dirichlet(np.full(k, 0.7), size=n)
    intensity = rng.uniform(0.7, 1.3, n)[:, None]
    feats = intensity * (p @ PROTOTYPES) + rng.normal(0, o.expressiveness, (n, PROTOTYPES.shape[1]))
    images = render(feats.astype(np.float32), rng, o)
    votes = rng.multinomial(o.annotators, p)
    # argmax of votes; ties go to the class with the larger true probability
    label = np.argmax(votes + p * 1e-3, axis=1)
    return Split(images, label.astype(np.int64), (votes / o.annotators).astype(np.float32))


def _locate(root: Path | None, path: str | None, options: BaseModel) -> dict[str, Path]:
    return {}  # generated in memory, nothing to find


def _load(files: dict[str, Path], options: BaseModel) -> FerDataset:
    """Generated once per option set, then loaded from the prepared-array cache."""
    from ferbench.data.cache import cached_arrays

    o = options if isinstance(options, Options) else Options.model_validate(options)

    def build() -> dict[str, np.ndarray]:
        out = {}
        for i, (name, n) in enumerate((("train", o.n_train), ("val", o.n_val), ("test", o.n_test)), 1):
            s = generate(n, o.seed * 1000 + i, o)
            out.update({f"{name}_images": s.images, f"{name}_labels": s.labels, f"{name}_targets": s.targets})
        return out

    a = cached_arrays("synthfer", f"generator-v{GENERATOR_VERSION}", o.model_dump(), build)
    splits = {n: Split(a[f"{n}_images"], a[f"{n}_labels"], a[f"{n}_targets"]) for n in ("train", "val", "test")}
    return FerDataset(
        "synthfer", CLASSES, splits,
        notes={"generator": "ferbench.data.synthetic", "options": o.model_dump(), "targets": "annotator votes"},
    )


KIND = DatasetKind(Options, _locate, _load, "built-in procedurally rendered faces, 7 classes, 48x48, votes")
