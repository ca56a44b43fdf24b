"""The LLM batch backends' parts that need no API: templates, token estimates, prices, packing,
scheduling decisions and the campaign file's LLM keys."""

from __future__ import annotations

import base64
import io
import math

import pytest
from conftest import write_campaign, write_module
from PIL import Image

from corral.errors import SpecError
from corral.llm.packing import Entry, pack
from corral.llm.pricing import price_for
from corral.llm.requests import (
    RenderError,
    RequestTemplate,
    file_text,
    image_data_url,
    text_of,
)
from corral.llm.scheduler import InFlight, State, plan_sizes
from corral.llm.tokens import (
    Calibration,
    TokenEstimator,
    anthropic_image_tokens,
    fallback_tokens,
    image_size,
    openai_image_tokens,
)
from corral.spec import load_campaign
from corral.spec.llm import Budget, OpenAIBatchSettings, Price, TokenWindow


def make_image(path, size=(640, 480), fmt="JPEG"):
    Image.new("RGB", size, (120, 30, 200)).save(path, format=fmt)
    return path


# -- templates -------------------------------------------------------------------------------


def test_template_renders_strings_and_keeps_types_of_single_expressions(tmp_path):
    (tmp_path / "prompt.txt").write_text("Describe the change.")
    template = RequestTemplate({
        "model": "gpt-4o-mini", "max_tokens": "{{ item.budget }}", "seed": 3,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "{{ file_text('prompt.txt') }} Pair {{ item.idx }} of {{ item.traj }}."}]}],
    }, root=tmp_path)
    body = template.render({"budget": 1200, "idx": 7, "traj": "a/b"})
    assert body["max_tokens"] == 1200 and body["seed"] == 3
    assert body["messages"][0]["content"][0]["text"] == "Describe the change. Pair 7 of a/b."


def test_template_undefined_field_names_the_item_fields(tmp_path):
    template = RequestTemplate({"text": "{{ item.missing }}"}, root=tmp_path)
    with pytest.raises(RenderError, match="missing.*item fields: a, b"):
        template.render({"a": 1, "b": 2})


def test_template_syntax_error_is_reported_at_compile_time(tmp_path):
    with pytest.raises(ValueError, match="Jinja syntax error"):
        RequestTemplate({"text": "{{ item.a "}, root=tmp_path)


def test_image_data_url_encodes_and_resizes(tmp_path):
    make_image(tmp_path / "f.jpg", size=(1600, 800))
    url = image_data_url("f.jpg", root=tmp_path)
    assert url.startswith("data:image/jpeg;base64,")
    assert image_size(url) == (1600, 800)
    small = image_data_url("f.jpg", max_side=400, root=tmp_path)
    raw = base64.b64decode(small.split(",", 1)[1])
    assert Image.open(io.BytesIO(raw)).size == (400, 200)
    make_image(tmp_path / "p.png", size=(50, 40), fmt="PNG")
    assert image_data_url(tmp_path / "p.png", max_side=400).startswith("data:image/png;base64,")
    with pytest.raises(RenderError, match="nope.jpg"):
        image_data_url("nope.jpg", root=tmp_path)


def test_file_text_missing_file_is_a_render_error(tmp_path):
    with pytest.raises(RenderError, match="absent.txt"):
        file_text("absent.txt", root=tmp_path)


def test_text_of_both_providers():
    assert text_of({"choices": [{"message": {"content": "hi"}}]}) == "hi"
    assert text_of({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}) == "ab"
    assert text_of({"output": [{"content": [{"type": "output_text", "text": "r"}]}]}) == "r"
    assert text_of(None) == ""


# -- tokens -------------------------------------------------------------------------------------


def test_image_formulas():
    assert openai_image_tokens(1024, 1024) == 85 + 170 * 4
    assert openai_image_tokens(4096, 2048) == 85 + 170 * 6     # 2048x1024 -> 1536x768: 3x2 tiles
    assert openai_image_tokens(512, 512, detail="low") == 85
    assert anthropic_image_tokens(1000, 1000) == math.ceil(1_000_000 / 750)
    assert anthropic_image_tokens(3000, 3000) == 1600


def test_estimator_counts_text_and_images(tmp_path):
    url = image_data_url(make_image(tmp_path / "f.jpg", size=(640, 480)))
    estimator = TokenEstimator(mode="estimate")
    text = "x" * 400
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}]}
    assert estimator.request_tokens(body) == 3 + 4 + fallback_tokens(text) + openai_image_tokens(640, 480)
    claude = TokenEstimator(provider="anthropic", mode="estimate")
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": url.split(",")[1]}}]}]}
    assert claude.request_tokens(body) == 3 + 4 + anthropic_image_tokens(640, 480)


