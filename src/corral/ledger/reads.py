"""What the Python API reads about one run: tasks, their records, usage, submissions and errors.

Each function takes the Ledger and the run id and returns plain rows (dicts or tuples); each read
is one snapshot of the ledger.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from sqlalchemy import case, func, select

from corral.ledger import schema
from corral.ledger.store import Ledger, loads
from corral.states import OPEN_SUBMISSIONS, SubmissionState, TaskState

#: the item key of the one task of a ``per: all`` stage (it has no item)
ONCE_PER_RUN_KEY = "all"

#: The columns of ``record_rows``, in order.
RECORD_COLUMNS = ("stage", "state", "attempts", "result", "error_class", "error_message", "started_at",
                  "finished_at", "host", "tokens_in", "tokens_out", "cost", "id", "key", "item_id", "params")


def _tasks_with_items():
    t, i = schema.tasks, schema.items
    return t, i, t.outerjoin(i, (i.c.run_id == t.c.run_id) & (i.c.idx == t.c.item_idx))


def efficiency_infos(ledger: Ledger, run_id: str) -> list[tuple[str, Any]]:
    """(stage, info) of the run's submissions whose info records cluster job usage (``efficiency``)."""
    sub = schema.submissions
    with ledger.read() as conn:
        rows = conn.execute(select(sub.c.stage, sub.c.info).where(
            sub.c.run_id == run_id, sub.c.info.like('%"efficiency"%'))).all()
    return [(stage, loads(info) or {}) for stage, info in rows]


def stage_usage(ledger: Ledger, run_id: str) -> list[tuple[str, int | None, int | None, float | None, int]]:
    """Per stage that recorded tokens or a cost: (stage, tokens in, tokens out, cost, tasks with a cost)."""
    t = schema.tasks
    query = (select(t.c.stage, func.sum(t.c.tokens_in), func.sum(t.c.tokens_out), func.sum(t.c.cost),
                    func.count(t.c.cost))
             .where(t.c.run_id == run_id, (t.c.tokens_in.is_not(None)) | (t.c.cost.is_not(None)))
             .group_by(t.c.stage))
    with ledger.read() as conn:
        return [tuple(r) for r in conn.execute(query).all()]


def billed_requests(ledger: Ledger, run_id: str, stage: str, limit: int = 2000) -> list[dict[str, Any]]:
    """The billed usage of a stage's done tasks (the latest ``limit``): tokens in and out, and what
    their ``info`` says of cached input and reasoning tokens (``usage``)."""
    t = schema.tasks
    query = (select(t.c.tokens_in, t.c.tokens_out, t.c.info)
             .where(t.c.run_id == run_id, t.c.stage == stage, t.c.state == TaskState.DONE,
                    t.c.tokens_in.is_not(None))
             .order_by(t.c.id.desc()).limit(limit))
    with ledger.read() as conn:
        rows = conn.execute(query).all()
    out = []
    for tokens_in, tokens_out, info in rows:
        usage = (loads(info) or {}).get("usage") or {} if info else {}
        out.append({"tokens_in": int(tokens_in), "tokens_out": int(tokens_out or 0),
                    "cached_in": int(usage.get("cached_in") or 0), "reasoning_out": int(usage.get("reasoning_out") or 0)})
    return out


def stage_spending(ledger: Ledger, run_id: str, stage: str) -> tuple[float, int]:
    """What a stage's tasks have cost in a run, and how many of them are done."""
    t = schema.tasks
    query = select(func.sum(t.c.cost), func.sum(case((t.c.state == TaskState.DONE, 1), else_=0))).where(
        t.c.run_id == run_id, t.c.stage == stage)
    with ledger.read() as conn:
        cost, done = conn.execute(query).one()
    return float(cost or 0.0), int(done or 0)


def failed_submissions(ledger: Ledger, run_id: str, limit: int = 5) -> tuple[int, list[dict[str, Any]]]:
    """How many of the run's submissions failed as a whole, and the latest ``limit`` of them."""
    s = schema.submissions
    where = (s.c.run_id == run_id, s.c.state == SubmissionState.FAILED)
    with ledger.read() as conn:
        count = conn.execute(select(func.count()).select_from(s).where(*where)).scalar() or 0
        rows = [dict(r) for r in conn.execute(select(s.c.id, s.c.stage, s.c.remote_id, s.c.task_count, s.c.info)
                                              .where(*where).order_by(s.c.id.desc()).limit(limit)).mappings()]
    for row in rows:
        row["error"] = (loads(row.pop("info")) or {}).get("error")
    return count, rows[::-1]


