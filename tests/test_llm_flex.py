"""Flex requests for the tail of an OpenAI batch stage (``hedge: {mode: flex}``), with the official
SDK against the simulator: the flex answers win and the batch is cancelled, a model without flex
falls back to the batch, refusals leave requests to the batch, and `corral run` killed with SIGKILL
ten times while flex requests and their batches are in flight. On SQLite and PostgreSQL.

As in test_llm_hedge, chosen batches are made slow inside the simulator, so which lane answers
first is known."""

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
from test_llm_backends import MODELS, campaign, tasks
from test_llm_hedge import ANSWER, ENV, billed, even_turnaround, hedges, slow_down, submission_infos

from corral.api import Campaign
from corral.sim.clock import SteppedClock
from corral.sim import Phase, SimConfig, SimServer, Turnaround

pytestmark = pytest.mark.usefixtures("campaign_ledger")

FLEXED = {"pilot": 4, "max_requests_per_batch": 8, "batches_in_flight": 8,
          "hedge": {"mode": "flex", "after": 1.5, "max_extra_cost": 0.5, "flex_concurrency": 8}}


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def clock():
    return SteppedClock()


def make_sim(clock=None, **flex) -> SimServer:
    settings = {"flex_models": (MODELS["openai"],), "flex_latency_median_s": 20.0, "flex_latency_sigma": 0.3,
                "flex_unavailable_rate": 0.0, **flex}
    server = SimServer(SimConfig(seed=2, answer_template=ANSWER, turnaround=even_turnaround(300.0),
                                 retry_after_s=0.01, **settings), clock=clock)
    server.start()
    return server


def flex_billed(sim: SimServer) -> Counter:
    """custom_id -> flex answers the simulator billed for it."""
    return sim.flex_billed()


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


#: a batch slowed this much has finished none of its requests when it is found slow: it shows no pace
STUCK = 40.0


def test_flex_requests_answer_a_slow_batch_which_is_then_cancelled(tmp_path, clock):
    # A straggler that shows no progress races flex requests (it may still start and end soon).
    sim = make_sim(clock)
    try:
        path = campaign(tmp_path, sim, "openai", items=44, backend=FLEXED)
        camp, run, slowed = run_with(path, clock, sim, lambda b: b.seq == 5, STUCK)
        rows = tasks(run)
        assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
        (slow,) = [sim.state.batches[i] for i in slowed]
        assert slow.cancel_at is not None, "every request had its flex answer: the batch was cancelled"
        assert len(sim.state.batches) == 6, "no backup batch: the lane is flex"
        pair = next(i for i in submission_infos(run) if i.get("backup"))
        lane = pair["backup"]
        assert lane["lane"] == "flex" and lane["state"] == "sent"
        assert set(lane["answered"]) == set(pair["tasks"]) and lane["backup"] == lane["original"] == "collected"
        flex = flex_billed(sim)
        assert sum(flex.values()) == len(lane["tasks"]) and max(flex.values()) == 1
        # The slow batch's own finished answers were collected and dropped, their cost counted.
        by_batch = sum(1 for _, o in slow.results(clock.now()) if o.kind == "succeeded")
        counts = hedges(run)
        assert counts["flex_sent"] == counts["flex_answered"] == len(lane["tasks"])
        assert counts["dropped"] == by_batch
        both = billed(sim, clock.now()) + flex
        assert max(both.values()) <= 2
        # The requests answered by flex are recorded with the flex answer's billed usage.
        assert all(r["tokens_in"] and r["tokens_out"] for r in rows if r["id"] in lane["tasks"])
        status = run.status()
        assert status["llm"]["label"]["flex_answered"] == len(lane["tasks"])
        camp.close()
    finally:
        sim.stop()


