"""Several controllers (processes standing for hosts) on one PostgreSQL ledger, one of them killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from conftest import cli_env, corral_cli, write_campaign, write_module

pytestmark = pytest.mark.postgres

ITEMS = 60
CAMPAIGN = f"""
name: shared
items:
  grid:
    x: {{range: [0, {ITEMS}]}}
stages:
  work:
    call: m:work
backends:
  local: {{workers: 2, gpus: none, tasks_per_worker: 2}}
"""

# Each execution appends "host x" to a log: which controller's workers ran what.
MODULE = """
import os, time

def work(item, ctx):
    with open(os.environ["EXEC_LOG"], "a") as handle:
        handle.write(f"{os.environ['CORRAL_HOST']} {item['x']}\\n")
    time.sleep(0.25)
    return {"x2": item["x"] * 2}
"""


def controller(folder: Path, url: str, host: str, log: Path) -> subprocess.Popen:
    env = cli_env({"CORRAL_HOST": host, "CORRAL_LEASE": "3", "EXEC_LOG": str(log)})
    return subprocess.Popen([sys.executable, "-m", "corral", "run", "-q", "--ledger", url], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_controllers_share_a_run_and_survive_one_killed(tmp_path, pg_fresh_url):
    write_module(tmp_path, "m", MODULE)
    write_campaign(tmp_path, CAMPAIGN)
    log = tmp_path / "executions.log"
    db = create_engine(pg_fresh_url, poolclass=NullPool)
    # The run exists first, so that every controller continues the same one.
    corral_cli(tmp_path, "run", "-q", "--limit", "1", "--ledger", pg_fresh_url, env={"EXEC_LOG": str(log),
                                                                                      "CORRAL_HOST": "setup"}, check=0)
    procs = {h: controller(tmp_path, pg_fresh_url, h, log) for h in ("h0", "h1", "h2")}
    try:
        victim = procs["h0"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with db.connect() as conn:
                running = conn.execute(text(
                    "SELECT count(*) FROM tasks t JOIN submissions s ON s.id = t.submission_id "
                    "WHERE s.controller = 'h0' AND t.state IN ('queued', 'running')")).scalar()
            if running:
                break
            time.sleep(0.05)
        assert running, "h0 never claimed a task"
        os.killpg(victim.pid, signal.SIGKILL)  # the host dies: its controller and its workers
        killed_at = time.monotonic()
        victim.wait()
        for host in ("h1", "h2"):
            out, _ = procs[host].communicate(timeout=60)
            assert procs[host].returncode == 0, out
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert time.monotonic() - killed_at >= 2.5  # the survivors waited for the lease to expire

    with db.connect() as conn:
        run_ids = [r[0] for r in conn.execute(text("SELECT id FROM runs"))]
        assert len(run_ids) == 2  # the --limit 1 run and the shared one
        shared = conn.execute(text("SELECT id FROM runs WHERE item_count = :n"), {"n": ITEMS}).scalar()
        states = dict(conn.execute(text("SELECT state, count(*) FROM tasks WHERE run_id = :r GROUP BY state"),
                                   {"r": shared}).all())
        done_events = conn.execute(text(
            "SELECT task_id, count(*) FROM events WHERE run_id = :r AND kind = 'task' AND to_state = 'done' "
            "GROUP BY task_id"), {"r": shared}).all()
        lost = conn.execute(text(
            "SELECT count(*) FROM submissions WHERE run_id = :r AND controller = 'h0' AND state = 'failed' "
            "AND info LIKE '%lease expired%'"), {"r": shared}).scalar()
        owners = dict(conn.execute(text("SELECT controller, count(*) FROM submissions WHERE run_id = :r "
                                        "GROUP BY controller"), {"r": shared}).all())
        status = conn.execute(text("SELECT status FROM runs WHERE id = :r"), {"r": shared}).scalar()
    db.dispose()
    assert states == {"done": ITEMS} and status == "finished"
    assert len(done_events) == ITEMS and all(n == 1 for _, n in done_events)  # each recorded exactly once
    assert lost >= 1 and owners.get("h1") and owners.get("h2")
    runs_by: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        host, x = line.split()
        if host != "setup":
            runs_by.setdefault(x, []).append(host)
    assert len(runs_by) == ITEMS
    # Live controllers never ran one item twice; only what the dead one had started ran again.
    for x, hosts in runs_by.items():
        survivors = [h for h in hosts if h != "h0"]
        assert len(survivors) <= 1, (x, hosts)
        assert len(survivors) == 1 or hosts == ["h0"]
    assert any(hosts[0] == "h0" and len(hosts) == 2 for hosts in runs_by.values())  # taken back and finished
