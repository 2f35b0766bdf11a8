"""The module graph DESIGN.md asks for: no import cycles, report never reaches the engine, spec never
imports torch, and the CLI reaches runs only through `api`."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ferbench"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The modules `path` imports (ferbench's own, plus `torch` as one name)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n.startswith("ferbench") and (n in GRAPH_ALL or n.rsplit(".", 1)[0] in GRAPH_ALL):
                out.add(n if n in GRAPH_ALL else n.rsplit(".", 1)[0])
            elif n == "torch" or n.startswith("torch."):
                out.add("torch")
    return out


GRAPH_ALL = {_module(p) for p in PKG.rglob("*.py")}


def graph(top_level_only: bool) -> dict[str, set[str]]:
    return {_module(p): _imports(p, top_level_only) - {_module(p)} for p in PKG.rglob("*.py")}


def reach(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in g.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_no_module_level_import_cycles():
    g = graph(top_level_only=True)
    cycles = sorted(m for m in g if m in reach(g, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize("module", ["ferbench.report", "ferbench.report.tables", "ferbench.report.compare",
                                    "ferbench.report.figures", "ferbench.metrics", "ferbench.records"])
def test_reports_and_records_never_reach_the_engine_nor_load_torch(module):
    reached = reach(graph(top_level_only=False), module)  # every import, functions' included
    assert not {m for m in reached if m.startswith("ferbench.engine")}, reached
    assert "torch" not in reach(graph(top_level_only=True), module)  # importing a report module loads no torch


def test_spec_never_imports_torch_nor_the_data_layer():
    reached = reach(graph(top_level_only=False), "ferbench.spec")  # functions' imports included
    assert "torch" not in reached and not {m for m in reached if m.startswith("ferbench.data")}, reached


def test_the_cli_reaches_runs_only_through_the_api():
    direct = graph(top_level_only=False)["ferbench.cli"]
    assert not {m for m in direct if m.startswith(("ferbench.engine", "ferbench.runner", "ferbench.launch", "ferbench.records"))}, direct
