"""EmoNeXt's official training path, pinned against re-derivations of its code (yelboudouri/EmoNeXt
train.py + scheduler.py, and ema_pytorch 0.3.2's EMA as train.py calls it), on small inputs made here."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from ferbench.engine.optim import ModelEma, ema_decay, lr_factor
from ferbench.spec import RECIPES, EmaConfig, TrainConfig


class OfficialWarmRestarts:
    """scheduler.py's CosineAnnealingWithWarmRestartsLR, as torch runs it: its constructor steps once."""

    def __init__(self, warmup_steps=128, cycle_steps=1024, min_lr=0.0, max_lr=1e-3):
        self.w, self.c, self.lo, self.hi, self.counter = warmup_steps, cycle_steps, min_lr, max_lr, 0
        self.step()

    def step(self):
        self.counter += 1
        pos = self.counter % self.c
        if pos < self.w:
            self.lr = self.lo + (self.hi - self.lo) * pos / self.w
        else:
            self.lr = self.lo + (self.hi - self.lo) * (1 + math.cos(math.pi * (pos - self.w) / (self.c - self.w))) / 2


def test_the_code_recipe_runs_the_official_warm_restart_schedule_step_for_step():
    cfg = TrainConfig.model_validate(RECIPES["emonext-code"])
    assert (cfg.lr, cfg.warmup_steps, cfg.restart_steps, cfg.min_lr) == (1e-3, 128, 1024, 0.0)
    factor, official = lr_factor(cfg, steps_per_epoch=449), OfficialWarmRestarts()
    for k in range(3 * 1024 + 5):  # optimizer step k runs at the lr the official scheduler has set by then
        assert cfg.lr * factor(k) == pytest.approx(official.lr, abs=1e-15), k
        official.step()
    assert factor(1023) == 0.0 and factor(2047) == 0.0  # an lr of exactly 0 at each restart
    assert factor(0) == 1 / 128


class OfficialEma:
    """ema_pytorch 0.3.2's EMA.update(), called once per optimizer step as train.py does."""

    def __init__(self, model, beta=0.99, update_every=16, update_after_step=100, power=2 / 3):
        self.online, self.ema = model, copy.deepcopy(model)
        self.beta, self.every, self.after, self.power, self.counter, self.initted = beta, update_every, update_after_step, power, 0, False
        floats = (torch.float, torch.float16)
        self.params = {n for n, p in self.ema.named_parameters() if p.dtype in floats}
        self.buffers = {n for n, b in self.ema.named_buffers() if b.dtype in floats}

    def _pairs(self):
        on, em = dict(self.online.named_parameters()), dict(self.ema.named_parameters())
        onb, emb = dict(self.online.named_buffers()), dict(self.ema.named_buffers())
        return [(em[n], on[n]) for n in self.params] + [(emb[n], onb[n]) for n in self.buffers]

    @torch.no_grad()
    def update(self):
        step = self.counter
        self.counter += 1
        if step % self.every:
            return
        if step <= self.after or not self.initted:
            for e, o in self._pairs():
                e.copy_(o)
            if step <= self.after:
                return
            self.initted = True
        epoch = max(self.counter - self.after - 1, 0)
        decay = 0.0 if epoch <= 0 else min(max(1 - (1 + epoch) ** -self.power, 0.0), self.beta)
        for e, o in self._pairs():
            e.lerp_(o, 1.0 - decay)


def test_the_code_recipe_averages_weights_as_ema_pytorch_does():
    cfg = TrainConfig.model_validate(RECIPES["emonext-code"])
    assert cfg.ema == EmaConfig(decay=0.99, every=16, warmup_steps=100, rule="ema_pytorch")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ours, official = ModelEma(model, cfg.ema), OfficialEma(model)
    x = torch.randn(8, 1, 8, 8)
    for step in range(1, 1400):  # a fake optimizer step, then both EMAs, as train.py orders them
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        model.train()(x)  # moves BatchNorm's running statistics (float buffers) and its batch count
        ours.update(model, step)
        official.update()
    for (name, a), b in zip(ours.module.state_dict().items(), official.ema.state_dict().values()):
        assert torch.equal(a, b), name  # integer buffers too: neither touches them
    decays = [ema_decay(cfg.ema, s) for s in range(1, 1200)]
    updates = [(s, d) for s, d in zip(range(1, 1200), decays) if d is not None]
    assert updates[0] == (1, 0.0) and all(d == 0.0 for s, d in updates if s - 1 <= 100)
    first = next(d for s, d in updates if d)
    assert first == pytest.approx(1 - 29 ** (-2 / 3))  # call 128 (112, the first after the warm-up, copies)
    assert max(decays[i] or 0 for i in range(len(decays))) == 0.99


