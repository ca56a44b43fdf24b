"""``results:`` files for every task that ended, and ``corral ingest`` of such a folder."""

from __future__ import annotations

import json

import pytest

from conftest import corral_cli, query_ledger, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

CAMPAIGN = """
name: bench
params:
  policy: scripted
items:
  grid:
    setting: [clean, noise]
    task: [pick, push]
    repeat: {range: [0, 3]}
stages:
  episode:
    call: policy:episode
  score:
    needs: episode
    call: policy:score
results: results/{policy}/{setting}/{task}/episode_{repeat}.json
backends:
  local: {workers: 2, gpus: none}
"""

MODULE = """
from pathlib import Path

def episode(item, ctx):
    with open(Path(ctx.root) / "calls.log", "a") as log:
        log.write(f"{item['setting']} {item['task']} {item['repeat']}\\n")
    if item["repeat"] == 1:
        raise RuntimeError("the simulator crashed")
    return {"steps": 10 + item["repeat"]}

def score(item, ctx):
    if item["repeat"] == 2:
        raise ValueError("no score for a timeout")
    return {"success": True}
"""


def result_files(folder):
    return sorted(p for p in (folder / "results").rglob("episode_*.json"))


def machine(folder, module: str = MODULE):
    write_module(folder, "policy", module)
    write_campaign(folder, CAMPAIGN)
    return folder


def test_results_files_hold_failed_and_cancelled_tasks_and_ingest_reads_them_back(tmp_path):
    first = machine(tmp_path / "a")
    own = ["--ledger", str(tmp_path / "a.db")]  # the first machine's own ledger, whatever this test's is
    corral_cli(first, "run", "-q", *own)
    files = result_files(first)
    assert len(files) == 12
    by_state: dict[str, list[dict]] = {}
    for path in files:
        record = json.loads(path.read_text())
        by_state.setdefault(record["state"], []).append(record)
    assert {k: len(v) for k, v in by_state.items()} == {"done": 4, "failed": 4, "cancelled": 4}
    assert all(r["params"]["repeat"] == 0 and r["error"] is None and r["result"] == {"success": True}
               for r in by_state["done"])
    assert all(r["params"]["repeat"] == 2 and r["error"]["class"] == "ValueError"
               and "no score" in r["error"]["message"] for r in by_state["failed"])
    assert all(r["params"]["repeat"] == 1 and r["error"]["class"] == "upstream" for r in by_state["cancelled"])

    second = machine(tmp_path / "b")
    outcome = json.loads(corral_cli(second, "ingest", str(first / "results"), "--json", check=0).stdout)
    assert outcome[0]["created"] and outcome[0]["tasks_added"] == 12 and outcome[0]["runnable_items"] == 0
    rows = query_ledger(second, "SELECT state, error_class, count(*) FROM tasks WHERE stage = 'score' "
                                "GROUP BY state, error_class ORDER BY state")
    assert rows == [("cancelled", "upstream", 4), ("done", None, 4), ("failed", "ValueError", 4)]
    status = json.loads(corral_cli(second, "status", "--json", check=0).stdout)
    assert status["run"]["status"] == "finished_with_failures"
    # The failures came back as failures: they can be retried here.
    again = json.loads(corral_cli(second, "ingest", str(first / "results"), "--json", check=0).stdout)
    assert again[0]["tasks_added"] == 0 and again[0]["unchanged"] == 12


def test_ingest_of_a_results_folder_leaves_items_without_a_file_to_run(tmp_path):
    always = MODULE.replace('item["repeat"] == 1', "False").replace('item["repeat"] == 2', "False")
    first = machine(tmp_path / "a", always)
    corral_cli(first, "run", "-q", "--ledger", str(tmp_path / "a.db"), check=0)
    files = result_files(first)
    assert len(files) == 12
    lost = [p for p in files if json.loads(p.read_text())["params"]["setting"] == "noise"
            and json.loads(p.read_text())["params"]["task"] == "push"]
    for path in lost:  # never pushed from the first machine
        path.unlink()

    second = machine(tmp_path / "b", always)
    proc = corral_cli(second, "ingest", str(first / "results"), check=0)
    assert "3 items still to run" in proc.stderr
    outcome = json.loads(corral_cli(second, "ingest", str(first / "results"), "--json", check=0).stdout)
    assert outcome[0]["runnable_items"] == 3
    rows = query_ledger(second, "SELECT count(*) FROM items")
    assert rows == [(12,)]
    corral_cli(second, "run", "-q", check=0)
    ran = sorted((second / "calls.log").read_text().splitlines())
    assert ran == ["noise push 0", "noise push 1", "noise push 2"]
    assert query_ledger(second, "SELECT state, count(*) FROM tasks GROUP BY state") == [("done", 15)]  # 9 ingested, 3 items x 2 stages run here
    assert len(result_files(second)) == 3
