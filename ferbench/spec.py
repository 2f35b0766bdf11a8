"""Benchmark specs: YAML -> validated `Spec` -> self-contained `Job`s.

A spec is data. It is loaded with a safe YAML loader, shrunk by a profile and `--set key=value`
overrides (applied to the raw mapping, so they take exactly the same code path), validated by
pydantic with unknown keys rejected, then expanded into one `Job` per (model, dataset, seed).
A job's id is a hash of its resolved content, so re-running a spec finds finished jobs.
This module never imports torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Callable, Literal, Union, get_args, get_origin

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from ferbench.errors import FerbenchError, shown
from ferbench.specfile import read_yaml, set_dotted

JOB_FORMAT = 1
_SLUG = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.+\-]{0,79}\Z")  # names become folder names: 80 characters at most
_SLUG_RULE = "must be 1-80 letters, digits, '_', '-', '+' or '.'"


def _slug_error(kind: str, value: str) -> ValueError:
    shown = repr(value) if len(value) <= 40 else f"{value[:37]!r}... ({len(value)} characters)"
    return ValueError(f"{kind} {shown} {_SLUG_RULE}")


def _slug(kind: str) -> AfterValidator:
    """A validator for names that become folder names."""
    def check(v: str) -> str:
        if not _SLUG.match(v):
            raise _slug_error(kind, v)
        return v
    return AfterValidator(check)


SlugId = Annotated[str, _slug("id")]
TTAMode = Literal["none", "flip", "tencrop"]  # test-time augmentation: one view, + its mirror, TenCrop
TTA_MODES: tuple[str, ...] = get_args(TTAMode)
EMONEXT_RESIZE_RATIO = 236 / 224  # EmoNeXt's code: Resize(236) then crop 224, for training, validation and TenCrop
MAX_SEED = 2**32 - 1  # what every RNG ferbench seeds (Python, NumPy, torch) accepts
INPUT_SIZES = (8, 1024)  # a network input's side in pixels, smallest and largest (ResNet's stem needs 8; 1024 is 20x FER)


def _scalar_types(annotation: Any) -> set[type]:
    """The plain types a field annotation admits (Annotated, Optional, unions and Literals unwrapped)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return {type(v) for v in get_args(annotation)}
    if origin is Annotated:
        return _scalar_types(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return set().union(*(_scalar_types(a) for a in get_args(annotation)))
    return {annotation} if isinstance(annotation, type) else {object}


def _uncoerced(value: Any, annotation: Any, where: str) -> None:
    """Refuse what pydantic's lax mode would quietly convert: a boolean or a string where the field
    takes numbers (seeds: [true], epochs: "3"), element by element in lists and tuples."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _uncoerced(value, get_args(annotation)[0], where)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        inner = get_args(annotation)
        for i, v in enumerate(value):
            _uncoerced(v, inner[min(i, len(inner) - 1)] if inner and inner[-1] is not Ellipsis else (inner[0] if inner else Any), where)
        return
    kinds = _scalar_types(annotation)
    if object in kinds or not kinds & {int, float}:
        return
    wanted = "a number" if float in kinds else "an integer"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        raise ValueError(f"expected {wanted} that fits in 64 bits, got {shown(value)}")
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"expected {wanted}, not a boolean")
    if isinstance(value, str) and str not in kinds:
        raise ValueError(f"expected {wanted}, not a string")


# what reports/ holds beside the pages: a spec of one of these names would write over it
RESERVED_NAMES = ("index.html", "readme.md", "bench", "data", "export")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None:
            _uncoerced(value, field.annotation, info.field_name)
        return value


class AugmentConfig(_Strict):
    """Batched training augmentation, applied on the training device as one affine warp."""

    hflip: bool = True
    vflip: bool = False
    rotation: float = Field(10.0, ge=0, le=180, description="max rotation in degrees")
    resize_ratio: float = Field(
        1.0, ge=1.0, le=4.0, description="resize to input_size*ratio, then random-crop input_size (236/224 in EmoNeXt)"
    )
    scale: tuple[Annotated[float, Field(gt=0, le=10)], Annotated[float, Field(gt=0, le=10)]] = Field(
        (1.0, 1.0), description="random zoom range (low, high), 0 < low <= high")
    translate: float = Field(0.0, ge=0, le=0.5, description="max shift as a fraction of the size")
    geometry: Literal["ferbench", "keras"] = Field(
        "ferbench", description="ferbench: one zoom for both axes, the output covering 1/zoom of the source, shifts "
        "after the rotation; keras: Keras 2.0's ImageDataGenerator.random_transform (mini-Xception's code): x and y "
        "zoom factors drawn independently and applied to output coordinates, the pixel shift inside the rotation, "
        "rotation about pixel (size/2 + 0.5) as Keras 2.0's transform_matrix_offset_center has it")
    interpolation: Literal["bilinear", "nearest"] = Field(
        "bilinear", description="how the warp samples: nearest is Keras 2.0's apply_transform (scipy order=0)")
    fill: Literal["zeros", "border"] = Field(
        "zeros", description="pixels the warp brings in from outside: zeros (black) or border (the edge pixel "
        "repeated: Keras's fill_mode='nearest')")
    pixel_path: Literal["fast", "torchvision"] = Field(
        "fast", description="fast: one warp at no more than the source's resolution, then one upsample; torchvision: "
        "EmoNeXt code's chain in its order (flips, Resize(input_size x resize_ratio) bilinear kept in 8 bits as PIL "
        "does, RandomRotation at that size with `interpolation` (torchvision's default: nearest) and black fill, "
        "RandomCrop(input_size)); slower: it rotates the large image")

    @model_validator(mode="after")
    def _ordered_range(self) -> "AugmentConfig":
        if self.scale[0] > self.scale[1]:
            raise ValueError(f"scale: expected (low, high) with low <= high, got {list(self.scale)}")
        return self

    @property
    def is_identity(self) -> bool:
        """No augmentation at all (Deep-Emotion's ToTensor + Normalize): batches skip the warp entirely."""
        return (not self.hflip and not self.vflip and self.rotation == 0 and tuple(self.scale) == (1.0, 1.0)
                and self.translate == 0 and self.resize_ratio == 1.0)


class EmaConfig(_Strict):
    decay: float = Field(0.999, gt=0, lt=1)
    every: int = Field(1, ge=1, description="update every N optimizer steps")
    warmup_steps: int = Field(0, ge=0, description="copy weights (no averaging) before this step")
    rule: Literal["flat", "ema_pytorch", "ema_pytorch_0.6.4"] = Field(
        "flat", description="flat: a constant decay after the warm-up copies; ema_pytorch: as ema_pytorch 0.3.x-0.6.3's "
        "EMA (the releases of EmoNeXt's 2023 code): copies up to update call `warmup_steps` and at the first update "
        "after it, then decay min(decay, 1 - (1 + t) ** -power), t = calls after the warm-up; ema_pytorch_0.6.4: the "
        "rule of 0.6.4 and later (the current 0.7.9): the first update after the warm-up already averages; float "
        "buffers averaged, integer buffers left as they were")
    power: float = Field(2 / 3, gt=0, description="ema_pytorch's warm-up power (its default, 2/3)")


class TrainConfig(_Strict):
    """A fully resolved training recipe; every field is recorded in the job."""

    epochs: int = Field(10, ge=0, description="0: evaluate the model's weights: as they are, without training")
    batch_size: int = Field(128, ge=1, le=65536)
    eval_batch_size: int = Field(256, ge=1, le=65536)
    input_size: int = Field(48, ge=INPUT_SIZES[0], le=INPUT_SIZES[1])
    in_chans: Literal[1, 3] = 3
    normalize: Literal["none", "half", "imagenet", "rafdb-efficientface", "custom"] = Field(
        "half", description="none: pixels in [0,1] (EmoNeXt code); half: (x-0.5)/0.5; imagenet: per-channel ImageNet "
        "mean/std (torchvision's); rafdb-efficientface: RAF-DB's own mean/std as EfficientFace's main.py has them; "
        "custom: norm_mean / norm_std (e.g. a training split's own, from `ferbench data info NAME`)")
    norm_mean: tuple[float, ...] | None = Field(None, description="per-channel mean for normalize: custom (pixels in [0, 1])")
    norm_std: tuple[float, ...] | None = Field(None, description="per-channel std for normalize: custom")
    optimizer: Literal["sgd", "adamw", "adam"] = Field("sgd", description="adam: torch.optim.Adam, weight decay as an "
                                                       "L2 gradient term (Deep-Emotion's code); adamw: decoupled")
    lr: float = Field(0.1, gt=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="Adam/AdamW betas (PyTorch's and Keras's default)")
    adam_eps: float = Field(1e-8, gt=0, description="Adam/AdamW epsilon (PyTorch's default; Keras 2.0's Adam too)")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["constant", "step", "cosine", "plateau"] = Field(
        "cosine", description="plateau: Keras 2.0's ReduceLROnPlateau on `monitor` (lr x gamma after plateau_patience "
        "epochs without an improvement of plateau_min_delta; engine/optim.py KerasPlateau)")
    plateau_patience: int = Field(10, ge=1, description="epochs without improvement before the plateau schedule's drop")
    plateau_min_delta: float = Field(1e-4, ge=0, description="the least change that counts as an improvement (Keras's epsilon)")
    monitor: Literal["val_acc", "val_loss"] = Field(
        "val_acc", description="what selects the best epoch, stops early and drives the plateau schedule (Keras "
        "callbacks on 'val_loss': mini-Xception's code)")
    l2: float = Field(0.0, ge=0, description="Keras-style L2: l2 x sum of squares of the weights the model family "
                      "regularises (its l2_weights()), added to the training and validation loss (mini-Xception: 0.01)")
    warmup_steps: int = Field(0, ge=0)
    restart_steps: int | None = Field(None, ge=1, description="cosine warm restarts every N steps")
    step_size: int = Field(30, ge=1, description="epochs between lr drops (step schedule)")
    gamma: float = Field(0.1, gt=0, le=1)
    min_lr: float = Field(0.0, ge=0)
    loss: Literal["ce", "ldl", "sampled", "multi_target"] = Field(
        "ce", description="ldl: soft-target cross-entropy (ResFace module C); sampled: CE on a one-hot label drawn "
        "from each sample's target distribution every step (FER+ 'probability' mode)"
    )
    ldl_source: Literal["votes", "teacher"] = Field(
        "votes", description="votes: the dataset's annotator distributions; teacher: softmax of the depends_on job's model"
    )
    ldl_reduction: Literal["paper", "sample"] = Field(
        "paper", description="paper: sum / (N x classes) as the article's formula; sample: sum / N"
    )
    ldl_hard_weight: float = Field(0.0, ge=0, description="weight of an added hard-label CE term (0 in the paper)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    clip_before_unscale: bool = Field(False, description="EmoNeXt code clips scaled gradients (needs a grad scaler)")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field("auto", description="autocast on CUDA (auto: bf16); the CPU computes in "
                                                        "fp32 unless cpu_amp")
    cpu_amp: bool = Field(False, description="autocast on the CPU too, in amp's dtype (auto: bf16): with fp16 and the grad "
                          "scaler the CPU overflows, skips steps and lowers the loss scale as the official CUDA loop does "
                          "(slow: CPU fp16 kernels are few); off, the CPU's fp32 never overflows and the scale stays 65536")
    sampler: Literal["uniform", "balanced"] = Field(
        "uniform", description="balanced: each epoch draws as many images as the split holds, with replacement, each "
        "class equally likely (class-balanced sampling, as several AffectNet results train); uniform: a permutation")
    drop_last: bool = Field(True, description="false: the last, partial batch of each epoch is trained too (the "
                            "official EmoNeXt DataLoader: 449 steps at batch 64 on FER-2013's 28,709 images)")
    grad_scaler: bool | None = Field(
        None, description="loss scaling (torch.amp.GradScaler, initial scale 65536): None = on for fp16 on CUDA; true also "
        "on the CPU, where its arithmetic in fp32 gives the official path's scaled-gradient clipping and step sizes")
    channels_last: bool = True
    compile: bool = False
    cuda_graphs: bool = Field(
        False, description="capture each training step (forward, loss, backward, SGD update) as one CUDA graph and "
        "replay it: the same arithmetic with one launch a step instead of hundreds (ferbench/engine/graphs.py); CUDA "
        "only (elsewhere the eager step runs and the manifest says so); not part of the job's identity")
    ema: EmaConfig | None = None
    early_stopping_patience: int | None = Field(None, ge=1)
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _lr_floor_below_lr(self) -> "TrainConfig":
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr:g} is above lr {self.lr:g}: the schedule's floor must not exceed its start")
        return self

    @model_validator(mode="after")
    def _imagenet_needs_colour_channels(self) -> "TrainConfig":
        if self.normalize in ("imagenet", "rafdb-efficientface") and self.in_chans != 3:
            raise ValueError(f"normalize: {self.normalize} is per colour channel: it needs in_chans: 3")
        if (self.normalize == "custom") != (self.norm_mean is not None and self.norm_std is not None):
            raise ValueError("normalize: custom goes with norm_mean and norm_std (one value per input channel), "
                             "and they with it")
        if self.normalize == "custom" and not (len(self.norm_mean) == len(self.norm_std) == self.in_chans
                                               and all(v > 0 for v in self.norm_std)):
            raise ValueError(f"norm_mean / norm_std: expected {self.in_chans} values each (in_chans), std above 0")
        return self

    @model_validator(mode="after")
    def _graphs_need_a_fixed_step(self) -> "TrainConfig":
        if self.cuda_graphs and (reasons := cuda_graph_blockers(self)):
            raise ValueError("cuda_graphs captures one fixed step; it cannot have " + "; ".join(reasons))
        return self

    @model_validator(mode="after")
    def _clip_needs_a_scaler(self) -> "TrainConfig":
        if self.clip_before_unscale and (self.grad_scaler is False or not self.clip_grad_norm):
            raise ValueError("clip_before_unscale clips scaled gradients: it needs clip_grad_norm and a grad scaler "
                             "(grad_scaler: true, or amp: fp16 on CUDA)")
        return self

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "TrainConfig":
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ValueError("nesterov: true needs momentum above 0 (PyTorch's SGD refuses Nesterov without momentum)")
        return self


def cuda_graph_blockers(cfg: TrainConfig) -> list[str]:
    """What in a training config a whole-step CUDA graph cannot hold (empty: it can capture it)."""
    reasons = []
    if cfg.optimizer != "sgd":
        reasons.append(f"optimizer {cfg.optimizer} (only SGD's update keeps no step counter on the host)")
    if cfg.schedule == "cosine" or cfg.warmup_steps:
        reasons.append("an lr that changes every step (cosine or warm-up: the graph holds the lr as a constant)")
    if cfg.grad_scaler or (cfg.grad_scaler is None and cfg.amp == "fp16"):
        reasons.append("loss scaling (GradScaler reads its overflow flag on the host)")
    if not cfg.drop_last:
        reasons.append("drop_last: false (the last, partial batch has another shape)")
    if cfg.compile:
        reasons.append("compile: true")
    return reasons


class EvalConfig(_Strict):
    splits: list[Literal["val", "test"]] = Field(["val", "test"], description="the splits evaluated; test always "
                                                 "(every record holds its test predictions)")
    tta: TTAMode = "none"
    tta_resize_ratio: float = Field(EMONEXT_RESIZE_RATIO, ge=1.0, le=4.0)
    val_mode: Literal["center", "random_crop"] = Field(
        "center", description="random_crop reproduces EmoNeXt code's non-deterministic validation"
    )
    use_ema: bool = Field(True, description="test (and by default validate) the EMA model when the recipe keeps one")
    val_uses_ema: bool | None = Field(None, description="which model validation and early stopping see: None = as "
                                      "use_ema; false = the live model (EmoNeXt's code: live for validation, EMA for test)")
    dropout_at_eval: bool = Field(
        False, description="keep dropout sampling when the test split is evaluated (seeded by the job's seed): the "
        "released Deep-Emotion code calls F.dropout without training=, so its numbers are measured that way; an "
        "evaluation setting (a finished training is re-evaluated, never retrained)")
    test_each_epoch: bool = Field(
        False, description="also record each epoch's test accuracy (centre view) in history.csv, so a report can show "
        "a paper's test-selected number (best test epoch) labelled as such; never used to select a model, never part "
        "of the job's identity (it changes no weight)")

    @model_validator(mode="after")
    def _test_is_evaluated(self) -> "EvalConfig":
        if "test" not in self.splits:
            raise ValueError(f"splits: {self.splits} leaves out test: every record holds its test predictions")
        return self


class SubsetConfig(_Strict):
    """Stratified, seeded subsample of each split (profiles use it to shrink a spec)."""

    train: int | None = Field(None, ge=1)
    val: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)


