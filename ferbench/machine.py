"""What this process runs on: the device a run uses, the hardware every benchmark records, and the
environment recorded in every manifest."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ferbench import __version__
from ferbench.cpuinfo import cpuinfo, cpu_model
from ferbench.errors import FerbenchError
from ferbench.hostmem import keep_freed_memory


MAX_THREADS = 1024
LAYOUT_ENV = "FERBENCH_LAYOUT"  # how a run's jobs share the CPU (launch.cpu_layout), for each manifest's environment


def check_threads(threads: int | None) -> None:
    """--threads is a positive count PyTorch can start (None: PyTorch's default)."""
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise FerbenchError(f"--threads {threads}: expected 1..{MAX_THREADS} (omit it for PyTorch's default)")


def pick_device(name: str = "auto") -> Any:
    """`auto` (CUDA when present, else the CPU), `cpu`, `cuda` or `cuda:N`; CUDA convolutions autotuned."""
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FerbenchError(f"--device {name}: CUDA is not available on this machine")
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    except RuntimeError:
        raise FerbenchError(f"--device {name}: expected auto, cpu, cuda or cuda:N (or another device PyTorch knows, "
                            "such as mps)") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FerbenchError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned convolutions; recorded in each manifest's environment
    return device


# the CPU flags that decide which kernels PyTorch and its libraries run
_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
          "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


def hardware(device: Any = None) -> dict[str, Any]:
    """CPU model and flags, cores, torch threads, the BLAS / oneDNN build, and the GPU when one is used:
    the block every benchmark JSON and printout carries."""
    import torch

    info = cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    config = torch.__config__.show()
    build = [line.strip(" -") for line in config.splitlines()
             if any(k in line for k in ("Math Kernel Library", "MKL-DNN", "oneDNN", "OpenBLAS", "CPU capability"))]
    blas = next((part.split("=", 1)[1] for part in config.replace(",", " ").split() if part.startswith("BLAS_INFO=")), None)
    out = {
        "cpu": cpu_model(), "cpu_flags": sorted(f for f in _FLAGS if f in flags), "machine": platform.machine(),
        "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "blas": blas, "build": build,
    }
    if device is not None and getattr(device, "type", None) == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def sync(device: Any) -> None:
    """Wait for the device's queued work, so a host clock read after it times that work."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def git_state(where: Path | None = None) -> tuple[str | None, bool | None]:
    """The commit of the checkout holding `where` (default: the ferbench package) and whether the files
    under `where` differ from that commit (uncommitted edits to tracked files): a record made from an
    edited tree names its commit but not its code, so the manifest says so. (None, None) outside git."""
    here = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0 or not head.stdout.strip():
            return None, None
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                                capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return head.stdout.strip(), dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def source_digest(package: Path | None = None) -> str:
    """sha256 over the package's Python sources (each file's path relative to the package, then its
    bytes, in sorted order): names the code a record was made by whether or not it was committed. A
    manifest with `git_dirty: true` can be matched to the commit that later held the same code by
    computing this on a checkout of that commit (`source_digest(Path("ferbench"))`)."""
    import hashlib

    root = package or Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def environment(device: Any) -> dict[str, Any]:
    """Versions, device, threads, determinism flags and allocator settings: a manifest's `environment`."""
    import timm
    import torch

    from ferbench.engine.optim import implementation

    commit, dirty = git_state()
    env = {
        "ferbench": __version__, "git_commit": commit, "git_dirty": dirty, "source_sha256": source_digest(),
        "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__, "timm": timm.__version__,
        "numpy": np.__version__, "device": str(device), "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "host_allocator": keep_freed_memory(), "optimizer_implementation": implementation(device.type),
    }
    if os.environ.get(LAYOUT_ENV):  # set by `run` (launch.cpu_layout): how the run's jobs share the machine
        try:
            env["layout"] = json.loads(os.environ[LAYOUT_ENV])
        except ValueError:
            pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["determinism_note"] = ("CUDA: grid_sample (STN, augmentation) and adaptive pooling have no deterministic "
                                   "backward; results are repeatable on the CPU, close but not bitwise on CUDA")
    else:
        env["cpu"] = cpu_model()
    return env
