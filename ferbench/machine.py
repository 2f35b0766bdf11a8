"""What this process runs on: the device a run uses and the environment recorded in every manifest."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ferbench import __version__
from ferbench.errors import FerbenchError
from ferbench.hostmem import keep_freed_memory


def pick_device(name: str = "auto") -> Any:
    """`auto` (CUDA when present, else the CPU), `cpu`, `cuda` or `cuda:N`; CUDA convolutions autotuned."""
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FerbenchError(f"--device {name}: CUDA is not available on this machine")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned convolutions; recorded in each manifest's environment
    return device


def git_commit() -> str | None:
    """The commit of the ferbench checkout this code runs from, if it is one."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: Any) -> dict[str, Any]:
    """Versions, device, threads, determinism flags and allocator settings: a manifest's `environment`."""
    import timm
    import torch

    from ferbench.engine.optim import implementation

    env = {
        "ferbench": __version__, "git_commit": git_commit(), "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__, "timm": timm.__version__,
        "numpy": np.__version__, "device": str(device), "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "host_allocator": keep_freed_memory(), "optimizer_implementation": implementation(device.type),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["determinism_note"] = ("CUDA: grid_sample (STN, augmentation) and adaptive pooling have no deterministic "
                                   "backward; results are repeatable on the CPU, close but not bitwise on CUDA")
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env