class CrossTarget(_Strict):
    """Another dataset the models trained on an entry are also tested on (cross-dataset evaluation)."""

    id: SlugId
    name: str
    path: str | None = None
    options: dict[str, Any] = {}
    split: Literal["all", "test"] = Field("all", description="all: every image of the target (train, val and test)")
    map: dict[str, str] | None = Field(
        None, description="training class -> target class; a target class no training class maps to is dropped with its "
        "images, a training class mapped to nothing is never predicted; None: the classes both name alike")


class DatasetEntry(_Strict):
    name: str
    id: str | None = None
    path: str | None = None
    options: dict[str, Any] = {}
    subset: SubsetConfig | None = None
    folds: Literal["all"] | list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="k-fold cross-validation as an axis, like seeds: one job per fold ('all', or these fold "
        "indices), k = options.folds; each job's options.fold says which (a dataset with folds: folder, ckplus48)")
    cross: list[CrossTarget] = Field([], description="other datasets to test the trained models on, with a class map")

    def subset_sizes(self) -> dict[str, int]:
        """The split sizes `subset` sets ({}: the full splits)."""
        return {k: v for k, v in (self.subset.model_dump() if self.subset else {}).items() if v}

    @model_validator(mode="after")
    def _default_id(self) -> "DatasetEntry":
        if self.id is None:
            self.id = self.name
        if not _SLUG.match(self.id):
            raise _slug_error("id", self.id)
        return self


