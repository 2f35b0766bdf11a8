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
