"""Pretrained weights from a local file the user names (no hub downloads), loaded non-strictly.

Accepts a state dict (or one under `model`, `state_dict` or `model_ema`) in a `torch.save` file or
`.safetensors`. A model family whose key names or shapes differ from its checkpoints' (EmoNeXt takes
FB and timm ConvNeXt weights) maps them with its registered `checkpoint_filter`. Tensors whose name
or shape does not fit keep their random init; the caller gets both lists (and prints them), so a run
records exactly what was pretrained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ferbench.engine.checkpoint import safe_torch_load
from ferbench.errors import FerbenchError, first_line


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FerbenchError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = safe_torch_load(path)
    except Exception as e:  # noqa: BLE001  (unpicklable or hostile files are bad input)
        raise FerbenchError(f"{path}: not a loadable weights file ({first_line(e)})") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FerbenchError(f"{path}: expected a state dict of tensors")
    return sd


def load_pretrained(model: nn.Module, path: str | Path,
                    checkpoint_filter: Callable[[dict[str, Any], nn.Module], dict[str, Any]] | None = None
                    ) -> dict[str, list[str]]:
    """Copy every tensor whose (filtered) name and shape match; return loaded / kept-init / unused names."""
    sd = read_state_dict(Path(path))
    if checkpoint_filter is not None:
        sd = checkpoint_filter(sd, model)
    own = model.state_dict()
    loaded, unused = [], []
    for k, v in sd.items():
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