class TeacherFile(_Strict):
    """A frozen teacher loaded from a checkpoint file (e.g. EfficientFace's LDG, a ResNet-50 saved
    from DataParallel) instead of a `depends_on` job of the spec."""

    arch: str
    weights: str = Field(description="checkpoint file (or timm:<tag> / hf-hub:<org>/<repo>); every tensor of the teacher must load from it")
    options: dict[str, Any] = {}


class ModelEntry(_Strict):
    id: SlugId
    arch: str
    options: dict[str, Any] = {}
    recipe: str | None = None
    train: dict[str, Any] = {}
    depends_on: str | None = Field(None, description="id of a model entry whose checkpoint this one needs")
    teacher: TeacherFile | None = Field(None, description="a frozen teacher from a file (ldl_source: teacher)")
    weights: str | None = Field(None, description="pretrained weights: a local file (FB, timm or torchvision keys), "
                                "timm:<pretrained tag> or hf-hub:<org>/<repo>[@revision] through the Hugging Face cache")


class ClaimConditions(_Strict):
    """What the paper's number was made under, as it reports it (None: not stated). A verdict compares
    these with the matched runs' records field by field; any stated field that differs makes the
    claim `not comparable` with the reproduction, and the page lists which."""

    input_size: int | None = Field(None, ge=8, description="input side in pixels (224 in both papers)")
    in_chans: int | None = Field(None, ge=1, description="3 where the paper trains in colour (RAF-DB)")
    epochs: int | None = Field(None, ge=1, description="training epochs (the maximum, with early stopping)")
    pretraining: str | None = Field(None, description="'none' (from scratch) or the weights it started from")
    labels: Literal["hard", "distribution"] | None = Field(None, description="hard labels or label distributions")
    selection: Literal["last", "best-val", "best-test", "max-of-seeds"] | None = Field(
        None, description="which epoch/run the number is from; best-test and max-of-seeds select on the test set")
    seeds: int | None = Field(None, ge=1, description="runs the number summarises (1 when the paper shows one)")
    data: Literal["full"] | None = Field(None, description="'full': the dataset's standard splits, no subset")
    protocol: str | None = Field(None, description="the dataset protocol the number was measured under, as the "
                                 "dataset's `protocol` option names it (fer2013: standard, val-public-private, "
                                 "carve-val; ferplus: the label mode)")
    extra_data: str | None = Field(None, description="training data beyond the dataset's own training split (e.g. "
                                   "'KDEF' where released weights were pre-trained on it; 'none')")
    vote_table: str | None = Field(None, description="FER+: the vote table the labels came from (fer2013new.csv, or "
                                   "label.csv: the official trainer's per-split tables; they disagree on 1,602 images)")
    test_images: int | None = Field(None, ge=1, description="test images the number was measured on (FER+'s official "
                                    "export: 3,573; a different count is a different test set)")


