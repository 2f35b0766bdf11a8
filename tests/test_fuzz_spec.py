"""Property-based fuzzing of spec values (Hypothesis): whatever a field holds, loading and planning a
spec ends in a validated spec or one FerbenchError line, never another exception. Seeded and bounded
for CI (FERBENCH_FUZZ_EXAMPLES raises the count for a local soak)."""

from __future__ import annotations

import copy
import os

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzzer needs hypothesis (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ferbench.errors import FerbenchError  # noqa: E402
from ferbench.spec import expand, spec_from_dict  # noqa: E402

EXAMPLES = int(os.environ.get("FERBENCH_FUZZ_EXAMPLES", "300"))
GOOD = {"name": "fz", "datasets": [{"name": "synthfer", "options": {"n_train": 32, "n_val": 8, "n_test": 8}}],
        "models": [{"id": "m", "arch": "resnet18"}], "train": {"epochs": 1, "batch_size": 8, "input_size": 24}}

# hostile values: huge and negative numbers, integers past Python's string-conversion limit, NaN, text
# with newlines and math markup, deep nesting, YAML-ish dates, wrong container types
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.builds(lambda: 10**5000),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["2026-12-05", "~nosuchuser/x", "$\\frac{a}{b}$", "a\n", "../../etc", "x" * 300, "inf", "nan"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
PATHS = [("name",), ("seeds",), ("recipe",), ("train", "epochs"), ("train", "lr"), ("train", "min_lr"),
         ("train", "batch_size"), ("train", "eval_batch_size"), ("train", "input_size"), ("train", "augment"),
         ("train", "augment", "scale"), ("train", "augment", "rotation"), ("train", "schedule"), ("train", "ema"),
         ("train", "normalize"), ("train", "norm_mean"), ("eval",), ("eval", "tta_resize_ratio"), ("eval", "splits"),
         ("models", 0, "arch"), ("models", 0, "options"), ("models", 0, "id"), ("datasets", 0, "options"),
         ("datasets", 0, "subset"), ("datasets", 0, "id"), ("claims",), ("profiles",), ("launcher",)]


def _put(spec: dict, path: tuple, value) -> dict:
    d = copy.deepcopy(spec)
    node = d
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
    return d


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(PATHS), value=values)
def test_any_value_in_any_field_is_a_spec_or_one_line(path, value):
    try:
        spec = spec_from_dict(_put(GOOD, path, value), "fuzz.yaml")
        expand(spec)
    except FerbenchError as e:
        message = str(e)
        assert message.startswith("fuzz.yaml") and "\n" not in message.strip() and "Traceback" not in message