def test_calibration_is_billed_over_estimated():
    calibration = Calibration()
    assert calibration.factor == 1.0
    calibration.add(1000, 1200)
    calibration.add(1000, 1000)
    assert calibration.factor == pytest.approx(1.1)


# -- prices -------------------------------------------------------------------------------------


def test_prices_match_longest_prefix_and_take_overrides():
    assert price_for("gpt-4o-mini-2024-07-18") == price_for("gpt-4o-mini")
    assert price_for("gpt-4o-2024-08-06").input == 2.50
    assert price_for("unknown-model") is None
    price = price_for("gpt-4o-mini", {"gpt-4o-mini": Price(input=1.0, output=2.0)})
    assert price.cost(1_000_000, 1_000_000) == pytest.approx(1.5)          # (1 + 2) x 0.5
    assert price.cost(1_000_000, 0, cached_in=500_000, batch=False) == pytest.approx(1.0)


# -- packing ------------------------------------------------------------------------------------


def entry(task_id, nbytes=100, tokens=10):
    return Entry(task_id, b"x" * nbytes, tokens, f"c-t{task_id}")


def test_pack_defers_what_does_not_fit_and_isolates_oversized_requests():
    entries = [entry(1), entry(2, nbytes=5000), entry(3, tokens=500), entry(4), entry(5), entry(6)]
    packed = pack(entries, max_requests=3, max_bytes=1000, max_tokens=None, token_room=100,
                  fits_alone_tokens=400)
    assert [e.task_id for e in packed.taken] == [1, 4, 5]
    assert [e.task_id for e in packed.deferred] == [6]
    assert {e.task_id for e, _ in packed.oversized} == {2, 3}
    messages = dict((e.task_id, m) for e, m in packed.oversized)
    assert "5,000 bytes" in messages[2] and "500 input tokens" in messages[3]


def test_pack_token_room_limits_the_batch():
    packed = pack([entry(i, tokens=40) for i in range(5)], max_requests=100, max_bytes=10**6, max_tokens=None,
                  token_room=100, fits_alone_tokens=None)
    assert len(packed.taken) == 2 and len(packed.deferred) == 3


# -- scheduling ---------------------------------------------------------------------------------


def settings(**kw):
    base = dict(enqueued_token_limit=1_000_000, safety_ratio=0.9, pilot=0, batches_in_flight=4)
    base.update(kw)
    return OpenAIBatchSettings(**base)


def measured(tokens=1000.0, nbytes=2000.0, cost=0.01):
    state = State(tokens_per_request=tokens, bytes_per_request=nbytes, cost_per_request=cost, pilot_done=True)
    return state


def test_pilot_goes_first_and_alone():
    state = State()
    assert plan_sizes(settings(pilot=20), state, now=0, ready=5000, remaining=5000, in_flight=[]).sizes == [20]
    decision = plan_sizes(settings(pilot=20), state, now=0, ready=5000, remaining=5000,
                          in_flight=[InFlight(20_000, 20)])
    assert decision.sizes == [] and "pilot" in decision.reason


def test_fills_the_enqueued_limit_in_shares_and_never_passes_it():
    decision = plan_sizes(settings(), measured(), now=0, ready=10_000, remaining=10_000, in_flight=[])
    # 900,000 tokens free / 4 batches in flight -> 225 requests of 1,000 tokens each
    assert decision.sizes == [225, 225, 225, 225]
    in_flight = [InFlight(225_000, 225)] * 3
    assert plan_sizes(settings(), measured(), now=0, ready=10_000, remaining=10_000,
                      in_flight=in_flight).sizes == [225]
    # less than a quarter of a batch free while batches are in flight: wait
    in_flight = [InFlight(225_000, 225)] * 3 + [InFlight(200_000, 200)]
    assert plan_sizes(settings(), measured(), now=0, ready=10_000, remaining=10_000,
                      in_flight=in_flight).sizes == []


def test_the_last_round_is_split_only_when_asked():
    # Turnaround mostly independent of size: fewer last batches, fewer chances of a straggler.
    assert plan_sizes(settings(), measured(), now=0, ready=100, remaining=100, in_flight=[]).sizes == [100]
    decision = plan_sizes(settings(split_tail=True), measured(), now=0, ready=100, remaining=100, in_flight=[])
    assert decision.sizes == [25, 25, 25, 25]


