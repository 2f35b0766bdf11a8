"""Checkpoints as users meet them, each built here from a state dict the test makes: wrappers,
DataParallel / torch.compile prefixes, FB <-> timm ConvNeXt keys, torchvision ResNets into ResFace,
an EfficientFace-style LDG checkpoint. Each loads non-strictly with loaded / kept-init lists."""

from __future__ import annotations

import torch
import torchvision

from ferbench.engine.weights import load_pretrained
from ferbench.models import create_model, get_variant


def _load(arch: str, payload, tmp_path, num_classes: int = 7, in_chans: int = 3):
    torch.save(payload, tmp_path / "w.pth")
    model = create_model(arch, num_classes, 48, in_chans)
    info = load_pretrained(model, tmp_path / "w.pth", get_variant(arch).checkpoint_filter)
    return model, info


def test_an_efficientface_style_ldg_checkpoint_loads_into_resnet50(tmp_path):
    """EfficientFace saves {"epoch", "state_dict", "best_acc", "optimizer"} from nn.DataParallel, so
    every key starts with `module.`; its LDG head has another class count (kept at init here)."""
    torch.manual_seed(0)
    ldg = torchvision.models.resnet50(num_classes=12)
    payload = {"epoch": 40, "best_acc": 0.9, "optimizer": {"state": {}, "param_groups": []},
               "state_dict": {f"module.{k}": v for k, v in ldg.state_dict().items()}}
    model, info = _load("resnet50", payload, tmp_path)
    assert sorted(info["kept_init"]) == ["fc.bias", "fc.weight"] and len(info["unused"]) == 2
    assert torch.equal(model.layer4[2].conv3.weight, ldg.layer4[2].conv3.weight)


def test_a_model_state_dict_wrapper_and_a_compiled_prefix_are_unwrapped(tmp_path):
    src = torchvision.models.resnet18(num_classes=7)
    payload = {"model_state_dict": {f"_orig_mod.{k}": v for k, v in src.state_dict().items()}, "step": 3}
    model, info = _load("resnet18", payload, tmp_path)
    assert info["kept_init"] == [] and torch.equal(model.fc.weight, src.fc.weight)


def test_torchvision_resnet_weights_load_into_the_resface_trunk(tmp_path):
    src = torchvision.models.resnet18(num_classes=1000)
    model, info = _load("resface-r18", src.state_dict(), tmp_path)
    assert torch.equal(model.stem[0].weight, src.conv1.weight) and torch.equal(model.stem[1].running_var, src.bn1.running_var)
    assert torch.equal(model.layer3[1].conv2.weight, src.layer3[1].conv2.weight)
    kept = set(info["kept_init"])
    assert {"fc.weight", "fc.bias"} <= kept and any(k.startswith("local.") for k in kept) and any(k.startswith("csa.") for k in kept)
    assert not any(k.startswith(("stem.", "layer")) for k in kept)


def test_fb_convnext_keys_load_into_the_timm_baseline_and_timm_keys_pass_through(tmp_path):
    from ferbench.models.emonext import timm_to_fb

    torch.manual_seed(1)
    src = create_model("convnext-atto", 1000, 48, 3)
    fb = {"model": {timm_to_fb(k): v for k, v in src.state_dict().items()}}  # FB's release layout
    assert "downsample_layers.0.0.weight" in fb["model"]
    model, info = _load("convnext-atto", fb, tmp_path)
    own = model.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith("head.fc"):
            assert torch.equal(own[k], v.reshape(own[k].shape)), k
    assert set(info["kept_init"]) == {"head.fc.weight", "head.fc.bias"}
    again, info2 = _load("convnext-atto", src.state_dict(), tmp_path)
    assert set(info2["kept_init"]) == {"head.fc.weight", "head.fc.bias"}


def test_an_efficientface_style_ldg_checkpoint_teaches_a_resface_student(tmp_path):
    """teacher: {arch, weights} freezes a file's model as the LDL target source (EfficientFace's LDG,
    saved from DataParallel under `state_dict`); a teacher file that does not fully load fails the job."""
    import json

    import yaml

    from ferbench import api

    torch.manual_seed(0)
    ldg = create_model("resnet18", 7, 32, 3)
    torch.save({"epoch": 9, "state_dict": {f"module.{k}": v for k, v in ldg.state_dict().items()}}, tmp_path / "ldg.pth.tar")
    spec = {"name": "t", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 8}}],
            "models": [{"id": "s", "arch": "resface-r18", "teacher": {"arch": "resnet18", "weights": str(tmp_path / "ldg.pth.tar")},
                        "train": {"loss": "ldl", "ldl_source": "teacher"}}],
            "train": {"epochs": 1, "batch_size": 16, "input_size": 32}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    (o,) = api.run_spec(tmp_path / "s.yaml", runs_dir=tmp_path / "runs", estimate=False)
    assert o.status == "complete", o.reason
    manifest = json.loads((tmp_path / "runs" / "t" / o.job.id / "manifest.json").read_text())
    assert manifest["teacher"]["arch"] == "resnet18" and manifest["teacher"]["loaded"] == len(ldg.state_dict())
    torch.save({"state_dict": {f"module.{k}": v for k, v in create_model("resnet18", 12, 32, 3).state_dict().items()}},
               tmp_path / "ldg12.pth.tar")  # an LDG with another head: it cannot teach these 7 classes
    spec["models"][0]["teacher"]["weights"] = str(tmp_path / "ldg12.pth.tar")
    (tmp_path / "s2.yaml").write_text(yaml.safe_dump(spec))
    (bad,) = api.run_spec(tmp_path / "s2.yaml", runs_dir=tmp_path / "runs2", estimate=False)
    assert bad.status == "failed" and "did not load (fc.weight, fc.bias)" in bad.reason


