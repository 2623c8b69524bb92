"""The package's shape: one folder per pipeline stage, imports pointing down only (import-linter contracts in
pyproject.toml), every module placed in a layer, no module too big to read, no private name used across modules.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "moma"
MAX_LINES = 700


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_hold():
    """import-linter in a child process: it reconfigures logging, which would silence later tests' caplog."""
    pytest.importorskip("importlinter.cli")
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


def test_every_module_sits_in_a_layer():
    """A new top-level module or folder must be given its place in the layers, or the contract does not see it."""
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    top = {f"moma.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    top |= {f"moma.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert top - placed == set()


def test_no_module_is_too_long_to_read():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v >= MAX_LINES} == {}


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moma"):
                offenders += [f"{path.relative_to(PACKAGE)}: {node.module}.{a.name}" for a in node.names
                              if re.match(r"^_[^_]", a.name)]
    assert offenders == []


MAX_FUNCTION_LINES = 80
SHORT_FUNCTION_STAGES = ("training", "inference", "evaluation")


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Names and lengths of the functions in ``source`` longer than ``limit`` lines (decorators to last line)
    without a ``# long: <why>`` comment on the def line or the first line of the body."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        length = node.end_lineno - start + 1
        body_start = node.body[0].lineno  # the docstring, when there is one
        marked = any(re.search(r"#\s*long:\s*\S", lines[i - 1]) for i in range(node.lineno, body_start + 1))
        if length > limit and not marked:
            found.append(f"{node.name} ({length} lines)")
    return found


def test_the_length_check_counts_lines_and_honours_a_stated_reason():
    body = "\n".join(f"    x{i} = {i}" for i in range(85))
    assert long_functions(f"def f():\n{body}\n") == ["f (86 lines)"]
    assert long_functions(f"def f():  # long: one table, read top to bottom\n{body}\n") == []
    assert long_functions(f"def f():\n    # long: one table, read top to bottom\n{body}\n") == []
    assert long_functions(f"def f():\n    # long:\n{body}\n") == ["f (87 lines)"]  # a reason is required
    assert long_functions("def f():\n    return 1\n") == []


def test_functions_in_training_inference_and_evaluation_are_short_or_say_why():
    offenders = {}
    for stage in SHORT_FUNCTION_STAGES:
        for path in sorted((PACKAGE / stage).rglob("*.py")):
            found = long_functions(path.read_text())
            if found:
                offenders[str(path.relative_to(PACKAGE))] = found
    assert offenders == {}
