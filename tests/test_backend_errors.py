"""Errors from backends, at the user's level: a submit call that does not get through uses no
attempt and backs off; a batch the provider no longer knows ends and its requests go out again;
an outage while polling is retried; a bug in a backend stops the controller instead of being
polled forever. LLM batch campaigns run against the simulator (see test_llm_backends.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import campaign_dict, write_campaign, write_module
from test_llm_backends import (
    ANSWER,
    assert_no_batch_twice,
    campaign,
    fast_turnaround,
    run_to_end,
    tasks,
)

import corral
from corral.api import Campaign
from corral.backends.base import TransientError
from corral.clock import VirtualClock
from corral.engine import Engine
from corral.sim import SimConfig, SimServer

pytestmark = pytest.mark.usefixtures("campaign_ledger")


@pytest.fixture
def clock():
    return VirtualClock()


@pytest.fixture
def sim_factory(clock, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sim")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sim")
    servers = []

    def make() -> SimServer:
        server = SimServer(SimConfig(seed=1, answer_template=ANSWER, turnaround=fast_turnaround(),
                                     retry_after_s=0.01), clock=clock)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def log_text(folder: Path) -> str:
    return (folder / ".corral" / "corral.log").read_text()


def failed_submissions(run) -> list[dict]:
    return [s for s in run.submissions(open_only=False) if s["state"] == "failed"]


def test_an_upload_that_does_not_get_through_uses_no_attempt(tmp_path, clock, sim_factory):
    sim = sim_factory()
    # Both tries of the SDK (max_retries 1) lose their connection: the upload did not get through.
    sim.fail_next("POST /v1/files", times=2, how="disconnect")
    path = campaign(tmp_path, sim, "openai", items=12, backend={"pilot": 0, "max_retries": 1})
    camp, run = run_to_end(path, clock)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
    assert sim.state.faults["disconnect"] == 2
    assert run.refresh()["status"] == "finished"
    failed = failed_submissions(run)
    assert len(failed) == 1 and "did not get through" in failed[0]["info"]["error"]
    log = log_text(tmp_path)
    assert "did not get through (TransientError: creating the batch did not get through: APIConnectionError" in log
    assert "its 12 tasks are pending again, attempts kept; next try in 15s (1 in a row)" in log
    assert_no_batch_twice(run, sim, "openai")
    camp.close()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_batch_unknown_after_the_provider_restarted_is_sent_again(tmp_path, clock, sim_factory, provider):
    sim = sim_factory()
    path = campaign(tmp_path, sim, provider, items=10, backend={"pilot": 0})
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    engine = run.engine(clock)
    assert engine.tick().submitted == 1
    # The provider loses every batch (a fresh simulator on the same address).
    port = int(sim.base_url.rsplit(":", 1)[1])
    sim.stop()
    fresh = SimServer(SimConfig(**{**sim.config.__dict__}), clock=clock, port=port)
    fresh.start()
    try:
        for _ in range(2):   # asked again before it is given up
            clock.advance(60)
            assert not engine.tick().errors
        clock.advance(60)
        report = engine.tick()
        assert any("is gone: the provider does not know batch" in e for e in report.errors), report.errors
        engine.close()
        run.run(clock=clock, max_interval=60.0)
        rows = tasks(run)
        assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
        gone = failed_submissions(run)
        assert len(gone) == 1 and "NotFoundError" in gone[0]["info"]["error"]
        assert "its unfinished tasks run again" in log_text(tmp_path)
        assert fresh.state.batches_created[provider] == 1
    finally:
        fresh.stop()
        camp.close()


def test_an_outage_while_polling_is_retried(tmp_path, clock, sim_factory):
    sim = sim_factory()
    path = campaign(tmp_path, sim, "openai", items=6, backend={"pilot": 0, "max_retries": 0})
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    engine = run.engine(clock)
    assert engine.tick().submitted == 1
    sim.fail_next("GET /v1/batches/{id}", times=1, how="http_5xx")
    clock.advance(60)
    engine.tick()
    assert "reading batch" in log_text(tmp_path) and "asking again at the next poll" in log_text(tmp_path)
    engine.close()
    run.run(clock=clock, max_interval=60.0)
    assert {r["state"] for r in tasks(run)} == {"done"}
    camp.close()


def test_a_bug_in_a_backends_poll_is_not_swallowed(tmp_path, clock, sim_factory):
    sim = sim_factory()
    path = campaign(tmp_path, sim, "openai", items=4, backend={"pilot": 0})
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    engine = run.engine(clock)
    assert engine.tick().submitted == 1

    def broken(sub):
        raise KeyError("a bug in the backend")

    engine.backends["llm"].batch_status = broken
    clock.advance(60)
    with pytest.raises(KeyError, match="a bug in the backend"):
        engine.tick()
    engine.close()
    camp.close()


def test_transient_submit_errors_back_off_longer_each_time_and_keep_attempts(tmp_path: Path):
    write_module(tmp_path, "tasks", "def f(item, ctx):\n    return {'x': item['x']}\n")
    write_campaign(tmp_path, campaign_dict({"a": {"call": "tasks:f"}}, items={"grid": {"x": [0, 1]}}))
    campaign_ = corral.open(str(tmp_path / "corral.yaml"))
    virtual = VirtualClock()
    try:
        run, _ = campaign_.start(clock=virtual)
        engine = Engine(campaign_.loaded, campaign_.ledger(), run.id, clock=virtual)
        backend = engine.backends["local"]
        real_submit = backend.submit

        def unreachable(*args, **kwargs):
            raise TransientError("connection refused")

        backend.submit = unreachable
        waits = []
        for _ in range(3):
            report = engine.tick()
            assert report.submitted == 0 and any("did not get through" in e for e in report.errors)
            task = run.task("t1")
            assert task["state"] == "pending" and task["attempts"] == 0 and task["error_class"] == "transient"
            waits.append(round(task["not_before"] - virtual.now()))
            virtual.advance(waits[-1] + 1)
        assert waits == [15, 30, 60]
        backend.submit = real_submit
        deadline = time.monotonic() + 60
        while not engine.tick().finished:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert [run.task(k)["attempts"] for k in ("t1", "t2")] == [1, 1]
        engine.close()
    finally:
        campaign_.close()
