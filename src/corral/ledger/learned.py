"""What the engine and the backends learned in a run, one JSON value per (scope, key).

Controllers sharing a PostgreSQL ledger may write the same key: the last writer wins. Rows are
upserted in key order, so two transactions writing overlapping keys wait for each other instead of
deadlocking.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from corral.ledger import schema
from corral.ledger.values import loads


def load(conn: Connection, run_id: str) -> dict[str, dict[str, Any]]:
    """A run's learned values: scope -> key -> value."""
    t = schema.learned
    out: dict[str, dict[str, Any]] = {}
    for scope, key, value in conn.execute(select(t.c.scope, t.c.key, t.c.value).where(t.c.run_id == run_id)):
        out.setdefault(scope, {})[key] = loads(value)
    return out


def save(conn: Connection, run_id: str, values: Mapping[str, Mapping[str, Any]], now: float) -> int:
    """Insert or replace these values (scope -> key -> value) of a run. Returns how many were written."""
    rows = [{"run_id": run_id, "scope": scope, "key": key, "value": json.dumps(value, separators=(",", ":"), ensure_ascii=False), "updated_at": now}
            for scope in sorted(values) for key, value in sorted(values[scope].items())]
    if not rows:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(schema.learned)
    stmt = stmt.on_conflict_do_update(index_elements=["run_id", "scope", "key"],
                                      set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at})
    conn.execute(stmt, rows)
    return len(rows)


__all__ = ["load", "save"]
