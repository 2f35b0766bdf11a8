"""Pretrained weights from a local file the user names (no hub downloads), loaded non-strictly.

Accepts a state dict (or one under `model`, `state_dict` or `model_ema`) in a `torch.save` file or
`.safetensors`, or a Keras HDF5 file (`.h5` / `.hdf5`, read with h5py; the family maps its layers). A model family whose key names or shapes differ from its checkpoints' (EmoNeXt takes
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
    return read_weights(path)[0]


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A weights file's state dict and where in the file it was found (e.g. "state_dict", "ema.ema_model")."""
    if not path.is_file():
        raise FerbenchError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        elif path.suffix in KERAS_SUFFIXES:
            sd = read_keras_h5(path)
        else:
            sd = safe_torch_load(path)
    except FerbenchError:
        raise
    except Exception as e:  # noqa: BLE001  (unpicklable or hostile files are bad input)
        raise FerbenchError(f"{path}: not a loadable weights file ({first_line(e)})") from None
    found = list(sd) if isinstance(sd, dict) else []
    sd, taken = unwrap_state_dict(sd)
    if isinstance(sd, dict):  # numbers saved beside the weights (epoch, best_acc) are not weights; a scalar
        sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}  # tensor matches no key and is listed unused
    if not isinstance(sd, dict) or not sd:
        keys = ", ".join(map(str, found[:12])) + (" ..." if len(found) > 12 else "")
        raise FerbenchError(f"{path}: no state dict of tensors found (top-level keys: {keys or 'none'}; expected the "
                            f"weights themselves or under one of {', '.join(WRAPPER_KEYS)})")
    return sd, taken


KERAS_SUFFIXES = (".h5", ".hdf5")


def read_keras_h5(path: Path) -> dict[str, torch.Tensor]:
    """A Keras HDF5 model or weights file (`model.save` / `save_weights`, Keras 2) -> `layer/weight`
    tensors in Keras layout (e.g. `conv2d_1/kernel`, (kh, kw, in, out)), read with h5py without Keras
    or TensorFlow; a family's `checkpoint_filter` maps them onto its modules. Layers are taken from the
    file's `layer_names` and each layer's `weight_names` (the order Keras wrote them)."""
    try:
        import h5py
    except ImportError:
        raise FerbenchError(f"{path}: reading Keras HDF5 weights needs h5py: pip install 'ferbench[keras]'") from None
    out: dict[str, torch.Tensor] = {}
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        for layer in group.attrs.get("layer_names", []):
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            g = group[layer]
            for name in g.attrs.get("weight_names", []):
                name = name.decode() if isinstance(name, bytes) else str(name)
                short = name.rsplit("/", 1)[-1].split(":")[0]  # 'conv2d_1/conv2d_1_1/kernel:0' -> 'kernel'
                out[f"{layer}/{short}"] = torch.from_numpy(g[name][()].copy())
    if not out:
        raise FerbenchError(f"{path}: no Keras layer weights found (expected model_weights/<layer>/<weight> datasets)")
    return out


WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "model_ema", "module", "net")  # net: rmn, FER .Pytorch
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # nn.DataParallel / DistributedDataParallel, torch.compile


EMA_WRAPPER = ("ema", "ema_model.")  # ema_pytorch's EMA saved whole (EmoNeXt's train.py): its copy of the model


def unwrap_state_dict(obj: Any) -> tuple[Any, str]:
    """A checkpoint as users meet it -> its state dict: a training checkpoint's `state_dict` /
    `model_state_dict` / `model` / `model_ema` entry (EfficientFace and most repositories save
    {"epoch", "state_dict", "optimizer", ...}); a ferbench checkpoint's EMA weights where its run kept an
    EMA (what it tested unless eval.use_ema was off), else its model; with a `module.` (DataParallel) or `_orig_mod.`
    (torch.compile) prefix that every key carries removed. A checkpoint of the official EmoNeXt trainer
    ({"model", "ema": ema_pytorch's EMA, "opt", ...}) gives its EMA model: the weights its test uses.
    Returns the state dict and where it was found ("" for the file itself)."""
    if isinstance(obj, dict) and "rng_torch" in obj and isinstance(obj.get("model"), dict):
        # a ferbench checkpoint: the model its run tested (EMA when kept)
        return (obj["ema"], "ema") if obj.get("ema") else (obj["model"], "model")
    key, prefix = EMA_WRAPPER
    ema = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(ema, dict) and any(isinstance(k, str) and k.startswith(prefix) for k in ema):
        obj = {k[len(prefix):]: v for k, v in ema.items() if k.startswith(prefix)}
        return _strip_prefixes(obj), f"{key}.{prefix[:-1]}"
    taken = []
    for _ in range(2):  # a wrapper inside a wrapper (e.g. {"model": {"state_dict": ...}})
        # a wrapper key holding a dict: a state dict's own entries are tensors, so scalars beside it
        # (EfficientFace's best_acc, timm's metric) do not hide it
        name = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None) if isinstance(obj, dict) else None
        if name is None:
            break
        obj = obj[name]
        taken.append(name)
    return _strip_prefixes(obj), ".".join(taken)


def _strip_prefixes(obj: Any) -> Any:
    """A `module.` (DataParallel) or `_orig_mod.` (torch.compile) prefix that every key carries, removed."""
    if isinstance(obj, dict) and obj:
        for prefix in WRAPPER_PREFIXES:
            if all(isinstance(k, str) and k.startswith(prefix) for k in obj):
                obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


COUNTERS = ("num_batches_tracked",)  # BatchNorm's step counter: state, not a weight (Keras files have none)


def untrained(info: dict[str, list[str]]) -> list[str]:
    """The weights `load_pretrained` left at their init (its `kept_init` less counters): what must be empty
    where a file is to give the whole model (`train.epochs: 0`, a frozen teacher)."""
    return [k for k in info["kept_init"] if not k.endswith(COUNTERS)]


def load_pretrained(model: nn.Module, path: str | Path,
                    checkpoint_filter: Callable[[dict[str, Any], nn.Module], dict[str, Any]] | None = None
                    ) -> dict[str, Any]:
    """Copy every tensor whose (filtered) name and shape match; return loaded / kept-init / unused names
    and where in the file the weights were found (`taken_from`)."""
    sd, taken = read_weights(Path(path))
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
    return {"loaded": loaded, "kept_init": kept, "unused": unused, "taken_from": taken or "the file itself"}
