"""The ledger on SQLite and PostgreSQL: schema versions, runs, items, tasks, events and the tick lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, update

import corral
from conftest import campaign_dict, write_campaign, write_module
from corral.errors import LedgerError
from corral.ledger import Ledger, schema
from corral.ledger.schema import SCHEMA_VERSION


def version_rows(ledger: Ledger) -> list[tuple[str, str]]:
    with ledger.read() as conn:
        return [tuple(r) for r in conn.execute(select(schema.meta.c.key, schema.meta.c.value))]


def test_schema_is_created_at_the_current_version(ledger_url: str):
    ledger = Ledger(ledger_url)
    try:
        assert SCHEMA_VERSION == 5
        assert version_rows(ledger) == [("schema_version", "5")]
        tables = set(inspect(ledger.engine).get_table_names())
        assert {"corral_meta", "runs", "items", "tasks", "submissions", "events", "controllers", "learned"} <= tables
        # No string column has a width a state, status, error class or id could pass.
        bounded = [(table, c["name"], c["type"]) for table in tables for c in inspect(ledger.engine).get_columns(table)
                   if getattr(c["type"], "length", None)]
        assert bounded == []
    finally:
        ledger.close()


def test_reopening_is_a_no_op(ledger_url: str):
    first = Ledger(ledger_url)
    try:
        with first.write() as conn:
            first.add_events(conn, [{"at": 1.0, "run_id": "r", "kind": "note", "message": "kept"}])
    finally:
        first.close()
    second = Ledger(ledger_url)
    try:
        assert version_rows(second) == [("schema_version", str(SCHEMA_VERSION))]
        with second.read() as conn:
            messages = [r[0] for r in conn.execute(select(schema.events.c.message))]
        assert messages == ["kept"]
    finally:
        second.close()


def test_newer_schema_version_is_refused(ledger_url: str):
    ledger = Ledger(ledger_url)
    with ledger.write() as conn:
        conn.execute(update(schema.meta).where(schema.meta.c.key == "schema_version")
                     .values(value=str(SCHEMA_VERSION + 1)))
    ledger.close()
    with pytest.raises(LedgerError) as info:
        Ledger(ledger_url)
    text = str(info.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in text and "newer" in text and "upgrade corral" in text


def test_newer_schema_version_is_a_clean_cli_error(tmp_path: Path):
    write_module(tmp_path, "tasks", "def f(item, ctx):\n    return item\n")
    write_campaign(tmp_path, campaign_dict({"a": {"call": "tasks:f"}}))
    url = f"sqlite:///{tmp_path / '.corral' / 'ledger.db'}"
    ledger = Ledger(url)
    with ledger.write() as conn:
        conn.execute(update(schema.meta).where(schema.meta.c.key == "schema_version").values(value="7"))
    ledger.close()
    from conftest import corral_cli

    proc = corral_cli(tmp_path, "run", "-q")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "schema version 7" in proc.stderr and "upgrade corral" in proc.stderr


def test_opening_without_create_refuses_an_empty_database(tmp_path: Path):
    with pytest.raises(LedgerError) as info:
        Ledger(f"sqlite:///{tmp_path / 'none' / 'ledger.db'}", create=False)
    assert "no ledger" in str(info.value)
    assert not (tmp_path / "none" / "ledger.db").exists()


# -- runs, items, tasks and events -------------------------------------------------------------------

TASKS = """
def f(item, ctx):
    return {"y": item["x"] * 2}


def total(ctx):
    return {"n": len(ctx.items or [])}
