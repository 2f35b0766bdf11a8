"""Pretrained weights from local files: key mapping, non-strict loading, and safe unpickling."""

import pickle

import pytest
import torch

from ferbench.engine.checkpoint import load_checkpoint
from ferbench.engine.weights import load_pretrained
from ferbench.models.emonext import checkpoint_filter_fn, timm_to_fb
from ferbench.errors import FerbenchError
from ferbench.models import create_model


def test_timm_convnext_weights_load_into_emonext_keeping_new_modules_at_init(tmp_path):
    src = create_model("convnext-atto", 1000, 48)  # timm key names
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    model = create_model("emonext-atto", 7, 48)
    info = load_pretrained(model, tmp_path / "timm.pth", checkpoint_filter_fn)
    assert torch.equal(model.downsample_layers[0][0].weight, src.stem[0].weight)
    assert torch.equal(model.stages[2][1].pwconv1.weight, src.stages[2].blocks[1].mlp.fc1.weight.flatten(1))
    assert torch.equal(model.norm.weight, src.head.norm.weight)
    kept = set(info["kept_init"])
    assert {"head.weight", "head.bias"} <= kept  # 1000 vs 7 classes
    assert any(k.startswith("stn.") for k in kept) and any(k.startswith("attention.") for k in kept)
    assert any(".2.fc." in k for k in kept)  # SE layers
    assert not [k for k in kept if k.startswith("stages.")]


def test_fb_checkpoint_layout_loads(tmp_path):
    src = create_model("emonext-atto", 7, 48, stn=False, se=False, sa_reg=False)
    torch.save({"model": src.state_dict()}, tmp_path / "fb.pth")
    model = create_model("emonext-atto", 7, 48)
    info = load_pretrained(model, tmp_path / "fb.pth", checkpoint_filter_fn)
    assert "head.weight" in info["loaded"]
    assert timm_to_fb("stages.1.downsample.1.weight") == "downsample_layers.1.1.weight"


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


@pytest.mark.parametrize("loader", [lambda p: load_pretrained(create_model("resnet18", 7, 48), p), load_checkpoint])
def test_a_planted_pickle_is_refused_and_never_runs(tmp_path, monkeypatch, loader):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"model": _Evil()}))
    with pytest.raises(FerbenchError, match="evil.pt: not a loadable"):
        loader(bad)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_and_foreign_files(tmp_path):
    good = tmp_path / "w.pth"
    torch.save(create_model("resnet18", 7, 48).state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(FerbenchError, match="cut.pth: not a loadable"):
        load_pretrained(create_model("resnet18", 7, 48), cut)
    with pytest.raises(FerbenchError, match="no tensor matches"):
        load_pretrained(create_model("emonext-atto", 7, 48), good, checkpoint_filter_fn)
