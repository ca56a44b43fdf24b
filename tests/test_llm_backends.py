"""The OpenAI and Anthropic batch backends with the official SDKs against the simulator (corral.sim):
faults, expiry, token limits, oversized requests, budget, parse errors. The engine and the
simulator share one VirtualClock, so a day of batches passes in a second or two."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_campaign, write_module
from sqlalchemy import select

from corral.api import Campaign
from corral.engine.clock import VirtualClock
from corral.ledger import learned, loads, schema
from corral.sim import Phase, SimConfig, SimServer, Turnaround

PROVIDERS = ["openai", "anthropic"]
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
ANSWER = {"instructions": ["a", "b", "c", "d", "e"], "descriptions": ["x", "y"], "id": "{custom_id}"}

PARSE = """
import json

from corral.llm import text_of


def parse(body):
    answer = json.loads(text_of(body))
    if len(answer["instructions"]) != 5:
        raise ValueError("wanted five instructions")
    return {"instructions": answer["instructions"], "descriptions": answer["descriptions"]}


def picky(body):
    answer = json.loads(text_of(body))
    if int(answer["id"].rsplit("-t", 1)[1]) % 4 == 0:
        raise ValueError("refusing every fourth answer")
    return answer
"""


def fast_turnaround() -> Turnaround:
    # minutes of virtual time per batch: a handful of polls each
    return Turnaround(validating=Phase(20.0, 0.3), in_progress=Phase(300.0, 0.5, 1.0), finalizing=Phase(20.0, 0.3))


@pytest.fixture
def clock():
    return VirtualClock()


@pytest.fixture
def sim_factory(clock):
    servers = []

    def make(**config):
        config.setdefault("seed", 1)
        config.setdefault("answer_template", ANSWER)
        config.setdefault("turnaround", fast_turnaround())
        config.setdefault("retry_after_s", 0.01)
        server = SimServer(SimConfig(**config), clock=clock)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sim")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sim")


def campaign(folder: Path, sim: SimServer, provider: str, *, items: int = 24, parse: str = "labels:parse",
             backend: dict | None = None, stage: dict | None = None, extra_items: list | None = None) -> Path:
    rows = [{"pair": i, "trajectory": f"traj{i % 3}", "note": f"pair {i}"} for i in range(items)]
    rows += extra_items or []
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.json").write_text(json.dumps(rows))
    write_module(folder, "labels", PARSE)
    request = {"model": MODELS[provider], "max_tokens": 400,
               "messages": [{"role": "user", "content": "Five instructions and two descriptions, as JSON, for "
                                                         "{{ item.note }} of {{ item.trajectory }}."}]}
    if provider == "openai":
        request["response_format"] = {"type": "json_object"}
    settings = {"type": f"{provider}_batch", "base_url": sim.base_url + ("/v1" if provider == "openai" else ""),
                "pilot": 4, "poll_interval": "20s", "tokenizer": "estimate", "batches_in_flight": 4,
                "max_retries": 6, "token_limit_backoff": "2m"}
    settings.update(backend or {})
    stage_config = {"backend": "llm", "request": request, "parse": parse, "retries": {"max": 2, "backoff": "1m"}}
    stage_config.update(stage or {})
    return write_campaign(folder, {"name": "labels", "items": {"from": "pairs.json"},
                                   "stages": {"label": stage_config}, "backends": {"llm": settings}})


def run_to_end(path: Path, clock: VirtualClock, max_hours: float = 72.0):
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    deadline = clock.now() + max_hours * 3600
    run.run(clock=clock, max_interval=60.0, should_stop=lambda: clock.now() > deadline)
    return camp, run


def tasks(run) -> list[dict]:
    t = schema.tasks
    with run.ledger.read() as conn:
        return [dict(r) for r in conn.execute(select(t).where(t.c.run_id == run.id).order_by(t.c.id)).mappings()]


def remote_batches(run) -> list[str]:
    s = schema.submissions
    with run.ledger.read() as conn:
        ids = [r[0] for r in conn.execute(select(s.c.remote_id).where(s.c.run_id == run.id))]
    return [i for i in ids if i and not i.startswith("none:")]


def assert_no_batch_twice(run, sim, provider):
    ids = remote_batches(run)
    assert len(ids) == len(set(ids))
    assert sim.state.batches_created[provider] == len(ids), "a batch exists that the ledger does not know"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_http_faults_are_retried_by_the_sdk(tmp_path, clock, sim_factory, provider):
    sim = sim_factory()
    sim.set_faults(http_5xx=0.25, http_429=0.25)
    camp, run = run_to_end(campaign(tmp_path, sim, provider), clock)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"}
    assert all(r["attempts"] == 1 for r in rows)
    assert sim.state.faults["http_5xx"] > 0 and sim.state.faults["http_429"] > 0
    assert_no_batch_twice(run, sim, provider)
    record = next(iter(run.records()))
    assert record["instructions"] == ANSWER["instructions"] and record["trajectory"] == "traj0"
    assert record["tokens_in"] > 0 and record["cost"] > 0
    camp.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_expired_batch_keeps_finished_requests_and_requeues_the_rest(tmp_path, clock, sim_factory, provider):
    sim = sim_factory()
    path = campaign(tmp_path, sim, provider, items=40, backend={"pilot": 0, "batches_in_flight": 1,
                                                               "min_requests_per_batch": 40})
    sim.set_faults(expire=1.0)
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    engine = run.engine(clock)
    engine.tick()
    for _ in range(400):
        clock.advance(600)
        report = engine.tick(submit=False)
        if report.completed or report.requeued:
            break
    rows = tasks(run)
    done = [r for r in rows if r["state"] == "done"]
    back = [r for r in rows if r["state"] == "pending"]
    assert done and back and len(done) + len(back) == 40, "an expired batch gives its finished requests"
    assert all(r["attempts"] == 0 for r in back)
    sim.set_faults(expire=0.0)
    run.run(clock=clock, max_interval=60.0)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
    engine.close()
    camp.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_all_failed_batch_and_request_errors_use_attempts(tmp_path, clock, sim_factory, provider):
    sim = sim_factory()
    sim.set_faults(all_failed=1.0)
    path = campaign(tmp_path, sim, provider, items=12, stage={"retries": {"max": 0}})
    camp, run = run_to_end(path, clock)
    rows = tasks(run)
    assert {(r["state"], r["error_class"]) for r in rows} == {("failed", "server_error")}
    if provider == "openai":
        batch = sim.state.batches[remote_batches(run)[0]]
        assert batch.files and batch.files.get("output") is None, "an all-failed batch has no output file"
    sim.set_faults(all_failed=0.0, request_error=0.3)
    engine = run.engine(clock)
    assert engine.retry(error_class="server_error") == 12
    engine.close()
    run.run(clock=clock, max_interval=60.0)
    rows = tasks(run)
    assert {r["state"] for r in rows} <= {"done", "failed"} and any(r["state"] == "done" for r in rows)
    assert {r["error_class"] for r in rows if r["state"] == "failed"} <= {"server_error"}
    camp.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_and_missing_lines_run_again_without_using_attempts(tmp_path, clock, sim_factory, provider):
    sim = sim_factory()
    sim.set_faults(malformed_lines=0.2, missing_lines=0.2)
    camp, run = run_to_end(campaign(tmp_path, sim, provider, items=30), clock)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"}
    assert all(r["attempts"] == 1 for r in rows)
    assert len(remote_batches(run)) > 2, "the lost requests went out again in later batches"
    camp.close()


def test_validation_failure_fails_the_batch_requests(tmp_path, clock, sim_factory):
    sim = sim_factory()
    sim.set_faults(validation=1.0)
    camp, run = run_to_end(campaign(tmp_path, sim, "openai", items=6), clock)
    rows = tasks(run)
    assert {(r["state"], r["error_class"]) for r in rows} == {("failed", "invalid_request")}
    assert all(r["attempts"] == 1 for r in rows), "invalid requests are not retried automatically"
    assert "validation" in rows[0]["error_message"]
    sim.set_faults(validation=0.0)
    engine = run.engine(clock)
    engine.retry(error_class="invalid_request")
    engine.close()
    run.run(clock=clock, max_interval=60.0)
    assert {r["state"] for r in tasks(run)} == {"done"}
    camp.close()


def test_token_limit_exceeded_backs_off_without_using_attempts(tmp_path, clock, sim_factory):
    # The account's real limit is a third of what the campaign believes: batches are refused
    # (at creation, or failed with token_limit_exceeded) and the backend backs off and aims lower.
    sim = sim_factory(enqueued_token_limit=3_000, token_limit_create_error_rate=0.5)
    long_notes = [{"pair": 100 + i, "trajectory": "t", "note": "word " * 240} for i in range(40)]
    path = campaign(tmp_path, sim, "openai", items=0, extra_items=long_notes,
                    backend={"enqueued_token_limit": 9_000, "pilot": 0, "batches_in_flight": 3})
    camp, run = run_to_end(path, clock)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"}
    assert all(r["attempts"] == 1 for r in rows)
    refused = sim.state.token_limit_failures + sim.state.rejections["token_limit_exceeded"]
    assert refused > 0
    with run.ledger.read() as conn:
        state = learned.load(conn, run.id)["backend:llm"]["state"]
    assert state["limit_factor"] < 1.0
    camp.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_oversized_item_fails_alone(tmp_path, clock, sim_factory, provider):
    sim = sim_factory()
    huge = {"pair": 999, "trajectory": "big", "note": "x" * 60_000}
    path = campaign(tmp_path, sim, provider, items=8, extra_items=[huge],
                    backend={"max_bytes_per_batch": "40KB", "pilot": 0})
    camp, run = run_to_end(path, clock)
    rows = {r["item_idx"]: r for r in tasks(run)}
    assert rows[8]["state"] == "failed" and rows[8]["error_class"] == "invalid_request"
    assert "too large for any batch" in rows[8]["error_message"] and "bytes" in rows[8]["error_message"]
    assert rows[8]["attempts"] == 1
    assert all(rows[i]["state"] == "done" for i in range(8))
    camp.close()


def test_budget_stops_before_the_cap(tmp_path, clock, sim_factory):
    sim = sim_factory()
    # Priced so that one request costs about a cent: the budget affords roughly half the items.
    prices = {"gpt-4o-mini": {"input": 400.0, "output": 400.0, "batch_discount": 0.5}}
    path = campaign(tmp_path, sim, "openai", items=40,
                    backend={"prices": prices, "budget": {"max_usd": 0.25}, "expected_output_tokens": 40})
    camp, run = run_to_end(path, clock)
    rows = tasks(run)
    done = [r for r in rows if r["state"] == "done"]
    over = [r for r in rows if r["state"] == "budget"]
    assert done and over and len(done) + len(over) == len(rows)   # stopped by the budget, none failed
    assert {r["error_class"] for r in over} == {"budget"}
    assert {r["attempts"] for r in over} == {0}   # never sent: no attempt used
    assert sum(r["cost"] for r in done) <= 0.25
    assert "budget" in over[0]["error_message"]
    assert run.status()["run"]["status"] == "budget_reached"
    camp.close()


def test_parse_errors_keep_the_raw_response(tmp_path, clock, sim_factory):
    sim = sim_factory()
    path = campaign(tmp_path, sim, "anthropic", items=12, parse="labels:picky", stage={"retries": {"max": 0}})
    camp, run = run_to_end(path, clock)
    rows = tasks(run)
    failed = [r for r in rows if r["state"] == "failed"]
    assert failed and all(r["error_class"] == "parse" for r in failed)
    assert len(failed) == sum(1 for r in rows if r["id"] % 4 == 0)
    raw = loads(failed[0]["info"])["raw"]
    assert raw["content"][0]["type"] == "text" and "instructions" in raw["content"][0]["text"]
    camp.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_batch_created_before_a_crash_is_adopted(tmp_path, clock, sim_factory, provider):
    """The controller dies after the batch is created and before its id is recorded: the next
    tick finds it (metadata for OpenAI, journal or listing for Anthropic) and does not create it again."""
    sim = sim_factory()
    path = campaign(tmp_path, sim, provider, items=10, backend={"pilot": 0})
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    engine = run.engine(clock)
    backend = engine.backends["llm"]
    real_create = backend.create_batch

    def create_then_die(*args, **kwargs):
        real_create(*args, **kwargs)
        raise KeyboardInterrupt("killed between creation and recording")

    backend.create_batch = create_then_die
    with pytest.raises(KeyboardInterrupt):
        engine.tick()
    engine.close()
    if provider == "anthropic":
        (run.run_dir / "llm" / "llm-batches.jsonl").unlink(missing_ok=True)   # died before the journal line too
    assert sim.state.batches_created[provider] == 1
    run.run(clock=clock, max_interval=60.0)
    assert {r["state"] for r in tasks(run)} == {"done"}
    assert_no_batch_twice(run, sim, provider)
    camp.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stragglers_at_the_end_are_cancelled_and_their_rest_sent_again(tmp_path, clock, sim_factory, provider):
    # A heavy tail (sigma 1.5): once everything is in flight, batches far past the median
    # turnaround are cancelled; their finished requests are kept, the rest go out again.
    sim = sim_factory(turnaround=Turnaround(validating=Phase(10.0), in_progress=Phase(300.0, 1.5),
                                            finalizing=Phase(10.0)))
    path = campaign(tmp_path, sim, provider, items=60, backend={"pilot": 0, "max_requests_per_batch": 6,
                                                               "straggler_after": 1.5, "hedge": {"mode": "off"}})
    camp, run = run_to_end(path, clock)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
    stragglers = [s for s in run.submissions(open_only=False) if s["info"].get("straggler")]
    assert stragglers, "no batch was slow enough to be cancelled"
    cancels = sum(n for call, n in sim.state.http_requests.items() if call.endswith("/cancel"))
    assert cancels == len(stragglers)
    assert sim.state.requests_enqueued[provider] > 60, "the unfinished requests of a cancelled batch went out again"
    camp.close()


def test_anthropic_invalid_params_fail_alone_and_are_not_retried(tmp_path, clock, sim_factory):
    # Message batches validate params after accepting the batch: a bad request becomes an errored
    # result of its own, class invalid_request, and is not retried although retries allow it.
    sim = sim_factory()
    request = {"model": MODELS["anthropic"], "max_tokens": "{{ 0 if item.pair == 3 else 400 }}",
               "messages": [{"role": "user", "content": "Label {{ item.note }}."}]}
    path = campaign(tmp_path, sim, "anthropic", items=8, stage={"request": request})
    camp, run = run_to_end(path, clock)
    rows = {r["item_idx"]: r for r in tasks(run)}
    assert (rows[3]["state"], rows[3]["error_class"], rows[3]["attempts"]) == ("failed", "invalid_request", 1)
    assert "max_tokens" in rows[3]["error_message"]
    assert all(rows[i]["state"] == "done" for i in rows if i != 3)
    camp.close()


def test_a_create_retried_after_a_timeout_leaves_no_second_batch_running(tmp_path, clock, sim_factory):
    # The simulator holds some answers past the SDK's timeout after doing the work: the SDK's
    # retry of POST /batches then creates a second batch, which the backend cancels at once.
    sim = sim_factory(timeout_delay_s=0.5, seed=7)   # with seed 7 a POST /batches times out
    sim.set_faults(timeout=0.3)
    path = campaign(tmp_path, sim, "openai", items=8, backend={"pilot": 0, "timeout": 0.25,
                                                              "poll_interval": "2m"})
    camp, run = run_to_end(path, clock)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
    assert sim.state.faults["timeout"] > 0
    recorded = set(remote_batches(run))
    extra = [b for b in sim.state.batch_list("openai") if b.id not in recorded]
    assert extra, "no create was retried after a timeout (the fault draws depend on the seed)"
    assert all(b.cancel_at is not None for b in extra), "a duplicate batch was left running"
    camp.close()