class Claim(_Strict):
    model: str = Field(description="the spec's model id the claim is shown beside")
    arch: str | None = Field(None, description="the architecture the paper measured (e.g. resface-r50); runs of "
                                               "another architecture never count for the claim")
    dataset: str
    metric: str = "accuracy"
    value: float = Field(ge=0, le=100, description="percent, as the paper prints it")
    resolution: float | None = Field(None, gt=0, description="the last digit the claim states, in points: 1 for "
                                     "'66 %', 0.01 for '70.02 %' (None: 1 for a whole number, else from its decimals); "
                                     "released weights are checked against value ± resolution / 2")
    source: str
    conditions: ClaimConditions = ClaimConditions()


LOGGERS = ("tensorboard", "mlflow", "csv")  # progress sinks `--log` / launcher.log accept (engine/sinks.py opens them)


class LauncherConfig(_Strict):
    """Where jobs run; never part of a job's identity."""

    name: Literal["local", "submitit"] = "local"
    workers: int = Field(1, ge=1, le=1024, description="local: separate processes at a time")
    executor: Literal["auto", "slurm", "local", "debug"] = Field("auto", description="submitit executor")
    partition: str | None = None
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: int | None = Field(None, ge=1)
    timeout_min: int = Field(24 * 60, ge=1)
    log: list[Literal[LOGGERS]] = Field([], description="experiment trackers besides the terminal (engine/sinks.py): "
                                              "tensorboard, mlflow, csv; each gets the job's parameters, per-step loss and lr, "
                                              "epoch rows and final metrics")


