"""Property-based fuzzing of `ferbench run` itself (#36 item 6): every training and evaluation field
set to values the spec accepts but nobody tried together (an lr of 1e30, a batch of 1, input 8 px,
zoom 10, eval batch 1 with TenCrop, every loss and schedule), trained end to end on a few synthetic
images. Whatever the combination: exit 0 or 1 (a job that cannot finish fails with its reason in
its record, the rest of the spec runs), or 2 with one line for a refused spec; no traceback; each
record complete and verifiable or failed with one line; nothing written outside the runs folder.
Seeded; FERBENCH_FUZZ_EXAMPLES raises the count for a local soak."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis", reason="the fuzzer needs hypothesis (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from ferbench.cli import app  # noqa: E402
from ferbench.records import damaged  # noqa: E402

EXAMPLES = int(os.environ.get("FERBENCH_FUZZ_EXAMPLES", "0")) or 60
tiny = st.sampled_from  # readable below: each field's accepted extremes and the values between
TRAIN = {
    "epochs": tiny([0, 1, 2]), "batch_size": st.integers(1, 40), "eval_batch_size": st.integers(1, 40),
    "input_size": st.sampled_from([8, 9, 15, 16, 31, 48]), "in_chans": tiny([1, 3]),
    "normalize": tiny(["none", "half", "imagenet"]), "optimizer": tiny(["sgd", "adam", "adamw"]),
    "lr": tiny([1e-300, 1e-6, 0.1, 10.0, 1e30]), "betas": tiny([[0.0, 0.0], [0.9, 0.999], [0.999999, 0.999999]]),
    "adam_eps": tiny([1e-300, 1e-8, 1e10]), "momentum": tiny([0.0, 0.9, 0.999999]), "nesterov": st.booleans(),
    "weight_decay": tiny([0.0, 5e-4, 1e10]), "schedule": tiny(["constant", "step", "cosine", "plateau"]),
    "plateau_patience": tiny([1, 3]), "monitor": tiny(["val_acc", "val_loss"]), "l2": tiny([0.0, 0.01, 1e6]),
    "warmup_steps": tiny([0, 1, 1000]), "restart_steps": tiny([None, 1, 3]), "step_size": tiny([1, 30]),
    "gamma": tiny([1e-300, 0.1, 1.0]), "loss": tiny(["ce", "ldl", "sampled", "multi_target"]),
    "ldl_reduction": tiny(["paper", "sample"]), "ldl_hard_weight": tiny([0.0, 1.0, 1e6]),
    "label_smoothing": tiny([0.0, 0.1, 0.999]), "clip_grad_norm": tiny([None, 1e-30, 1.0]),
    "amp": tiny(["auto", "off", "bf16"]), "sampler": tiny(["uniform", "balanced"]), "drop_last": st.booleans(),
    "channels_last": st.booleans(), "early_stopping_patience": tiny([None, 1]),
    "ema": tiny([None, {"decay": 1e-9}, {"decay": 0.999999, "every": 3, "warmup_steps": 2, "rule": "ema_pytorch"}]),
    "augment": st.fixed_dictionaries({}, optional={
        "hflip": st.booleans(), "vflip": st.booleans(), "rotation": tiny([0.0, 10.0, 180.0]),
        "resize_ratio": tiny([1.0, 1.07, 4.0]), "scale": tiny([[1.0, 1.0], [1e-3, 1e-3], [10.0, 10.0], [0.5, 2.0]]),
        "translate": tiny([0.0, 0.5]), "geometry": tiny(["ferbench", "keras"]),
        "interpolation": tiny(["bilinear", "nearest"]), "fill": tiny(["zeros", "border"]),
        "pixel_path": tiny(["fast", "torchvision"])}),
}
EVAL = {"splits": tiny([["test"], ["val", "test"]]), "tta": tiny(["none", "flip", "tencrop"]),
        "tta_resize_ratio": tiny([1.0, 1.14, 4.0]), "val_mode": tiny(["center", "random_crop"]),
        "use_ema": st.booleans(), "dropout_at_eval": st.booleans(), "test_each_epoch": st.booleans()}
WEIGHTS = tiny(["~nosuchuser/w.pt", "/dev/zero", "/proc/self/mem", "nosuch.pt", "fz.yaml", "timm:nosuch", "hf:no/such",
               "pypi:nosuch==1/x.pt", "http://example.com/w.pt"])  # offline: every one is refused or fails its job
ARCHS = ["deep-emotion", "mini-xception", "resnet18", "convnext-atto", "emonext-atto", "resface-r18"]


def option_values(arch: str) -> dict:
    """A strategy per option of `arch`, read from its constructor's annotations: every literal, both
    booleans, and for numbers the accepted bounds and a value between (1e6 where there is no upper)."""
    import typing

    from ferbench.models import variants

    v = variants()[arch]
    if v.signature is None:
        return {"drop_path_rate": tiny([0.0, 0.5, 0.999])} if "drop_path_rate" in v.options else {}
    hints = typing.get_type_hints(v.signature.__init__, include_extras=True)
    out = {}
    for name in v.options:
        hint = hints[name]
        if hint is bool:
            out[name] = st.booleans()
        elif typing.get_origin(hint) is typing.Literal:
            out[name] = tiny(list(typing.get_args(hint)))
        else:
            base, *meta = typing.get_args(hint) or (hint,)
            bounds = {k: getattr(m, k) for f in meta for m in getattr(f, "metadata", []) for k in ("ge", "gt", "lt", "le")
                      if hasattr(m, k)}
            lo = bounds.get("ge", bounds.get("gt", 0))
            hi = bounds.get("le", bounds.get("lt", 1e6))
            picks = [lo, (lo + hi) / 2, hi * 0.999 if "lt" in bounds else hi]
            out[name] = tiny([int(x) if base is int else float(x) for x in picks if "gt" not in bounds or x > lo])
    return out


@st.composite
def specs(draw) -> dict:
    arch = draw(st.sampled_from(ARCHS))
    train = draw(st.fixed_dictionaries({}, optional=TRAIN))
    train.setdefault("epochs", 1)
    train.setdefault("input_size", 16)
    train.setdefault("batch_size", 8)
    return {"name": "fz", "datasets": [{"name": "synthfer", "options": {"n_train": 24, "n_val": 8, "n_test": 8}}],
            "models": [{"id": "m", "arch": arch, "options": draw(st.fixed_dictionaries({}, optional=option_values(arch))),
                        **draw(st.fixed_dictionaries({}, optional={"weights": WEIGHTS}))}],
            "seeds": [draw(st.integers(0, 2**31))], "train": train,
            "eval": draw(st.fixed_dictionaries({}, optional=EVAL))}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(spec=specs())
def test_any_accepted_training_config_ends_in_a_record_or_one_line(tmp_path_factory, spec):
    work = tmp_path_factory.mktemp("fzrun")
    try:
        _run_and_check(work, spec)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a soak of thousands keeps /tmp small


def _run_and_check(work: Path, spec: dict) -> None:
    (work / "fz.yaml").write_text(yaml.safe_dump(spec))
    before = _files(work)
    old = os.getcwd()
    os.chdir(work)
    try:
        res = CliRunner().invoke(app, ["run", "fz.yaml", "--runs-dir", "runs"], env={"FERBENCH_OFFLINE": "1"})
    finally:
        os.chdir(old)
    out = res.stdout + res.stderr
    assert res.exit_code in (0, 1, 2), (spec, out)
    assert res.exception is None or isinstance(res.exception, SystemExit), (spec, repr(res.exception), out)
    assert "Traceback" not in out, (spec, out)
    assert {f for f in _files(work) - before if not f.startswith("runs")} == set(), spec
    if res.exit_code == 2:
        assert len(res.stderr.strip().splitlines()) == 1 and not (work / "runs").exists(), (spec, res.stderr)
        return
    [record] = list((work / "runs" / "fz").glob("m__*"))
    manifest = json.loads((record / "manifest.json").read_text())
    if manifest["status"] == "complete":
        assert res.exit_code == 0 and damaged(record) is None, (spec, damaged(record))
    else:
        assert res.exit_code == 1 and manifest["status"] == "failed", (spec, manifest["status"])
        assert manifest["failure"] and "\n" not in manifest["failure"], (spec, manifest["failure"])
        assert not re.match(r"[A-Z]\w*(Error|Exception): ", manifest["failure"]), (spec, manifest["failure"])  # a crash, not a reason
