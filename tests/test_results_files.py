"""``results:``: one JSON file per finished item, written after the ledger committed it, atomically."""

from __future__ import annotations

import pytest

import json
import os
import signal
import subprocess
import sys
import time

from conftest import assert_no_ledger, cli_env, corral_cli, query_ledger, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

CAMPAIGN = """
name: files
params:
  policy: scripted
items:
  grid:
    setting: [clean, noise]
    task: [pick, push]
    repeat: {range: [0, 10]}
stages:
  episode:
    call: m:f
results: results/{policy}/{setting}/{task}/episode_{repeat}.json
backends:
  local: {workers: 2, gpus: none}
"""

MODULE = """
import time

def f(item, ctx):
    time.sleep(0.03)
    return {"success": item["repeat"] % 3 == 0, "steps": item["repeat"] + 1}
"""


def result_files(folder):
    return sorted(p for p in (folder / "results").rglob("*.json") if ".corral" not in p.parts)


def done_keys(folder):
    rows = query_ledger(folder, "SELECT i.params FROM tasks t JOIN items i ON i.run_id = t.run_id "
                                "AND i.idx = t.item_idx WHERE t.state = 'done'")
    return {(p["setting"], p["task"], p["repeat"]) for p in (json.loads(r[0]) for r in rows)}


def test_files_follow_the_ledger_through_a_kill(tmp_path):
    write_module(tmp_path, "m", MODULE)
    write_campaign(tmp_path, CAMPAIGN)
    proc = subprocess.Popen([sys.executable, "-m", "corral", "run", "-q"], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(result_files(tmp_path)) < 8:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the controller and its workers, at once
    proc.wait()
    files = result_files(tmp_path)
    assert 0 < len(files) < 40
    written = set()
    for path in files:
        record = json.loads(path.read_text())  # complete JSON: never a partial file
        p = record["params"]
        assert path == tmp_path / "results" / "scripted" / p["setting"] / p["task"] / f"episode_{p['repeat']}.json"
        assert record["config"]["policy"] == "scripted" and record["result"]["steps"] == p["repeat"] + 1
        assert record["corral"]["attempts"] == 1 and record["corral"]["finished_at"]
        written.add((p["setting"], p["task"], p["repeat"]))
    assert written <= done_keys(tmp_path)  # nothing written that the ledger has not recorded
    corral_cli(tmp_path, "run", "-q", check=0)
    files = result_files(tmp_path)
    assert len(files) == 40 and done_keys(tmp_path) == {
        tuple(json.loads(p.read_text())["params"][k] for k in ("setting", "task", "repeat")) for p in files}
    # A write cut short by the kill leaves at most a hidden temporary file of the killed process,
    # never a partial result file.
    leftovers = [p for p in (tmp_path / "results").rglob("*") if p.name.endswith(".tmp")]
    assert all(p.name.startswith(".") and p.name.split(".")[-2] == str(proc.pid) for p in leftovers)

    # Another machine ingests the folder: one run with 40 results, and nothing more the second time.
    other = tmp_path / "other"
    write_module(other, "m", MODULE)
    write_campaign(other, CAMPAIGN)
    own = ["--ledger", str(other / "ledger.db")]  # its own ledger, whatever this test's is
    first = json.loads(corral_cli(other, "ingest", str(tmp_path / "results"), "--json", *own, check=0).stdout)
    assert first[0]["created"] and first[0]["tasks_added"] == 40
    again = json.loads(corral_cli(other, "ingest", str(tmp_path / "results"), "--json", *own, check=0).stdout)
    assert again[0]["tasks_added"] == 0 and again[0]["unchanged"] == 40
    report = json.loads(corral_cli(other, "report", "--by", "setting", "-f", "json", *own, check=0).stdout)
    assert report["total"]["done"] == 40


def test_bad_template_is_refused_at_check(tmp_path):
    write_module(tmp_path, "m", MODULE)
    write_campaign(tmp_path, CAMPAIGN.replace("{task}/episode", "{taks}/episode"))
    proc = corral_cli(tmp_path, "check", check=2)
    assert "results" in proc.stderr and "'taks'" in proc.stderr and "setting" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert corral_cli(tmp_path, "run", "-q", check=2).returncode == 2
    assert_no_ledger(tmp_path)
