"""Pretrained weights from a local file the user names (no hub downloads), loaded non-strictly.

Accepts FB ConvNeXt checkpoints (`{"model": state_dict}`, keys `downsample_layers.*`, `stages.i.j.*`),
timm ConvNeXt state dicts (`stem.*`, `stages.i.blocks.j.*`, `head.fc.*`), torchvision state dicts,
and `.safetensors`. Tensors whose name or shape does not fit keep their random init; the caller gets
both lists (and prints them), so a run records exactly what was pretrained.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from ferbench.errors import FerbenchError

_TIMM_TO_FB = [
    (r"^stem\.0\.", "downsample_layers.0.0."),
    (r"^stem\.1\.", "downsample_layers.0.1."),
    (r"^stages\.(\d)\.downsample\.0\.", r"downsample_layers.\1.0."),
    (r"^stages\.(\d)\.downsample\.1\.", r"downsample_layers.\1.1."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.conv_dw\.", r"stages.\1.\2.dwconv."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.mlp\.fc1\.", r"stages.\1.\2.pwconv1."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.mlp\.fc2\.", r"stages.\1.\2.pwconv2."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.", "head."),
]


def timm_to_fb(key: str) -> str:
    for pat, rep in _TIMM_TO_FB:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    return key


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FerbenchError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (unpicklable or hostile files are bad input)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise FerbenchError(f"{path}: not a loadable weights file ({first})") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FerbenchError(f"{path}: expected a state dict of tensors")
    return sd


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Copy every tensor whose (mapped) name and shape match; return loaded / kept-init / unused names."""
    sd = read_state_dict(Path(path))
    own = model.state_dict()
    if not any(k in own for k in sd):
        sd = {timm_to_fb(k): v for k, v in sd.items()}
    loaded, unused = [], []
    for k, v in sd.items():
        if k in own and v.ndim == 4 and v.shape[2:] == (1, 1) and own[k].shape == v.shape[:2]:
            v = v.flatten(1)  # timm's conv_mlp variants store the block MLP as 1x1 convs
        if k in own and own[k].shape == v.shape:
            own[k] = v.to(own[k].dtype)
            loaded.append(k)
        else:
            unused.append(k)
    model.load_state_dict(own)
    kept = [k for k in own if k not in set(loaded)]
    if not loaded:
        raise FerbenchError(f"{path}: no tensor matches this model (wrong architecture?)")
    return {"loaded": loaded, "kept_init": kept, "unused": unused}