def _every_tensor_landed(model, src) -> None:
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in src.state_dict().items())


def test_a_timm_train_py_checkpoint_with_its_argparse_namespace_loads_without_running_code(tmp_path):
    """timm's train.py saves {'epoch', 'arch', 'state_dict', 'optimizer', 'version', 'args': Namespace,
    'metric', 'state_dict_ema'}: weights_only loading allows the Namespace; the state_dict is taken."""
    import argparse

    torch.manual_seed(1)
    src = torchvision.models.resnet18(num_classes=7)
    payload = {"epoch": 12, "arch": "resnet18", "state_dict": src.state_dict(), "optimizer": {"state": {}, "param_groups": []},
               "version": 2, "args": argparse.Namespace(model="resnet18", lr=0.1, amp=True), "metric": 71.3,
               "state_dict_ema": torchvision.models.resnet18(num_classes=7).state_dict()}
    model, info = _load("resnet18", payload, tmp_path)
    assert info["kept_init"] == [] and info["unused"] == []
    _every_tensor_landed(model, src)


def test_a_net_wrapper_with_scalar_tensors_beside_it_loads(tmp_path):
    """rmn and Facial-Expression-Recognition.Pytorch save {'net': state_dict, 'acc': ..., 'epoch': ...};
    scalar tensors beside a state dict (best_acc) neither hide it nor count as weights."""
    src = torchvision.models.resnet18(num_classes=7)
    payload = {"net": src.state_dict(), "acc": torch.tensor(73.1), "best_acc": torch.tensor(73.1), "epoch": 40}
    model, info = _load("resnet18", payload, tmp_path)
    assert info["kept_init"] == []
    _every_tensor_landed(model, src)
    flat = {**src.state_dict(), "best_acc": torch.tensor(0.9), "note": "fold 1"}  # beside the weights themselves
    model, info = _load("resnet18", flat, tmp_path)
    assert info["kept_init"] == [] and info["unused"] == ["best_acc"]
    _every_tensor_landed(model, src)


def test_a_checkpoint_without_weights_is_refused_with_the_keys_it_holds(tmp_path):
    import pytest

    from ferbench.errors import FerbenchError

    torch.save({"epoch": 3, "weights": [1, 2], "config": {"lr": 0.1}}, tmp_path / "w.pth")
    with pytest.raises(FerbenchError, match=r"no state dict of tensors found \(top-level keys: epoch, weights, config;"):
        load_pretrained(create_model("resnet18", 7, 48, 3), tmp_path / "w.pth")


def test_an_official_emonext_trainer_checkpoint_gives_its_ema_model_with_the_stn(tmp_path):
    """yelboudouri/EmoNeXt's train.py saves {'model', 'opt', 'ema': ema_pytorch's EMA, 'scaler', 'scheduler',
    'best_acc'}, with the STN at the model's top level (localization.*, fc_loc.*). The EMA model (what its
    test evaluates) is taken, every tensor lands, the STN included, and the record says where it came from."""
    torch.manual_seed(3)
    live, ema = create_model("emonext-atto", 7, 48, 3), create_model("emonext-atto", 7, 48, 3)

    def official(sd):
        return {(k[len("stn."):] if k.startswith("stn.") else k): v for k, v in sd.items()}

    ema_state = {"initted": torch.tensor(True), "step": torch.tensor(640),
                 **{f"online_model.{k}": v for k, v in official(live.state_dict()).items()},
                 **{f"ema_model.{k}": v for k, v in official(ema.state_dict()).items()}}
    payload = {"model": official(live.state_dict()), "opt": {"state": {}, "param_groups": []}, "ema": ema_state,
               "scaler": {"scale": 1024.0}, "scheduler": {"steps_counter": 640}, "best_acc": 71.2}
    model, info = _load("emonext-atto", payload, tmp_path)
    assert info["kept_init"] == [] and info["unused"] == [] and info["taken_from"] == "ema.ema_model"
    _every_tensor_landed(model, ema)
    assert any(k.startswith("stn.fc_loc") for k in info["loaded"])
    model, info = _load("emonext-atto", {"model": official(live.state_dict())}, tmp_path)  # no EMA saved: the model
    assert info["kept_init"] == [] and info["taken_from"] == "model"
    _every_tensor_landed(model, live)
