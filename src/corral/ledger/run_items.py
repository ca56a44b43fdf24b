"""Statements that change what an existing run holds as it is continued: its row locked while its
config and items are compared, the items added to it, and the once-per-run tasks opened again.
Each function runs inside the caller's write transaction."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from corral.ledger import schema
from corral.states import TaskState

T = schema.tasks
I = schema.items  # noqa: E741 - the table's usual short name here
R = schema.runs


def lock_run_row(conn: Connection, run_id: str) -> dict[str, Any] | None:
    """A run's row, locked until ``conn`` commits: two controllers continuing the same run compare
    and change its config and items one after the other (SQLite's write transactions already do)."""
    query = select(R).where(R.c.id == run_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return dict(row) if row is not None else None


def item_ids(conn: Connection, run_id: str) -> dict[str, int]:
    """item_id -> idx of every item of a run (one read of the items' primary key range)."""
    return {item_id: idx for idx, item_id in conn.execute(select(I.c.idx, I.c.item_id).where(I.c.run_id == run_id))}


def next_item_index(conn: Connection, run_id: str) -> int:
    last = conn.execute(select(func.max(I.c.idx)).where(I.c.run_id == run_id)).scalar()
    return 0 if last is None else int(last) + 1


def reopen_once_tasks(conn: Connection, run_id: str, stages: Sequence[str], now: float) -> list[str]:
    """Done once-per-run tasks of ``stages`` wait again, as their next attempt (attempts kept).
    Returns the stages whose task was opened again."""
    reopened = []
    for stage in stages:
        hit = conn.execute(update(T).where(T.c.run_id == run_id, T.c.stage == stage, T.c.item_idx == -1,
                                           T.c.state == TaskState.DONE)
                           .values(state=TaskState.WAITING, ready_at=None, not_before=None, submission_id=None,
                                   error_class=None, error_message=None)).rowcount
        if hit:
            reopened.append(stage)
    return reopened


def set_run_snapshot(conn: Connection, run_id: str, **values: Any) -> None:
    """Set the stored snapshot of a run: ``config``, ``config_hash``, ``selection``, ``item_count``,
    ``updated_at`` (a change of ``updated_at`` tells a running controller to look again)."""
    conn.execute(update(R).where(R.c.id == run_id).values(**values))
