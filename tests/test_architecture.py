"""The shape of the package: layers point down, SQL lives in the ledger, files read in one sitting.

These read the source (its import statements and string literals); nothing is imported or run.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "corral"

#: modules at the top of the package that every layer may use (they import nothing of corral's layers)
BASE = {"errors", "states", "refs", "clock", "extras", "outfiles", "paths", "templates"}

#: package -> the packages it may import (besides BASE). Arrows point down only (docs/architecture.md).
ALLOWED = {
    "cli": {"api", "report", "spec", "sim"},   # report and spec: rendering tables, parsing option values
    "api": {"engine", "ledger", "spec", "report", "llm", "backends"},
    "engine": {"ledger", "backends", "spec", "llm"},
    "report": {"ledger"},
    "backends": {"spec", "llm", "worker"},
    "llm": {"spec"},
    "ledger": set(),
    "spec": set(),
    "worker": set(),
    "sim": set(),
}

#: a string that is (the start of) an SQL statement
SQL = re.compile(r"^\s*(SELECT\s|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s|ALTER\s|DROP\s|PRAGMA\s|"
                 r"WITH\s+\w+\s+AS|BEGIN\b|VACUUM\b|ANALYZE\b)")
SQL_MODULES = ("sqlalchemy", "sqlite3", "psycopg", "corral.ledger.schema")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        layer = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        yield path, rel, layer, ast.parse(path.read_text(), str(path))


def _type_only(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks: imports for annotations only, never executed."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(tree: ast.AST):
    skip = _type_only(tree)
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.lineno, node.module, alias.name


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "corral" or len(parts) == 1:
        return None
    return parts[1]


def test_layers_point_down_and_packages_form_no_cycle():
    wrong, graph = [], defaultdict(set)
    for _path, rel, layer, tree in _modules():
        if layer not in ALLOWED:
            continue
        for line, module, _name in _imports(tree):
            target = _layer_of(module)
            if target is None or target == layer or target in BASE:
                continue
            graph[layer].add(target)
            if target not in ALLOWED[layer]:
                wrong.append(f"{rel}:{line} imports {module} ({layer} -> {target})")
    assert not wrong, "imports that reach up or sideways:\n" + "\n".join(wrong)

    def visit(node, seen):
        for nxt in graph[node]:
            assert nxt not in seen, f"package cycle: {' -> '.join([*seen, nxt])}"
            visit(nxt, [*seen, nxt])

    for start in list(graph):
        visit(start, [start])


def test_sql_lives_in_the_ledger_only():
    found = []
    for _path, rel, layer, tree in _modules():
        if layer == "ledger":
            continue
        for line, module, name in _imports(tree):
            full = f"{module}.{name}" if name else module
            if any(full == m or full.startswith(m + ".") for m in SQL_MODULES) or \
                    (module == "corral.ledger" and name == "schema"):
                found.append(f"{rel}:{line} imports {full}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append(f"{rel}:{node.lineno} SQL text {node.value[:60]!r}")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id == "schema" and node.attr in {"tasks", "items", "runs", "submissions", "events",
                                                                "learned", "metadata"}:
                found.append(f"{rel}:{node.lineno} uses schema.{node.attr}")
    assert not found, "SQL outside src/corral/ledger/:\n" + "\n".join(found)


@pytest.mark.parametrize("limit", [600])
def test_every_module_reads_in_one_sitting(limit):
    long = [f"{rel}: {n} lines" for path, rel, _layer, _tree in _modules()
            if (n := len(path.read_text().splitlines())) > limit]
    assert not long, f"modules over {limit} lines:\n" + "\n".join(long)