"""


def make_campaign(tmp_path: Path, ledger_url: str, items: int = 5):
    write_module(tmp_path, "tasks", TASKS)
    write_campaign(tmp_path, campaign_dict({
        "a": {"call": "tasks:f"},
        "b": {"call": "tasks:f", "needs": "a"},
        "c": {"call": "tasks:total", "per": "all", "needs": ["a", "b"]},
    }, items={"grid": {"x": {"range": [0, items]}}}))
    return corral.open(str(tmp_path / "corral.yaml"), ledger=ledger_url)


def test_run_with_items_and_tasks(tmp_path: Path, ledger_url: str):
    campaign = make_campaign(tmp_path, ledger_url)
    try:
        run, created = campaign.start()
        assert created
        assert run.row["item_count"] == 5
        counts = run.counts()
        assert counts["a"]["pending"] == 5 and counts["a"]["total"] == 5
        assert counts["b"]["waiting"] == 5 and counts["b"]["total"] == 5
        assert counts["c"]["waiting"] == 1 and counts["c"]["total"] == 1
        ledger = campaign.ledger()
        with ledger.read() as conn:
            items = conn.execute(select(schema.items).where(schema.items.c.run_id == run.id)
                                 .order_by(schema.items.c.idx)).mappings().all()
            events = conn.execute(select(schema.events).where(schema.events.c.run_id == run.id)).mappings().all()
        assert [i["idx"] for i in items] == [0, 1, 2, 3, 4]
        assert len({i["item_id"] for i in items}) == 5
        assert [(e["kind"], e["to_state"], e["count"]) for e in events] == [("run", "active", 5)]
        # starting again finds the same run
        again, created_again = campaign.start()
        assert (again.id, created_again) == (run.id, False)
        assert campaign.runs()[0]["id"] == run.id
    finally:
        campaign.close()


def test_events_are_appended_as_a_run_progresses(tmp_path: Path, ledger_url: str):
    campaign = make_campaign(tmp_path, ledger_url)
    try:
        run, _ = campaign.start()
        report = run.run()
        assert report.finished and report.status == "finished"
        ledger = campaign.ledger()
        e = schema.events
        with ledger.read() as conn:
            rows = conn.execute(select(e).where(e.c.run_id == run.id).order_by(e.c.id)).mappings().all()
            task_count = conn.execute(select(func.count()).select_from(schema.tasks)
                                      .where(schema.tasks.c.run_id == run.id)).scalar()
        done = [r["task_id"] for r in rows if r["kind"] == "task" and r["to_state"] == "done"]
        assert len(done) == len(set(done)) == task_count == 11
        assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
        assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)
        # The run ends when its last task is recorded; a worker that is still exiting closes its
        # submission just after, so only submission events may follow the run's.
        end = max(n for n, r in enumerate(rows) if r["kind"] == "run")
        assert rows[end]["to_state"] == "finished"
        assert {r["kind"] for r in rows[end + 1:]} <= {"submission"}
        assert {r["kind"] for r in rows} >= {"run", "task", "submission"}
        records = list(run.records())
        assert sorted(r["y"] for r in records if r["stage"] == "b") == [0, 2, 4, 6, 8]
        assert [r["state"] for r in records if r["stage"] == "c"] == ["done"]
    finally:
        campaign.close()


# -- the tick lock --------------------------------------------------------------------------------------


def _try_in_thread(ledger: Ledger, run_id: str) -> bool:
    box: list[bool] = []

    def target() -> None:
        with ledger.tick_lock(run_id) as got:
            box.append(got)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert box, "tick_lock(wait=False) did not return"
    return box[0]


def test_tick_lock_has_one_holder(ledger_url: str):
    holder, other = Ledger(ledger_url), Ledger(ledger_url)
    try:
        with holder.tick_lock("run-1") as got:
            assert got
            assert _try_in_thread(other, "run-1") is False
            assert _try_in_thread(holder, "run-1") is False  # not re-entrant across threads either
        assert _try_in_thread(other, "run-1") is True
    finally:
        holder.close()
        other.close()


def test_tick_lock_wait_blocks_until_released(ledger_url: str):
    holder, other = Ledger(ledger_url), Ledger(ledger_url)
    got_at: list[float] = []

    def waiter() -> None:
        with other.tick_lock("run-1", wait=True) as got:
            assert got
            got_at.append(time.monotonic())

    try:
        with holder.tick_lock("run-1"):
            thread = threading.Thread(target=waiter)
            thread.start()
            time.sleep(0.5)
            assert not got_at
            released = time.monotonic()
        thread.join(30)
        assert got_at and got_at[0] >= released
    finally:
        holder.close()
        other.close()


def test_tick_locks_of_different_runs_are_independent(request, ledger_url: str):
    holder, other = Ledger(ledger_url), Ledger(ledger_url)
    try:
        with holder.tick_lock("run-1") as got:
            assert got
            assert _try_in_thread(other, "run-2") is True
    finally:
        holder.close()
        other.close()


HOLDER = """
import sys, time
from corral.ledger import Ledger
ledger = Ledger(sys.argv[1])
with ledger.tick_lock("run-1") as got:
    print("locked" if got else "busy", flush=True)
    time.sleep(120)
"""


def test_tick_lock_is_released_when_the_holder_is_killed(ledger_url: str):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, ledger_url], stdout=subprocess.PIPE, text=True)
    ledger = Ledger(ledger_url)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        assert _try_in_thread(ledger, "run-1") is False
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while True:
            if _try_in_thread(ledger, "run-1"):
                break
            assert time.monotonic() < deadline, "the lock of a killed holder was never released"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ledger.close()