def unfinished_go_by_flex(run, sim, clock, slowed) -> dict:
    (slow,) = [sim.state.batches[i] for i in slowed]
    assert slow.cancel_at is not None and len(sim.state.batches) == 6, "the rest went by flex, not a batch"
    flexed = flex_only(run)
    assert len(flexed) == 1 and flexed[0]["state"] == "finished"
    unfinished = 8 - sum(1 for _, o in slow.results(clock.now()) if o.kind == "succeeded")
    flex = flex_billed(sim)
    assert sum(flex.values()) == unfinished > 0
    assert max((billed(sim, clock.now()) + flex).values()) == 1, "a request was billed twice"
    counts = hedges(run)
    assert counts["flex_sent"] == counts["flex_answered"] == unfinished
    assert not counts.get("extra_cost"), "nothing was billed twice"
    return counts


@pytest.mark.parametrize("factor", [4.0, 8.0])
def test_a_straggler_that_shows_its_pace_is_cancelled_and_its_rest_sent_by_flex(tmp_path, clock, factor):
    # Found slow with a third (or a sixth) of its requests done: flex answers the rest sooner than
    # the batch would at its pace, so it is cancelled rather than raced, whatever the cap allows.
    sim = make_sim(clock)
    try:
        path = campaign(tmp_path, sim, "openai", items=44, backend=FLEXED)
        camp, run, slowed = run_with(path, clock, sim, lambda b: b.seq == 5, factor)
        rows = tasks(run)
        assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
        counts = unfinished_go_by_flex(run, sim, clock, slowed)
        assert not counts.get("sent") and not counts.get("refused"), "no race"
        camp.close()
    finally:
        sim.stop()


def test_a_straggler_near_its_end_is_left_to_finish(tmp_path, clock):
    # Found slow with 7 of its 8 requests done: at its pace it ends before flex would; left alone.
    sim = make_sim(clock)
    try:
        path = campaign(tmp_path, sim, "openai", items=44, backend=FLEXED)
        camp, run, slowed = run_with(path, clock, sim, lambda b: b.seq == 5, 1.8)
        assert {r["state"] for r in tasks(run)} == {"done"}
        (slow,) = [sim.state.batches[i] for i in slowed]
        assert slow.cancel_at is None and not flex_billed(sim) and not flex_only(run)
        assert not hedges(run).get("sent")
        camp.close()
    finally:
        sim.stop()


def test_a_straggler_refused_a_race_by_the_cap_sends_its_unfinished_requests_by_flex(tmp_path, clock):
    # It shows no pace and the cap allows no second copy: the slow batch is cancelled past
    # straggler_after; what it had not finished goes out as flex requests, not in a new batch.
    sim = make_sim(clock)
    try:
        backend = {**FLEXED, "hedge": {**FLEXED["hedge"], "max_extra_cost": 0.0}, "straggler_after": 1.5}
        path = campaign(tmp_path, sim, "openai", items=44, backend=backend)
        camp, run, slowed = run_with(path, clock, sim, lambda b: b.seq == 5, STUCK)
        rows = tasks(run)
        assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
        counts = unfinished_go_by_flex(run, sim, clock, slowed)
        assert counts["refused"] == 1
        camp.close()
    finally:
        sim.stop()


def test_the_status_line_counts_flex_requests(tmp_path, clock):
    sim = make_sim(clock)
    try:
        path = campaign(tmp_path, sim, "openai", items=44, backend=FLEXED)
        camp, run, _ = run_with(path, clock, sim, lambda b: b.seq == 5, STUCK)
        camp.close()
        out = corral_cli(tmp_path, "status", env=ENV)
        assert out.returncode == 0, out.stderr
        assert "flex requests" in out.stdout and "answered" in out.stdout
    finally:
        sim.stop()


