"""The money budget of an LLM batch backend, as the user meets it: a run the budget stops part way
(its unsent tasks in state ``budget``, shown by status, runs and report), finished after raising
the budget and `corral retry --error-class budget`, and `corral check`'s cost as a range, before
any run and after a pilot, against the simulator, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from conftest import corral_cli, query_ledger, write_campaign, write_module
from test_llm_backends import campaign

from corral.backends.llm_results import ResultLine, classify_line, reasoning_tokens
from corral.llm.cost_range import Billed, OutputAssumption, cost_range
from corral.llm.pricing import ModelPrice

ledger_tests = pytest.mark.usefixtures("campaign_ledger")
ENV = {"OPENAI_API_KEY": "sim"}
#: USD per 1M tokens: a request of a few hundred tokens costs a few cents
PRICES = {"gpt-4o-mini": {"input": 400.0, "output": 400.0, "batch_discount": 0.5}}
#: answers of 1 to 40 short labels: output lengths that vary from request to request
SCHEMA = {"type": "json_schema", "json_schema": {"name": "labels", "schema": {
    "type": "object", "properties": {"labels": {"type": "array", "items": {"type": "string"},
                                                "minItems": 1, "maxItems": 40}}}}}
LABELS = """
import json

from corral.llm import text_of


def parse(body):
    return json.loads(text_of(body))
