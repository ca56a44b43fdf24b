"""Killing the controller loses nothing and records nothing twice; SIGINT stops cleanly."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

import corral
from conftest import campaign_dict, cli_env, corral_cli, live_workers, wait_for_workers, write_campaign, write_module
from corral.ledger import schema

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("campaign_ledger")]

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"

# The quickstart's episodes take a few milliseconds; each is made to take half a second
# (same results: an episode's outcome depends only on its item) so that the kills land mid-run.
SLOW_POLICY = """
import time

from policy import run_episode as _run_episode


def run_episode(item, ctx):
    time.sleep(0.5)
    return _run_episode(item, ctx)
"""


def quickstart(folder: Path) -> Path:
    """The quickstart shrunk to 3 policies x 2 settings x 5 tasks x 4 repeats = 120 episodes."""
    folder.mkdir(parents=True)
    for entry in QUICKSTART.iterdir():
        if entry.name == "preset":
            shutil.copytree(entry, folder / "preset")
        elif entry.is_file() and entry.suffix in (".py", ".yaml"):
            shutil.copy(entry, folder / entry.name)
    config = yaml.safe_load((folder / "corral.yaml").read_text())
    config["items"]["grid"]["setting"] = ["clean", "noise"]
    config["items"]["grid"]["repeat"] = {"range": [0, 4]}
    config["stages"]["episode"]["call"] = "slowpolicy:run_episode"
    config["backends"] = {"local": {"workers": 2, "gpus": "none"}}
    write_campaign(folder, config)
    write_module(folder, "slowpolicy", SLOW_POLICY)
    return folder / "corral.yaml"


def start_run(folder: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "corral", "run", "-q", *args], cwd=folder, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def own_ledger(folder: Path) -> str:
    """The undisturbed baseline keeps its own SQLite ledger: on a shared PostgreSQL ledger the same
    campaign file would continue the crashed campaign's run."""
    return str(folder / ".corral" / "ledger.db")


def ledger_view(folder: Path, ledger: str | None = None):
    campaign = corral.open(str(folder / "corral.yaml"), ledger=ledger)
    try:
        run = campaign.run()
        records = {(r["stage"], r["item_key"]): r for r in run.records()}
        with run.ledger.read() as conn:
            e = schema.events
            events = [dict(r) for r in conn.execute(select(e).where(e.c.run_id == run.id)).mappings()]
        return run.status(), records, events, len(campaign.runs())
    finally:
        campaign.close()


def archived_items(folder: Path) -> Counter:
    seen: Counter = Counter()
    for shard in (folder / "archive").glob("*.jsonl"):
        for line in shard.read_text().splitlines():
            seen[json.dumps(json.loads(line), sort_keys=True)] += 1
    return seen


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path):
    crashed, baseline = quickstart(tmp_path / "crashed").parent, quickstart(tmp_path / "baseline").parent
    # mostly sleeping workers: it shares the CPUs well
    reference = start_run(baseline, "--ledger", own_ledger(baseline))
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills = starts = 0
    while kills < 20 and starts < 40:
        proc = start_run(crashed)
        starts += 1
        time.sleep(rng.uniform(0.2, 2.0))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait(30)
    assert kills >= 20, f"seed {seed}: the run ended after {kills} kills"
    final = start_run(crashed)
    _, err = final.communicate(timeout=180)
    assert final.returncode == 0, f"seed {seed}: {err}"
    _, err = reference.communicate(timeout=180)
    assert reference.returncode == 0, err
    assert wait_for_workers(tmp_path, timeout=10)

    status, records, events, runs = ledger_view(crashed)
    want_status, want, _, _ = ledger_view(baseline, own_ledger(baseline))
    assert runs == 1, f"seed {seed}: restarts made new runs"
    assert status["run"]["status"] == "finished"
    assert status["totals"]["done"] == status["totals"]["total"] == 241
    assert set(records) == set(want)

    # exactly one transition to done per task, and as many attempts as without the kills
    done = Counter(e["task_id"] for e in events if e["kind"] == "task" and e["to_state"] == "done")
    task_ids = {int(r["task_id"][1:]) for r in records.values()}
    assert set(done) == task_ids and set(done.values()) == {1}, f"seed {seed}"
    for key, record in records.items():
        assert record["state"] == "done", (seed, key)
        assert record["attempts"] == want[key]["attempts"], (seed, key)
        if key[0] == "episode":
            got = {k: record[k] for k in ("success", "progress", "steps")}
            assert got == {k: want[key][k] for k in ("success", "progress", "steps")}, (seed, key)
    summary = records[("summary", "all")]
    assert summary["episodes"] == 120 and summary["success_rate"] == want[("summary", "all")]["success_rate"]

    # the batch command archived every episode exactly once
    archived = archived_items(crashed)
    assert len(archived) == 120 and set(archived.values()) == {1}, f"seed {seed}"
    assert archived == archived_items(baseline)


SIGINT_TASKS = """
import time

def work(item, ctx):
    time.sleep(0.3)
    return {"x": item["x"], "attempt": ctx.attempt}
"""


def test_sigint_stops_cleanly_and_the_next_run_finishes(tmp_path: Path):
    write_module(tmp_path, "tasks", SIGINT_TASKS)
    write_campaign(tmp_path, campaign_dict({
        "work": {"call": "tasks:work"},
        "shell": {"run": ["python", "-c", "import time; time.sleep(0.3)"], "needs": "work"},
    }, items={"grid": {"x": {"range": [0, 30]}}}))
    proc = subprocess.Popen([sys.executable, "-m", "corral", "run", "-q"], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not live_workers(tmp_path):  # wait until tasks are running
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 15
    assert proc.returncode == 130, err
    assert "SIGINT" in err and "Traceback" not in err
    assert not live_workers(tmp_path), "the workers were not stopped"

    status, records, events, _ = ledger_view(tmp_path)
    assert status["run"]["status"] == "active"
    totals = status["totals"]
    assert totals["failed"] == 0 and totals["queued"] == 0 and totals["running"] == 0
    assert 0 < totals["done"] < totals["total"]
    for record in records.values():
        if record["state"] != "done":
            assert record["state"] in ("pending", "waiting") and record["attempts"] == 0, record
    interrupted = [e for e in events if e["kind"] == "task" and e["to_state"] == "pending"]
    assert interrupted, "SIGINT interrupted no running task"
    by_id = {int(r["task_id"][1:]): r for r in records.values()}
    assert all(by_id[e["task_id"]]["attempts"] == 0 for e in interrupted)

    corral_cli(tmp_path, "run", "-q", check=0)
    status, records, events, runs = ledger_view(tmp_path)
    assert runs == 1 and status["run"]["status"] == "finished"
    assert all(r["state"] == "done" and r["attempts"] == 1 for r in records.values())
    assert {r["attempt"] for r in records.values() if r["stage"] == "work"} == {1}
    done = Counter(e["task_id"] for e in events if e["kind"] == "task" and e["to_state"] == "done")
    assert len(done) == 60 and set(done.values()) == {1}
