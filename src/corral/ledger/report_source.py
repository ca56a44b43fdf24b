"""What a report asks of a ledger, and the two readers that answer it.

A report describes the table it wants (``CellQuery``: runs, stage, group-by fields, result fields)
and reads plain rows back. Two modules answer with the same functions, each taking a connection
from its reader's ``read()``:

- ``corral.ledger.report_queries``: SQLAlchemy Core over a ``Ledger``, SQLite and PostgreSQL;
- ``corral.ledger.sqlite_reader``: the standard library's ``sqlite3`` over a ``SqliteReader``, so
  that ``corral report`` on a SQLite ledger does not pay for importing SQLAlchemy.

This module imports neither SQLAlchemy nor a driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple, Sequence

#: The functions both query modules define, with the same parameters.
QUERIES = ("stage_counts", "result_sample", "item_params_sample", "cell_rows", "error_rows", "task_rows",
           "done_events", "done_times")

#: How a task can be grouped: by its stage, an item parameter, or a field of its result.
GROUP_KINDS = ("stage", "param", "result")


@dataclass(frozen=True)
class CellQuery:
    """The tasks of some runs (of one stage, or of all), counted per run and group.

    ``groups``: (kind, name) pairs, kind one of GROUP_KINDS. ``bool_field``: a boolean result field
    whose done tasks are counted (how many have it, how many are true). ``numeric_fields``: result
    fields summed over done tasks (count, sum, sum of squares).
    """

    run_ids: tuple[str, ...]
    stage: str | None
    groups: tuple[tuple[str, str], ...] = ()
    bool_field: str | None = None
    numeric_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [kind for kind, _ in self.groups if kind not in GROUP_KINDS]
        if unknown:
            raise ValueError(f"cannot group tasks by {unknown}; kinds: {', '.join(GROUP_KINDS)}")

    @property
    def fields(self) -> list[str]:
        """The result fields read: the boolean one first, then the numeric ones."""
        return ([self.bool_field] if self.bool_field is not None else []) + list(self.numeric_fields)

    @property
    def joins_items(self) -> bool:
        return any(kind == "param" for kind, _ in self.groups)


class CellRow(NamedTuple):
    """One (run, group) of a CellQuery. Group values are as the database gives them (SQLite: JSON
    objects as text, booleans as 0/1)."""

    key: tuple[Any, ...]  # (run_id, group values...)
    expected: int
    done: int
    failed: int
    running: int
    cancelled: int
    budget: int           # stopped by the budget (state budget)
    bool_n: int
    bool_k: int
    numeric: tuple[tuple[int, float, float], ...]  # per numeric field: (count, sum, sum of squares)


def cell_row(values: Sequence[Any], query: CellQuery) -> CellRow:
    """A CellRow from the columns the queries select: run_id, the groups, COUNT(*), the done,
    failed, in-flight, cancelled and budget counts, then (count, sum) of the boolean field and (count,
    sum, sum of squares) of each numeric field."""
    width = 1 + len(query.groups)
    counts = [int(v or 0) for v in values[width:width + 6]]
    rest = values[width + 6:]
    bool_n = bool_k = 0
    if query.bool_field is not None:
        bool_n, bool_k = int(rest[0] or 0), int(rest[1] or 0)
        rest = rest[2:]
    numeric = tuple((int(rest[3 * n] or 0), float(rest[3 * n + 1] or 0.0), float(rest[3 * n + 2] or 0.0))
                    for n in range(len(query.numeric_fields)))
    return CellRow(tuple(values[:width]), *counts, bool_n, bool_k, numeric)


class ErrorRow(NamedTuple):
    """Failed tasks of one (run, group) with one error class."""

    key: tuple[Any, ...]
    error_class: str | None
    count: int


def json_path(name: str) -> str:
    """SQLite's JSON path of a top-level field (quoted: a field name may hold dots or spaces)."""
    return '$."' + name.replace('"', '\\"') + '"'


def report_queries(source: Any) -> ModuleType:
    """The module of report queries for ``source``: a ``SqliteReader`` or a ``Ledger``."""
    from corral.ledger.sqlite_reader import SqliteReader

    if isinstance(source, SqliteReader):
        from corral.ledger import sqlite_reader

        return sqlite_reader
    from corral.ledger import report_queries as queries

    return queries


def dialect_name(source: Any) -> str:
    """``sqlite``, ``postgresql``, ...: the database behind a ``SqliteReader`` or a ``Ledger``."""
    return getattr(source, "dialect_name", None) or source.engine.dialect.name
