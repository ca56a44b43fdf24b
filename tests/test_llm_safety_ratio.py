"""The safety ratio learned from billed usage: the margin under the enqueued-token limit is what
the measured error of the corrected estimates needs, batch by batch; a configured ``safety_ratio``
is the ratio until then and a cap after; refusals still lower the aim."""

from __future__ import annotations

import random

import pytest

from corral.llm.scheduler import (
    MIN_ERROR_SAMPLES,
    PRIOR_SAFETY_RATIO,
    InFlight,
    State,
    enqueued_capacity,
    plan_sizes,
    safety_ratio,
)
from corral.llm.tokens import Calibration
from corral.spec.llm import OpenAIBatchSettings

LIMIT = 1_000_000


def settings(**kw):
    base = dict(enqueued_token_limit=LIMIT, pilot=0, batches_in_flight=4)
    base.update(kw)
    return OpenAIBatchSettings(**base)


def billed_state(ratios: list[float], tokens: float = 1000.0) -> State:
    """A state whose batches of 100 requests were billed ``ratio`` x their estimate."""
    state = State(tokens_per_request=tokens, bytes_per_request=2000.0, pilot_done=True)
    for ratio in ratios:
        state.calibration.add(100 * tokens, 100 * tokens * ratio)
    return state


def test_before_enough_batches_are_billed_the_prior_or_the_configured_ratio_applies():
    state = billed_state([1.03] * (MIN_ERROR_SAMPLES - 1))
    assert safety_ratio(settings(), state) == PRIOR_SAFETY_RATIO
    assert safety_ratio(settings(safety_ratio=0.95), state) == 0.95
    assert enqueued_capacity(settings(), State()) == pytest.approx(LIMIT * PRIOR_SAFETY_RATIO)


def test_estimates_that_match_the_bill_after_correction_fill_the_limit_to_within_5_percent():
    # The tokenizer counts 3% under the bill, every batch alike: corrected, the error is nil.
    state = billed_state([1.03] * 10)
    ratio = safety_ratio(settings(), state)
    assert 0.95 <= ratio < 1.0
    decision = plan_sizes(settings(), state, now=0, ready=100_000, remaining=100_000, in_flight=[])
    assert sum(decision.sizes) * 1000 >= 0.95 * LIMIT
    assert sum(decision.sizes) * 1000 <= LIMIT


def test_the_margin_follows_the_spread_of_the_error_not_only_its_mean():
    rng = random.Random(3)
    narrow = billed_state([1.03 * (1 + rng.gauss(0, 0.005)) for _ in range(40)])
    wide = billed_state([1.03 * (1 + rng.gauss(0, 0.05)) for _ in range(40)])
    assert narrow.calibration.factor == pytest.approx(wide.calibration.factor, rel=0.03)
    narrow_ratio, wide_ratio = safety_ratio(settings(), narrow), safety_ratio(settings(), wide)
    assert narrow_ratio > 0.95
    assert wide_ratio < narrow_ratio - 0.05
    # The aim leaves room for the worst batches measured: at most 1 in 20 billed over it.
    residuals = wide.calibration.residuals()
    over = sum(1 for r in residuals if r * wide_ratio > 1.0)
    assert over <= len(residuals) * 0.05


def test_few_billed_batches_leave_a_wider_margin_than_many_with_the_same_spread():
    rng = random.Random(5)
    draws = [1.0 + rng.gauss(0, 0.02) for _ in range(50)]
    few, many = billed_state(draws[:4]), billed_state(draws)
    assert safety_ratio(settings(), few) < safety_ratio(settings(), many)


def test_a_configured_ratio_caps_the_learned_one():
    state = billed_state([1.0] * 10)
    assert safety_ratio(settings(), state) > 0.95
    assert safety_ratio(settings(safety_ratio=0.9), state) == 0.9
    noisy = billed_state([1.0, 1.3, 0.8, 1.2, 0.9, 1.1])
    assert safety_ratio(settings(safety_ratio=0.9), noisy) < 0.9


def test_the_learned_ratio_survives_a_restart(tmp_path):
    rng = random.Random(7)
    state = billed_state([1.02 + rng.gauss(0, 0.02) for _ in range(12)])
    state.save(tmp_path / "state.json")
    again = State.load(tmp_path / "state.json")
    assert again.calibration.ratios == state.calibration.ratios
    assert safety_ratio(settings(), again) == safety_ratio(settings(), state)
    assert State.from_dict(state.to_dict()).calibration.residuals() == state.calibration.residuals()


def test_only_the_last_batches_count():
    calibration = Calibration()
    for _ in range(Calibration.KEEP + 30):
        calibration.add(100.0, 150.0)
    assert len(calibration.ratios) == Calibration.KEEP
    assert calibration.factor == pytest.approx(1.5)


def test_a_refusal_still_lowers_the_aim_below_what_was_in_flight():
    s = settings()
    state = billed_state([1.03] * 10)
    learned = enqueued_capacity(s, state)
    assert learned >= 0.95 * LIMIT
    # Refused with 800,000 tokens in flight: the real limit is under that.
    state.token_limit_hit(now=100.0, base=60.0, ceiling=800_000, configured=enqueued_capacity(s, state, refusals=False))
    assert enqueued_capacity(s, state) <= 0.9 * 800_000 + 1
    assert plan_sizes(s, state, now=120.0, ready=10_000, remaining=10_000, in_flight=[]).sizes == []
    decision = plan_sizes(s, state, now=200.0, ready=10_000, remaining=10_000, in_flight=[])
    assert 0 < sum(decision.sizes) * 1000 <= 0.9 * 800_000
    # More billed batches keep the lowered aim: the refusal factor stays on the learned ratio.
    state.calibration.add(100_000, 103_000)
    assert enqueued_capacity(s, state) <= 0.9 * 800_000 * 1.01