def test_request_bytes_and_counts_bound_a_batch():
    s = settings(enqueued_token_limit=None, max_bytes_per_batch="1MB", batches_in_flight=1)
    decision = plan_sizes(s, measured(nbytes=100_000), now=0, ready=1000, remaining=1000, in_flight=[])
    assert decision.sizes[0] == math.floor(1024 * 1024 * 0.98 / 100_000)


def test_concurrency_hourly_and_window_limits():
    s = settings(enqueued_token_limit=None, max_concurrent_batches=2, batches_in_flight=10, split_tail=True)
    assert len(plan_sizes(s, measured(), now=0, ready=10_000, remaining=10_000,
                          in_flight=[InFlight(1, 1)]).sizes) == 1
    state = measured()
    state.history = [(100.0, 1000.0)] * 3
    s = settings(enqueued_token_limit=None, max_batches_per_hour=4, batches_in_flight=10, split_tail=True)
    assert len(plan_sizes(s, state, now=200, ready=10_000, remaining=10_000, in_flight=[]).sizes) == 1
    assert len(plan_sizes(s, state, now=100 + 3601, ready=10_000, remaining=10_000, in_flight=[]).sizes) == 4
    s = settings(enqueued_token_limit=None, token_window=TokenWindow(tokens=10_000, window="1h"), batches_in_flight=1)
    assert plan_sizes(s, state, now=200, ready=10_000, remaining=10_000, in_flight=[]).sizes == [7]


def test_token_limit_refusal_backs_off_and_aims_lower():
    state = measured()
    state.token_limit_hit(now=1000, base=60)
    assert plan_sizes(settings(), state, now=1030, ready=10, remaining=10, in_flight=[]).sizes == []
    assert plan_sizes(settings(), state, now=1061, ready=10, remaining=10, in_flight=[]).sizes
    state.token_limit_hit(now=2000, base=60)
    assert state.backoff == 120 and state.limit_factor == pytest.approx(0.95 ** 2)
    # refused with 300,000 tokens in flight against a configured 900,000: aim under 270,000
    state.token_limit_hit(now=3000, base=60, ceiling=300_000, configured=900_000)
    assert state.limit_factor == pytest.approx(0.3)
    assert plan_sizes(settings(), state, now=5000, ready=10_000, remaining=10_000, in_flight=[]).sizes == \
        [67, 67, 67, 67]


def test_budget_stops_before_the_cap():
    s = settings(budget=Budget(max_usd=1.0))
    decision = plan_sizes(s, measured(cost=0.01), now=0, ready=10_000, remaining=10_000, in_flight=[], spent=0.5)
    assert sum(decision.sizes) == 50
    decision = plan_sizes(s, measured(cost=0.01), now=0, ready=10_000, remaining=10_000,
                          in_flight=[InFlight(1000, 1, cost=0.6)], spent=0.4)
    assert decision.sizes == [] and not decision.over_budget
    decision = plan_sizes(s, measured(cost=0.01), now=0, ready=10, remaining=10, in_flight=[], spent=0.999)
    assert decision.over_budget


def test_80614_requests_plan_in_constant_time():
    import time

    state = measured(tokens=2617, nbytes=450_000)
    s = settings(enqueued_token_limit=40_000_000, batches_in_flight=8)
    started = time.perf_counter()
    for _ in range(1000):
        decision = plan_sizes(s, state, now=0, ready=80_614, remaining=80_614, in_flight=[])
    assert time.perf_counter() - started < 1.0
    assert sum(decision.sizes) * 2617 <= 40_000_000 * 0.9
    assert all(size * 450_000 <= 200_000_000 for size in decision.sizes)


def test_state_survives_a_restart(tmp_path):
    state = measured()
    state.calibration.add(100, 120)
    state.history = [(1.0, 2.0)]
    state.save(tmp_path / "s.json")
    again = State.load(tmp_path / "s.json")
    assert again.calibration.factor == pytest.approx(1.2) and again.history == [(1.0, 2.0)]
    assert State.load(tmp_path / "absent.json").tokens_per_request is None


# -- campaign file ------------------------------------------------------------------------------


def llm_campaign(stage_extra=None, backend_extra=None):
    stage = {"backend": "openai", "request": {"model": "gpt-4o-mini", "messages": []}, "parse": "labels:parse"}
    stage.update(stage_extra or {})
    backend = {"type": "openai_batch", "enqueued_token_limit": 40_000_000}
    backend.update(backend_extra or {})
    return {"name": "llm", "items": {"grid": {"x": [1, 2]}}, "stages": {"label": stage},
            "backends": {"openai": backend}}


