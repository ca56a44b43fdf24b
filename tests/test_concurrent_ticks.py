"""Several controllers on one ledger: ticks started at the same moment never submit a task twice."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

import corral
import corral.api.campaign as api_campaign
from conftest import campaign_dict, cli_env, corral_cli, wait_for_workers, write_campaign, write_module
from corral.ledger import schema

TASKS = """
import json, os, time

def work(item, ctx):
    time.sleep(0.1)
    with open(ctx.root / "calls.jsonl", "a") as handle:
        handle.write(json.dumps({"stage": ctx.stage, "x": item["x"], "pid": os.getpid()}) + "\\n")
    return {"x": item["x"]}
"""

ITEMS = 24


def setup(tmp_path: Path, ledger_url: str) -> None:
    write_module(tmp_path, "tasks", TASKS)
    extra = {} if ledger_url.startswith("sqlite") else {"ledger": ledger_url}
    write_campaign(tmp_path, campaign_dict({
        "first": {"call": "tasks:work"},
        "second": {"call": "tasks:work", "needs": "first"},
    }, items={"grid": {"x": {"range": [0, ITEMS]}}}, **extra))


def tick_pair(tmp_path: Path) -> list[subprocess.CompletedProcess]:
    """Two `corral tick` processes released at the same moment."""
    go = threading.Event()
    results: list[subprocess.CompletedProcess] = []

    def one() -> None:
        go.wait()
        results.append(subprocess.run([sys.executable, "-m", "corral", "tick", "--json"], cwd=tmp_path,
                                      env=cli_env(), capture_output=True, text=True, timeout=120))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(150)
    assert len(results) == 2
    return results


def check_submissions(tmp_path: Path) -> tuple[str, int]:
    """Every queued task is in exactly one submission; returns (run id, open submissions)."""
    campaign = corral.open(str(tmp_path / "corral.yaml"))
    try:
        runs = campaign.runs()
        assert len(runs) == 1, f"controllers started together made {len(runs)} runs"
        run = campaign.run()
        with run.ledger.read() as conn:
            subs = conn.execute(select(schema.submissions).where(schema.submissions.c.run_id == run.id)) \
                .mappings().all()
            tasks = conn.execute(select(schema.tasks.c.id, schema.tasks.c.submission_id)
                                 .where(schema.tasks.c.run_id == run.id)).mappings().all()
        sub_ids = {s["id"] for s in subs}
        queued = [t for t in tasks if t["submission_id"] is not None]
        assert all(t["submission_id"] in sub_ids for t in queued)
        per_sub = Counter(t["submission_id"] for t in queued)
        assert sum(s["task_count"] for s in subs) == len({t["id"] for t in queued})
        for sub in subs:
            assert per_sub[sub["id"]] == sub["task_count"], sub
        # what the workers were told to run: each task in exactly one submission's manifest
        in_manifests: Counter = Counter()
        for sub in subs:
            manifest = run.run_dir / "submissions" / str(sub["id"]) / "manifest.json"
            ids = [t["task_id"] for t in json.loads(manifest.read_text())["tasks"]]
            assert sorted(ids) == sorted(t["id"] for t in queued if t["submission_id"] == sub["id"])
            in_manifests.update(ids)
        assert set(in_manifests.values()) <= {1}
        return run.id, sum(1 for s in subs if s["state"] in ("submitting", "submitted", "running"))
    finally:
        campaign.close()


def test_ticks_started_together(tmp_path: Path, ledger_url: str):
    setup(tmp_path, ledger_url)
    run_ids = set()
    for _ in range(5):
        for proc in tick_pair(tmp_path):
            assert proc.returncode == 0, proc.stderr
            assert "database is locked" not in proc.stderr + proc.stdout
            assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
            report = json.loads(proc.stdout)
            run_ids.add(report["run_id"])
            assert report["errors"] == []
        run_id, _ = check_submissions(tmp_path)
        time.sleep(0.3)
    assert run_ids == {run_id}

    deadline = time.monotonic() + 120
    while True:
        report = json.loads(corral_cli(tmp_path, "tick", "--json", check=0).stdout)
        check_submissions(tmp_path)
        if report["status"] != "active":
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.2)
    assert report["status"] == "finished"
    assert wait_for_workers(tmp_path, timeout=10)

    campaign = corral.open(str(tmp_path / "corral.yaml"))
    try:
        run = campaign.run()
        records = list(run.records())
        assert len(records) == 2 * ITEMS and all(r["state"] == "done" and r["attempts"] == 1 for r in records)
        with run.ledger.read() as conn:
            e = schema.events
            done = Counter(r[0] for r in conn.execute(select(e.c.task_id).where(
                e.c.run_id == run.id, e.c.kind == "task", e.c.to_state == "done")))
        assert len(done) == 2 * ITEMS and set(done.values()) == {1}
    finally:
        campaign.close()
    calls = Counter((c["stage"], c["x"]) for c in map(json.loads, (tmp_path / "calls.jsonl").read_text().splitlines()))
    assert len(calls) == 2 * ITEMS and set(calls.values()) == {1}, "a task ran twice"


def test_controllers_starting_together_make_one_run(tmp_path: Path, ledger_url: str, monkeypatch):
    """Both look for a resumable run, find none, then both create: the ledger must end with one run."""
    write_module(tmp_path, "tasks", TASKS)
    write_campaign(tmp_path, campaign_dict({"first": {"call": "tasks:work"}}))
    barrier = threading.Barrier(2, timeout=30)
    original = api_campaign.find_resumable

    def find_then_wait(*args, **kwargs):
        found = original(*args, **kwargs)
        barrier.wait()
        return found

    monkeypatch.setattr(api_campaign, "find_resumable", find_then_wait)
    results: list = []
    errors: list = []

    def start() -> None:
        campaign = corral.open(str(tmp_path / "corral.yaml"), ledger=ledger_url)
        try:
            run, created = campaign.start()
            results.append((run.id, created))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            campaign.close()

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len({run_id for run_id, _ in results}) == 1, results
    assert sorted(created for _, created in results) == [False, True]
    campaign = corral.open(str(tmp_path / "corral.yaml"), ledger=ledger_url)
    try:
        assert len(campaign.runs()) == 1
    finally:
        campaign.close()


@pytest.mark.postgres
def test_postgres_ledger_via_command_line_option(tmp_path: Path, pg_fresh_url: str):
    write_module(tmp_path, "tasks", TASKS)
    write_campaign(tmp_path, campaign_dict({"first": {"call": "tasks:work"}}))
    corral_cli(tmp_path, "run", "-q", "--ledger", pg_fresh_url, check=0)
    assert not (tmp_path / ".corral" / "ledger.db").exists()
    status = json.loads(corral_cli(tmp_path, "status", "--json", "--ledger", pg_fresh_url, check=0).stdout)
    assert status["stages"]["first"]["done"] == 4
    env_status = corral_cli(tmp_path, "status", "--json", env={"CORRAL_LEDGER": pg_fresh_url}, check=0)
    assert json.loads(env_status.stdout)["run"]["id"] == status["run"]["id"]
