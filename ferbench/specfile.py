"""Reading a spec file and applying overrides: YAML loaded safely (a key written twice or an alias bomb
refused, each in one line naming the file and place), and dotted `key=value` overrides set on the
raw mapping, so a profile and `--set` take exactly the same path. This module never imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ferbench.errors import FerbenchError, first_line, shown


def set_dotted(data: Any, key: str, value: Any, where: str) -> None:
    """Set `a.b.0.c` (or `models.<id>.train.epochs`, or `datasets.*.subset.train`) in place."""
    parts = key.split(".")
    if not key or any(p == "" for p in parts):
        raise FerbenchError(f"{where}: bad key {key!r}: expected dotted names like train.epochs")
    _set(data, parts, value, key, where)


def _set(node: Any, parts: list[str], value: Any, key: str, where: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        if head == "*":
            targets = list(range(len(node)))
        elif head.lstrip("-").isdigit():
            i = int(head)
            if not -len(node) <= i < len(node):
                raise FerbenchError(f"{where}: {key}: index {i} out of range (list has {len(node)} items)")
            targets = [i]
        else:
            targets = [i for i, x in enumerate(node) if isinstance(x, dict) and head in (x.get("id"), x.get("name"))]
            if not targets:
                raise FerbenchError(f"{where}: {key}: no list item with id or name {head!r}")
        for i in targets:
            if rest:
                _set(node[i], rest, value, key, where)
            else:
                node[i] = value
        return
    if not isinstance(node, dict):
        raise FerbenchError(f"{where}: {key}: cannot set {head!r} inside a {type(node).__name__}")
    if not rest:
        node[head] = value
        return
    if head not in node or node[head] is None:
        node[head] = {}
    _set(node[head], rest, value, key, where)


class YamlValueError(yaml.YAMLError):
    """A YAML text PyYAML parses but cannot turn into values (see `parse_yaml`)."""


def parse_yaml(text: str, loader: type = yaml.SafeLoader) -> Any:
    """YAML text as values, with a safe loader, where every way a text can fail is a yaml.YAMLError:
    PyYAML itself raises ValueError for a timestamp that is not a date (2026-13-45), an integer past
    Python's 4,300-digit conversion limit or a bad `!!int` / `!!float`, and RecursionError for nesting
    deeper than the interpreter's stack."""
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (callers pass safe loaders only)
    except (ValueError, OverflowError, RecursionError) as e:
        raise YamlValueError(f"a value YAML cannot read ({type(e).__name__}: {first_line(e, 120)})") from None


def parse_set(items: list[str]) -> list[tuple[str, Any]]:
    """`key=value` strings; values are parsed as YAML (so 3 is an int, [1,2] a list)."""
    out = []
    for item in items:
        if "=" not in item:
            raise FerbenchError(f"--set {shown(item)}: expected key=value, e.g. train.epochs=2")
        k, v = item.split("=", 1)
        try:
            value = parse_yaml(v)
            check_size(value, f"--set {k.strip()}")
            out.append((k.strip(), value))
        except yaml.YAMLError as e:
            raise FerbenchError(f"--set {shown(item)}: value is not valid YAML ({_yaml_problem(e)})") from None
    return out


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or first_line(e, limit=10_000)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return problem


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


MAX_SPEC_VALUES = 20_000  # the shipped specs hold a few hundred


def check_size(data: Any, where: str) -> None:
    """Refuse a spec whose values, with YAML aliases expanded, number more than MAX_SPEC_VALUES: a
    574-byte 'billion laughs' spec otherwise takes gigabytes once a profile or the schema expands it.
    Counting stops at the limit, so the check itself stays cheap."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_SPEC_VALUES:
            raise FerbenchError(f"{where}: more than {MAX_SPEC_VALUES:,} values once YAML aliases are expanded: "
                                "refused (a spec is a few hundred)")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def read_yaml(path: Path) -> dict[str, Any]:
    from ferbench.fileio import MAX_SPEC_BYTES, regular_file

    size = regular_file(path, "spec file").stat().st_size
    if size > MAX_SPEC_BYTES:
        raise FerbenchError(f"{path}: {size:,} bytes: more than the {MAX_SPEC_BYTES:,} a spec may have (a spec is a "
                            "few kilobytes)")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"), _UniqueKeyLoader)
    except UnicodeDecodeError:
        raise FerbenchError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
        raise FerbenchError(f"{path}: invalid YAML at {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise FerbenchError(f"{path}: expected a mapping at the top level (name:, datasets:, models:, ...)")
    check_size(data, str(path))
    return data
