"""Two and three `corral run` controllers on one campaign whose tasks partly fail, round after round:
every controller sees the end of the run, whoever records it, and exits 1 within its lease."""

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

from conftest import cli_env, write_campaign, write_module

ROUNDS = 10
ITEMS = 12
LEASE = 10.0

MODULE = """
import time

def work(item, ctx):
    time.sleep(0.05 * (item["x"] % 3))
    if item["x"] % 4 == 1:
        raise RuntimeError(f"item {item['x']} fails")
    return {"y": item["x"]}
"""


def campaign(folder: Path, name: str, ledger_url: str) -> None:
    write_module(folder, "m", MODULE)
    write_campaign(folder, {
        "name": name, "items": {"grid": {"x": {"range": [0, ITEMS]}}},
        "stages": {"work": {"call": "m:work", "retries": {"max": 1, "backoff": "0.1s"}},
                   "after": {"run": ["true"], "needs": "work"}},
        "backends": {"local": {"workers": 2, "gpus": "none"}}, "ledger": ledger_url})


def start(folder: Path, controller: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "corral", "run", "-q", "--controller-id", controller,
                             "--lease", str(LEASE)], cwd=folder, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("controllers", [2, 3])
def test_every_controller_sees_the_end(tmp_path: Path, ledger_url: str, controllers: int):
    db = create_engine(ledger_url, poolclass=NullPool)
    try:
        for round_ in range(ROUNDS):
            folder = tmp_path / f"round{round_}"
            campaign(folder, f"many{round_}", ledger_url)
            procs = {f"c{i}": start(folder, f"c{i}") for i in range(controllers)}
            ended: dict[str, float] = {}
            try:
                deadline = time.monotonic() + 90
                while len(ended) < len(procs) and time.monotonic() < deadline:
                    for name, proc in procs.items():
                        if name not in ended and proc.poll() is not None:
                            ended[name] = time.time()
                    time.sleep(0.02)
            finally:
                for proc in procs.values():
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
            outputs = {name: proc.stdout.read() for name, proc in procs.items()}
            assert len(ended) == len(procs), f"round {round_}: controllers never exited: " \
                f"{sorted(set(procs) - set(ended))}\n" + "\n".join(f"--- {n}\n{o}" for n, o in outputs.items())
            for name, proc in procs.items():
                assert proc.returncode == 1, f"round {round_}: {name} exited {proc.returncode}\n{outputs[name]}"
                assert "Traceback" not in outputs[name], outputs[name]
            with db.connect() as conn:
                runs = conn.execute(text("SELECT id, status, finished_at FROM runs WHERE name = :n"),
                                    {"n": f"many{round_}"}).all()
                assert len(runs) == 1, f"round {round_}: {len(runs)} runs"
                run_id, status, finished_at = runs[0]
                states = dict(conn.execute(text("SELECT stage || ':' || state, count(*) FROM tasks "
                                                "WHERE run_id = :r GROUP BY stage, state"), {"r": run_id}).all())
                ends = conn.execute(text("SELECT count(*) FROM events WHERE run_id = :r AND kind = 'run' "
                                         "AND to_state = 'finished_with_failures'"), {"r": run_id}).scalar()
                recorded = conn.execute(text(
                    "SELECT task_id, count(*) FROM events WHERE run_id = :r AND kind = 'task' "
                    "AND to_state IN ('done', 'failed') GROUP BY task_id HAVING count(*) > 1"), {"r": run_id}).all()
            failing = sum(1 for x in range(ITEMS) if x % 4 == 1)
            assert status == "finished_with_failures", (round_, status, states)
            assert states == {"work:done": ITEMS - failing, "work:failed": failing,
                              "after:done": ITEMS - failing, "after:cancelled": failing}, (round_, states)
            assert ends == 1, f"round {round_}: the end was recorded {ends} times"
            assert not recorded, f"round {round_}: tasks recorded twice: {recorded}"
            for name, at in ended.items():
                assert at - finished_at <= LEASE, f"round {round_}: {name} exited {at - finished_at:.1f} s " \
                    "after the run ended"
    finally:
        db.dispose()