class Spec(_Strict):
    name: Annotated[str, _slug("name")]
    description: str = ""
    datasets: list[DatasetEntry] = Field(min_length=1)
    models: list[ModelEntry] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field([0], min_length=1)
    recipe: str = "default"
    train: dict[str, Any] = {}
    eval: EvalConfig = EvalConfig()
    claims: list[Claim] = []
    profiles: dict[str, dict[str, Any]] = {}
    launcher: LauncherConfig = LauncherConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Spec":
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"model ids must be unique, repeated: {', '.join(dupes)}")
        if self.name.lower() in RESERVED_NAMES or self.name.lower().endswith("-local") or self.name.lower().startswith("compare-"):
            raise ValueError(f"name {self.name!r} is a name the reports folder uses (index.html, README.md, bench, data, "
                             "export, compare-*, *-local): choose another")
        data_ids = [d.id for d in self.datasets]
        dupes = sorted({i for i in data_ids if data_ids.count(i) > 1})
        if dupes:  # jobs, records and page rows are keyed by the id: two entries would collapse into one
            raise ValueError(f"dataset ids must be unique, repeated: {', '.join(dupes)} (give each entry its own id:)")
        for m in self.models:
            if m.depends_on is not None and m.teacher is not None:
                raise ValueError(f"model {m.id!r}: a teacher comes from depends_on or from teacher, not both")
            if m.depends_on is not None and m.depends_on not in ids:
                raise ValueError(f"model {m.id!r} depends_on {m.depends_on!r}, which is not a model id here")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be unique")
        return self


# Named recipes: the facts of REFERENCE.md as spec presets. A model entry or the spec may
# override any field; the resolved values are what the job (and its hash) records.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "resface-paper": {  # overview article + EfficientFace code
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 64,
        "epochs": 100, "schedule": "step", "step_size": 30, "gamma": 0.1, "input_size": 224,
        "loss": "ldl", "augment": {"hflip": True, "rotation": 0.0, "resize_ratio": 256 / 224},
    },
    "emonext-paper": {  # EmoNeXt paper (MMSP 2023)
        "optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01, "batch_size": 64, "epochs": 300,
        "schedule": "cosine", "label_smoothing": 0.2, "amp": "auto", "normalize": "none",
        "ema": {"decay": 0.99, "every": 1, "warmup_steps": 0}, "early_stopping_patience": 12,
        # the paper names no augmentation: the rotation, resize-and-crop and horizontal flip are the official
        # code's (which also flips vertically: recipe emonext-code); augment.hflip: false for the paper's text alone
        "input_size": 224, "augment": {"hflip": True, "rotation": 20.0, "resize_ratio": EMONEXT_RESIZE_RATIO},
    },
    "emonext-code": {  # yelboudouri/EmoNeXt train.py as run by its README
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "batch_size": 64, "epochs": 300,
        "schedule": "cosine", "warmup_steps": 128, "restart_steps": 1024, "label_smoothing": 0.2,
        "amp": "fp16", "grad_scaler": True, "normalize": "none", "clip_grad_norm": 1.0, "clip_before_unscale": True,
        "drop_last": False,
        # ema_pytorch as of the code's release (2023: 0.3.x); rule ema_pytorch_0.6.4 is today's pip install
        "ema": {"decay": 0.99, "every": 16, "warmup_steps": 100, "rule": "ema_pytorch"}, "early_stopping_patience": 12,
        "input_size": 224,
        "augment": {"hflip": True, "vflip": True, "rotation": 20.0, "resize_ratio": EMONEXT_RESIZE_RATIO},
    },
    "mini-xception-code": {  # oarriaga/face_classification src/train_emotion_classifier.py (Keras 2.0.5)
        "optimizer": "adam", "lr": 1e-3, "betas": (0.9, 0.999), "adam_eps": 1e-8, "weight_decay": 0.0, "l2": 0.01,
        "batch_size": 32, "drop_last": False,  # fit_generator: ceil(28,709 / 32) = 898 steps, the last of 5 images
        "epochs": 10000, "loss": "ce", "normalize": "half", "in_chans": 1, "input_size": 64,
        "schedule": "plateau", "gamma": 0.1, "plateau_patience": 12, "plateau_min_delta": 1e-4, "min_lr": 0.0,
        "monitor": "val_loss",
        # EarlyStopping('val_loss', patience=50): Keras 2.0.5 checks its counter before raising it, so training
        # stops after 51 epochs without a lower val_loss
        "early_stopping_patience": 51,
        "augment": {"hflip": True, "rotation": 10.0, "translate": 0.1, "scale": (0.9, 1.1), "geometry": "keras",
                    "interpolation": "nearest", "fill": "border"},
    },
    "deep-emotion-code": {  # omarsayed7/Deep-Emotion main.py defaults (no paper recipe is published as code)
        "optimizer": "adam", "lr": 0.005, "weight_decay": 0.0, "batch_size": 128, "epochs": 100,
        "schedule": "constant", "loss": "ce", "normalize": "half", "in_chans": 1, "input_size": 48,
        "drop_last": False,  # DataLoader(shuffle=True) keeps the last partial batch
        "augment": {"hflip": False, "rotation": 0.0},  # ToTensor + Normalize only
    },
}
# What a code recipe still does differently from the official code, listed on every page whose runs use it
RECIPE_DIFFERENCES: dict[str, list[str]] = {
    "emonext-code": [
        "pixels: lossless by default; the official download script saves FER-2013 as Pillow JPEG quality 75 "
        "(dataset option jpeg_quality: 75; measured on 2,000 FER-2013 images: 89 % of pixels change, mean 3.9 "
        "grey levels, at most 47)",
        "augmentation order: by default one bilinear warp at the source's 48 px, then one upsample; the official "
        "chain resizes to 236 first, rotates there with nearest sampling and crops 224 (augment.pixel_path: "
        "torchvision with augment.interpolation: nearest; within a grey level of torchvision's pixels)",
        "precision: fp16 autocast and loss scaling only on CUDA unless train.cpu_amp (the CPU otherwise computes in "
        "fp32 with the scaler's arithmetic, never overflowing)",
        "random streams: data order, augmentation and validation crops come from ferbench's seeded per-epoch "
        "generators, not torch's global generator seeded 2001",
    ],
    "mini-xception-code": [
        "Adam's epsilon: Keras 2.0.5 adds it to sqrt(v) before the bias correction, PyTorch after it (the "
        "same update once 1 - beta2^t is near 1, a few thousand steps in)",
        "BatchNorm's running variance: Keras 2.0.5 keeps the biased batch variance, PyTorch the unbiased (a "
        "factor 1 + 1/(pixels in the batch), at most 0.2 % at the 4x4 maps of the last module)",
        "random streams: the shuffling and ImageDataGenerator's draws come from ferbench's seeded per-epoch "
        "generators, not numpy's global one; the released weights were also pre-trained on KDEF first",
    ],
}
# Model options a recipe implies, by architecture prefix: set on every model entry of that family that
# runs the recipe and does not choose the option itself (the recipe's facts live here, not in one spec).
RECIPE_MODEL_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    # yelboudouri/EmoNeXt models.py get_model(): a fresh nn.Linear head (PyTorch's default init) goes on
    # after the backbone is built or its weights load
    "emonext-code": {"emonext-": {"head_init": "torch_default"}},
}
EVAL_PRESETS: dict[str, dict[str, Any]] = {
    "resface-paper": {"test_each_epoch": True},  # EfficientFace reports the best test epoch
    "emonext-paper": {"tta": "tencrop", "test_each_epoch": True},
    "emonext-code": {"tta": "tencrop", "val_mode": "random_crop", "val_uses_ema": False, "test_each_epoch": True},
    "deep-emotion-code": {"test_each_epoch": True},  # its loop prints every epoch; a test-selected number is visible
}
# Job fields that only add information to a record: left out of the job id and the condition hash, so
# records made before they existed are still found and seeds made with and without them still pool.
NOT_IDENTITY = ("data_root", "profile", "log")  # where a job ran from and what it reported to, not what it computed
# Evaluation settings that never touch training (validation crops, EMA choice and the val split do: they select
# the best epoch and stop early): a job differing from a finished one only in these reuses its training.
EVAL_ONLY = ("tta", "tta_resize_ratio", "dropout_at_eval")
IDENTITY_EXEMPT: tuple[tuple[str, ...], ...] = (("eval", "test_each_epoch"), ("train", "cuda_graphs"))
# Fields added after JOB_FORMAT 1 that change training: part of the identity only when not at the value
# every earlier job ran with, so the ids of jobs made before they existed do not change.
IDENTITY_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("train", "ema", "rule"): "flat", ("train", "ema", "power"): 2 / 3, ("train", "grad_scaler"): None,
    ("train", "drop_last"): True, ("eval", "val_uses_ema"): None, ("dataset", "folds"): None,
    ("train", "sampler"): "uniform", ("dataset", "cross"): [],
    ("train", "betas"): [0.9, 0.999], ("train", "adam_eps"): 1e-8, ("eval", "dropout_at_eval"): False,
    ("train", "plateau_patience"): 10, ("train", "plateau_min_delta"): 1e-4, ("train", "monitor"): "val_acc",
    ("train", "l2"): 0.0, ("train", "augment", "geometry"): "ferbench", ("train", "augment", "interpolation"): "bilinear",
    ("train", "augment", "fill"): "zeros", ("train", "cpu_amp"): False, ("train", "norm_mean"): None,
    ("train", "norm_std"): None, ("train", "augment", "pixel_path"): "fast",
}


