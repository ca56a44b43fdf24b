"""The engine's ledger functions on SQLite and PostgreSQL: states stored as their plain values, lists
longer than one statement's chunk, and the row locks a tick decides under."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from corral.ledger import Ledger
from corral.ledger import engine_queries as queries
from corral.states import ErrorClass, TaskState

RUN = "r1"
N = 2 * queries.CHUNK + 200  # three chunks


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """A run of N items with one task each in stage ``a`` and ``b`` (``b`` needs ``a``)."""
    ledger = Ledger(ledger_url)
    items = [SimpleNamespace(index=i, item_id=f"id{i}", key=f"k{i}", canonical=f'{{"i":{i}}}', params={"i": i})
             for i in range(N)]
    with ledger.write() as conn:
        ledger.insert_items_and_tasks(conn, RUN, items, [("a", "item", False, "local"), ("b", "item", True, "local")],
                                      now=1.0)
    try:
        yield ledger
    finally:
        ledger.close()


def states(ledger: Ledger, stage: str) -> dict[str, int]:
    return ledger.counts(RUN)[stage]


def task_ids(ledger: Ledger, stage: str) -> list[int]:
    with ledger.read() as conn:
        return [r["id"] for r in ledger.ready_tasks(conn, RUN, stage, now=10.0, limit=10 * N)]


def test_a_tick_queues_starts_and_records_thousands_of_tasks(ledger: Ledger):
    ids = task_ids(ledger, "a")
    assert len(ids) == N
    with ledger.write() as conn:
        sub_id = ledger.insert_submission(conn, {"run_id": RUN, "stage": "a", "backend": "local",
                                                 "idempotency_key": "k1", "state": "submitting", "created_at": 2.0,
                                                 "task_count": N})
        queries.queue_tasks(conn, ids, sub_id, now=2.0)
        queries.mark_started(conn, {tid: 3.0 for tid in ids[:N // 2]})
    # The enums reach the database as their values, through SQLAlchemy and through the driver alike.
    assert states(ledger, "a") == {"queued": N - N // 2, "running": N // 2}
    with ledger.write() as conn:
        rows = queries.lock_task_rows(conn, RUN, ids)
        assert len(rows) == N and rows[ids[0]]["state"] == "running" and rows[ids[-1]]["state"] == "queued"
        unfinished = queries.lock_unfinished(conn, sub_id)
        assert [r["id"] for r in unfinished] == ids
        assert sorted(queries.in_flight_ids(conn, sub_id)) == ids
        updates = [{"tid": tid, **{c: None for c in queries.OUTCOME_COLUMNS}, "state": TaskState.DONE,
                    "attempts": 1, "cost": 0.5, "submission_id": sub_id} for tid in ids]
        queries.write_outcomes(conn, updates)
    assert states(ledger, "a") == {"done": N}
    with ledger.read() as conn:
        assert queries.cost_spent(conn, RUN) == pytest.approx(0.5 * N)
        assert queries.submission_row(conn, sub_id)["idempotency_key"] == "k1"
        assert queries.submission_row(conn, sub_id + 1) is None
    with ledger.write() as conn:
        queries.promote_waiting(conn, RUN, "b", ["a"], list(range(N)), now=4.0)
    assert states(ledger, "b") == {"pending": N}


def test_dependents_wait_are_cancelled_and_reopened(ledger: Ledger):
    with ledger.write() as conn:
        queries.promote_waiting(conn, RUN, "b", ["a"], None, now=2.0)  # nothing of a is done
        assert queries.has_tasks_in(conn, RUN, ["b"], [TaskState.PENDING]) is False
        hit = [i for part in queries.chunks(list(range(N))) for i in
               queries.cancel_waiting(conn, RUN, "b", part, now=2.0, message="a did not finish")]
        assert sorted(hit) == list(range(N))
        assert queries.has_tasks_in(conn, RUN, ["b"], [TaskState.WAITING, TaskState.CANCELLED]) is True
    assert states(ledger, "b") == {"cancelled": N}
    with ledger.write() as conn:
        assert queries.retryable(conn, RUN, [TaskState.CANCELLED], "b", None) == []  # upstream: left out
        assert len(queries.retryable(conn, RUN, [TaskState.CANCELLED], "b", ErrorClass.UPSTREAM)) == N
        assert sorted(queries.reopen_upstream_cancelled(conn, RUN, "b", list(range(10)))) == list(range(10))
        assert sorted(queries.reopen_upstream_cancelled(conn, RUN, "b", None)) == list(range(10, N))
    assert states(ledger, "b") == {"waiting": N}


def test_cancel_retry_and_send_ahead(ledger: Ledger):
    with ledger.write() as conn:
        count, idxs = queries.cancel_active(conn, RUN, "a", now=2.0)
        assert count == N and sorted(idxs) == list(range(N))
    assert states(ledger, "a") == {"cancelled": N}
    with ledger.write() as conn:
        rows = queries.retryable(conn, RUN, [TaskState.FAILED, TaskState.CANCELLED], "a", ErrorClass.CANCELLED)
        assert len(rows) == N and all(stage == "a" for _, stage, _ in rows)
        queries.reset_for_retry(conn, RUN, "a", [idx for _, _, idx in rows],
                                [TaskState.FAILED, TaskState.CANCELLED], TaskState.PENDING, now=3.0)
        queries.pend_waiting(conn, RUN, "b", N - 5, now=3.0)
        queries.wait_again(conn, RUN, "b", list(range(N)))
        assert queries.waiting_idxs(conn, RUN, "b") == list(range(N))
        count, idxs = queries.cancel_active(conn, RUN, None, now=4.0)
        assert count == 2 * N and idxs == []
    assert states(ledger, "a") == {"cancelled": N} and states(ledger, "b") == {"cancelled": N}


def test_a_once_per_run_task(ledger_url: str):
    ledger = Ledger(ledger_url)
    try:
        with ledger.write() as conn:
            ledger.insert_items_and_tasks(conn, RUN, [], [("all", "all", True, "local")], now=1.0)
            assert queries.once_state(conn, RUN, "all") == TaskState.WAITING
            queries.release_once(conn, RUN, "all", now=2.0)
            assert queries.once_state(conn, RUN, "all") == TaskState.PENDING
            assert queries.once_state(conn, RUN, "missing") is None
    finally:
        ledger.close()


def test_controller_leases(ledger_url: str):
    ledger = Ledger(ledger_url)
    try:
        with ledger.write() as conn:
            queries.renew_lease(conn, "c1", "host1", 11, now=1.0, expires_at=2.0)
            queries.renew_lease(conn, "c2", "host2", 12, now=1.0, expires_at=2.0)
            queries.renew_lease(conn, "c1", "host1", 11, now=5.0, expires_at=9.0)
            sub_id = ledger.insert_submission(conn, {"run_id": RUN, "stage": "a", "backend": "local",
                                                     "idempotency_key": "k", "state": "submitted",
                                                     "created_at": 1.0, "task_count": 0, "controller": "c2"})
        with ledger.write() as conn:
            assert queries.expired_controllers(conn, now=5.0, besides="c3") == ["c2"]
            assert queries.open_submissions_of(conn, RUN, ["c2"]) == [(sub_id, "a", "c2")]
            queries.forget_idle_controller(conn, "c2")  # kept: it has an open submission
            assert queries.expired_controllers(conn, now=5.0, besides="c1") == ["c2"]
            ledger.update_submission(conn, sub_id, state="failed")
            queries.forget_idle_controller(conn, "c2")
            assert queries.expired_controllers(conn, now=10.0, besides="c3") == ["c1"]
    finally:
        ledger.close()


@pytest.mark.postgres
def test_rows_a_tick_decides_from_stay_locked_until_it_commits(pg_fresh_url: str):
    """What the recorder reads to decide outcomes is locked (ORDER BY id FOR UPDATE) on PostgreSQL,
    so another controller claiming ready tasks (FOR UPDATE SKIP LOCKED) passes over them."""
    ledger = Ledger(pg_fresh_url)
    items = [SimpleNamespace(index=i, item_id=f"id{i}", key=f"k{i}", canonical="{}", params={}) for i in range(10)]
    try:
        with ledger.write() as conn:
            ledger.insert_items_and_tasks(conn, RUN, items, [("a", "item", False, "local")], now=1.0)
        ids = task_ids(ledger, "a")
        with ledger.write() as conn:
            queries.lock_task_rows(conn, RUN, ids[:4])
            with ledger.write() as other:
                claimed = [r["id"] for r in ledger.ready_tasks(other, RUN, "a", now=10.0, limit=100, claim=True)]
            assert claimed == ids[4:]
        with ledger.write() as conn:
            claimed = [r["id"] for r in ledger.ready_tasks(conn, RUN, "a", now=10.0, limit=100, claim=True)]
            assert claimed == ids
            with ledger.write() as other:
                assert ledger.ready_tasks(other, RUN, "a", now=10.0, limit=100, claim=True) == []
    finally:
        ledger.close()
