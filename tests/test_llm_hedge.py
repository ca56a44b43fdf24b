"""Backup batches for the tail of an LLM stage, with the official SDKs against the simulator: the
backup wins, the original wins, the cost cap refuses a backup, and `corral run` killed with
SIGKILL ten times while both batches of pairs are in flight. On SQLite and PostgreSQL.

The simulator draws every batch the same turnaround; a test makes chosen batches slow by
lengthening their processing inside the simulator, so which batch of a pair ends first is known."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from conftest import cli_env, corral_cli
from test_llm_backends import campaign, tasks

from corral.api import Campaign
from corral.engine.clock import VirtualClock
from corral.ledger import learned
from corral.sim import Phase, SimConfig, SimServer, Turnaround

pytestmark = pytest.mark.usefixtures("campaign_ledger")

ANSWER = {"instructions": ["a", "b", "c", "d", "e"], "descriptions": ["x", "y"], "id": "{custom_id}"}
ENV = {"OPENAI_API_KEY": "sim", "ANTHROPIC_API_KEY": "sim"}
HEDGED = {"pilot": 4, "max_requests_per_batch": 8, "batches_in_flight": 8,
          "hedge": {"mode": "backup", "after": 1.5, "max_extra_cost": 0.5}}


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


def even_turnaround(seconds: float) -> Turnaround:
    return Turnaround(validating=Phase(seconds / 20), in_progress=Phase(seconds), finalizing=Phase(seconds / 20),
                      cancelling=Phase(seconds / 20))


@pytest.fixture
def clock():
    return VirtualClock()


@pytest.fixture
def virtual_sim(clock):
    server = SimServer(SimConfig(seed=2, answer_template=ANSWER, turnaround=even_turnaround(300.0),
                                 retry_after_s=0.01), clock=clock)
    server.start()
    yield server
    server.stop()


def is_backup(batch) -> bool:
    return str((batch.extra.get("metadata") or {}).get("corral_key", "")).endswith("-backup")


def slow_down(sim: SimServer, which, factor: float, done: set[str]) -> None:
    """Lengthen the processing of the batches ``which`` picks, once each."""
    for batch in list(sim.state.batches.values()):
        if batch.id not in done and which(batch):
            batch.ip_duration *= factor
            done.add(batch.id)


def run_with(path, clock, sim, which, factor):
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    deadline = clock.now() + 48 * 3600
    slowed: set[str] = set()

    def stop() -> bool:
        slow_down(sim, which, factor, slowed)
        return clock.now() > deadline

    run.run(clock=clock, max_interval=30.0, should_stop=stop)
    return camp, run, slowed


def billed(sim: SimServer, now: float) -> Counter:
    """custom_id -> how many answers the simulator billed for it."""
    counts: Counter = Counter()
    for batch in list(sim.state.batches.values()):
        if batch.ended(now):
            for index, outcome in batch.results(now):
                if outcome.kind == "succeeded":
                    counts[batch.requests[index].custom_id] += 1
    return counts


def enqueued(sim: SimServer) -> Counter:
    counts: Counter = Counter()
    for batch in list(sim.state.batches.values()):
        counts.update(r.custom_id for r in batch.requests)
    return counts


def hedges(run) -> dict:
    with run.ledger.read() as conn:
        memory = learned.load(conn, run.id).get("backend:llm") or {}
    return (memory.get("hedges") or {}).get("label") or {}


def submission_infos(run) -> list[dict]:
    return [s["info"] for s in run.submissions(open_only=False) if s["stage"] == "label"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_slow_batch_gets_a_backup_that_wins(tmp_path, clock, virtual_sim, provider):
    sim = virtual_sim
    path = campaign(tmp_path, sim, provider, items=44, backend=HEDGED)
    # The last batch of the first full round is four times slower than the others.
    camp, run, slowed = run_with(path, clock, sim, lambda b: b.seq == 5 and not is_backup(b), 4.0)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
    # Anthropic's batches carry no metadata: the backups are the batches beyond the six planned.
    backups = [b for b in sim.state.batches.values() if b.seq > 5]
    assert len(backups) == 1, "one backup for the one slow batch"
    (slow,) = [sim.state.batches[i] for i in slowed]
    assert slow.cancel_at is not None and backups[0].cancel_at is None, "the original is cancelled, the backup won"
    pair = next(i for i in submission_infos(run) if i.get("backup"))
    assert pair["backup"]["state"] == "sent" and pair["backup"]["remote_id"] == backups[0].id
    assert set(pair["backup"]["answered"]) == set(pair["tasks"])
    # The original's finished answers were collected: dropped (the backup had answered them) but billed.
    finished_by_original = sum(1 for _, o in slow.results(clock.now()) if o.kind == "succeeded")
    assert finished_by_original > 0
    counts = hedges(run)
    assert counts["sent"] == 1 and counts["dropped"] == finished_by_original and counts["extra_cost"] > 0
    assert max(billed(sim, clock.now()).values()) <= 2 and max(enqueued(sim).values()) <= 2
    status = run.status()
    assert status["llm"]["label"]["backups_sent"] == 1
    assert status["llm"]["label"]["backup_extra_cost"] == pytest.approx(counts["extra_cost"])
    camp.close()


def test_the_original_wins_and_its_backup_is_cancelled(tmp_path, clock, virtual_sim):
    sim = virtual_sim
    path = campaign(tmp_path, sim, "openai", items=44, backend=HEDGED)
    slowed: set[str] = set()
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)

    def stop() -> bool:
        # The last batch is slow enough to get a backup, and its backup much slower still.
        slow_down(sim, lambda b: b.seq == 5 and not is_backup(b), 2.0, slowed)
        slow_down(sim, is_backup, 10.0, slowed)
        return False

    run.run(clock=clock, max_interval=30.0, should_stop=stop)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
    (backup,) = [b for b in sim.state.batches.values() if is_backup(b)]
    slow = next(b for b in sim.state.batches.values() if b.seq == 5)
    assert backup.cancel_at is not None and slow.cancel_at is None
    pair = next(i for i in submission_infos(run) if i.get("backup"))
    assert pair["backup"]["original"] == pair["backup"]["backup"] == "collected"
    assert pair["backup"]["cancelled"] == ["backup"]
    assert set(pair["backup"]["answered"]) == set(pair["tasks"])
    # What the cancelled backup had finished was collected and dropped, its cost counted.
    by_backup = sum(1 for _, o in backup.results(clock.now()) if o.kind == "succeeded")
    assert hedges(run)["dropped"] == by_backup
    assert max(billed(sim, clock.now()).values()) <= 2
    camp.close()


def test_the_cost_cap_refuses_a_backup(tmp_path, clock, virtual_sim):
    sim = virtual_sim
    backend = {**HEDGED, "hedge": {"mode": "backup", "after": 1.5, "max_extra_cost": 0.02}}
    path = campaign(tmp_path, sim, "openai", items=44, backend=backend)
    camp, run, slowed = run_with(path, clock, sim, lambda b: b.seq == 5, 4.0)
    assert {r["state"] for r in tasks(run)} == {"done"}
    assert not [b for b in sim.state.batches.values() if is_backup(b)]
    # Refused a backup, the slow batch is cancelled as a straggler past straggler_after.
    (slow,) = [sim.state.batches[i] for i in slowed]
    assert slow.cancel_at is not None
    pair = next(i for i in submission_infos(run) if i.get("backup"))
    assert pair["backup"]["state"] == "refused" and "max_extra_cost" in pair["backup"]["why"]
    assert pair.get("straggler") and sim.state.requests_enqueued["openai"] > 44
    assert hedges(run)["refused"] == 1 and hedges(run)["sent"] == 0
    camp.close()


def test_hedge_off_keeps_cancelling_stragglers(tmp_path, clock, virtual_sim):
    sim = virtual_sim
    backend = {**HEDGED, "hedge": {"mode": "off"}, "straggler_after": 1.5}
    path = campaign(tmp_path, sim, "openai", items=44, backend=backend)
    camp, run, slowed = run_with(path, clock, sim, lambda b: b.seq == 5, 4.0)
    assert {r["state"] for r in tasks(run)} == {"done"}
    assert not [b for b in sim.state.batches.values() if is_backup(b)]
    assert [i for i in submission_infos(run) if i.get("straggler")]
    camp.close()


def test_kill9_during_a_hedged_tail_records_once_and_bills_at_most_twice(tmp_path):
    # Real time: batches of about two seconds; every other batch after the pilot, and every backup,
    # runs until the kills are over, then each ends within seconds, in a random order.
    sim = SimServer(SimConfig(seed=4, answer_template=ANSWER, turnaround=even_turnaround(2.0),
                              retry_after_s=0.01))
    sim.start()
    rng = random.Random(7)
    slowed: set[str] = set()
    stop = threading.Event()

    def shape() -> None:
        while not stop.is_set():
            for batch in list(sim.state.batches.values()):
                if batch.id in slowed:
                    continue
                slowed.add(batch.id)
                if is_backup(batch):
                    batch.ip_duration = 3600.0
                elif batch.seq > 1 and batch.seq % 2 == 0:
                    batch.ip_duration = 3600.0
            time.sleep(0.02)

    shaper = threading.Thread(target=shape, daemon=True)
    shaper.start()
    try:
        folder = tmp_path / "labels"
        path = campaign(folder, sim, "openai", items=44, backend={**HEDGED, "poll_interval": "0.3s",
                                                                  "max_requests_per_batch": 5})

        def backup_in_flight() -> bool:
            now = sim.clock.now()
            return any(is_backup(b) and not b.ended(now) for b in list(sim.state.batches.values()))

        def controller() -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "corral", "run", "-q"], cwd=folder, env=cli_env(ENV),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        # The first controller runs until backups are in flight; how long it took to send its first
        # batch says how long a controller takes to start on this machine.
        began = time.monotonic()
        proc = controller()
        startup = None
        while not backup_in_flight():
            if startup is None and sim.state.batches:
                startup = time.monotonic() - began
            assert time.monotonic() - began < 90 and proc.poll() is None, "no backup was sent"
            time.sleep(0.05)
        kills = during_pairs = 0
        while True:
            time.sleep(rng.uniform(0.0, 2.0))
            if proc.poll() is not None:
                break
            during_pairs += backup_in_flight()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            if kills == 10:
                break
            proc = controller()
            time.sleep(startup or 1.0)
        assert kills == 10 and during_pairs == 10, f"{kills} kills, {during_pairs} with a backup in flight"
        stop.set()
        shaper.join()
        now = sim.clock.now()
        for batch in list(sim.state.batches.values()):
            if not batch.ended(now) and batch.cancel_at is None:
                batch.ip_duration = max(0.0, now - batch.valid_at) + rng.uniform(0.5, 6.0)
        corral_cli(folder, "run", "-q", env=ENV, check=0, timeout=240)
        status = json.loads(corral_cli(folder, "status", "--json", env=ENV, check=0).stdout)
        assert status["stages"]["label"]["done"] == 44
        assert status["llm"]["label"]["backups_sent"] >= 3
        records = json.loads(corral_cli(folder, "export", "-f", "json", env=ENV, check=0).stdout)
        assert len(records) == 44 and len({r["pair"] for r in records}) == 44
        now = sim.clock.now()
        assert max(billed(sim, now).values()) <= 2, "a request was billed more than twice"
        assert max(enqueued(sim).values()) <= 2, "a request was sent more than twice"
        backups = [b for b in sim.state.batches.values() if is_backup(b)]
        keys = Counter(b.extra["metadata"]["corral_key"] for b in backups)
        assert max(keys.values()) == 1, "a backup was created twice"
    finally:
        stop.set()
        shaper.join()
        sim.stop()


def test_a_bad_hedge_setting_is_refused_naming_the_key(tmp_path):
    campaign(tmp_path, SimpleNamespace(base_url="http://127.0.0.1:9"), "openai",
             backend={"hedge": {"mode": "sometimes"}})
    out = corral_cli(tmp_path, "check", env=ENV)
    assert out.returncode == 2, out.stderr
    assert "hedge" in out.stderr and "backup" in out.stderr and "Traceback" not in out.stderr
