"""The report queries over a ``Ledger`` (SQLAlchemy Core, SQLite and PostgreSQL).

The heavy one, ``cell_rows``, is one GROUP BY over the tasks of the runs (joined with their items
when a group is an item parameter) that reads result fields in the database: SQLite's
``json_extract``, PostgreSQL's ``jsonb`` operators. ``corral.ledger.sqlite_reader`` answers the
same functions with the standard library; see ``corral.ledger.report_source``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sqlalchemy import Boolean, Float, Integer, Text, and_, case, cast, func, literal, select
from sqlalchemy.engine import Connection

from corral.ledger import schema
from corral.ledger.report_source import CellQuery, CellRow, ErrorRow, cell_row, json_path
from corral.states import IN_FLIGHT, TaskState

DONE, FAILED, CANCELLED = TaskState.DONE.value, TaskState.FAILED.value, TaskState.CANCELLED.value
BUDGET = TaskState.BUDGET.value


def stage_counts(conn: Connection, run_ids: Sequence[str]) -> dict[str, int]:
    """Tasks per stage over the runs."""
    t = schema.tasks
    query = select(t.c.stage, func.count()).where(t.c.run_id.in_(list(run_ids))).group_by(t.c.stage)
    return {stage: int(n) for stage, n in conn.execute(query)}


def result_sample(conn: Connection, run_id: str, stage: str | None, limit: int) -> list[str]:
    """The result JSON of up to ``limit`` done tasks of a run (of one stage, or of any)."""
    t = schema.tasks
    query = select(t.c.result).where(t.c.run_id == run_id, t.c.state == DONE, t.c.result.is_not(None))
    if stage is not None:
        query = query.where(t.c.stage == stage)
    return [raw for (raw,) in conn.execute(query.limit(limit))]


def item_params_sample(conn: Connection, run_id: str, limit: int) -> list[str]:
    """The canonical parameters (JSON) of up to ``limit`` items of a run."""
    i = schema.items
    return [raw for (raw,) in conn.execute(select(i.c.params).where(i.c.run_id == run_id).limit(limit))]


def task_rows(conn: Connection, run_id: str, stage: str | None) -> Iterable[tuple[str, str, Any, Any, Any]]:
    """(stage, state, result JSON, error class, item parameters JSON) of every task of a run."""
    t, i = schema.tasks, schema.items
    query = (select(t.c.stage, t.c.state, t.c.result, t.c.error_class, i.c.params)
             .select_from(t.outerjoin(i, (i.c.run_id == t.c.run_id) & (i.c.idx == t.c.item_idx)))
             .where(t.c.run_id == run_id))
    if stage is not None:
        query = query.where(t.c.stage == stage)
    return [tuple(r) for r in conn.execute(query)]


def done_events(conn: Connection, run_id: str, stage: str | None) -> list[tuple[float, int]]:
    """(time, tasks) of every event that recorded tasks of a run done, in time order."""
    e = schema.events
    query = select(e.c.at, func.coalesce(e.c.count, 1)).where(e.c.run_id == run_id, e.c.to_state == DONE)
    if stage:
        query = query.where(e.c.stage == stage)
    return [(float(at), int(n)) for at, n in conn.execute(query.order_by(e.c.at))]


def done_times(conn: Connection, run_id: str, stage: str | None) -> list[float]:
    """When each done task of a run finished, in order (for ledgers without events)."""
    t = schema.tasks
    query = select(t.c.finished_at).where(t.c.run_id == run_id, t.c.state == DONE, t.c.finished_at.is_not(None))
    if stage:
        query = query.where(t.c.stage == stage)
    return [float(at) for (at,) in conn.execute(query.order_by(t.c.finished_at))]


# -- the grouped table -----------------------------------------------------------------------


def _jsonb(column):
    from sqlalchemy.dialects.postgresql import JSONB

    return cast(column, JSONB)


def _field(column, name: str, pg: bool):
    """A top-level field of a column of JSON text, as a JSON value (NULL when absent)."""
    if pg:
        return _jsonb(column).op("->")(literal(name, Text))
    return func.json_extract(column, json_path(name))


def _tasks(query: CellQuery, pg: bool, *, failed_only: bool = False):
    """The per-task rows a CellQuery groups: run_id, state, error_class, d0.. (groups), v0.. (fields)."""
    t, i = schema.tasks, schema.items
    columns = [t.c.run_id.label("run_id"), t.c.state.label("state"), t.c.error_class.label("error_class")]
    for n, (kind, name) in enumerate(query.groups):
        value = t.c.stage if kind == "stage" else _field(i.c.params if kind == "param" else t.c.result, name, pg)
        columns.append(value.label(f"d{n}"))
    if not failed_only:
        for n, name in enumerate(query.fields):
            if pg:
                typed = "boolean" if (n == 0 and query.bool_field is not None) else "number"
                text_value = _jsonb(t.c.result).op("->>")(literal(name, Text))
                value = cast(cast(text_value, Boolean), Integer) if typed == "boolean" else cast(text_value, Float(53))
                columns.append(case((and_(t.c.state == DONE, func.jsonb_typeof(_field(t.c.result, name, pg)) == typed),
                                     value)).label(f"v{n}"))
            else:
                columns.append(case((and_(t.c.state == DONE, t.c.result.is_not(None)),
                                     _field(t.c.result, name, pg))).label(f"v{n}"))
    source = t
    if query.joins_items:
        source = t.outerjoin(i, (i.c.run_id == t.c.run_id) & (i.c.idx == t.c.item_idx))
    rows = select(*columns).select_from(source).where(t.c.run_id.in_(list(query.run_ids)))
    if query.stage is not None:
        rows = rows.where(t.c.stage == query.stage)
    if failed_only:
        rows = rows.where(t.c.state == FAILED)
    return rows


def cell_rows(conn: Connection, query: CellQuery) -> list[CellRow]:
    """Counts and sums per (run, group), in one pass over the tasks."""
    pg = conn.dialect.name == "postgresql"
    # Materialized, so that each JSON value is extracted once per row, not once per reference below.
    s = _tasks(query, pg).cte("s").prefix_with("MATERIALIZED")
    groups = [s.c[f"d{n}"] for n in range(len(query.groups))]
    columns = [s.c.run_id, *groups, func.count(),
               func.sum(case((s.c.state == DONE, 1), else_=0)),
               func.sum(case((s.c.state == FAILED, 1), else_=0)),
               func.sum(case((s.c.state.in_([x.value for x in IN_FLIGHT]), 1), else_=0)),
               func.sum(case((s.c.state == CANCELLED, 1), else_=0)),
               func.sum(case((s.c.state == BUDGET, 1), else_=0))]
    for n, _ in enumerate(query.fields):
        v = s.c[f"v{n}"]
        is_bool = n == 0 and query.bool_field is not None
        if pg:
            columns += [func.count(v), func.sum(v)] + ([] if is_bool else [func.sum(v * v)])
        elif is_bool:
            # json_extract gives true/false as 1/0
            columns += [func.sum(func.typeof(v) == "integer", type_=Integer), func.sum(v == 1, type_=Integer)]
        else:
            # a number is counted only when it is one (a text in a numeric field adds 0 to the sums)
            columns += [func.sum(func.typeof(v).in_(["integer", "real"]), type_=Integer), func.total(v), func.total(v * v)]
    return [cell_row(tuple(row), query) for row in conn.execute(select(*columns).group_by(s.c.run_id, *groups))]


def error_rows(conn: Connection, query: CellQuery) -> list[ErrorRow]:
    """Failed tasks per (run, group, error class)."""
    pg = conn.dialect.name == "postgresql"
    s = _tasks(query, pg, failed_only=True).subquery("s")
    groups = [s.c[f"d{n}"] for n in range(len(query.groups))]
    rows = conn.execute(select(s.c.run_id, *groups, s.c.error_class, func.count())
                        .group_by(s.c.run_id, *groups, s.c.error_class))
    return [ErrorRow(tuple(row[:-2]), row[-2], int(row[-1])) for row in rows]
