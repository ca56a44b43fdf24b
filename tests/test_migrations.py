"""A ledger written by an older corral is brought to the current schema when opened."""

from __future__ import annotations

import json
import sqlite3

from conftest import corral_cli, write_campaign, write_module


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
    assert db.execute("SELECT value FROM corral_meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    assert "controller" in [r[1] for r in db.execute("PRAGMA table_info(submissions)")]
    assert db.execute("SELECT count(*) FROM controllers").fetchone()[0] == 0
    db.close()
    corral_cli(tmp_path, "run", "-q", check=0)  # a new run on the migrated ledger works
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM tasks WHERE state = 'done'").fetchone()[0] == 9
    db.close()