def test_the_flat_ema_stays_available():
    cfg = EmaConfig(decay=0.9, every=2, warmup_steps=4)
    assert [ema_decay(cfg, s) for s in range(1, 9)] == [None, 0.0, None, 0.9, None, 0.9, None, 0.9]


def _tiny_trainer(cfg: TrainConfig):
    import numpy as np

    from ferbench.data import Split
    from ferbench.engine.train import setup

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(cfg.in_chans, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (16, 12, 12), dtype=np.uint8), rng.integers(0, 3, 16))
    return setup(model, split, cfg, torch.device("cpu"), None), model


def test_the_code_recipe_clips_scaled_gradients_on_the_cpu_as_the_official_loop_does():
    from ferbench.engine.train import precision, train_step

    code = {**RECIPES["emonext-code"], "input_size": 12, "batch_size": 8, "channels_last": False, "ema": None,
            "label_smoothing": 0.0}
    cfg = TrainConfig.model_validate(code)
    assert precision(cfg, torch.device("cpu")) == {"autocast": "off", "grad_scaler": True, "cuda_graphs": False, "scaler_arithmetic": "fp32",
                                                   "clip": "scaled gradients"}
    tr, model = _tiny_trainer(cfg)
    reference = copy.deepcopy(model)  # the official order: scale, backward, clip (scaled), step, update
    opt = torch.optim.AdamW(reference.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cpu")
    x, y = torch.rand(8, cfg.in_chans, 12, 12), torch.randint(0, 3, (8,))
    for _ in range(3):
        for g in opt.param_groups:
            g["lr"] = tr.opt.param_groups[0]["lr"]  # the same schedule position on both sides
        train_step(tr, x, y, None)
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(reference(x), y)).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert tr.scaler.get_scale() == 65536.0
    unscaled, plain = _tiny_trainer(TrainConfig.model_validate({**code, "clip_before_unscale": False}))
    for _ in range(3):
        train_step(unscaled, x, y, None)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))  # the switch takes effect


@pytest.mark.parametrize("train, needle", [
    ({"clip_before_unscale": True, "clip_grad_norm": 1.0, "grad_scaler": False}, "needs clip_grad_norm and a grad scaler"),
    ({"clip_before_unscale": True}, "needs clip_grad_norm and a grad scaler"),
])
def test_a_clip_that_cannot_take_effect_is_an_error(train, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig.model_validate(train)


def test_clip_before_unscale_without_a_scaler_on_this_device_is_refused():
    from ferbench.errors import FerbenchError
    from ferbench.engine.train import precision

    cfg = TrainConfig.model_validate({"clip_before_unscale": True, "clip_grad_norm": 1.0, "amp": "fp16"})
    with pytest.raises(FerbenchError, match="no grad scaler runs here"):
        precision(cfg, torch.device("cpu"))  # fp16 autocast (and with it the automatic scaler) is CUDA-only


def test_the_code_recipe_keeps_the_last_partial_batch_449_steps_at_batch_64():
    import numpy as np

    from ferbench.data import Split
    from ferbench.engine.train import setup

    cfg = TrainConfig.model_validate({**RECIPES["emonext-code"], "input_size": 12, "ema": None})
    assert cfg.drop_last is False and cfg.batch_size == 64
    split = Split(np.zeros((28709, 4, 4), np.uint8), np.zeros(28709, np.int64))  # FER-2013's training split size
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    assert setup(model, split, cfg, torch.device("cpu"), None).steps_per_epoch == 449
    assert setup(model, split, TrainConfig.model_validate({**RECIPES["emonext-paper"], "ema": None}),
                 torch.device("cpu"), None).steps_per_epoch == 448  # the paper recipe keeps drop_last


def test_a_partial_last_batch_counts_every_image_once(tmp_path):
    import numpy as np

    from ferbench.data import Split
    from ferbench.engine.train import LoopState, NoProgress, setup, train_one_epoch

    cfg = TrainConfig.model_validate({"batch_size": 8, "input_size": 12, "drop_last": False, "channels_last": False,
                                      "in_chans": 1, "lr": 1e-9, "momentum": 0.0})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 3))
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (20, 12, 12), dtype=np.uint8), rng.integers(0, 3, 20))
    tr = setup(model, split, cfg, torch.device("cpu"), None)
    row = train_one_epoch(tr, 0, 0, LoopState(), NoProgress())
    assert tr.steps_per_epoch == 3 and row["step"] == 3
    assert row["train_acc"] * 20 == pytest.approx(round(row["train_acc"] * 20))  # a count of 20 images, not 24


