"""A batch create whose answer is lost while the batch list does not answer either: whether the
batch exists is unknown, so the submission stays unconfirmed and is looked up at the next tick,
never sent under a new key (which would pay for the requests twice). OpenAI and Gemini, against
the simulator with the official SDKs, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import test_gemini_batch as gemini
from test_llm_backends import campaign, remote_batches, sim_factory, tasks

from corral.api import Campaign
from corral.engine.clock import VirtualClock

pytestmark = pytest.mark.usefixtures("campaign_ledger")

OPENAI_CREATE, OPENAI_LIST = "POST /v1/batches", "GET /v1/batches"
GEMINI_LIST = "GET /v1beta/batches"


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sim")
    monkeypatch.setenv("GEMINI_API_KEY", "sim")


@pytest.fixture
def clock():
    return VirtualClock()


__all__ = ["sim_factory"]   # the fixture, used by name


def run_logging(path, clock):
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    errors: list[str] = []
    run.run(clock=clock, max_interval=60.0, should_stop=lambda: clock.now() > 1e12,
            on_tick=lambda report: errors.extend(report.errors))
    return camp, run, errors


def test_openai_a_lost_create_with_the_list_down_is_looked_up_not_sent_again(tmp_path, clock, sim_factory):
    # Every try of the create takes effect and answers too late; the list fails for the lookup that
    # follows (and the SDK's retries of it). Two batches were made with the submission's key.
    sim = sim_factory(timeout_delay_s=0.5)
    sim.fail_next(OPENAI_CREATE, times=2, how="timeout")
    sim.fail_next(OPENAI_LIST, times=2, how="http_5xx")
    path = campaign(tmp_path, sim, "openai", items=8, backend={"pilot": 0, "timeout": 0.25, "max_retries": 1})
    camp, run, errors = run_logging(path, clock)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
    assert any("looked up again at the next tick" in e for e in errors), errors
    batches = sim.state.batch_list("openai")
    assert sim.state.http_requests[OPENAI_CREATE] == 2 and len(batches) == 2, "the requests went out again"
    keys = {(b.extra.get("metadata") or {}).get("corral_key") for b in batches}
    assert len(keys) == 1, "a second key was used for the same tasks"
    (kept,) = remote_batches(run)
    assert all(b.cancel_at is not None for b in batches if b.id != kept), "the duplicate batch was left running"
    camp.close()


def test_gemini_a_lost_create_with_the_list_down_is_looked_up_not_sent_again(tmp_path, clock, monkeypatch):
    import corral.backends.gemini_batch as gemini_batch
    from corral.sim import SimConfig, SimServer

    monkeypatch.setattr(gemini_batch, "LOOK_AGAIN", (0.0,))
    sim = SimServer(SimConfig(seed=1, answer_template=gemini.ANSWER, retry_after_s=0.01, timeout_delay_s=1.0,
                              turnaround=gemini.Turnaround(validating=gemini.Phase(20.0, 0.3),
                                                           in_progress=gemini.Phase(300.0, 0.5, 1.0),
                                                           finalizing=gemini.Phase(20.0, 0.3))), clock=clock)
    sim.start()
    try:
        sim.fail_next(gemini.CREATE, how="timeout")
        # Two looks of two tries each (max_retries 1): all four fail.
        sim.fail_next(GEMINI_LIST, times=4, how="http_5xx")
        path = gemini.campaign(tmp_path, sim, items=8, backend={"timeout": 0.3, "max_retries": 1})
        camp, run, errors = run_logging(path, clock)
        rows = gemini.tasks(run)
        assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
        assert any("looked up again at the next tick" in e for e in errors), errors
        assert sim.state.http_requests[gemini.CREATE] == 1, "the job was created a second time"
        assert sim.state.batches_created["gemini"] == 1
        assert gemini.recorded_jobs(run) == [f"batches/{b.id}" for b in sim.state.batch_list("gemini")]
        camp.close()
    finally:
        sim.stop()
