"""mini-Xception's training recipe as its Keras 2.0.5 code runs it (`recipe: mini-xception-code`):
ImageDataGenerator's warp against scipy doing what Keras 2.0's apply_transform does, ReduceLROnPlateau's
and EarlyStopping's counting written out from Keras 2.0.5, the L2 on the stem convs, Keras's init."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ferbench.data.augment import augment_batch, to_unit
from ferbench.engine.losses import compute_loss, l2_penalty
from ferbench.engine.optim import KerasPlateau
from ferbench.spec import AugmentConfig, RECIPES, TrainConfig

KERAS_AUG = AugmentConfig(hflip=True, rotation=10.0, translate=0.1, scale=(0.9, 1.1), geometry="keras",
                          interpolation="nearest", fill="border")


def keras_2_0_warp(image: np.ndarray, theta: float, tx: float, ty: float, zx: float, zy: float, flip: bool) -> np.ndarray:
    """Keras 2.0.5 random_transform + apply_transform for one grey image with the given draws, as its
    code composes them: rotation . shift . zoom about (h/2 + 0.5, w/2 + 0.5), scipy order 0, mode nearest."""
    from scipy import ndimage

    rot = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    m = rot @ shift @ zoom
    h, w = image.shape
    o_x, o_y = h / 2 + 0.5, w / 2 + 0.5
    m = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]]) @ m @ np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    out = ndimage.affine_transform(image, m[:2, :2], m[:2, 2], order=0, mode="nearest")
    return out[:, ::-1] if flip else out


def test_the_keras_warp_is_keras_2_0s_pixel_for_pixel():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 64, 64), dtype=np.uint8)
    gen = torch.Generator().manual_seed(3)
    got = augment_batch(to_unit(torch.from_numpy(images)), 64, KERAS_AUG, torch.Generator().manual_seed(3))
    u = torch.rand(64, 6, generator=gen, dtype=torch.float64).numpy()  # the draws keras_affine makes, in order
    flips = torch.rand(64, 2, generator=gen, dtype=torch.float64).numpy()
    differ = 0
    for i in range(64):
        want = keras_2_0_warp(images[i].astype(np.float64), (u[i, 0] * 2 - 1) * math.radians(10),
                              (u[i, 4] * 2 - 1) * 0.1 * 64, (u[i, 5] * 2 - 1) * 0.1 * 64,
                              0.9 + u[i, 1] * 0.2, 0.9 + u[i, 2] * 0.2, flips[i, 0] < 0.5)
        differ += int((np.round(got[i, 0].numpy() * 255) != want).sum())
    # nearest-neighbour sampling: a pixel differs only where float32 rounding lands on the other side of a
    # half-pixel boundary from scipy's float64 arithmetic
    assert differ / (64 * 64 * 64) < 1e-3, differ


def test_the_plateau_schedule_counts_as_keras_2_0_5_does():
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = KerasPlateau(opt, TrainConfig(schedule="plateau", monitor="val_loss", gamma=0.1, plateau_patience=3))
    lrs = []
    for value in [1.0] + [1.0] * 10:  # one best epoch, then nothing better
        sched.epoch_end(value)
        lrs.append(opt.param_groups[0]["lr"])
    # Keras 2.0.5: the first drop at the 4th epoch without improvement (wait is tested before it is raised),
    # later drops every 3 (wait restarts at 1)
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5, 1e-6])
    assert sched.wait == 1
    sched.epoch_end(0.99995)  # lower by less than min_delta (1e-4): no improvement
    assert (sched.wait, sched.best) == (2, 1.0)
    sched.epoch_end(0.9998)  # lower by more: the new best
    assert (sched.wait, sched.best) == (0, 0.9998)
    state = sched.state_dict()
    again = KerasPlateau(opt, TrainConfig(schedule="plateau", monitor="val_loss", plateau_patience=3))
    again.load_state_dict(state)
    assert again.state_dict() == state


def test_l2_is_on_the_two_stem_convs_and_in_the_loss():
    from ferbench.models.minixception import MiniXception

    model = MiniXception(7, 64, 1)
    cfg = TrainConfig(**{k: v for k, v in RECIPES["mini-xception-code"].items() if k != "augment"})
    logits, y = torch.randn(4, 7), torch.tensor([0, 1, 2, 3])
    base = torch.nn.functional.cross_entropy(logits, y)
    want = base + 0.01 * (model.stem[0].weight.pow(2).sum() + model.stem[3].weight.pow(2).sum())
    torch.testing.assert_close(compute_loss(model, logits, y, None, cfg), want)
    assert [w.shape for w in model.l2_weights()] == [(8, 1, 3, 3), (8, 8, 3, 3)]
    with pytest.raises(Exception, match="names no weights to regularise"):
        l2_penalty(torch.nn.Linear(2, 2))


def test_keras_init_is_glorot_uniform():
    from ferbench.models.minixception import MiniXception

    torch.manual_seed(0)
    model = MiniXception(7, 64, 1)
    w = model.stem[3].weight  # 3x3, 8 -> 8: glorot bound sqrt(6 / (72 + 72))
    bound = math.sqrt(6 / (72 + 72))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert float(model.head.bias.detach().abs().sum()) == 0.0
    torch_init = MiniXception(7, 64, 1, init="torch")
    assert float(torch_init.head.bias.detach().abs().sum()) > 0


def test_the_recipe_resolves_into_a_job_with_every_keras_fact():
    from ferbench.spec import expand, spec_from_dict

    spec = {"name": "mx", "datasets": [{"name": "synthfer", "options": {"n_train": 64, "n_val": 16, "n_test": 16}}],
            "models": [{"id": "mx", "arch": "mini-xception", "recipe": "mini-xception-code"}]}
    (job,) = expand(spec_from_dict(spec, "x"))
    t = job.train
    assert (t.optimizer, t.lr, t.batch_size, t.l2, t.schedule, t.monitor) == ("adam", 1e-3, 32, 0.01, "plateau", "val_loss")
    assert (t.plateau_patience, t.gamma, t.early_stopping_patience, t.drop_last) == (12, 0.1, 51, False)
    assert t.augment == KERAS_AUG
