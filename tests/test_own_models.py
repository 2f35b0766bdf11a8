"""A researcher's own model, named `package.module:function`, run through a spec like a built-in."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import yaml

from ferbench import api
from ferbench.errors import FerbenchError

MODULE = '''
"""A tiny CNN of my own."""
import torch.nn as nn


def build(num_classes, input_size, in_chans, width: int = 8):
    """tiny CNN: conv -> pool -> linear"""
    return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))


def wrong(num_classes, size):
    return None


def fixed_size(num_classes, input_size, in_chans):
    """flattens a fixed 64x64 map: any other input size cannot run"""
    return nn.Sequential(nn.Conv2d(in_chans, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 64 * 64, num_classes))


class WithFeatures(nn.Module):
    def __init__(self, num_classes, in_chans):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        f = self.body(x)
        return self.fc(f), f


def with_features(num_classes, input_size, in_chans):
    return WithFeatures(num_classes, in_chans)


def eight_classes(num_classes, input_size, in_chans):
    return build(8, input_size, in_chans)
'''


@pytest.fixture
def own_package(tmp_path, monkeypatch):
    pkg = tmp_path / "lab" / "mylab"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tiny.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "lab"))
    yield tmp_path
    sys.modules.pop("mylab.tiny", None)
    sys.modules.pop("mylab", None)
    forget_registered("mylab.")


def forget_registered(prefix: str) -> None:
    """Drop external variants registered in this process (each CLI call is a new process)."""
    from ferbench.models import _REGISTRY

    for name in [n for n in _REGISTRY if n.startswith(prefix)]:
        del _REGISTRY[name]


def test_an_external_model_runs_reports_and_compares_like_a_built_in(own_package):
    tmp_path = own_package
    spec = {"name": "own", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 16}}],
            "models": [{"id": "mine", "arch": "mylab.tiny:build", "options": {"width": 4}}, {"id": "r", "arch": "resnet18"}],
            "train": {"epochs": 1, "batch_size": 16, "input_size": 24}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    outcomes = api.run_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", estimate=False)
    assert [o.status for o in outcomes] == ["complete", "complete"]
    metrics = json.loads((tmp_path / "runs" / "own" / outcomes[0].job.id / "metrics.json").read_text())
    assert metrics["cost"]["params"] == 3 * 4 * 9 + 4 + 4 * 7 + 7  # its own counts, measured
    api.report_spec("own", tmp_path / "runs", tmp_path / "reports")
    assert "mylab.tiny:build" in (tmp_path / "reports" / "own" / "report.md").read_text()
    result, _ = api.compare("mine", "r", tmp_path / "runs")
    assert result["datasets"]["synthfer"]


@pytest.mark.parametrize("arch, needle", [
    ("nolab.tiny:build", "cannot import module 'nolab.tiny'"),
    ("mylab.tiny:absent", "module 'mylab.tiny' has no callable 'absent'"),
    ("mylab.tiny:wrong", "wrong() must take num_classes, input_size, in_chans"),
])
def test_a_bad_external_model_is_one_line(own_package, arch, needle):
    from ferbench.models import get_variant

    with pytest.raises(FerbenchError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        get_variant(arch)


def test_an_external_models_options_are_checked_like_a_built_ins(own_package):
    from ferbench.models import check_options

    with pytest.raises(FerbenchError, match="unknown option 'depth'"):
        check_options("mylab.tiny:build", {"depth": 3})
    with pytest.raises(FerbenchError, match="option width='wide'"):
        check_options("mylab.tiny:build", {"width": "wide"})


def test_a_model_that_cannot_serve_its_job_fails_that_job_and_the_plan_says_why(own_package):
    """Wrong input size, (logits, features) output, a head wider than the dataset's classes: the plan
    names each (no traceback, the probe does not stop the spec) and the run fails only those jobs."""
    tmp_path = own_package
    spec = {"name": "bad", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 16}}],
            "models": [{"id": "fixed", "arch": "mylab.tiny:fixed_size"}, {"id": "tuple", "arch": "mylab.tiny:with_features"},
                       {"id": "eight", "arch": "mylab.tiny:eight_classes"}, {"id": "fine", "arch": "mylab.tiny:build"}],
            "train": {"epochs": 1, "batch_size": 16, "input_size": 24}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    plan = api.plan_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", estimate=True)
    why = {p.job.model.id: p.problem for p in plan.jobs}
    assert "cannot take 3x24x24 input" in why["fixed"] and "returns a tuple" in why["tuple"]
    assert "(2, 8)" in why["eight"] and "7 classes" in why["eight"] and why["fine"] is None
    assert len(plan.problems()) == 3 and all("\n" not in line for line in plan.problems())
    assert plan.estimate_s is not None and plan.estimate_s > 0  # the jobs that can run are still estimated
    outcomes = {o.job.model.id: o for o in api.run_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs")}
    assert {k: o.status for k, o in outcomes.items()} == {"fixed": "failed", "tuple": "failed", "eight": "failed", "fine": "complete"}
    assert outcomes["eight"].reason == why["eight"]
    manifest = json.loads(next((tmp_path / "runs" / "bad").glob("eight__*/manifest.json")).read_text())
    assert manifest["status"] == "failed" and manifest["failure"] == why["eight"]


def test_the_logits_check_leaves_the_model_and_every_random_stream_as_they_were():
    import torch

    from ferbench.models import check_logits, create_model

    torch.manual_seed(0)
    model = create_model("resnet18", 7, 32, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    model.train()
    check_logits(model, 7, 32, 3)
    assert model.training and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm running stats too


def test_an_edited_model_never_reuses_its_old_results(own_package):
    """The manifest records the sha256 of the module behind `arch: module:function`; after an edit,
    plan shows the record as 'model changed' and run refuses it in one line instead of skipping."""
    import importlib

    from ferbench.records import discover

    tmp_path = own_package
    spec = {"name": "edit", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 16}}],
            "models": [{"id": "mine", "arch": "mylab.tiny:build"}, {"id": "r", "arch": "resnet18"}],
            "train": {"epochs": 1, "batch_size": 16, "input_size": 24}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert [o.status for o in api.run_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", estimate=False)] == ["complete"] * 2
    recs = {r.job.model.id: r for r in discover(tmp_path / "runs")}
    assert len(recs["mine"].manifest["model_source"]["sha256"]) == 64 and recs["r"].manifest["model_source"]["builtin"].startswith("ferbench ")
    assert {p.status for p in api.plan_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", estimate=False).jobs} == {"done"}

    source = tmp_path / "lab" / "mylab" / "tiny.py"
    source.write_text(source.read_text().replace("nn.ReLU()", "nn.GELU()"))
    importlib.reload(importlib.import_module("mylab.tiny"))
    forget_registered("mylab.")  # as a new `ferbench` process would see it
    plan = {p.job.model.id: p for p in api.plan_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", estimate=False).jobs}
    assert plan["mine"].status == "model changed" and plan["r"].status == "done"
    assert "another version of model 'mine'" in plan["mine"].conflict
    with pytest.raises(FerbenchError, match="another version of model 'mine'"):
        api.run_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", estimate=False)


def test_any_timm_architecture_by_name_runs_like_a_built_in(tmp_path):
    """`arch: timm:<name>`: classes and channels from the job, the input size as img_size where the
    architecture has one (a ViT at 32 px), options checked, an unknown name refused in one line."""
    import torch

    from ferbench.models import create_model
    from ferbench.records import discover

    vit = create_model("timm:vit_tiny_patch16_224", 7, 32, 1)
    assert vit(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(FerbenchError, match="timm .* has no architecture 'efficientnet_b99'"):
        create_model("timm:efficientnet_b99", 7, 48, 3)
    with pytest.raises(FerbenchError, match="unknown option 'nope' .accepted: drop_rate, drop_path_rate"):
        create_model("timm:mobilenetv3_small_050", 7, 32, 3, nope=1)
    spec = {"name": "tm", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 16}}],
            "models": [{"id": "mnv3", "arch": "timm:mobilenetv3_small_050", "options": {"drop_rate": 0.1}}],
            "train": {"epochs": 1, "batch_size": 16, "input_size": 32}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert [o.status for o in api.run_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", estimate=False)] == ["complete"]
    (rec,) = discover(tmp_path / "runs")
    assert rec.metrics()["cost"]["params"] == sum(p.numel() for p in create_model("timm:mobilenetv3_small_050", 7, 32, 3).parameters())


def test_a_module_beside_the_spec_or_in_the_current_folder_is_found_without_pythonpath(tmp_path, monkeypatch):
    from ferbench import models
    from ferbench.models import get_variant

    monkeypatch.setattr(sys, "path", list(sys.path))  # whatever the search appends is undone
    monkeypatch.setattr(models, "_SPEC_FOLDERS", [])
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "besidespec.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "incwd.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.chdir(tmp_path / "here")
    try:
        spec = {"name": "own", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 16}}],
                "models": [{"id": "a", "arch": "besidespec:build"}, {"id": "b", "arch": "incwd:build"}],
                "train": {"epochs": 1, "batch_size": 16, "input_size": 24}}
        (tmp_path / "project" / "s.yaml").write_text(yaml.safe_dump(spec))
        _, jobs = api.load(tmp_path / "project" / "s.yaml")
        assert [get_variant(j.model.arch).family for j in jobs] == ["external", "external"]
        assert sys.modules["besidespec"].__file__ == str(tmp_path / "project" / "besidespec.py")
        with pytest.raises(FerbenchError, match=r"cannot import module 'nowhere': not installed and not in .*here.*project"):
            get_variant("nowhere:build")
    finally:
        for name in ("besidespec", "incwd"):
            sys.modules.pop(name, None)
        forget_registered("besidespec")
        forget_registered("incwd")
