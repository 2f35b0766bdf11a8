"""The prepared-array cache: parse a source file once, load uint8 arrays in well under a second.

Entries live under `$FERBENCH_CACHE` (default `$XDG_CACHE_HOME/ferbench` or `~/.cache/ferbench`),
never next to the data, and are keyed by the source file's sha256 plus the loader's version and
options. Hashing a large file costs time, so a small index remembers (path, size, mtime) -> sha256;
a changed file has a new size or mtime and is hashed again, which invalidates its entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from ferbench.errors import FerbenchError
from ferbench.fileio import expand_user, sha256_file, write_json_atomic


def cache_dir() -> Path:
    env = os.environ.get("FERBENCH_CACHE")
    if env:
        return expand_user(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ferbench"


def file_digest(path: Path) -> str:
    """sha256 of `path`, remembered by (resolved path, size, mtime_ns)."""
    path = path.resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    index_path = cache_dir() / "file-hashes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key in index:
        return index[key]
    digest = sha256_file(path)
    index = {k: v for k, v in index.items() if not k.startswith(f"{path}|")}
    index[key] = digest
    try:
        write_json_atomic(index_path, index)
    except FerbenchError:  # an unwritable cache only costs speed; a full disk keeps no part of the index
        pass
    return digest


def cached_arrays(
    kind: str, digest: str, params: dict, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Return the arrays for (kind, digest, params), building and storing them on a miss."""
    tag = hashlib.sha256(json.dumps([kind, digest, params], sort_keys=True).encode()).hexdigest()[:24]
    entry = cache_dir() / kind / tag
    if (entry / "done").exists():
        try:
            return {p.stem: np.load(p, allow_pickle=False) for p in sorted(entry.glob("*.npy"))}
        except (OSError, ValueError):
            shutil.rmtree(entry, ignore_errors=True)
    arrays = build()
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{tag}."))
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        (tmp / "done").write_text(json.dumps({"kind": kind, "source_sha256": digest, "params": params}))
        os.rename(tmp, entry)
    except OSError:  # a full disk, or another process stored it first: the arrays serve this run all the same
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return arrays
