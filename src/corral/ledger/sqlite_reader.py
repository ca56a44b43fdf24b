"""Reading a SQLite ledger with the standard library, for ``corral report``.

SQLAlchemy takes longer to import than a report of 50,000 episodes takes to compute; a report on a
SQLite ledger at this corral's schema version reads it through ``sqlite3`` alone. Anything else
(PostgreSQL, an older schema that needs migrating) goes through ``corral.ledger.Ledger``.

The module's functions are the report queries of ``corral.ledger.report_queries``, with the same
parameters and results, written for SQLite alone (see ``corral.ledger.report_source``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from corral.ledger.location import SCHEMA_VERSION, TABLES
from corral.ledger.report_source import CellQuery, CellRow, ErrorRow, cell_row, json_path
from corral.states import IN_FLIGHT, TaskState

DONE, FAILED, CANCELLED = TaskState.DONE.value, TaskState.FAILED.value, TaskState.CANCELLED.value
BUDGET = TaskState.BUDGET.value


class SqliteReader:
    """A SQLite ledger opened read-only: read transactions, and the runs a report names."""

    dialect_name = "sqlite"

    def __init__(self, path: Path):
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def open(cls, path: Path | None) -> "SqliteReader | None":
        """A reader, or None when the file is missing or not at this corral's schema version."""
        try:
            if path is None or not path.is_file():
                return None
        except (OSError, ValueError):  # a name too long: the full way says what
            return None
        reader = cls(path)
        try:
            with reader.read() as conn:
                row = conn.execute("SELECT value FROM corral_meta WHERE key = 'schema_version'").fetchone()
                tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error:
            reader.close()
            return None
        # Anything unusual (another version, a table dropped by hand) goes the full way, which says what.
        if row is None or row[0] != str(SCHEMA_VERSION) or not set(TABLES) <= tables:
            reader.close()
            return None
        return reader

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(str(self.path), timeout=120, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout=120000")
            self._conn.execute("PRAGMA query_only=1")
        return self._conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def run(self, run_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM runs WHERE id = ?", (run_id,))

    def newest_run(self, name: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM runs WHERE name = ? ORDER BY created_at DESC LIMIT 1", (name,))

    def _one(self, sql: str, params: tuple) -> dict[str, Any] | None:
        with self.read() as conn:
            cursor = conn.execute(sql, params)
            row = cursor.fetchone()
            return None if row is None else dict(zip([d[0] for d in cursor.description], row))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- the report queries -------------------------------------------------------------------------


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def stage_counts(conn: sqlite3.Connection, run_ids: Sequence[str]) -> dict[str, int]:
    sql = f"SELECT stage, COUNT(*) FROM tasks WHERE run_id IN ({_marks(run_ids)}) GROUP BY stage"
    return {stage: int(n) for stage, n in conn.execute(sql, list(run_ids))}


def result_sample(conn: sqlite3.Connection, run_id: str, stage: str | None, limit: int) -> list[str]:
    sql = "SELECT result FROM tasks WHERE run_id = ? AND state = ? AND result IS NOT NULL"
    params: list[Any] = [run_id, DONE]
    if stage is not None:
        sql += " AND stage = ?"
        params.append(stage)
    return [raw for (raw,) in conn.execute(sql + " LIMIT ?", params + [limit])]


def item_params_sample(conn: sqlite3.Connection, run_id: str, limit: int) -> list[str]:
    return [raw for (raw,) in conn.execute("SELECT params FROM items WHERE run_id = ? LIMIT ?", (run_id, limit))]


def task_rows(conn: sqlite3.Connection, run_id: str, stage: str | None) -> Iterable[tuple[str, str, Any, Any, Any]]:
    sql = ("SELECT t.stage, t.state, t.result, t.error_class, i.params FROM tasks t LEFT JOIN items i "
           "ON i.run_id = t.run_id AND i.idx = t.item_idx WHERE t.run_id = ?")
    params: list[Any] = [run_id]
    if stage is not None:
        sql += " AND t.stage = ?"
        params.append(stage)
    return conn.execute(sql, params).fetchall()


def done_events(conn: sqlite3.Connection, run_id: str, stage: str | None) -> list[tuple[float, int]]:
    sql = "SELECT at, COALESCE(count, 1) FROM events WHERE run_id = ? AND to_state = ?"
    params: list[Any] = [run_id, DONE]
    if stage:
        sql += " AND stage = ?"
        params.append(stage)
    return [(float(at), int(n)) for at, n in conn.execute(sql + " ORDER BY at", params)]


def done_times(conn: sqlite3.Connection, run_id: str, stage: str | None) -> list[float]:
    sql = "SELECT finished_at FROM tasks WHERE run_id = ? AND state = ? AND finished_at IS NOT NULL"
    params: list[Any] = [run_id, DONE]
    if stage:
        sql += " AND stage = ?"
        params.append(stage)
    return [float(at) for (at,) in conn.execute(sql + " ORDER BY finished_at", params)]


def _tasks(query: CellQuery, *, failed_only: bool = False) -> tuple[str, list[Any]]:
    """The per-task rows a CellQuery groups (the same columns as report_queries._tasks)."""
    columns = ["t.run_id AS run_id", "t.state AS state", "t.error_class AS error_class"]
    params: list[Any] = []
    for n, (kind, name) in enumerate(query.groups):
        if kind == "stage":
            columns.append(f"t.stage AS d{n}")
        else:
            columns.append(f"json_extract({'i.params' if kind == 'param' else 't.result'}, ?) AS d{n}")
            params.append(json_path(name))
    if not failed_only:
        for n, name in enumerate(query.fields):
            columns.append(f"CASE WHEN t.state = ? AND t.result IS NOT NULL THEN json_extract(t.result, ?) END AS v{n}")
            params += [DONE, json_path(name)]
    join = ""
    if query.joins_items:
        join = " LEFT OUTER JOIN items i ON i.run_id = t.run_id AND i.idx = t.item_idx"
    sql = f"SELECT {', '.join(columns)} FROM tasks t{join} WHERE t.run_id IN ({_marks(query.run_ids)})"
    params += list(query.run_ids)
    if query.stage is not None:
        sql += " AND t.stage = ?"
        params.append(query.stage)
    if failed_only:
        sql += " AND t.state = ?"
        params.append(FAILED)
    return sql, params


def cell_rows(conn: sqlite3.Connection, query: CellQuery) -> list[CellRow]:
    inner, params = _tasks(query)
    groups = [f"d{n}" for n in range(len(query.groups))]
    in_flight = [x.value for x in IN_FLIGHT]
    columns = ["run_id", *groups, "COUNT(*)", "SUM(CASE WHEN state = ? THEN 1 ELSE 0 END)",
               "SUM(CASE WHEN state = ? THEN 1 ELSE 0 END)",
               f"SUM(CASE WHEN state IN ({_marks(in_flight)}) THEN 1 ELSE 0 END)",
               "SUM(CASE WHEN state = ? THEN 1 ELSE 0 END)", "SUM(CASE WHEN state = ? THEN 1 ELSE 0 END)"]
    params += [DONE, FAILED, *in_flight, CANCELLED, BUDGET]
    for n, _ in enumerate(query.fields):
        if n == 0 and query.bool_field is not None:
            columns += [f"SUM(typeof(v{n}) = 'integer')", f"SUM(v{n} = 1)"]
        else:
            columns += [f"SUM(typeof(v{n}) IN ('integer', 'real'))", f"TOTAL(v{n})", f"TOTAL(v{n} * v{n})"]
    sql = (f"WITH s AS MATERIALIZED ({inner}) SELECT {', '.join(columns)} FROM s "
           f"GROUP BY {', '.join(['run_id', *groups])}")
    return [cell_row(row, query) for row in conn.execute(sql, params)]


def error_rows(conn: sqlite3.Connection, query: CellQuery) -> list[ErrorRow]:
    inner, params = _tasks(query, failed_only=True)
    group = ", ".join(["run_id", *(f"d{n}" for n in range(len(query.groups))), "error_class"])
    sql = f"SELECT {group}, COUNT(*) FROM ({inner}) s GROUP BY {group}"
    return [ErrorRow(tuple(row[:-2]), row[-2], int(row[-1])) for row in conn.execute(sql, params)]
