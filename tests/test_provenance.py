"""What a manifest says about the code that made it: `source_sha256` names the sources themselves, so
a record made from uncommitted edits can later be matched to the commit that holds the same code."""

from __future__ import annotations

import shutil
from pathlib import Path

from ferbench.machine import environment, source_digest


def _package(where: Path) -> Path:
    pkg = where / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    (pkg / "sub" / "mod.py").write_text("def f():\n    return 2\n")
    (pkg / "sub" / "notes.txt").write_text("not source")
    return pkg


def test_the_digest_follows_the_sources_not_where_they_lie(tmp_path):
    pkg = _package(tmp_path / "a")
    digest = source_digest(pkg)
    moved = shutil.copytree(pkg, tmp_path / "b" / "pkg")  # another place, other mtimes
    assert source_digest(moved) == digest
    (moved / "sub" / "notes.txt").write_text("edited")  # not Python source
    (moved / "__pycache__").mkdir()
    (moved / "__pycache__" / "x.py").write_text("cache")
    assert source_digest(moved) == digest
    (moved / "sub" / "mod.py").write_text("def f():\n    return 3\n")
    assert source_digest(moved) != digest
    (moved / "sub" / "mod.py").write_text("def f():\n    return 2\n")
    (moved / "sub" / "mod.py").rename(moved / "mod.py")  # the same bytes under another path
    assert source_digest(moved) != digest


def test_every_manifest_records_the_source_digest():
    import torch

    env = environment(torch.device("cpu"))
    assert env["source_sha256"] == source_digest() and len(env["source_sha256"]) == 64