def test_campaign_with_an_llm_stage_loads(tmp_path):
    loaded = load_campaign(write_campaign(tmp_path, llm_campaign(backend_extra={"budget": {"max_usd": 5},
                                                                               "poll_interval": "2m"})))
    settings_ = loaded.backends["openai"]
    assert settings_.budget.max_usd == 5 and settings_.poll_interval == 120
    assert loaded.spec.stages["label"].parse == "labels:parse"


@pytest.mark.parametrize("stage_extra, backend_extra, key", [
    ({"run": "echo hi"}, None, "stages.label"),
    ({"parse": "not a ref"}, None, "stages.label.parse"),
    (None, {"safety_ratio": 1.5}, "backends.openai.safety_ratio"),
    (None, {"max_requests_per_batch": 60_000}, "backends.openai.max_requests_per_batch"),
    (None, {"budget": {"max_dollars": 3}}, "backends.openai.budget"),
])
def test_bad_llm_settings_name_the_key(tmp_path, stage_extra, backend_extra, key):
    with pytest.raises(SpecError) as info:
        load_campaign(write_campaign(tmp_path, llm_campaign(stage_extra, backend_extra)))
    assert key in str(info.value)


def test_parse_without_request_is_refused(tmp_path):
    config = {"name": "x", "items": {"grid": {"x": [1]}}, "stages": {"a": {"call": "m:f", "parse": "m:g"}}}
    with pytest.raises(SpecError, match="'parse' only applies"):
        load_campaign(write_campaign(tmp_path, config))


def test_check_projects_requests_batches_tokens_cost_and_time(tmp_path, monkeypatch):
    from corral.api import Campaign

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")   # checked before the projection

    config = llm_campaign(backend_extra={"enqueued_token_limit": 10_000, "pilot": 0, "tokenizer": "estimate",
                                         "expected_output_tokens": 100, "expected_turnaround": "30m"})
    config["items"] = {"grid": {"x": {"range": [0, 200]}}}
    config["stages"]["label"]["request"] = {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "{{ 'word ' * 40 }}{{ item.x }}"}]}
    write_module(tmp_path, "labels", "def parse(body):\n    return {}\n")
    camp = Campaign.load(write_campaign(tmp_path, config))
    try:
        llm = camp.check()["stages"]["label"]["llm"]
    finally:
        camp.close()
    assert llm["requests"] == 200 and llm["model"] == "gpt-4o-mini"
    per = llm["tokens_per_request"]
    assert 55 <= per <= 65                      # 3 + 4 + about 51 tokens of text
    assert llm["tokens_in"] == pytest.approx(200 * per, rel=0.01) and llm["tokens_out"] == 20_000
    assert llm["batches"] * llm["requests_per_batch"] >= 200
    price = price_for("gpt-4o-mini")
    assert llm["cost_usd"] == pytest.approx(price.cost(llm["tokens_in"], 20_000), rel=0.01)
    # 12,000 input tokens through 9,000 in flight at a time, 30 minutes per batch
    assert llm["seconds_to_finish"] == pytest.approx(llm["tokens_in"] / 9000 * 1800, rel=0.01)
    assert "enqueued-token limit" in llm["bound_by"]


def test_a_request_stage_needs_an_llm_backend(tmp_path):
    from corral.api import Campaign

    config = llm_campaign()
    config["stages"]["label"]["backend"] = "local"
    camp = Campaign.load(write_campaign(tmp_path, config))
    try:
        with pytest.raises(SpecError, match="needs an LLM batch backend"):
            camp.check()
    finally:
        camp.close()


def test_two_campaigns_with_a_module_of_the_same_name_each_get_their_own(tmp_path):
    """A long-lived process (the Python API, a notebook) opening two campaigns whose parse modules
    share a name loads each campaign's own file."""
    from corral.llm.requests import load_callable

    first, second = tmp_path / "first", tmp_path / "second"
    for folder, name in ((first, "parse_a"), (second, "parse_b")):
        folder.mkdir()
        (folder / "shared_name_labels.py").write_text(f"def {name}(body):\n    return {{'from': {name!r}}}\n")
    assert load_callable("shared_name_labels:parse_a", first)({}) == {"from": "parse_a"}
    assert load_callable("shared_name_labels:parse_b", second)({}) == {"from": "parse_b"}
    assert load_callable("shared_name_labels:parse_a", first)({}) == {"from": "parse_a"}