def test_request_counts_keep_the_configured_share():
    from corral.spec.llm import AnthropicBatchSettings

    s = AnthropicBatchSettings(queue_request_limit=1000, pilot=0, batches_in_flight=1, max_requests_per_batch=1000)
    state = billed_state([1.0] * 10)
    decision = plan_sizes(s, state, now=0, ready=5000, remaining=5000, in_flight=[InFlight(0, 100)])
    assert sum(decision.sizes) == 1000 * PRIOR_SAFETY_RATIO - 100


# -- against the simulator ------------------------------------------------------------------------

SIM_LIMIT = 25_000


@pytest.fixture
def sim_run(tmp_path, monkeypatch, campaign_ledger):
    """A campaign of ``items`` requests of a few dozen tokens on the OpenAI simulator, run to its
    end in virtual time (on each ledger); returns the simulator and the run's learned state."""
    from conftest import write_campaign

    from corral.api import Campaign
    from corral.engine.clock import VirtualClock
    from corral.ledger import learned
    from corral.sim import Phase, SimConfig, SimServer, Turnaround

    monkeypatch.setenv("OPENAI_API_KEY", "sim")
    servers, campaigns = [], []

    def run(items: int, real_limit: int = SIM_LIMIT, **backend):
        clock = VirtualClock()
        turnaround = Turnaround(validating=Phase(20.0, 0.3), in_progress=Phase(600.0, 0.3, 0.5),
                                finalizing=Phase(20.0, 0.3))
        sim = SimServer(SimConfig(seed=2, turnaround=turnaround, enqueued_token_limit=real_limit,
                                  retry_after_s=0.01, answer_template={"ok": "{custom_id}"}), clock=clock)
        sim.start()
        servers.append(sim)
        rows = [{"pair": i, "note": "frame " * (20 + i % 7)} for i in range(items)]
        (tmp_path / "pairs.json").write_text(__import__("json").dumps(rows))
        settings = {"type": "openai_batch", "base_url": sim.base_url + "/v1", "enqueued_token_limit": SIM_LIMIT,
                    "pilot": 10, "poll_interval": "20s", "tokenizer": "estimate", "batches_in_flight": 4,
                    "token_limit_backoff": "2m", **backend}
        request = {"model": "gpt-4o-mini", "max_tokens": 50, "response_format": {"type": "json_object"},
                   "messages": [{"role": "user", "content": "Describe {{ item.note }} in JSON, pair {{ item.pair }}."}]}
        path = write_campaign(tmp_path, {"name": "fill", "items": {"from": "pairs.json"},
                                         "stages": {"label": {"backend": "llm", "request": request}},
                                         "backends": {"llm": settings}})
        camp = Campaign.load(path)
        campaigns.append(camp)
        started, _ = camp.start(clock=clock)
        deadline = clock.now() + 48 * 3600
        report = started.run(clock=clock, max_interval=60.0, should_stop=lambda: clock.now() > deadline)
        assert report.finished
        assert started.status()["totals"].get("done") == items
        with started.ledger.read() as conn:
            state = learned.load(conn, started.id)["backend:llm"]["state"]
        return sim, state

    yield run
    for camp in campaigns:
        camp.close()
    for sim in servers:
        sim.stop()


def refill_shares(sim, limit: int) -> list[float]:
    """After each round of creations in the main phase (once the first round is billed, until the
    last full-size batch), the billed tokens of the unfinished batches over ``limit``."""
    batches = sorted(sim.state.batches.values(), key=lambda b: b.created_at)
    main = batches[1:]                                     # after the pilot
    sizes = sorted(b.n for b in main)
    full = [b for b in main if b.n >= 0.9 * sizes[len(sizes) // 2]]
    first_round_end = sorted(b.end_time for b in main)[MIN_ERROR_SAMPLES - 1]
    rounds = sorted({b.created_at for b in full if b.created_at > first_round_end})
    shares = []
    for at in rounds:
        held = sum(b.tokens for b in batches if b.created_at <= at < b.end_time and b.failed_at is None)
        shares.append(held / limit)
    return shares


def test_the_main_phase_fills_the_limit_to_95_percent_without_a_refusal(sim_run):
    sim, state = sim_run(items=3000)
    refused = sim.state.token_limit_failures + sim.state.rejections["token_limit_exceeded"]
    assert refused == 0
    shares = refill_shares(sim, SIM_LIMIT)
    assert len(shares) >= 8
    assert min(shares) >= 0.95, shares
    assert max(shares) <= 1.0
    assert len(state["calibration"]["ratios"]) >= 10 and state["limit_factor"] == 1.0


def test_a_refusal_from_a_lower_real_limit_still_lowers_the_aim(sim_run):
    # The account's real limit is 85% of the configured one: the learned ratio alone would pass it.
    sim, state = sim_run(items=2000, real_limit=int(SIM_LIMIT * 0.85))
    refused = sim.state.token_limit_failures + sim.state.rejections["token_limit_exceeded"]
    assert refused >= 1
    assert state["limit_factor"] < 0.9
    assert max(refill_shares(sim, SIM_LIMIT)[-3:]) <= 0.85
