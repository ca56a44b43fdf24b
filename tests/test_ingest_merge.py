"""No shared database: shards on two "machines" (two ledgers), ingest one into the other, merge runs."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from conftest import corral_cli, write_campaign, write_module

CAMPAIGN = """
name: bench
params:
  policy: scripted
items:
  grid:
    setting: [clean, noise]
    repeat: {range: [0, 5]}
stages:
  episode:
    call: m:f
backends:
  local: {workers: 2, gpus: none}
"""

MODULE = """
def f(item, ctx):
    return {"success": item["repeat"] % 2 == 0, "steps": 10 + item["repeat"]}
"""


def machine(root, name):
    folder = root / name
    write_module(folder, "m", MODULE)
    write_campaign(folder, CAMPAIGN)
    return folder


def runs(folder):
    return json.loads(corral_cli(folder, "runs", "--all", "--json", check=0).stdout)


def test_shards_ingested_twice_then_merged(tmp_path):
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    corral_cli(a, "run", "-q", "--shard", "0/2", check=0)
    corral_cli(b, "run", "-q", "--shard", "1/2", check=0)
    (run_a,), (run_b,) = runs(a), runs(b)
    assert run_a["items"] + run_b["items"] == 10 and run_a["items"] and run_b["items"]

    first = json.loads(corral_cli(a, "ingest", str(b / ".corral" / "ledger.db"), "--json", check=0).stdout)
    assert first[0]["created"] and first[0]["tasks_added"] == run_b["items"]
    again = json.loads(corral_cli(a, "ingest", str(b / ".corral" / "ledger.db"), "--json", check=0).stdout)
    assert again[0]["tasks_added"] == 0 and again[0]["tasks_updated"] == 0 and not again[0]["created"]
    assert again[0]["unchanged"] == run_b["items"]
    here = runs(a)
    assert len(here) == 2 and sum(r["done"] for r in here) == 10

    ids = [r["id"] for r in here]
    merged = json.loads(corral_cli(a, "runs", "merge", *ids, "--into", "bench_all", "--json", check=0).stdout)
    assert merged["created"] and merged["items_added"] == 10 and merged["tasks_added"] == 10
    remerge = json.loads(corral_cli(a, "runs", "merge", *ids, "--into", "bench_all", "--json", check=0).stdout)
    assert remerge["items_added"] == 0 and remerge["tasks_added"] == 0 and remerge["tasks_updated"] == 0
    shown = json.loads(corral_cli(a, "runs", "show", "bench_all", "--json", check=0).stdout)
    assert shown["items"] == 10 and shown["totals"] == {"done": 10} and shown["status"] == "finished"
    assert sorted(shown["selection"]["merged_from"]) == sorted(ids)
    report = json.loads(corral_cli(a, "report", "--run-id", "bench_all", "--by", "setting", "-f", "json",
                                   check=0).stdout)
    assert report["total"]["done"] == 10
    # The merged run's records are the union; its export carries them all once.
    lines = corral_cli(a, "export", "--run-id", "bench_all", check=0).stdout.splitlines()
    keys = {(json.loads(x)["setting"], json.loads(x)["repeat"]) for x in lines}
    assert len(lines) == 10 and len(keys) == 10


def test_conflicting_results_are_listed_not_overwritten(tmp_path):
    a = machine(tmp_path, "a")
    corral_cli(a, "run", "-q", check=0)
    other = tmp_path / "other.db"
    shutil.copy(a / ".corral" / "ledger.db", other)
    # Stands for another machine that continued the same run and recorded a different result for one
    # item (the same run in two ledgers); written with sqlite3 because no backend produces it on purpose.
    db = sqlite3.connect(other)
    task_id = db.execute("SELECT id FROM tasks ORDER BY id LIMIT 1").fetchone()[0]
    db.execute("UPDATE tasks SET result = ? WHERE id = ?", (json.dumps({"success": None, "steps": -1}), task_id))
    db.commit()
    db.close()
    proc = corral_cli(a, "ingest", str(other), check=1)
    assert "1 conflicts" in proc.stderr and "conflict: episode" in proc.stderr and "-1" in proc.stderr
    records = [json.loads(x) for x in corral_cli(a, "export", check=0).stdout.splitlines()]
    assert all(r["steps"] >= 10 for r in records)  # kept what was here
    # Not a ledger at all: a clear error, exit 2.
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert "not a corral ledger" in corral_cli(a, "ingest", str(bad), check=2).stderr


def test_merge_prefers_a_chosen_run(tmp_path):
    a = machine(tmp_path, "a")
    corral_cli(a, "run", "-q", check=0)
    write_module(a, "m", MODULE.replace("10 +", "100 +"))
    corral_cli(a, "run", "-q", "--new", check=0)
    old, new = [r["id"] for r in reversed(runs(a))]
    newest = json.loads(corral_cli(a, "runs", "merge", old, new, "--into", "m1", "--json", check=0).stdout)
    assert newest["chosen_from"] == {new: 10}
    chosen = json.loads(corral_cli(a, "runs", "merge", old, new, "--into", "m2", "--prefer", old, "--json",
                                   check=0).stdout)
    assert chosen["chosen_from"] == {old: 10}
    steps = [json.loads(x)["steps"] for x in corral_cli(a, "export", "--run-id", "m2", check=0).stdout.splitlines()]
    assert max(steps) < 100
    assert "not one of the merged runs" in corral_cli(a, "runs", "merge", old, "--into", "m3", "--prefer", new,
                                                       check=2).stderr
    assert "not a merged run" in corral_cli(a, "runs", "merge", old, "--into", new, check=2).stderr


@pytest.mark.postgres
def test_ingest_and_merge_into_postgresql(tmp_path, pg_fresh_url):
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    corral_cli(a, "run", "-q", "--shard", "0/2", check=0)
    corral_cli(b, "run", "-q", "--shard", "1/2", check=0)
    pg = ["--ledger", pg_fresh_url]
    sources = [str(a / ".corral" / "ledger.db"), str(b / ".corral" / "ledger.db")]
    first = json.loads(corral_cli(a, "ingest", *sources, *pg, "--json", check=0).stdout)
    assert [o["created"] for o in first] == [True, True] and sum(o["tasks_added"] for o in first) == 10
    again = json.loads(corral_cli(a, "ingest", *sources, *pg, "--json", check=0).stdout)
    assert sum(o["tasks_added"] + o["tasks_updated"] for o in again) == 0
    ids = [o["run"] for o in first]
    merged = json.loads(corral_cli(a, "runs", "merge", *ids, "--into", "all", *pg, "--json", check=0).stdout)
    assert merged["tasks_added"] == 10
    remerge = json.loads(corral_cli(a, "runs", "merge", *ids, "--into", "all", *pg, "--json", check=0).stdout)
    assert remerge["tasks_added"] == 0 and remerge["unchanged"] == 10
    report = json.loads(corral_cli(a, "report", "--run-id", "all", "--by", "setting", "-f", "json", *pg,
                                   check=0).stdout)
    assert report["total"]["done"] == 10 and report["total"]["success"]["k"] == 6
