"""Pretrained weights by hub name (timm:<tag>, hf-hub:<org>/<repo>) from a Hugging Face cache the
test builds on disk; HF_HUB_OFFLINE keeps every lookup off the network."""

from __future__ import annotations

import hashlib
import json

import pytest
import timm
from safetensors.torch import save_file

from ferbench.hub import resolve_weights
from ferbench.errors import FerbenchError
from tests.conftest import run_spec_dict

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache, repo: str, filename: str, state: dict) -> str:
    """Lay out repo in the hub cache as huggingface_hub does: blobs/<sha256>, snapshots/<commit>/<file>
    linking to it, refs/main naming the commit. Returns the file's sha256."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True)
    tmp = folder / "blobs" / "tmp"
    save_file(state, str(tmp))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.rename(folder / "blobs" / digest)
    (folder / "snapshots" / COMMIT).mkdir(parents=True)
    (folder / "snapshots" / COMMIT / filename).symlink_to(folder / "blobs" / digest)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return digest


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def test_a_timm_tag_resolves_from_the_cache_offline_and_the_manifest_records_it(hub, tmp_path):
    state = {k: v.contiguous() for k, v in timm.create_model("convnext_atto", pretrained=False).state_dict().items()}
    digest = cache_repo(hub, "timm/convnext_atto.d2_in1k", "model.safetensors", state)
    spec = {"name": "hub", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 8}}],
            "models": [{"id": "e", "arch": "emonext-atto", "weights": "timm:convnext_atto.d2_in1k"}],
            "train": {"epochs": 1, "batch_size": 16, "input_size": 32}}
    (outcome,) = run_spec_dict(tmp_path, spec)
    assert outcome.status == "complete", outcome.reason
    pre = json.loads((tmp_path / "runs" / "hub" / outcome.job.id / "manifest.json").read_text())["pretrained"]
    assert pre["source"] == "timm:convnext_atto.d2_in1k" and pre["hub_repo"] == "timm/convnext_atto.d2_in1k"
    assert pre["hub_revision"] == COMMIT and pre["sha256"] == digest and len(pre["loaded"]) > 100
    assert "head.weight" in pre["unused"]  # the 1000-class ImageNet head (renamed by the filter) does not fit 7 classes


def test_an_hf_hub_repo_with_a_torch_file_and_a_revision(hub):
    import torch

    folder = hub / "models--lab--fer-resnet" / "snapshots" / COMMIT
    folder.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(7, 512)}, folder / "pytorch_model.bin")
    src = resolve_weights(f"hf-hub:lab/fer-resnet@{COMMIT}")
    assert src.path == folder / "pytorch_model.bin" and src.revision == COMMIT and src.repo == "lab/fer-resnet"


@pytest.mark.parametrize("name, needle", [
    ("timm:convnext_tiny.fb_in22k", "is not in the Hugging Face cache"),
    ("timm:no_such_model.tag", "timm has no pretrained weights tagged"),
    ("hf-hub:just-a-name", "expected hf-hub:<org>/<repo>"),
])
def test_a_name_that_cannot_be_resolved_offline_is_one_line_and_nothing_is_written(hub, tmp_path, name, needle):
    spec = {"name": "hub", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 8}}],
            "models": [{"id": "e", "arch": "emonext-atto", "weights": name}], "train": {"epochs": 1}}
    with pytest.raises(FerbenchError, match=needle) as e:
        run_spec_dict(tmp_path, spec)
    assert "\n" not in str(e.value)
    if "cache" in needle:
        assert str(hub) in str(e.value) and "HF_HUB_OFFLINE" in str(e.value) and "weights: path/to" in str(e.value)
    assert not (tmp_path / "runs" / "hub").exists() or not any((tmp_path / "runs" / "hub").glob("*/manifest.json"))
