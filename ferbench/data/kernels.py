"""Kernels chosen by measurement: where several formulations of one CPU op give the same result (to
float rounding), the fastest on this machine runs.

Why: a formulation's speed depends on the machine's libraries. The upsample's block-sparse matrix
product runs in 0.2 ms on an Intel Xeon with MKL and took 16 ms on an AMD EPYC with the same PyTorch
build (MKL's small-matrix path), where a gather + lerp form or PyTorch's own interpolate kernel are
faster. So each op names its candidates, the first being the default, and on first use `choose`
times each on the real input (the candidates' calls interleaved after a warm-up, the fastest call of
each: other load on the machine only adds time) in two rounds, and keeps the default unless another
is at least `MARGIN` faster in both: where two are about as fast, a load swing during the measurement
does not flip the choice, and runs keep the default's rounding.

The choice is cached per machine (CPU model, core count, torch version and threads) in
`$FERBENCH_CACHE/kernels.json`, so every process on one machine runs the same kernels and a resumed
run repeats the interrupted one bit for bit; each job's manifest records the kernels it used, and
`ferbench bench` prints them with their timings. `FERBENCH_KERNELS="upsample=native,grid=mm"` pins
a choice (for a comparison, or to reproduce a record made on another machine).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import torch

_MEMO: dict[str, dict[str, Any]] = {}  # this process's choices, by key
REPEATS = 5  # calls of each candidate per round
ROUNDS = 2
MARGIN = 0.25  # another candidate replaces the default when it takes at most 75 % of its time in every round


def machine_key() -> str:
    """What a choice depends on besides the op and its shape."""
    from ferbench.cpuinfo import cpu_model

    return f"{cpu_model()}|{os.cpu_count()} cores|torch {torch.__version__}|{torch.get_num_threads()} threads"


def _pinned() -> dict[str, str]:
    spec = os.environ.get("FERBENCH_KERNELS", "")
    return dict(item.split("=", 1) for item in spec.split(",") if "=" in item)


def _store_path():
    from ferbench.data.cache import cache_dir

    return cache_dir() / "kernels.json"


def _load_store() -> dict[str, Any]:
    try:
        return json.loads(_store_path().read_text())
    except (OSError, ValueError):
        return {}


def _save(key: str, entry: dict[str, Any]) -> None:
    """Add one choice to the machine's store (atomically; a read-only cache only loses the memo)."""
    from ferbench.errors import FerbenchError
    from ferbench.fileio import write_json_atomic

    store = _load_store()
    store[key] = entry
    try:
        write_json_atomic(_store_path(), store)
    except (OSError, FerbenchError):  # a full disk or a cache that is not ours to replace: never the job's failure
        pass


def measure(candidates: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Milliseconds of each candidate's fastest call, the calls interleaved after one warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        fn()
    for _ in range(REPEATS):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * min(t) for name, t in times.items()}


def pick(ms: dict[str, float]) -> str:
    """The default (the first) unless another is at least MARGIN faster; then the fastest."""
    default, best = next(iter(ms)), min(ms, key=ms.get)
    return best if ms[best] <= (1 - MARGIN) * ms[default] else default


def decide(candidates: dict[str, Callable[[], Any]]) -> tuple[str, list[dict[str, float]]]:
    """The kernel to run and the rounds' timings: a switch from the default must win every round."""
    rounds = [measure(candidates) for _ in range(ROUNDS)]
    picks = {pick(ms) for ms in rounds}
    return (picks.pop() if len(picks) == 1 else next(iter(candidates))), rounds


def choose(op: str, shape: str, candidates: dict[str, Callable[[], Any]]) -> str:
    """The name of the candidate to run for `op` at `shape` on this machine (timed once, then remembered).

    Called on every training step: after the first call for a shape it is one dictionary look-up
    (plus the pin's environment variable), never a file read."""
    memo_key = f"{op}|{shape}"
    entry = _MEMO.get(memo_key)
    pinned = _pinned().get(op)
    if pinned is not None:
        if pinned not in candidates:
            from ferbench.errors import FerbenchError

            raise FerbenchError(f"FERBENCH_KERNELS: {op}={pinned!r}: expected one of {', '.join(candidates)}")
        if entry is None or entry["kernel"] != pinned:
            _MEMO[memo_key] = {"op": op, "shape": shape, "kernel": pinned, "why": "pinned by FERBENCH_KERNELS"}
        return pinned
    if entry is None:
        entry = _MEMO[memo_key] = _machine_choice(op, shape, candidates)
    return entry["kernel"]


def _machine_choice(op: str, shape: str, candidates: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """This machine's stored choice for `op` at `shape`, or a new one measured now and stored."""
    machine = machine_key()
    key = f"{op}|{shape}|{machine}"
    entry = _load_store().get(key)
    if entry is not None and entry.get("kernel") in candidates:
        return entry
    best, rounds = decide(candidates)
    ms = {name: min(r[name] for r in rounds) for name in candidates}
    timings = ", ".join(f"{n} {t:.2f} ms" for n, t in sorted(ms.items(), key=lambda x: x[1]))
    why = (f"the default, no other {MARGIN:.0%} faster in every round" if best == next(iter(candidates))
           else f"at least {MARGIN:.0%} faster than the default in every round")
    entry = {"op": op, "shape": shape, "kernel": best, "ms": ms, "rounds": rounds, "machine": machine,
             "why": f"{why} (fastest calls: {timings})"}
    _save(key, entry)
    return entry


def chosen() -> dict[str, str]:
    """The kernels this process has chosen so far: `op@shape` -> name (what a manifest records)."""
    return {f"{e['op']}@{e['shape']}": e["kernel"] for e in _MEMO.values()}


def explain() -> list[dict[str, Any]]:
    """Each choice with its reason (the timings, or the pin): what `ferbench bench` prints."""
    return [dict(e) for e in _MEMO.values()]
