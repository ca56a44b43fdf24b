"""A ledger written by an older corral is brought to the current schema when opened."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import corral_cli, write_campaign, write_module

from corral.ledger.location import SCHEMA_VERSION


def test_schema_1_ledger_is_migrated(tmp_path):
    write_module(tmp_path, "m", "def f(item, ctx):\n    return {'y': item['x']}\n")
    write_campaign(tmp_path, {"name": "old", "items": {"grid": {"x": {"range": [0, 6]}}},
                              "stages": {"s": {"call": "m:f"}},
                              "backends": {"local": {"workers": 2, "gpus": "none"}}})
    corral_cli(tmp_path, "run", "-q", "--limit", "3", check=0)
    path = tmp_path / ".corral" / "ledger.db"
    # Turn it back into what schema version 1 wrote.
    db = sqlite3.connect(path)
    db.execute("DROP TABLE controllers")
    db.execute("ALTER TABLE submissions DROP COLUMN controller")
    db.execute("UPDATE corral_meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    status = json.loads(corral_cli(tmp_path, "status", "--json", check=0).stdout)
    assert status["totals"]["done"] == 3
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM corral_meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert "controller" in [r[1] for r in db.execute("PRAGMA table_info(submissions)")]
    assert db.execute("SELECT count(*) FROM controllers").fetchone()[0] == 0
    db.close()
    corral_cli(tmp_path, "run", "-q", check=0)  # a new run on the migrated ledger works
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM tasks WHERE state = 'done'").fetchone()[0] == 9
    db.close()


@pytest.mark.postgres
def test_schema_2_postgresql_ledger_gets_text_columns(tmp_path, pg_fresh_url):
    """Schema 2 sized states in 16 characters: a run ending as finished_with_failures crashed the
    controller. Opening such a ledger turns every string column into text."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from corral.ledger import Ledger

    Ledger(pg_fresh_url).close()
    db = create_engine(pg_fresh_url, poolclass=NullPool)
    with db.begin() as conn:
        for table, column in (("events", "to_state"), ("events", "from_state"), ("tasks", "state"),
                              ("runs", "status"), ("submissions", "state")):
            conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE VARCHAR(16)"))
        conn.execute(text("UPDATE corral_meta SET value = '2' WHERE key = 'schema_version'"))
    write_module(tmp_path, "m", "def f(item, ctx):\n    if item['x'] == 1:\n        raise RuntimeError('no')\n"
                                "    return {}\n")
    write_campaign(tmp_path, {"name": "old", "items": {"list": [{"x": 0}, {"x": 1}, {"x": 2}]},
                              "stages": {"s": {"call": "m:f"}}, "ledger": pg_fresh_url,
                              "backends": {"local": {"workers": 2, "gpus": "none"}}})
    corral_cli(tmp_path, "run", "-q", check=1)
    with db.connect() as conn:
        assert conn.execute(text("SELECT value FROM corral_meta WHERE key = 'schema_version'")).scalar() == str(SCHEMA_VERSION)
        assert conn.execute(text("SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                                 "current_schema() AND data_type = 'character varying'")).scalar() == 0
        assert conn.execute(text("SELECT status FROM runs")).scalar() == "finished_with_failures"
    db.dispose()
    corral_cli(tmp_path, "tick", check=0)


def test_schema_3_ledger_gets_the_learned_table(tmp_path, ledger_url):
    """Schema 4 keeps what the engine and the backends learn: opening an older ledger (SQLite or
    PostgreSQL) creates the table, and a run on it keeps its learned durations."""
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.pool import NullPool

    from corral.ledger import Ledger

    Ledger(ledger_url).close()
    db = create_engine(ledger_url, poolclass=NullPool)
    with db.begin() as conn:
        conn.execute(text("DROP TABLE learned"))
        conn.execute(text("UPDATE corral_meta SET value = '3' WHERE key = 'schema_version'"))
    write_module(tmp_path, "m", "def f(item, ctx):\n    return {}\n")
    write_campaign(tmp_path, {"name": "old", "items": {"grid": {"x": {"range": [0, 3]}}},
                              "stages": {"s": {"call": "m:f"}}, "ledger": ledger_url,
                              "backends": {"local": {"workers": 2, "gpus": "none"}}})
    corral_cli(tmp_path, "run", "-q", check=0)
    with db.connect() as conn:
        assert inspect(conn).has_table("learned")
        assert conn.execute(text("SELECT value FROM corral_meta WHERE key = 'schema_version'")).scalar() == str(SCHEMA_VERSION)
        assert conn.execute(text("SELECT scope, key FROM learned")).all() == [("stage:s", "mean_seconds")]
    db.dispose()


def test_schema_4_ledger_gets_the_attempt_base_and_retries_continue_its_attempts(tmp_path, ledger_url):
    """Schema 5 remembers where `corral retry` sent a task back, so its attempt numbers go on."""
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.pool import NullPool

    write_module(tmp_path, "m", "def f(item, ctx):\n    if ctx.attempt == 1:\n        raise ValueError('first')\n"
                                "    return {'attempt': ctx.attempt}\n")
    write_campaign(tmp_path, {"name": "old", "items": {"grid": {"x": {"range": [0, 2]}}},
                              "stages": {"s": {"call": "m:f"}}, "ledger": ledger_url,
                              "backends": {"local": {"workers": 2, "gpus": "none"}}})
    corral_cli(tmp_path, "run", "-q")
    db = create_engine(ledger_url, poolclass=NullPool)
    with db.begin() as conn:  # what schema version 4 wrote
        conn.execute(text("ALTER TABLE tasks DROP COLUMN attempt_base"))
        conn.execute(text("UPDATE corral_meta SET value = '4' WHERE key = 'schema_version'"))
    corral_cli(tmp_path, "retry", check=0)
    corral_cli(tmp_path, "run", "-q", check=0)
    with db.connect() as conn:
        assert "attempt_base" in {c["name"] for c in inspect(conn).get_columns("tasks")}
        assert conn.execute(text("SELECT state, attempts, attempt_base, result FROM tasks")).all() == [
            ("done", 2, 1, '{"attempt":2}')] * 2
    db.dispose()
