"""Reading a SQLite ledger with the standard library, for ``corral report``.

SQLAlchemy takes longer to import than a report of 50,000 episodes takes to compute; a report on a
SQLite ledger at this corral's schema version reads it through ``sqlite3`` alone. Anything else
(PostgreSQL, an older schema that needs migrating) goes through ``corral.ledger.Ledger``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any, Iterator

from corral.ledger.location import SCHEMA_VERSION


class SqliteReader:
    """What ``aggregate`` and ``progress_over_time`` need of a ledger: its dialect and a read transaction."""

    dialect_name = "sqlite"

    def __init__(self, path: Path):
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def open(cls, path: Path | None) -> "SqliteReader | None":
        """A reader, or None when the file is missing or not at this corral's schema version."""
        if path is None or not path.is_file():
            return None
        reader = cls(path)
        try:
            with reader.read() as conn:
                row = conn.execute("SELECT value FROM corral_meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.Error:
            reader.close()
            return None
        if row is None or row[0] != str(SCHEMA_VERSION):
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
