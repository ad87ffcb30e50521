"""Python 3.10 support: every TOML read goes through vtbench._compat, which falls back to tomli without tomllib."""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path

import vtbench
import vtbench._compat

PACKAGE = Path(vtbench.__file__).parent


def test_without_tomllib_the_backport_is_used(monkeypatch):
    backport = types.ModuleType("tomli")  # a stand-in: tomli need not be installed on 3.11
    monkeypatch.setitem(sys.modules, "tomllib", None)  # what 'import tomllib' meets on 3.10
    monkeypatch.setitem(sys.modules, "tomli", backport)
    try:
        assert importlib.reload(vtbench._compat).tomllib is backport
    finally:
        monkeypatch.undo()
        importlib.reload(vtbench._compat)
    if sys.version_info >= (3, 11):
        import tomllib
        assert vtbench._compat.tomllib is tomllib


def test_only_the_helper_imports_tomllib():
    direct = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if {"tomllib", "tomli"} & set(names) and path.name != "_compat.py":
                direct.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not direct, f"import tomllib through vtbench._compat (Python 3.10 has none): {direct}"