def test_the_code_recipe_validates_the_live_model_and_tests_the_ema():
    from ferbench.spec import EVAL_PRESETS, EvalConfig

    code = EvalConfig.model_validate(EVAL_PRESETS["emonext-code"])
    assert (code.use_ema, code.val_uses_ema, code.tta, code.val_mode) == (True, False, "tencrop", "random_crop")
    assert EvalConfig.model_validate(EVAL_PRESETS["emonext-paper"]).val_uses_ema is None  # as use_ema


@pytest.mark.slow
def test_cpu_amp_overflows_and_skips_steps_as_the_official_fp16_loop_does():
    """The official loop (autocast fp16, GradScaler from 65536, clip of the scaled gradients, AdamW),
    written out and run in the same precision on the CPU, step for step against ferbench's step."""
    import numpy as np

    from ferbench.data import Split
    from ferbench.engine.train import precision, setup, train_step
    from ferbench.models import create_model

    code = {**RECIPES["emonext-code"], "input_size": 32, "batch_size": 8, "channels_last": False, "ema": None,
            "cpu_amp": True}
    cfg = TrainConfig.model_validate(code)
    assert precision(cfg, torch.device("cpu")) == {"autocast": "fp16", "grad_scaler": True, "cuda_graphs": False,
                                                   "scaler_arithmetic": "fp16", "clip": "scaled gradients"}
    torch.manual_seed(0)
    model = create_model("emonext-atto", 7, 32, 3)
    reference = copy.deepcopy(model)
    rng = np.random.default_rng(0)
    tr = setup(model, Split(rng.integers(0, 256, (16, 32, 32), dtype=np.uint8), rng.integers(0, 7, 16)), cfg,
               torch.device("cpu"), None)
    opt = torch.optim.AdamW(reference.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    ours, theirs = [], []
    for step in range(8):
        x, y = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(step)), torch.arange(8) % 7
        for g in opt.param_groups:
            g["lr"] = tr.opt.param_groups[0]["lr"]
        before = [p.detach().clone() for p in model.parameters()]
        train_step(tr, x, y, None)
        ours.append((tr.scaler.get_scale(), float(sum((p.detach() - b).pow(2).sum() for p, b in zip(model.parameters(), before)))))
        before = [p.detach().clone() for p in reference.parameters()]
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            logits = reference(x)
            loss = nn.functional.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing) + reference.aux_loss.float()
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        theirs.append((scaler.get_scale(), float(sum((p.detach() - b).pow(2).sum() for p, b in zip(reference.parameters(), before)))))
    assert [s for s, _ in ours] == [s for s, _ in theirs]
    assert ours[0][0] < 65536.0  # fp16 overflowed at the first scale, as on CUDA: the step was skipped
    skipped = [i for i, (_, moved) in enumerate(theirs) if moved == 0.0]
    assert skipped and skipped == [i for i, (_, moved) in enumerate(ours) if moved == 0.0]
    # the same steps; the update sizes agree to fp16 rounding (the CPU's fp16 kernels are not bitwise repeatable
    # between two copies of a model: 3e-6 at the first update, 6e-4 by the eighth)
    np.testing.assert_allclose([m for _, m in ours], [m for _, m in theirs], rtol=2e-3)


class OfficialEma079(OfficialEma):
    """ema_pytorch 0.7.9's EMA.update() (the rule since 0.6.4): `initted` copies at the very first call."""

    @torch.no_grad()
    def update(self):
        step = self.counter
        self.counter += 1
        if not self.initted:
            for e, o in self._pairs():
                e.copy_(o)
            self.initted = True
            return
        if step % self.every:
            return
        if step <= self.after:
            for e, o in self._pairs():
                e.copy_(o)
            return
        epoch = max(self.counter - self.after - 1, 0)
        decay = 0.0 if epoch <= 0 else min(max(1 - (1 + epoch) ** -self.power, 0.0), self.beta)
        for e, o in self._pairs():
            e.lerp_(o, 1.0 - decay)


def test_the_current_ema_pytorch_rule_is_an_option_and_differs_from_step_113():
    cfg = EmaConfig(decay=0.99, every=16, warmup_steps=100, rule="ema_pytorch_0.6.4")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ours, official = ModelEma(model, cfg), OfficialEma079(model)
    x = torch.randn(8, 1, 8, 8)
    for step in range(1, 400):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        model.train()(x)
        ours.update(model, step)
        official.update()
    for (name, a), b in zip(ours.module.state_dict().items(), official.ema.state_dict().values()):
        assert torch.equal(a, b), name
    old = EmaConfig(decay=0.99, every=16, warmup_steps=100, rule="ema_pytorch")
    first_difference = next(s for s in range(1, 400) if ema_decay(cfg, s) != ema_decay(old, s))
    assert first_difference == 113 and ema_decay(cfg, 113) == pytest.approx(1 - 13 ** (-2 / 3))


