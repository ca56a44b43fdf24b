"""The engine's statements: what a tick reads, locks and writes in ``tasks``, ``submissions`` and
``controllers``, and what ``retry`` and ``cancel`` change.

Each function runs inside the caller's transaction (``conn``) and returns plain rows or values.
Lists of ids or item indexes of any length are sent in chunks of ``CHUNK`` (SQLite binds at most
999 values per statement). The hot paths of a tick (locking the rows it decides from, recording
thousands of outcomes) go to the driver directly: the SQL layer's per-row work would dominate.
"""

from __future__ import annotations

from typing import Any, Collection, Iterable, Mapping, Sequence

from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.engine import Connection

from corral.ledger import schema
from corral.ledger.store import executemany
from corral.states import ACTIVE, IN_FLIGHT, OPEN_SUBMISSIONS, ErrorClass, TaskState

CHUNK = 900
# "not done" as a list, so the (run, stage, state, item) index answers it with a few seeks.
NOT_DONE = (TaskState.WAITING, TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING, TaskState.FAILED,
            TaskState.CANCELLED, TaskState.BUDGET)
#: the columns ``write_outcomes`` sets, from dicts that also carry the task's id as ``tid``
OUTCOME_COLUMNS = ("state", "result", "error_class", "error_message", "started_at", "finished_at", "host",
                   "tokens_in", "tokens_out", "cost", "info", "attempts", "not_before", "submission_id", "ready_at")
_DECIDED_FROM = ("id", "stage", "item_idx", "state", "attempts", "submission_id", "error_class", "attempt_base")

T = schema.tasks
S = schema.submissions
C = schema.controllers