def test_a_model_without_flex_leaves_its_requests_to_the_batch(tmp_path, clock):
    sim = make_sim(clock, flex_models=())
    try:
        path = campaign(tmp_path, sim, "openai", items=44, backend=FLEXED)
        camp, run, slowed = run_with(path, clock, sim, lambda b: b.seq == 5, STUCK)
        rows = tasks(run)
        assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
        (slow,) = [sim.state.batches[i] for i in slowed]
        assert slow.cancel_at is None, "nothing answered by flex: the batch ran to its end"
        assert not flex_billed(sim)
        counts = hedges(run)
        assert counts["flex_rejected"] == counts["flex_sent"] > 0
        with run.ledger.read() as conn:
            from corral.ledger import learned
            memory = learned.load(conn, run.id).get("backend:llm") or {}
        assert "label" in (memory.get("flex_off") or {}), "later stragglers of the stage get backup batches"
        camp.close()
    finally:
        sim.stop()


def test_refused_flex_requests_are_asked_again_then_left_to_the_batch(tmp_path, clock):
    sim = make_sim(clock, flex_unavailable_rate=1.0)
    try:
        path = campaign(tmp_path, sim, "openai", items=44, backend=FLEXED)
        camp, run, slowed = run_with(path, clock, sim, lambda b: b.seq == 5, STUCK)
        assert {r["state"] for r in tasks(run)} == {"done"}
        counts = hedges(run)
        assert counts["flex_refused"] == counts["flex_sent"] > 0
        refused = sim.summary()["flex"]["refused_unavailable"]
        assert refused == 5 * counts["flex_sent"], "each refused request is tried five times"
        assert not flex_billed(sim), "a refusal is not billed"
        camp.close()
    finally:
        sim.stop()


DRAINED = {**FLEXED, "max_concurrent_batches": 2, "hedge": {**FLEXED["hedge"], "max_extra_cost": 0.0}}


def flex_only(run) -> list[dict]:
    return [s for s in run.submissions(open_only=False) if (s["remote_id"] or "").startswith("flex:")]


def drain_tasks(run) -> list[int]:
    return [t for info in submission_infos(run) if info.get("lane") == "flex" for t in info["tasks"]]


def test_the_last_of_a_stage_goes_by_flex_when_flex_answers_it_within_a_turnaround(tmp_path, clock):
    # Two batches of 8 at a time, 5 min each; flex answers 8 at a time in about 20 s (taken as 90 s
    # until 20 are seen): once four batches have told the turnaround, the 16 requests left would be
    # answered by flex in 3 min, so they go as flex requests, not in one more round of batches.
    sim = make_sim(clock)
    try:
        path = campaign(tmp_path, sim, "openai", items=60, backend=DRAINED)
        camp, run, _ = run_with(path, clock, sim, lambda b: False, 1.0)
        rows = tasks(run)
        assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
        (drain,) = flex_only(run)
        assert drain["state"] == "finished"
        drained = set(drain_tasks(run))
        in_batches = sum(b.n for b in sim.state.batches.values())
        assert len(drained) + in_batches == 60, "each request went once, by batch or by flex"
        assert 0 < len(drained) <= 300 * 8 / 90
        flex = flex_billed(sim)
        assert sum(flex.values()) == len(drained)
        assert max((billed(sim, clock.now()) + flex).values()) == 1, "a request was billed twice"
        counts = hedges(run)
        assert counts["flex_sent"] == counts["flex_answered"] == len(drained)
        assert counts.get("extra_cost", 0) == 0, "the last requests by flex are billed once, at the batch price"
        assert all(r["tokens_in"] and r["tokens_out"] for r in rows if r["id"] in drained)
        camp.close()
    finally:
        sim.stop()


def test_the_last_of_a_stage_goes_by_batch_when_the_model_has_no_flex(tmp_path, clock):
    sim = make_sim(clock, flex_models=())
    try:
        path = campaign(tmp_path, sim, "openai", items=60, backend=DRAINED)
        camp, run, _ = run_with(path, clock, sim, lambda b: False, 1.0)
        rows = tasks(run)
        assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
        assert not flex_billed(sim)
        assert sum(b.n for b in sim.state.batches.values()) == 60, "every request answered by a batch, once"
        counts = hedges(run)
        assert counts["flex_rejected"] == counts["flex_sent"] > 0
        assert sim.summary()["flex"]["refused_model"] <= 8, "once refused, the rest was not sent"
        camp.close()
    finally:
        sim.stop()