def _drop_exempt(job: dict[str, Any]) -> None:
    """Remove, in place, the fields the job id and condition hash leave out (see above)."""
    for path in (*IDENTITY_EXEMPT, *IDENTITY_DEFAULTS):
        node = job
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            if path in IDENTITY_EXEMPT or node[path[-1]] == IDENTITY_DEFAULTS[path]:
                del node[path[-1]]


class Job(_Strict):
    """One model, one dataset, one seed, one fully resolved recipe."""

    spec: str
    model: ModelEntry
    dataset: DatasetEntry
    seed: int
    recipe: str
    train: TrainConfig
    eval: EvalConfig
    depends_on: str | None = None  # job id
    data_root: str | None = None  # where the data was found; not part of the identity
    profile: str | None = None  # the profile the spec was run with; recorded, not part of the identity
    log: list[str] = []  # progress sinks (launcher.log); not part of the identity

    @property
    def fold(self) -> int | None:
        """The cross-validation fold this job tests on (its dataset's options.fold), if any."""
        fold = self.dataset.options.get("fold")
        return fold if isinstance(fold, int) else None

    @property
    def split_label(self) -> str:
        """The dataset id, with the fold when the job has one: ckplus/f3."""
        return self.dataset.id if self.fold is None else f"{self.dataset.id}/f{self.fold}"

    def condition_identity(self) -> dict[str, Any]:
        """The identity without the seed and the cross-validation fold: what the seeds (and folds) of
        one experiment share."""
        d = self.identity()
        d.pop("seed")
        d["dataset"].get("options", {}).pop("fold", None)  # the folds of a cross-validation pool like seeds
        return d

    def condition(self) -> str:
        """Digest of `condition_identity`: equal for the seeds of one experiment, different for two
        experiments with one model id."""
        return _digest(self.condition_identity())

    def identity(self) -> dict[str, Any]:
        """The content the job id hashes: everything that changes the result."""
        d = self.model_dump(mode="json", exclude=set(NOT_IDENTITY))
        d["dataset"].pop("path", None)
        _drop_exempt(d)
        d["format"] = JOB_FORMAT
        return d

    @property
    def id(self) -> str:
        return f"{self.model.id}__{self.dataset.id}__s{self.seed}__{_digest(self.identity())}"

    def training_identity(self) -> dict[str, Any]:
        """The part of the identity that decides the trained weights: all but the evaluation-only
        settings (`EVAL_ONLY`, and whether the test split is evaluated). Two jobs that differ only in
        those share one training: the second evaluates the first's stored models (`runner.find_trained`)."""
        d = self.identity()
        for key in EVAL_ONLY:
            d["eval"].pop(key, None)
        d["dataset"].pop("cross", None)  # what else the models are tested on
        d["eval"]["splits"] = [s for s in d["eval"]["splits"] if s == "val"]  # validation selects and stops early
        return d

    @property
    def training_id(self) -> str:
        return _digest(self.training_identity())


