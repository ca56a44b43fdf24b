"""Queries of the run registry: creating and finding runs, tags and notes, merging and ingesting runs,
and the result files that follow the event log. Each function takes a Connection and plain values
and returns plain rows (dicts or tuples)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from corral.ledger import schema
from corral.states import ACTIVE, TERMINAL, RunStatus, TaskState

#: Rows per INSERT when tasks are copied from other runs.
TASK_INSERT_CHUNK = 5000


# -- runs ---------------------------------------------------------------------------------------


def lock_run_creation(conn: Connection, name: str) -> None:
    """Serialise run creation for one campaign name until ``conn`` commits. PostgreSQL: a
    transaction-scoped advisory lock; SQLite's write transaction already excludes other writers."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"corral-run:{name}"))))


def run_row(conn: Connection, run_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(schema.runs).where(schema.runs.c.id == run_id)).mappings().first()
    return dict(row) if row is not None else None


def newest_run_with_config(conn: Connection, name: str, config_hash: str) -> dict[str, Any] | None:
    """The newest run of a campaign with this config hash that was not cancelled."""
    runs = schema.runs
    row = conn.execute(select(runs).where(runs.c.name == name, runs.c.config_hash == config_hash,
                                          runs.c.status != RunStatus.CANCELLED.value)
                       .order_by(runs.c.created_at.desc())).mappings().first()
    return dict(row) if row is not None else None


def runs_with_config(conn: Connection, name: str, config_hash: str) -> list[dict[str, Any]]:
    runs = schema.runs
    return [dict(r) for r in conn.execute(select(runs).where(runs.c.config_hash == config_hash,
                                                             runs.c.name == name)).mappings()]


def run_ids_oldest_first(conn: Connection) -> list[str]:
    return [r[0] for r in conn.execute(select(schema.runs.c.id).order_by(schema.runs.c.created_at))]


def update_run(conn: Connection, run_id: str, **values: Any) -> None:
    """Set columns of one run's row (``tags``, ``notes``, ``selection``, ``item_count``, ``updated_at``)."""
    conn.execute(update(schema.runs).where(schema.runs.c.id == run_id).values(**values))


# -- items and tasks copied between runs ----------------------------------------------------------


def run_items(conn: Connection, run_id: str) -> list[tuple[int, str, str, str]]:
    """(idx, item_id, key, canonical params) of every item of a run."""
    i = schema.items
    return [tuple(r) for r in conn.execute(select(i.c.idx, i.c.item_id, i.c.key, i.c.params)
                                           .where(i.c.run_id == run_id))]


def run_item_ids(conn: Connection, run_id: str) -> dict[str, int]:
    """item_id -> idx of every item of a run."""
    i = schema.items
    return {item_id: idx for idx, item_id in conn.execute(select(i.c.idx, i.c.item_id).where(i.c.run_id == run_id))}


def run_tasks(conn: Connection, run_id: str, fields: Sequence[str]) -> list[dict[str, Any]]:
    """Every task of a run: its id, stage, item_idx and info, and the columns named in ``fields``."""
    t = schema.tasks
    columns = [t.c.id, t.c.stage, t.c.item_idx, t.c.info] + [t.c[name] for name in fields]
    return [dict(r) for r in conn.execute(select(*columns).where(t.c.run_id == run_id)).mappings()]


def insert_items(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(schema.items.insert(), rows)


def insert_tasks(conn: Connection, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), TASK_INSERT_CHUNK):
        conn.execute(schema.tasks.insert(), rows[start:start + TASK_INSERT_CHUNK])


def replace_tasks(conn: Connection, updates: Iterable[tuple[int, dict[str, Any]]]) -> None:
    """Give each task (id, values) the values of a task from another run; it leaves any submission
    and backoff behind."""
    t = schema.tasks
    for task_id, values in updates:
        conn.execute(update(t).where(t.c.id == task_id).values(**values, submission_id=None, not_before=None))


def count_items(conn: Connection, run_id: str) -> int:
    i = schema.items
    return conn.execute(select(func.count()).select_from(i).where(i.c.run_id == run_id)).scalar_one()


def count_unfinished_items(conn: Connection, run_id: str) -> int:
    """How many items of a run have a task still to finish (waiting, pending, queued or running)."""
    t = schema.tasks
    return conn.execute(select(func.count(t.c.item_idx.distinct())).where(
        t.c.run_id == run_id, t.c.item_idx >= 0, t.c.state.in_([s.value for s in ACTIVE]))).scalar_one()


def task_states(conn: Connection, run_id: str) -> set[str]:
    """The states a run's tasks are in."""
    t = schema.tasks
    return {s for (s,) in conn.execute(select(t.c.state).where(t.c.run_id == run_id).distinct())}


# -- result files ---------------------------------------------------------------------------------


def ended_task_events(conn: Connection, run_id: str, since: float,
                      after_id: int) -> list[tuple[int, float, int | None, str | None]]:
    """(event id, at, task id, stage) of the events of a run that ended tasks, after event ``after_id``
    and not before ``since`` (the time bound lets the (run_id, at) index narrow the scan), in order:
    one event per task recorded done or failed, and one per cancellation of many tasks (task id
    None; stage None for the whole run)."""
    e = schema.events
    one_task = (e.c.kind == "task") & e.c.to_state.in_([TaskState.DONE.value, TaskState.FAILED.value])
    many = e.c.kind.in_(["upstream", "cancel"]) & (e.c.to_state == TaskState.CANCELLED.value)
    return [tuple(r) for r in conn.execute(
        select(e.c.id, e.c.at, e.c.task_id, e.c.stage)
        .where(e.c.run_id == run_id, e.c.at >= since, e.c.id > after_id, one_task | many)
        .order_by(e.c.id))]


def _tasks_with_items():
    t, i = schema.tasks, schema.items
    return (select(t, i.c.item_id, i.c.key, i.c.params.label("item_params"))
            .select_from(t.join(i, (i.c.run_id == t.c.run_id) & (i.c.idx == t.c.item_idx))))


def ended_tasks_with_items(conn: Connection, task_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The tasks among ``task_ids`` that are done, failed or cancelled, each row with every task
    column and its item's ``item_id``, ``key`` and ``item_params`` (at most a few hundred ids per call)."""
    t = schema.tasks
    query = _tasks_with_items().where(t.c.id.in_(list(task_ids)), t.c.state.in_([s.value for s in TERMINAL]))
    return [dict(r) for r in conn.execute(query).mappings()]


def cancelled_tasks_with_items(conn: Connection, run_id: str, stage: str | None, at: float) -> list[dict[str, Any]]:
    """The tasks of a run (of one stage) cancelled at ``at``, as ``ended_tasks_with_items`` gives them."""
    t = schema.tasks
    query = _tasks_with_items().where(t.c.run_id == run_id, t.c.state == TaskState.CANCELLED.value,
                                      t.c.finished_at >= at - 1e-6, t.c.finished_at <= at + 1e-6)
    if stage is not None:
        query = query.where(t.c.stage == stage)
    return [dict(r) for r in conn.execute(query).mappings()]