def test_flex_for_a_provider_without_it_is_refused_naming_the_key(tmp_path):
    campaign(tmp_path, SimpleNamespace(base_url="http://127.0.0.1:9"), "anthropic",
             backend={"hedge": {"mode": "flex"}})
    out = corral_cli(tmp_path, "check", env=ENV)
    assert out.returncode == 2, out.stderr
    assert "hedge" in out.stderr and "flex" in out.stderr and "backup" in out.stderr
    assert "Traceback" not in out.stderr


def hold_even_batches(sim: SimServer) -> tuple[set[str], threading.Event, threading.Thread]:
    """In real time: every even batch after the pilot runs for an hour (it shows no pace, so it
    races flex requests), until the event is set; returns (batches seen, the event, the thread)."""
    slowed: set[str] = set()
    stop = threading.Event()

    def shape() -> None:
        while not stop.is_set():
            for batch in list(sim.state.batches.values()):
                if batch.id not in slowed:
                    slowed.add(batch.id)
                    if batch.seq > 1 and batch.seq % 2 == 0:
                        batch.ip_duration = 3600.0
            time.sleep(0.02)

    shaper = threading.Thread(target=shape, daemon=True)
    shaper.start()
    return slowed, stop, shaper


def test_kill9_while_flex_requests_are_in_flight_records_once_and_bills_at_most_twice(tmp_path):
    # Real time: batches of about two seconds; every other batch after the pilot runs until the kills
    # are over. Flex answers take 60-90 s, so those sent before a kill are still waiting at the
    # simulator through the kills (answered to nobody: billed, never recorded).
    sim = make_sim(None, flex_latency_median_s=75.0, flex_latency_sigma=0.15)
    sim.config.turnaround = even_turnaround(2.0)
    rng = random.Random(7)
    slowed, stop, shaper = hold_even_batches(sim)
    try:
        folder = tmp_path / "labels"
        path = campaign(folder, sim, "openai", items=44, backend={**FLEXED, "poll_interval": "0.3s",
                                                                  "max_requests_per_batch": 5})
        del path

        def both_in_flight() -> bool:
            now = sim.clock.now()
            batch_running = any(b.id in slowed and b.seq > 1 and b.seq % 2 == 0 and not b.ended(now)
                                for b in list(sim.state.batches.values()))
            return batch_running and sim.summary()["flex"]["waiting"] > 0

        def controller() -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "corral", "run", "-q"], cwd=folder, env=cli_env(ENV),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        began = time.monotonic()
        proc = controller()
        startup = None
        while not both_in_flight():
            if startup is None and sim.state.batches:
                startup = time.monotonic() - began
            assert time.monotonic() - began < 90 and proc.poll() is None, "no flex request was sent"
            time.sleep(0.05)
        kills = during = 0
        while True:
            time.sleep(rng.uniform(0.0, 2.0))
            if proc.poll() is not None:
                break
            during += both_in_flight()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            if kills == 10:
                break
            proc = controller()
            time.sleep(startup or 1.0)
        assert kills == 10 and during == 10, f"{kills} kills, {during} with both lanes in flight"
        stop.set()
        shaper.join()
        now = sim.clock.now()
        for batch in list(sim.state.batches.values()):
            if not batch.ended(now) and batch.cancel_at is None:
                batch.ip_duration = max(0.0, now - batch.valid_at) + rng.uniform(0.5, 6.0)
        corral_cli(folder, "run", "-q", env=ENV, check=0, timeout=240)
        status = json.loads(corral_cli(folder, "status", "--json", env=ENV, check=0).stdout)
        assert status["stages"]["label"]["done"] == 44
        assert status["llm"]["label"]["flex_sent"] > 0 and status["llm"]["label"]["flex_lost"] > 0
        records = json.loads(corral_cli(folder, "export", "-f", "json", env=ENV, check=0).stdout)
        assert len(records) == 44 and len({r["pair"] for r in records}) == 44
        deadline = time.monotonic() + 150
        while sim.summary()["flex"]["waiting"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not sim.summary()["flex"]["waiting"]
        flex = flex_billed(sim)
        assert flex and max(flex.values()) == 1, "a request went out by flex more than once"
        both = billed(sim, sim.clock.now()) + flex
        assert max(both.values()) <= 2, "a request was billed more than twice"
    finally:
        stop.set()
        shaper.join()
        sim.stop()



def test_under_cron_ticks_flex_is_not_used_and_stragglers_get_backup_batches(tmp_path):
    # Each `corral tick` is a process that ends with the tick: flex answers would arrive to nobody.
    # The same campaign under ticks hedges with backup batches, and no flex request is sent.
    from test_llm_faults import tick_until_finished

    sim = make_sim(None)
    sim.config.turnaround = Turnaround(validating=Phase(0.1), in_progress=Phase(6.0, 1.5), finalizing=Phase(0.1),
                                       cancelling=Phase(0.3))
    try:
        folder = tmp_path / "labels"
        campaign(folder, sim, "openai", items=30, backend={
            "pilot": 0, "poll_interval": "0.2s", "max_requests_per_batch": 3, "batches_in_flight": 10,
            "hedge": {"mode": "flex", "after": 1.5, "max_extra_cost": 0.5}})
        tick_until_finished(folder)
        status = json.loads(corral_cli(folder, "status", "--json", env=ENV, check=0).stdout)
        assert status["stages"]["label"]["done"] == 30
        llm = status["llm"]["label"]
        assert llm["flex_sent"] == llm["flex_lost"] == 0
        assert not flex_billed(sim) and sim.summary()["flex"]["waiting"] == 0
        assert llm["backups_sent"] > 0, "the stragglers got backup batches instead"
    finally:
        sim.stop()


def test_a_tick_beside_a_running_controller_leaves_its_flex_requests_alone(tmp_path):
    # `corral run` holds flex requests (20 s each) for batches that will not end; `corral tick`
    # from cron meanwhile must not take them for lost: the run collects every answer itself.
    sim = make_sim(None, flex_latency_median_s=20.0, flex_latency_sigma=0.1)
    sim.config.turnaround = even_turnaround(2.0)
    slowed, stop, shaper = hold_even_batches(sim)
    try:
        folder = tmp_path / "labels"
        campaign(folder, sim, "openai", items=44, backend={**FLEXED, "poll_interval": "0.3s",
                                                           "max_requests_per_batch": 5})
        proc = subprocess.Popen([sys.executable, "-m", "corral", "run", "-q"], cwd=folder, env=cli_env(ENV),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        began = time.monotonic()
        while not sim.summary()["flex"]["waiting"]:
            assert time.monotonic() - began < 90 and proc.poll() is None, "no flex request was sent"
            time.sleep(0.05)
        for _ in range(3):
            out = corral_cli(folder, "tick", env=ENV, check=0)
            assert out.returncode in (0, 1), out.stderr
            time.sleep(0.5)
        assert proc.wait(timeout=240) == 0
        status = json.loads(corral_cli(folder, "status", "--json", env=ENV, check=0).stdout)
        assert status["stages"]["label"]["done"] == 44
        llm = status["llm"]["label"]
        assert llm["flex_sent"] > 0 and llm["flex_lost"] == 0, llm
        assert llm["flex_answered"] == llm["flex_sent"]
        assert max(flex_billed(sim).values()) == 1
    finally:
        stop.set()
        shaper.join()
        sim.stop()