def _digest(identity: dict[str, Any]) -> str:
    """The one job hash (job id, condition, training id): 10 hex digits of the canonical JSON."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]


# ---------------------------------------------------------------- loading and overrides


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        if not isinstance(p, int):  # a key as the user wrote it, unless it would break the line or hide itself
            p = str(p) if str(p).isprintable() and str(p).strip() == str(p) and str(p) else shown(str(p))
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "(top level)"


def _validation_line(where: str, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    if e["type"] == "extra_forbidden":
        return f"{where}: {_loc(loc)}: unknown key"
    if e["type"] == "missing":
        return f"{where}: {_loc(loc)}: required key missing"
    msg = e["msg"].removeprefix("Value error, ")
    inp = e.get("input")
    got = "" if isinstance(inp, (dict, list)) or inp is None else f" (got {shown(inp)})"
    return f"{where}: {_loc(loc)}: {msg}{got}"


def load_spec(
    path: str | Path, profile: str | None = None, overrides: list[tuple[str, Any]] | None = None
) -> Spec:
    """Read, apply profile then `--set` overrides, validate. Raises FerbenchError with one line."""
    path = Path(path)
    raw = read_yaml(path)
    return spec_from_dict(raw, str(path), profile, overrides)


def spec_from_dict(
    raw: dict[str, Any], where: str, profile: str | None = None, overrides: list[tuple[str, Any]] | None = None
) -> Spec:
    raw = copy.deepcopy(raw)
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise FerbenchError(f"{where}: profiles: expected a mapping of profile name -> overrides")
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise FerbenchError(f"{where}: no profile {profile!r} (this spec has: {known})")
        prof = profiles[profile]
        if not isinstance(prof, dict):
            raise FerbenchError(f"{where}: profiles.{profile}: expected a mapping of key: value")
        for k, v in prof.items():
            set_dotted(raw, str(k), v, f"{where}: profiles.{profile}")
    for k, v in overrides or []:
        set_dotted(raw, k, v, "--set")
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        raise FerbenchError(_validation_line(where, e)) from None
    _check_recipes(spec, where)
    _check_batch_memory(spec, where)
    return spec


def _check_recipes(spec: Spec, where: str) -> None:
    names = [("recipe", spec.recipe)] + [(f"models[{i}].recipe", m.recipe) for i, m in enumerate(spec.models)]
    for loc, r in names:
        if r is not None and r not in RECIPES:
            raise FerbenchError(f"{where}: {loc}: unknown recipe {r!r} (expected one of {', '.join(RECIPES)})")
    for i, m in enumerate(spec.models):
        try:
            resolve_train(spec, m)
        except ValidationError as e:
            key = next(iter(e.errors()[0]["loc"]), None)  # name the block the user wrote the key in
            if key is None:  # a rule across fields (min_lr above lr): the most specific block that sets any
                block = (f"models[{i}] ({m.id}) train" if m.train else "train" if spec.train
                         else f"recipe {m.recipe or spec.recipe!r} (for models[{i}] ({m.id}))")
            else:
                block = (f"models[{i}] ({m.id}) train" if key in m.train else "train" if key in spec.train
                         else f"recipe {m.recipe or spec.recipe!r} (for models[{i}] ({m.id}))")
            raise FerbenchError(_validation_line(f"{where}: {block}", e)) from None


MAX_BATCH_INPUT_GB = 8  # one batch of network inputs (float32) may take this much; activations take several times more
TTA_VIEWS = {"none": 1, "flip": 2, "tencrop": 10}  # images the network sees per test image, per TTAMode


def _check_batch_memory(spec: Spec, where: str) -> None:
    """Refuse, before anything is allocated, a model whose one training or evaluation batch of inputs
    alone would exceed MAX_BATCH_INPUT_GB: batch x channels x 4 bytes x the larger of its views (TTA
    views x size^2) and the image resized before they are cropped ((size x resize ratio)^2)."""
    for i, m in enumerate(spec.models):
        t, e = resolve_train(spec, m), resolve_eval(spec, m)
        for what, batch, views, ratio in (("train.batch_size", t.batch_size, 1, t.augment.resize_ratio),
                                          ("train.eval_batch_size", t.eval_batch_size, TTA_VIEWS[e.tta],
                                           e.tta_resize_ratio)):
            pixels = max(views * t.input_size ** 2, round(t.input_size * ratio) ** 2)
            gb = batch * t.in_chans * pixels * 4 / 2**30
            if gb > MAX_BATCH_INPUT_GB:
                resized = f", resized x{ratio:g} before cropping" if round(t.input_size * ratio) ** 2 > views * t.input_size ** 2 else ""
                raise FerbenchError(f"{where}: models[{i}] ({m.id}): {what} {batch} at {t.input_size}x{t.input_size}"
                                    f"{f' with {views} TTA views' if views > 1 else ''}{resized} is {gb:.1f} GiB of input per "
                                    f"batch, above {MAX_BATCH_INPUT_GB} GiB: lower {what}")


# FER+'s official training per label protocol (microsoft/FERPlus src/train.py `cost_func` and
# `_process_target`), used where neither the recipe, the spec nor the model entry chooses a loss.
PROTOCOL_TRAINING: dict[str, dict[str, Any]] = {
    "majority": {"loss": "ce"},
    "crossentropy": {"loss": "ldl", "ldl_source": "votes", "ldl_reduction": "sample"},
    "probability": {"loss": "sampled"},
    "multi_target": {"loss": "multi_target"},
}


def protocol_training(spec: Spec, model: ModelEntry, dataset: DatasetEntry | None) -> dict[str, Any]:
    """The FER+ protocol's official loss for this model, unless a loss is chosen anywhere above it."""
    recipe = model.recipe or spec.recipe
    chosen = any("loss" in block for block in (RECIPES[recipe], spec.train, model.train))
    if dataset is None or dataset.name != "ferplus" or chosen:
        return {}
    return PROTOCOL_TRAINING.get(str(dataset.options.get("protocol", "majority")), {})