def submissions(ledger: Ledger, run_id: str, open_only: bool = True) -> list[dict[str, Any]]:
    """The run's submissions in order (only the open ones by default), ``info`` decoded."""
    s = schema.submissions
    query = select(s).where(s.c.run_id == run_id).order_by(s.c.id)
    if open_only:
        query = query.where(s.c.state.in_([str(x) for x in OPEN_SUBMISSIONS]))
    with ledger.read() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    for row in rows:
        row["info"] = loads(row["info"]) or {}
    return rows


def failure_counts(ledger: Ledger, run_id: str) -> list[dict[str, Any]]:
    """Failed tasks counted by stage and error class."""
    t = schema.tasks
    query = (select(t.c.stage, t.c.error_class, func.count())
             .where(t.c.run_id == run_id, t.c.state == TaskState.FAILED).group_by(t.c.stage, t.c.error_class))
    with ledger.read() as conn:
        return [{"stage": a, "error_class": b, "count": n} for a, b, n in conn.execute(query)]


def common_errors(ledger: Ledger, run_id: str) -> list[dict[str, Any]]:
    """Per stage and end state (failed, stopped by the budget, or cancelled with a cause): how many
    tasks, the most common error class, how many have it, its most common message and one task with it."""
    t = schema.tasks
    ended_badly = (t.c.run_id == run_id) & (t.c.state.in_([TaskState.FAILED, TaskState.BUDGET]) |
                                            ((t.c.state == TaskState.CANCELLED) & t.c.error_class.is_not(None)))
    by_class = (select(t.c.stage, t.c.state, t.c.error_class, func.count()).where(ended_badly)
                .group_by(t.c.stage, t.c.state, t.c.error_class))
    found: dict[tuple[str, str], dict[str, Any]] = {}
    with ledger.read() as conn:
        for stage, state, error_class, count in conn.execute(by_class):
            entry = found.setdefault((stage, state), {"stage": stage, "state": state, "tasks": 0, "count": 0})
            entry["tasks"] += count
            if count > entry["count"]:
                entry.update(error_class=error_class, count=count)
        for entry in found.values():
            cls = entry.get("error_class")
            message = (select(t.c.error_message, func.count(), func.min(t.c.id))
                       .where(ended_badly, t.c.stage == entry["stage"], t.c.state == entry["state"],
                              t.c.error_class.is_(None) if cls is None else t.c.error_class == cls)
                       .group_by(t.c.error_message).order_by(func.count().desc(), func.min(t.c.id)).limit(1))
            row = conn.execute(message).first()
            entry["message"], entry["message_count"], entry["task_id"] = row if row else (None, 0, None)
    return sorted(found.values(), key=lambda e: (e["stage"], e["state"]))


def find_tasks(ledger: Ledger, run_id: str, *, task_id: int | None = None, ref: str | None = None,
               stage: str | None = None) -> list[dict[str, Any]]:
    """Task rows with their item's key, params and id: by task id, else by item key or item id
    (``ref``), optionally of one stage; ``all`` names the task of a ``per: all`` stage."""
    t, i, joined = _tasks_with_items()
    query = (select(t, i.c.key, i.c.params, i.c.item_id).select_from(joined).where(t.c.run_id == run_id)
             .order_by(t.c.id))
    with ledger.read() as conn:
        rows = []
        if task_id is not None:
            rows = [dict(r) for r in conn.execute(query.where(t.c.id == task_id)).mappings()]
        if not rows and ref is not None:
            q = query.where((i.c.key == ref) | (i.c.item_id == ref))
            if stage:
                q = q.where(t.c.stage == stage)
            rows = [dict(r) for r in conn.execute(q).mappings()]
        if not rows and ref == ONCE_PER_RUN_KEY:
            q = query.where(t.c.item_idx == -1)
            if stage:
                q = q.where(t.c.stage == stage)
            rows = [dict(r, key=ONCE_PER_RUN_KEY, item_id=ONCE_PER_RUN_KEY) for r in conn.execute(q).mappings()]
    return rows


def record_rows(ledger: Ledger, run_id: str, stage: str | None = None,
                states: Sequence[str] | None = None) -> Iterator[tuple]:
    """Every task of the run with its item, in task order, streamed: tuples of ``RECORD_COLUMNS``."""
    t, i, joined = _tasks_with_items()
    query = (select(t.c.stage, t.c.state, t.c.attempts, t.c.result, t.c.error_class, t.c.error_message,
                    t.c.started_at, t.c.finished_at, t.c.host, t.c.tokens_in, t.c.tokens_out, t.c.cost,
                    t.c.id, i.c.key, i.c.item_id, i.c.params)
             .select_from(joined).where(t.c.run_id == run_id).order_by(t.c.id))
    if stage:
        query = query.where(t.c.stage == stage)
    if states:
        query = query.where(t.c.state.in_([str(s) for s in states]))
    with ledger.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=5000).execute(query)
        for row in result:
            yield tuple(row)