def test_every_shipped_spec_gets_its_recipes_facts():
    """Each job's training fields equal its recipe's wherever neither the spec nor the model entry sets
    them, and the model options a recipe implies reach every model of that family (every profile)."""
    from pathlib import Path

    from ferbench import api
    from ferbench.spec import RECIPE_MODEL_OPTIONS, load_spec

    for path in sorted(Path("benchmarks").glob("*.yaml")):
        for profile in [None, *load_spec(path).profiles]:
            spec, jobs = api.load(path, profile)
            for job in jobs:
                entry = next(m for m in spec.models if m.id == job.model.id)
                recipe = RECIPES[job.recipe]
                for key, value in recipe.items():
                    if key in spec.train or key in entry.train or key in ("augment", "ema"):
                        continue
                    if key in ("loss", "ldl_source", "ldl_reduction") and job.dataset.name == "ferplus":
                        continue  # FER+'s protocol chooses the loss where the recipe's is not the spec's choice
                    got = getattr(job.train, key)
                    assert (list(got) if isinstance(got, tuple) else got) == (list(value) if isinstance(value, tuple) else value), \
                        f"{path} [{profile}] {job.id}: train.{key}"
                for prefix, options in RECIPE_MODEL_OPTIONS.get(job.recipe, {}).items():
                    if job.model.arch.startswith(prefix):
                        for key, value in options.items():
                            assert job.model.options.get(key) == (entry.options.get(key, value)), f"{path} {job.id}: {key}"


def test_the_torchvision_pixel_path_is_emonext_codes_chain():
    """Images through torchvision's own transforms (flips, Resize(236), RandomRotation nearest, RandomCrop)
    with given draws, against pixel_path: torchvision with the same draws."""
    import numpy as np
    import scipy.ndimage as nd
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    from ferbench.data.augment import to_unit, torchvision_chain
    from ferbench.spec import AugmentConfig

    cfg = TrainConfig.model_validate(RECIPES["emonext-code"]).augment.model_copy(update={"pixel_path": "torchvision",
                                                                                       "interpolation": "nearest"})
    assert isinstance(cfg, AugmentConfig) and cfg.vflip and cfg.rotation == 20
    rng = np.random.default_rng(0)
    faces = np.stack([nd.gaussian_filter(rng.integers(0, 256, (48, 48)).astype(float), 2) for _ in range(6)])
    faces = ((faces - faces.min()) / np.ptp(faces) * 255).astype(np.uint8)  # smooth, like faces, full range
    angle = torch.tensor([13.0, -7.5, 0.0, 19.0, -19.9, 4.2], dtype=torch.float64)
    flips = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 0]], dtype=torch.bool)
    corner = torch.tensor([[0, 0], [12, 12], [5, 7], [12, 0], [3, 9], [6, 6]])
    ours = torchvision_chain(to_unit(torch.from_numpy(faces)), 224, cfg, angle, flips, corner, torch.full((6,), 236))
    for i in range(6):
        im = Image.fromarray(faces[i])
        im = TF.hflip(im) if flips[i, 0] else im
        im = TF.vflip(im) if flips[i, 1] else im
        im = TF.rotate(TF.resize(im, 236), float(angle[i]), InterpolationMode.NEAREST, fill=0)
        theirs = TF.to_tensor(TF.crop(im, int(corner[i, 0]), int(corner[i, 1]), 224, 224))[0]
        diff = (ours[i, 0] - theirs).abs()
        # PIL's 8-bit bilinear rounds differently from torch's (one grey level on ~18 % of pixels); nearest
        # rotation lands on the other neighbour only where a sampling point sits on a pixel edge
        assert float(diff.mean()) < 0.002 and float((diff > 2.5 / 255).float().mean()) < 0.002, i


def test_the_torchvision_path_draws_the_global_batch_and_slices_it():
    from ferbench.data.augment import augment_batch
    from ferbench.spec import AugmentConfig

    cfg = AugmentConfig(hflip=True, vflip=True, rotation=20.0, resize_ratio=236 / 224, pixel_path="torchvision",
                        interpolation="nearest")
    x = torch.rand(4, 1, 48, 48)
    whole = augment_batch(x, 56, cfg, torch.Generator().manual_seed(1), out_chans=3)
    half = augment_batch(x[2:], 56, cfg, torch.Generator().manual_seed(1), n_total=4, part=slice(2, 4), out_chans=3)
    assert whole.shape == (4, 3, 56, 56) and torch.equal(whole[2:], half)
    levels = whole[:, 0] * 255
    assert float((levels - levels.round()).abs().max()) < 1e-4  # 8-bit levels, as PIL keeps them