def resolve_train(spec: Spec, model: ModelEntry, dataset: DatasetEntry | None = None) -> TrainConfig:
    recipe = model.recipe or spec.recipe
    merged = _merge(_merge(_merge(RECIPES[recipe], protocol_training(spec, model, dataset)), spec.train), model.train)
    return TrainConfig.model_validate(merged)


def resolve_eval(spec: Spec, model: ModelEntry) -> EvalConfig:
    recipe = model.recipe or spec.recipe
    explicit = spec.eval.model_dump(exclude_unset=True)
    return EvalConfig.model_validate(_merge(EVAL_PRESETS.get(recipe, {}), explicit))


FoldCount = Callable[[DatasetEntry], "int | None"]
MAX_JOBS = 10_000  # a paper table is tens of jobs; a sweep hundreds


def expand(spec: Spec, profile: str | None = None, fold_count: FoldCount | None = None) -> list[Job]:
    """Every (model x dataset [x fold] x seed) job, dependencies first. `fold_count` says how many
    cross-validation folds a dataset entry has (None: none); the data layer knows (`data.fold_count`,
    which `api.load` passes), so the spec never imports it."""
    jobs: list[Job] = []
    by_key: dict[tuple[str, str, Any, int], Job] = {}
    order = _dependency_order(spec.models)
    entries = [(d, f) for d in spec.datasets for f in fold_entries(d, fold_count)]
    count = len(order) * len(entries) * len(spec.seeds)
    if count > MAX_JOBS:  # counted before any Job is made: a product of a few hundred values can be millions
        raise FerbenchError(f"spec {spec.name}: {count:,} jobs ({len(order)} models x {len(entries)} datasets/folds x "
                            f"{len(spec.seeds)} seeds): more than the {MAX_JOBS:,} one spec may hold; split it into several")
    for m in order:
        m = with_recipe_options(m, m.recipe or spec.recipe)
        for d, f in entries:
            for seed in spec.seeds:
                fold = f.options.get("fold")
                dep = by_key[(m.depends_on, d.id, fold, seed)].id if m.depends_on else None
                job = Job(
                    spec=spec.name, model=m, dataset=f, seed=seed, recipe=m.recipe or spec.recipe,
                    train=resolve_train(spec, m, d), eval=resolve_eval(spec, m), depends_on=dep, profile=profile,
                    log=list(spec.launcher.log),
                )
                by_key[(m.id, d.id, fold, seed)] = job
                jobs.append(job)
    return jobs


def with_recipe_options(m: ModelEntry, recipe: str) -> ModelEntry:
    """The model entry with the options its recipe implies for its architecture (RECIPE_MODEL_OPTIONS)
    added where the entry does not set them."""
    implied = {k: v for prefix, opts in RECIPE_MODEL_OPTIONS.get(recipe, {}).items() if m.arch.startswith(prefix)
               for k, v in opts.items() if k not in m.options}
    return m.model_copy(update={"options": {**m.options, **implied}}) if implied else m


def fold_entries(d: DatasetEntry, fold_count: FoldCount | None = None) -> list[DatasetEntry]:
    """A dataset entry as its jobs see it: itself, or with `folds:` one entry per fold (options.fold set),
    so a fold's job is the job of a spec naming that fold in its options."""
    if d.folds is None:
        return [d]
    if fold_count is None:
        raise FerbenchError(f"datasets.{d.id}.folds: expanding folds needs the dataset's fold count (pass "
                            "fold_count=ferbench.data.fold_count to expand)")
    k = fold_count(d)
    if k is None:
        raise FerbenchError(f"datasets.{d.id}.folds: dataset {d.name!r} has no cross-validation folds (folder and "
                            "ckplus48 have: options.folds sets k)")
    chosen = list(range(k)) if d.folds == "all" else list(dict.fromkeys(d.folds))
    bad = [i for i in chosen if i >= k]
    if bad:
        raise FerbenchError(f"datasets.{d.id}.folds: fold {bad[0]} out of range for k = {k} (options.folds)")
    return [d.model_copy(update={"options": {**d.options, "fold": i}, "folds": None}) for i in chosen]


def _dependency_order(models: list[ModelEntry]) -> list[ModelEntry]:
    by_id = {m.id: m for m in models}
    done: list[ModelEntry] = []
    seen: set[str] = set()
    visiting: set[str] = set()

    def visit(m: ModelEntry) -> None:
        if m.id in seen:
            return
        if m.id in visiting:
            raise FerbenchError(f"models: dependency cycle through {m.id!r}")
        visiting.add(m.id)
        if m.depends_on:
            visit(by_id[m.depends_on])
        visiting.discard(m.id)
        seen.add(m.id)
        done.append(m)

    for m in models:
        visit(m)
    return done