"""


@pytest.fixture
def sim():
    from corral.sim import Phase, SimConfig, SimServer, Turnaround

    # Real time, batches of a second or two: the CLI in a subprocess polls it over HTTP.
    turnaround = Turnaround(validating=Phase(0.3, 0.3), in_progress=Phase(1.0, 0.4, 0.02), finalizing=Phase(0.2, 0.3))
    server = SimServer(SimConfig(seed=5, turnaround=turnaround, retry_after_s=0.01))
    server.start()
    yield server
    server.stop()


def labelling(folder, sim, *, items: int, max_usd: float | None, pilot: int = 2, expected_output: int | None = 100,
              max_tokens: int = 400):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.json").write_text(json.dumps([{"pair": i, "note": f"pair {i}"} for i in range(items)]))
    write_module(folder, "labels", LABELS)
    request = {"model": "gpt-4o-mini", "max_tokens": max_tokens, "response_format": SCHEMA,
               "messages": [{"role": "user", "content": "Labels, as JSON, for {{ item.note }}."}]}
    backend = {"type": "openai_batch", "base_url": sim.base_url + "/v1", "pilot": pilot, "poll_interval": "0.3s",
               "tokenizer": "estimate", "prices": PRICES}
    if expected_output is not None:
        backend["expected_output_tokens"] = expected_output
    if max_usd is not None:
        backend["budget"] = {"max_usd": max_usd}
    return write_campaign(folder, {"name": "labels", "items": {"from": "pairs.json"},
                                   "stages": {"label": {"backend": "llm", "request": request,
                                                        "parse": "labels:parse"}},
                                   "backends": {"llm": backend}})


def status(folder, *args) -> dict:
    return json.loads(corral_cli(folder, "status", "--json", *args, env=ENV, check=0).stdout)


def check(folder, *args) -> dict:
    return json.loads(corral_cli(folder, "check", "--json", *args, env=ENV, check=0).stdout)["stages"]["label"]["llm"]


@ledger_tests
def test_a_run_the_budget_stops_ends_in_state_budget_and_finishes_after_raising_it(tmp_path, sim):
    folder = tmp_path / "labels"
    labelling(folder, sim, items=12, max_usd=0.15)
    out = corral_cli(folder, "run", "-q", env=ENV, check=1)
    assert "Traceback" not in out.stderr
    assert "budget_reached" in out.stderr and "stopped by the budget" in out.stderr
    rows = query_ledger(folder, "SELECT state, error_class, attempts, error_message FROM tasks")
    stopped = [r for r in rows if r[0] == "budget"]
    done = [r for r in rows if r[0] == "done"]
    assert stopped and done and len(stopped) + len(done) == 12   # nothing failed
    assert {r[1] for r in stopped} == {"budget"} and {r[2] for r in stopped} == {0}   # no attempt used
    assert "the budget of $0.15" in stopped[0][3] and "corral retry --error-class budget" in stopped[0][3]
    sent = sim.state.requests_enqueued["openai"]
    assert sent == len(done)   # what the budget stopped was never sent
    # Sent by estimates (the mean billed so far): answers longer than the mean pass it by their spread,
    # never by a run's worth.
    billed = sum(r[0] for r in query_ledger(folder, "SELECT cost FROM tasks WHERE state = 'done'"))
    assert 0 < billed <= 2 * 0.15

    # status: the run is not "finished"; the stopped tasks have their own column and line
    data = status(folder)
    assert data["run"]["status"] == "budget_reached"
    assert data["stages"]["label"]["budget"] == len(stopped) and data["stages"]["label"]["failed"] == 0
    text = corral_cli(folder, "status", env=ENV, check=0).stdout
    header = next(line for line in text.splitlines() if "stage" in line and "total" in line)
    assert "budget" in header.split()
    assert f"label: {len(stopped)} budget, budget: not sent: " in " ".join(text.split())
    # runs and report count them apart from failures
    (listed,) = json.loads(corral_cli(folder, "runs", "--json", env=ENV, check=0).stdout)
    assert listed["status"] == "budget_reached" and listed["budget"] == len(stopped) and listed["failed"] == 0
    assert "budget" in corral_cli(folder, "runs", "--format", "csv", env=ENV, check=0).stdout.splitlines()[0].split(",")
    report = json.loads(corral_cli(folder, "report", "--format", "json", env=ENV, check=0).stdout)
    total = report["total"]
    assert total["budget"] == len(stopped) and total["failed"] == 0 and total["done"] == len(done)
    csv_header = corral_cli(folder, "report", "--format", "csv", env=ENV, check=0).stdout.splitlines()[0]
    assert "budget" in csv_header.split(",")

    # Raise the budget by an override (a steering key: the same run), retry what it stopped, run.
    raised = "backends.llm.budget.max_usd=100"
    retried = corral_cli(folder, "retry", raised, "--error-class", "budget", env=ENV, check=0)
    assert f"{len(stopped)} tasks" in retried.stderr
    again = corral_cli(folder, "run", "-q", raised, env=ENV, check=0)
    assert "finished" in again.stderr and "Traceback" not in again.stderr
    data = status(folder, raised)
    assert data["run"]["status"] == "finished" and data["stages"]["label"]["done"] == 12
    assert data["stages"]["label"]["budget"] == 0
    assert sim.state.requests_enqueued["openai"] == 12   # nothing sent twice
    assert len(json.loads(corral_cli(folder, "runs", "--json", env=ENV, check=0).stdout)) == 1


@ledger_tests
def test_ticks_from_cron_stop_at_the_budget_as_run_does(tmp_path, sim):
    import time

    folder = tmp_path / "labels"
    labelling(folder, sim, items=10, max_usd=0.12)
    said, deadline = [], time.monotonic() + 90
    while True:
        tick = corral_cli(folder, "tick", env=ENV)
        assert tick.returncode == 0 and "Traceback" not in tick.stderr, tick.stderr
        said.append(tick.stderr)
        if tick.stderr.rstrip().endswith("budget_reached") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert said[-1].rstrip().endswith("budget_reached")
    assert any("stopped by the budget" in text for text in said)
    counts = status(folder)["stages"]["label"]
    assert counts["budget"] > 0 and counts["budget"] + counts["done"] == 10 and counts["failed"] == 0
    assert sim.state.requests_enqueued["openai"] == counts["done"]


@ledger_tests
def test_the_python_api_retries_what_the_budget_stopped(tmp_path, sim):
    from corral.api import Campaign

    folder = tmp_path / "labels"
    path = labelling(folder, sim, items=6, max_usd=0.05)
    corral_cli(folder, "run", "-q", env=ENV, check=1)
    with Campaign.load(path, overrides=["backends.llm.budget.max_usd=100"]) as campaign:
        run = campaign.run()
        stopped = run.status()["stages"]["label"]["budget"]
        assert stopped > 0
        assert run.retry(error_class="budget") == stopped
        assert run.status()["stages"]["label"]["pending"] == stopped
    corral_cli(folder, "run", "-q", "backends.llm.budget.max_usd=100", env=ENV, check=0)
    assert status(folder)["stages"]["label"]["done"] == 6
    assert sim.state.requests_enqueued["openai"] == 6


@ledger_tests
def test_check_shows_the_cost_as_a_range_before_any_run_and_after_a_pilot(tmp_path, sim):
    folder = tmp_path / "labels"
    labelling(folder, sim, items=40, max_usd=None, pilot=6)
    before = check(folder)
    spread = before["cost_range"]
    assert spread["basis"] == "assumptions" and spread["dominant"] == "output"
    assert spread["note"] == ("no pilot yet: output assumed 100 tokens (expected_output_tokens), up to "
                              "max_tokens 400")
    assert spread["low_usd"] < spread["expected_usd"] < spread["high_usd"]
    assert math.isclose(spread["expected_usd"], before["cost_usd"], rel_tol=1e-3)
    # The high end bills every answer at max_tokens: 400 output tokens at $200 per 1M, 40 requests.
    assert spread["high_usd"] >= 40 * 400 * 200 / 1e6
    text = corral_cli(folder, "check", env=ENV, check=0).stdout
    assert "cost range: ~$" in text and "spread: no pilot yet: output assumed 100 tokens" in text

    # The budget against the range, by an override
    middle = (spread["low_usd"] + spread["high_usd"]) / 2
    inside = check(folder, f"+backends.llm.budget.max_usd={middle:.4f}")["cost_range"]
    assert inside["budget_note"] == f"the budget of ${middle:,.2f} may stop the run: high end ${spread['high_usd']:,.2f}"
    below = check(folder, f"+backends.llm.budget.max_usd={spread['low_usd'] / 2:.4f}")["cost_range"]
    assert below["budget_note"].startswith(f"the budget of ${spread['low_usd'] / 2:,.2f} will stop the run")
    text = corral_cli(folder, "check", f"+backends.llm.budget.max_usd={middle:.4f}", env=ENV, check=0).stdout
    assert f"the budget of ${middle:,.2f} may stop the run: high end ${spread['high_usd']:,.2f}" in text

    # A pilot batch is billed: the range comes from its answers.
    corral_cli(folder, "run", "-q", "--limit", "6", env=ENV, check=0)
    billed = query_ledger(folder, "SELECT tokens_in, tokens_out FROM tasks WHERE state = 'done'")
    assert len(billed) == 6
    outs = [r[1] for r in billed]
    assert max(outs) > min(outs)   # the answer mix varies output tokens
    after = check(folder)["cost_range"]
    assert after["basis"] == "billed" and after["billed_requests"] == 6 and after["dominant"] == "output"
    assert after["note"] == (f"output length: 6 billed answers ranged {min(outs):,}-{max(outs):,} tokens "
                             f"(mean {sum(outs) / 6:,.0f})")
    per = [(i + o) * 200 / 1e6 for i, o in billed]
    mean = sum(per) / 6
    assert math.isclose(after["expected_usd"], 40 * mean, rel_tol=1e-3)
    sd = math.sqrt(sum((c - mean) ** 2 for c in per) / 5)
    assert math.isclose(after["high_usd"], 40 * min(max(per), mean + 2 * sd / math.sqrt(6)), rel_tol=1e-3)
    assert after["low_usd"] < after["expected_usd"] < after["high_usd"]
    text = corral_cli(folder, "check", env=ENV, check=0).stdout
    assert f"spread: output length: 6 billed answers ranged {min(outs):,}-{max(outs):,} tokens" in text


@ledger_tests
def test_the_range_of_a_run_under_way_counts_what_it_spent(tmp_path, sim):
    folder = tmp_path / "labels"
    labelling(folder, sim, items=10, max_usd=0.08)
    corral_cli(folder, "run", "-q", env=ENV, check=1)
    done = query_ledger(folder, "SELECT tokens_in, tokens_out, cost FROM tasks WHERE state = 'done'")
    spent = sum(r[2] for r in done)
    spread = check(folder)["cost_range"]
    assert spread["basis"] == "billed" and spread["from_run"]
    assert spread["requests_left"] == 10 - len(done)
    assert math.isclose(spread["spent_usd"], spent, rel_tol=1e-3)
    mean = sum((i + o) * 200 / 1e6 for i, o, _ in done) / len(done)
    assert math.isclose(spread["expected_usd"], spent + (10 - len(done)) * mean, rel_tol=1e-3)
    assert spread["budget_note"].startswith("the budget of $0.08 will stop the run")


def test_billed_reasoning_and_cached_tokens_are_kept_and_cached_input_costs_the_cached_rate():
    body = {"usage": {"prompt_tokens": 1000, "completion_tokens": 700,
                      "prompt_tokens_details": {"cached_tokens": 800},
                      "completion_tokens_details": {"reasoning_tokens": 500}},
            "choices": [{"message": {"content": "{}"}}]}
    assert reasoning_tokens(body) == 500
    assert reasoning_tokens({"usage": {"output_tokens_details": {"reasoning_tokens": 9}}}) == 9
    assert reasoning_tokens({"usageMetadata": {"thoughtsTokenCount": 7}}) == 7
    line = ResultLine("c-t1", "ok", body=body, tokens_in=1000, tokens_out=700, cached_in=800)
    price = ModelPrice(input=1.0, cached_input=0.1, output=10.0)
    result = classify_line(line, lambda b: {"ok": True}, price)
    assert result.info == {"usage": {"cached_in": 800, "reasoning_out": 500}}
    # 200 uncached at $1, 800 cached at $0.10, 700 out at $10 per 1M, at half price
    assert math.isclose(result.cost, (200 * 1.0 + 800 * 0.1 + 700 * 10.0) / 1e6 / 2)
    rows = [{"tokens_in": 1000, "tokens_out": out, "cached_in": 800, "reasoning_out": out - 200}
            for out in (600, 700, 800)]
    spread = cost_range(price, requests=100, per_in=1000, in_error=0.05, tokenizer=None,
                        output=OutputAssumption(100, 100, 100, ""), billed=Billed("r", rows), max_usd=None)
    assert math.isclose(spread["expected_usd"], 100 * result.cost, rel_tol=1e-6)
    assert spread["note"] == "output length: 3 billed answers ranged 600-800 tokens (mean 700, of which 500 reasoning)"


def test_a_budget_estimated_from_too_short_an_output_ends_the_run_instead_of_deferring_for_ever(tmp_path,
                                                                                                monkeypatch):
    """expected_output_tokens far below what the answers bill: the mean cost the scheduler plans with
    lags behind the bill, so it finds room for a request whose own estimate no longer fits. With
    nothing in flight to free budget, that request ends in state budget; it is not deferred again
    and again."""
    from corral.api import Campaign
    from corral.engine.clock import VirtualClock
    from corral.ledger import schema
    from corral.sim import Phase, SimConfig, SimServer, Turnaround
    from sqlalchemy import select

    monkeypatch.setenv("OPENAI_API_KEY", "sim")
    clock = VirtualClock()
    turnaround = Turnaround(validating=Phase(20.0, 0.3), in_progress=Phase(300.0, 0.5, 1.0),
                            finalizing=Phase(20.0, 0.3))
    server = SimServer(SimConfig(seed=2, turnaround=turnaround, retry_after_s=0.01), clock=clock)
    server.start()
    try:
        path = labelling(tmp_path / "labels", server, items=30, max_usd=0.4, pilot=2, expected_output=5)
        with Campaign.load(path) as camp:
            run, _ = camp.start(clock=clock)
            deadline = clock.now() + 72 * 3600
            run.run(clock=clock, max_interval=60.0, should_stop=lambda: clock.now() > deadline)
            assert clock.now() < deadline
            data = run.status()
            assert data["run"]["status"] == "budget_reached"
            counts = data["stages"]["label"]
            assert counts["budget"] > 0 and counts["done"] > 0 and counts["budget"] + counts["done"] == 30
            s = schema.submissions
            with run.ledger.read() as conn:
                remote = [r[0] for r in conn.execute(select(s.c.remote_id).where(s.c.run_id == run.id))]
            assert len(remote) < 30   # no stream of empty submissions
            assert server.state.requests_enqueued["openai"] == counts["done"]
    finally:
        server.stop()


def test_check_says_the_cost_is_unknown_for_a_model_without_a_price(tmp_path):
    request = {"model": "ft:my-own-model", "max_tokens": 100,
               "messages": [{"role": "user", "content": "{{ item.note }}"}]}
    campaign(tmp_path, SimpleNamespace(base_url="http://127.0.0.1:9"), "openai", stage={"request": request})
    out = corral_cli(tmp_path, "check", env=ENV)
    assert out.returncode == 0, out.stderr
    assert "cost unknown (no price for this model)" in out.stdout and "~unknown" not in out.stdout
