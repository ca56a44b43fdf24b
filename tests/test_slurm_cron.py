"""A SLURM campaign driven by `corral tick` alone, one process per tick as cron runs it: what one
tick learns (task run times, the pilot already sent) decides the next tick's submissions."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest

from conftest import corral_cli, query_ledger, write_campaign, write_module

pytestmark = pytest.mark.slurm

ITEMS = 300
PILOT = 10
QUICK = "import time\n\ndef work(item, ctx):\n    time.sleep(0.01)\n    return {'x': item['x']}\n"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request, tmp_path: Path):
    """The campaign's ledger: the SQLite file beside it, or a fresh PostgreSQL database. Jobs a
    failed test left on the cluster are cancelled afterwards."""
    url = request.getfixturevalue("pg_fresh_url") if request.param == "postgres" else None
    yield url
    try:
        run_id = query_ledger(tmp_path, "SELECT id FROM runs")[0][0]
    except Exception:  # noqa: BLE001 - no run was created
        return
    from corral.backends.slurm import job_name_for

    subprocess.run(["scancel", "--name", job_name_for(run_id)], capture_output=True)


def test_cron_ticks_send_one_pilot_per_stage_then_pack_by_learned_duration(cluster: str, tmp_path: Path, ledger):
    write_module(tmp_path, "quick", QUICK)
    config = {
        "name": "cron",
        "items": {"grid": {"x": {"range": [0, ITEMS]}}},
        "stages": {"first": {"call": "quick:work", "backend": "cluster"},
                   "second": {"call": "quick:work", "backend": "cluster", "needs": "first"}},
        "backends": {"cluster": {"type": "slurm", "pilot": PILOT}},
    }
    if ledger:
        config["ledger"] = ledger
    write_campaign(tmp_path, config)
    deadline = time.monotonic() + 400
    ticks = 0
    while True:
        data = json.loads(corral_cli(tmp_path, "tick", "--json", check=0, timeout=120).stdout)
        ticks += 1
        if data["status"] != "active":
            break
        assert time.monotonic() < deadline, f"still active after {ticks} ticks"
        time.sleep(1)
    assert data["status"] == "finished"
    assert query_ledger(tmp_path, "SELECT stage, state, count(*) FROM tasks GROUP BY stage, state ORDER BY stage") \
        == [("first", "done", ITEMS), ("second", "done", ITEMS)]
    learned = {(scope, key): json.loads(value)
               for scope, key, value in query_ledger(tmp_path, "SELECT scope, key, value FROM learned")}
    subs = query_ledger(tmp_path, "SELECT id, stage, task_count, info FROM submissions "
                                  "WHERE remote_id IS NOT NULL ORDER BY id")
    log = (tmp_path / ".corral" / "corral.log").read_text()
    from corral.backends.base import Backlog
    from corral.backends.slurm import SlurmBackendImpl
    from corral.spec.slurm import SlurmBackend

    backend = SlurmBackendImpl("cluster", SlurmBackend(type="slurm", pilot=PILOT))
    for stage in ("first", "second"):
        mine = [(sid, count, json.loads(info)["elements"]) for sid, name, count, info in subs if name == stage]
        pilot, rest = mine[0], mine[1:]
        # One pilot, the stage's first submission, one task per element; the ticks after it knew so.
        assert learned[("backend:cluster", f"pilot.{stage}")]["submission"] == pilot[0]
        assert log.count(f"stage {stage}: submission") == 1, log
        assert pilot[1] == pilot[2] <= 2 * PILOT, mine
        # The rest packed by the run time the pilot measured: many tasks per array element.
        mean = learned[("stage:" + stage, "mean_seconds")]
        assert 0 < mean < 10
        assert rest and sum(count for _, count, _ in rest) == ITEMS - pilot[1], mine
        for _, count, elements in rest:
            per = backend.tasks_per_element(Backlog(ready=count, remaining=count, mean_seconds=mean))
            assert per > 1 and elements == math.ceil(count / per), mine
        assert any(count > elements for _, count, elements in rest), mine