def chunks(values: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _mark(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


# -- the rows a tick decides from --------------------------------------------------------------

def lock_task_rows(conn: Connection, run_id: str, task_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The rows of ``task_ids`` (of ``run_id``) that outcomes are decided from, by id.

    What is decided from these rows is written back by id: on PostgreSQL they stay locked until the
    transaction commits, so a `corral cancel` committed meanwhile is read, not overwritten (SQLite's
    write transactions already run one at a time)."""
    rows: dict[int, dict[str, Any]] = {}
    mark = _mark(conn)
    lock = " ORDER BY id FOR UPDATE" if conn.dialect.name == "postgresql" else ""
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        for part in chunks(list(task_ids)):
            cursor.execute(f"SELECT {', '.join(_DECIDED_FROM)} FROM tasks "
                           f"WHERE run_id = {mark} AND id IN ({', '.join([mark] * len(part))}){lock}",
                           (run_id, *part))
            for tid, stage, item_idx, state, attempts, submission_id, error_class, base in cursor.fetchall():
                rows[tid] = {"id": tid, "stage": stage, "item_idx": item_idx, "state": state,
                             "attempts": attempts, "submission_id": submission_id, "error_class": error_class,
                             "attempt_base": base}
    finally:
        cursor.close()
    return rows


def lock_unfinished(conn: Connection, submission_id: int) -> list[dict[str, Any]]:
    """Queued and running tasks of a submission, locked (PostgreSQL) until ``conn`` commits."""
    query = (select(*(T.c[name] for name in _DECIDED_FROM))
             .where(T.c.submission_id == submission_id, T.c.state.in_(IN_FLIGHT))
             .order_by(T.c.id).with_for_update())
    return [dict(row) for row in conn.execute(query).mappings()]


# -- recording outcomes --------------------------------------------------------------------------

def mark_started(conn: Connection, started: dict[int, float]) -> None:
    """Queued tasks that a worker started (task id -> when) become running."""
    executemany(conn, f"UPDATE tasks SET state = '{TaskState.RUNNING}', started_at = ? "
                      f"WHERE id = ? AND state = '{TaskState.QUEUED}'",
                [(at, tid) for tid, at in started.items()])


def write_outcomes(conn: Connection, updates: Sequence[dict[str, Any]]) -> None:
    """Write decided task rows (every column of ``OUTCOME_COLUMNS``, by ``tid``)."""
    sql = f"UPDATE tasks SET {', '.join(f'{c} = ?' for c in OUTCOME_COLUMNS)} WHERE id = ?"
    executemany(conn, sql, [tuple(u[c] for c in OUTCOME_COLUMNS) + (u["tid"],) for u in updates])


# -- dependencies ----------------------------------------------------------------------------------

def waiting_idxs(conn: Connection, run_id: str, stage: str) -> list[int]:
    return [r[0] for r in conn.execute(select(T.c.item_idx).where(
        T.c.run_id == run_id, T.c.stage == stage, T.c.state == TaskState.WAITING))]


def wait_again(conn: Connection, run_id: str, stage: str, idxs: Sequence[int]) -> None:
    """Pending tasks of ``stage`` for items ``idxs`` go back to waiting."""
    for part in chunks(sorted(set(idxs))):
        conn.execute(update(T).where(T.c.run_id == run_id, T.c.stage == stage, T.c.state == TaskState.PENDING,
                                     T.c.item_idx.in_(part)).values(state=TaskState.WAITING))


def once_state(conn: Connection, run_id: str, stage: str) -> str | None:
    """The state of a once-per-run stage's task (item index -1), or None."""
    return conn.execute(select(T.c.state).where(T.c.run_id == run_id, T.c.stage == stage,
                                                T.c.item_idx == -1)).scalar()


def has_tasks_in(conn: Connection, run_id: str, stages: Sequence[str], states: Sequence[str]) -> bool:
    """Whether any task of ``stages`` is in one of ``states``: one index seek per (stage, state)."""
    for stage in stages:
        for state in states:
            if conn.execute(select(T.c.id).where(T.c.run_id == run_id, T.c.stage == stage,
                                                 T.c.state == state).limit(1)).first():
                return True
    return False


def promote_waiting(conn: Connection, run_id: str, stage: str, needs: Sequence[str], idxs: Sequence[int] | None,
                    now: float, allowed: Mapping[str, Collection[str]] | None = None) -> None:
    """Waiting tasks of ``stage`` (for items ``idxs``, or all) whose per-item ``needs`` are all done
    become pending."""
    upstream = T.alias("upstream")
    conditions = [T.c.run_id == run_id, T.c.stage == stage, T.c.state == TaskState.WAITING]
    allowed = {need: ends for need, ends in (allowed or {}).items() if ends and need in needs}
    if needs:
        plain = [n for n in needs if n not in allowed]
        blocking = [upstream.c.stage.in_(plain) & upstream.c.state.in_(NOT_DONE)] if plain else []
        blocking += [(upstream.c.stage == need) & upstream.c.state.in_([s for s in NOT_DONE if s.value not in ends])
                     for need, ends in allowed.items()]
        conditions.append(~exists().where(upstream.c.run_id == run_id, upstream.c.item_idx == T.c.item_idx,
                                          or_(*blocking)))
    if idxs is None:
        conn.execute(update(T).where(*conditions).values(state=TaskState.PENDING, ready_at=now))
        return
    for part in chunks(idxs):
        conn.execute(update(T).where(*conditions, T.c.item_idx.in_(part))
                     .values(state=TaskState.PENDING, ready_at=now))


def cancel_waiting(conn: Connection, run_id: str, stage: str, idxs: Sequence[int], now: float,
                   message: str) -> list[int]:
    """Waiting tasks of ``stage`` for items ``idxs`` (at most ``CHUNK``) are cancelled because a task
    they need ended badly. Returns the item indexes cancelled."""
    where = (T.c.run_id == run_id, T.c.stage == stage, T.c.state == TaskState.WAITING)
    hit = [r[0] for r in conn.execute(select(T.c.item_idx).where(*where, T.c.item_idx.in_(idxs)))]
    if hit:
        conn.execute(update(T).where(*where, T.c.item_idx.in_(hit))
                     .values(state=TaskState.CANCELLED, error_class=ErrorClass.UPSTREAM, finished_at=now,
                             error_message=message))
    return hit


def release_once(conn: Connection, run_id: str, stage: str, now: float) -> None:
    """A once-per-run stage's waiting task becomes pending."""
    conn.execute(update(T).where(T.c.run_id == run_id, T.c.stage == stage, T.c.item_idx == -1,
                                 T.c.state == TaskState.WAITING).values(state=TaskState.PENDING, ready_at=now))


# -- planning and queueing ---------------------------------------------------------------------------

def cost_spent(conn: Connection, run_id: str) -> float:
    """What a run's tasks have cost so far."""
    return conn.execute(select(func.sum(T.c.cost)).where(T.c.run_id == run_id)).scalar() or 0.0


def pend_waiting(conn: Connection, run_id: str, stage: str, limit: int, now: float) -> None:
    """Up to ``limit`` waiting tasks of ``stage`` (oldest first) become pending at once: they are
    sent ahead of their needs to a backend that holds them until those succeed."""
    ids = [r[0] for r in conn.execute(select(T.c.id).where(
        T.c.run_id == run_id, T.c.stage == stage, T.c.state == TaskState.WAITING).order_by(T.c.id).limit(limit))]
    for part in chunks(ids):
        conn.execute(update(T).where(T.c.id.in_(part), T.c.state == TaskState.WAITING)
                     .values(state=TaskState.PENDING, ready_at=now, not_before=None))


def queue_tasks(conn: Connection, ids: Sequence[int], submission_id: int, now: float) -> None:
    """Pending tasks ``ids`` become queued in a submission."""
    for part in chunks(ids):
        conn.execute(update(T).where(T.c.id.in_(part), T.c.state == TaskState.PENDING)
                     .values(state=TaskState.QUEUED, submission_id=submission_id, queued_at=now, not_before=None))


# -- cancel and retry ---------------------------------------------------------------------------------

def cancel_active(conn: Connection, run_id: str, stage: str | None, now: float) -> tuple[int, list[int]]:
    """Every unfinished task of a run (of one stage) is cancelled by the user. Returns how many, and
    with a stage, their item indexes."""
    where = [T.c.run_id == run_id, T.c.state.in_(ACTIVE)]
    idxs: list[int] = []
    if stage is not None:
        where.append(T.c.stage == stage)
        idxs = [r[0] for r in conn.execute(select(T.c.item_idx).where(*where))]
    count = conn.execute(update(T).where(*where).values(
        state=TaskState.CANCELLED, error_class=ErrorClass.CANCELLED, finished_at=now,
        error_message="cancelled by the user")).rowcount
    return count, idxs


def retryable(conn: Connection, run_id: str, states: Sequence[str], stage: str | None,
              error_class: str | None) -> list[tuple[int, str, int]]:
    """(id, stage, item index) of a run's tasks in ``states``, of one stage and error class if given;
    without an error class, those cancelled because of another task are left out."""
    query = select(T.c.id, T.c.stage, T.c.item_idx).where(T.c.run_id == run_id, T.c.state.in_(states))
    if stage is not None:
        query = query.where(T.c.stage == stage)
    if error_class is not None:
        query = query.where(T.c.error_class == error_class)
    else:
        query = query.where((T.c.error_class.is_(None)) | (T.c.error_class != ErrorClass.UPSTREAM))
    return [tuple(r) for r in conn.execute(query).all()]


def reset_for_retry(conn: Connection, run_id: str, stage: str, idxs: Sequence[int], states: Sequence[str],
                    state: str, now: float) -> None:
    """Tasks of ``stage`` for items ``idxs`` still in ``states`` start over in ``state``: their attempt
    numbers go on, and the retries they are allowed count from here."""
    for part in chunks(idxs):
        conn.execute(update(T).where(T.c.run_id == run_id, T.c.stage == stage, T.c.item_idx.in_(part),
                                     T.c.state.in_(states))
                     .values(state=state, attempt_base=T.c.attempts, not_before=None, ready_at=now,
                             submission_id=None, error_class=None, error_message=None))


def reopen_upstream_cancelled(conn: Connection, run_id: str, stage: str, idxs: Sequence[int] | None) -> list[int]:
    """Tasks of ``stage`` (for items ``idxs``, or all) cancelled because a needed task ended badly
    wait again, their retries counted afresh. Returns their item indexes."""
    upstream_cancelled = (T.c.run_id == run_id, T.c.stage == stage, T.c.state == TaskState.CANCELLED,
                          T.c.error_class == ErrorClass.UPSTREAM)
    if idxs is None:
        idxs = [r[0] for r in conn.execute(select(T.c.item_idx).where(*upstream_cancelled))]
    reopened: list[int] = []
    for part in chunks(idxs):
        hit = [r[0] for r in conn.execute(select(T.c.item_idx).where(*upstream_cancelled, T.c.item_idx.in_(part)))]
        if hit:
            conn.execute(update(T).where(T.c.run_id == run_id, T.c.stage == stage, T.c.item_idx.in_(hit),
                                         T.c.state == TaskState.CANCELLED)
                         .values(state=TaskState.WAITING, error_class=None, error_message=None,
                                 attempt_base=T.c.attempts))
            reopened.extend(hit)
    return reopened


# -- controllers of a shared ledger -------------------------------------------------------------------

def renew_lease(conn: Connection, controller: str, host: str, pid: int, now: float, expires_at: float) -> None:
    values = {"host": host, "pid": pid, "heartbeat_at": now, "expires_at": expires_at}
    if conn.execute(update(C).where(C.c.id == controller).values(**values)).rowcount:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        conn.execute(insert(C).values(id=controller, started_at=now, **values)
                     .on_conflict_do_update(index_elements=[C.c.id], set_=values))
    else:
        conn.execute(C.insert().prefix_with("OR REPLACE"), [{"id": controller, "started_at": now, **values}])


def expired_controllers(conn: Connection, now: float, besides: str) -> list[str]:
    """Controllers other than ``besides`` whose lease has expired, locked; those another controller
    is reclaiming right now are skipped."""
    return [r[0] for r in conn.execute(select(C.c.id).where(C.c.expires_at < now, C.c.id != besides)
                                       .with_for_update(skip_locked=True))]


def open_submissions_of(conn: Connection, run_id: str, controllers: Sequence[str]) -> list[tuple[int, str, str]]:
    """(id, stage, controller) of a run's open submissions made by ``controllers``, locked (skipping
    those locked already)."""
    return [tuple(r) for r in conn.execute(select(S.c.id, S.c.stage, S.c.controller).where(
        S.c.run_id == run_id, S.c.controller.in_(controllers), S.c.state.in_(OPEN_SUBMISSIONS))
        .with_for_update(skip_locked=True)).all()]


def in_flight_ids(conn: Connection, submission_id: int) -> list[int]:
    """Ids of a submission's queued and running tasks."""
    return [r[0] for r in conn.execute(select(T.c.id).where(T.c.submission_id == submission_id,
                                                            T.c.state.in_(IN_FLIGHT)))]


def forget_idle_controller(conn: Connection, controller: str) -> None:
    """A controller's lease row is deleted, unless it still has an open submission in any run."""
    still = conn.execute(select(S.c.id).where(S.c.controller == controller, S.c.state.in_(OPEN_SUBMISSIONS))
                         .limit(1)).first()
    if still is None:
        conn.execute(delete(C).where(C.c.id == controller))


# -- reading one submission ---------------------------------------------------------------------------

def submission_row(conn: Connection, submission_id: int) -> dict[str, Any] | None:
    row = conn.execute(S.select().where(S.c.id == submission_id)).mappings().first()
    return dict(row) if row is not None else None


# -- reparse ----------------------------------------------------------------------------------------

#: task states from which a parse failure may be turned done by ``corral reparse``: failed for good,
#: or waiting for its retry (not yet sent again)
REPARSABLE = (TaskState.FAILED, TaskState.PENDING)


def write_reparsed(conn: Connection, run_id: str, results: Sequence[tuple[int, str]]) -> list[int]:
    """Tasks (id, result as JSON) whose last attempt failed to parse become done with that result,
    attempts and billed usage kept. Only tasks still failed or pending with a parse error are
    changed; returns the ids that were."""
    changed: list[int] = []
    for part in chunks(list(results)):
        ids = [tid for tid, _ in part]
        still = {r[0] for r in conn.execute(select(T.c.id).where(
            T.c.run_id == run_id, T.c.id.in_(ids), T.c.state.in_(REPARSABLE), T.c.error_class == ErrorClass.PARSE))}
        rows = [(value, tid) for tid, value in part if tid in still]
        executemany(conn, f"UPDATE tasks SET state = '{TaskState.DONE}', result = ?, error_class = NULL, "
                          "error_message = NULL, not_before = NULL, info = NULL WHERE id = ?",
                    rows)
        changed.extend(tid for _, tid in rows)
    return changed
