"""Flex processing in the simulator: synchronous Chat Completions and Responses requests with
``service_tier: "flex"``, driven by the official openai SDK over real HTTP, in virtual and real time."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import openai
import pytest

from corral.errors import SpecError
from corral.sim import ManualClock, RealClock, SimConfig, SimServer
from corral.sim.flex import Due
from corral.sim.tokens import openai_request_tokens
from corral.sim.web import Req

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["label", "steps"],
          "properties": {"label": {"type": "string"}, "steps": {"type": "array", "items": {"type": "string"},
                                                                   "minItems": 3, "maxItems": 3}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "labels", "schema": SCHEMA}}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_sim(clock):
    servers: list[SimServer] = []

    def make(clock_=None, **settings) -> SimServer:
        settings.setdefault("flex_unavailable_rate", 0.0)
        sim = SimServer(SimConfig(**settings), clock=clock_ or clock)
        sim.start()
        servers.append(sim)
        return sim

    yield make
    for sim in servers:
        sim.stop()


def oai(sim: SimServer, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=sim.base_url + "/v1", api_key="sim", **kw)


def chat_body(i: int, model: str = "o4-mini") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": f"describe frame pair {i} " * 20}],
            "response_format": FORMAT}


def flex_chat(client: openai.OpenAI, custom_id: str, body: dict, **kw):
    return client.chat.completions.create(**body, service_tier="flex",
                                          extra_headers={"X-Client-Request-Id": custom_id}, timeout=900, **kw)


class InThread:
    """A call made on its own thread, as the flex backend makes them; ``result()`` waits for it."""

    def __init__(self, call) -> None:
        self.value = self.error = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call) -> None:
        try:
            self.value = call()
        except Exception as exc:  # noqa: BLE001 (handed to the test)
            self.error = exc
        finally:
            self.done.set()

    def result(self, timeout: float = 10.0):
        assert self.done.wait(timeout), "the call did not end"
        if self.error is not None:
            raise self.error
        return self.value


def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def state(sim: SimServer) -> dict:
    with urllib.request.urlopen(sim.base_url + "/sim/state", timeout=5) as answer:
        return json.load(answer)


# -- latency -------------------------------------------------------------------------------------------

def test_a_flex_answer_arrives_only_once_the_virtual_clock_reaches_its_latency(make_sim, clock):
    sim = make_sim(flex_latency_median_s=30.0, flex_latency_sigma=0.0, flex_seconds_per_output_token=0.01,
                   output_tokens=1000)
    client = oai(sim)
    call = InThread(lambda: flex_chat(client, "pair-1", chat_body(1)))
    until(lambda: sim.summary()["flex"]["waiting"] == 1)
    clock.advance(39.0)                      # 30 s + 0.01 s x 1000 output tokens = 40 s
    assert not call.done.wait(0.5)
    clock.advance(1.0)
    answer = call.result()
    assert answer.service_tier == "flex" and answer.usage.completion_tokens == 1000
    assert json.loads(answer.choices[0].message.content)["steps"]
    flex = sim.summary()["flex"]
    assert (flex["requests"], flex["answered"], flex["waiting"]) == (1, 1, 0)


def test_flex_latencies_are_lognormal_with_the_configured_median_and_sigma_and_repeat_per_seed():
    def latencies(seed: int) -> list[float]:
        clock = ManualClock()
        sim = SimServer(SimConfig(seed=seed, flex_unavailable_rate=0.0, flex_max_concurrent=5000,
                                  flex_seconds_per_output_token=0.0), clock=clock)
        body = json.dumps({**chat_body(0), "service_tier": "flex"}).encode()
        out = []
        for i in range(3000):
            due, _ = sim.handle(Req("POST", "/v1/chat/completions", {}, {"authorization": "Bearer sim",
                                                                          "x-client-request-id": f"r{i}"}, body, ""))
            assert isinstance(due, Due)
            out.append(due.at - clock.now())
        return out

    draws = latencies(5)
    logs = [math.log(d) for d in draws]
    assert math.exp(statistics.median(logs)) == pytest.approx(45.0, rel=0.06)
    assert statistics.stdev(logs) == pytest.approx(0.8, rel=0.05)
    assert latencies(5)[:50] == draws[:50] and latencies(6)[:50] != draws[:50]


def test_flex_latency_in_real_time_follows_the_clock_speed(make_sim):
    sim = make_sim(clock_=RealClock(speed=100.0), flex_latency_median_s=30.0, flex_latency_sigma=0.0,
                   flex_seconds_per_output_token=0.0)
    client = oai(sim)
    started = time.monotonic()
    answer = flex_chat(client, "pair-1", chat_body(1))
    elapsed = time.monotonic() - started
    assert answer.service_tier == "flex"
    assert 0.25 <= elapsed < 3.0                 # 30 simulated seconds at x100: 0.3 real seconds


def test_a_standard_request_is_answered_at_once_and_billed_at_the_standard_price(make_sim, clock):
    sim = make_sim()
    client = oai(sim)
    body = chat_body(2)
    standard = client.chat.completions.create(**body, extra_headers={"X-Client-Request-Id": "pair-2"})
    auto = client.chat.completions.create(**body, service_tier="auto", extra_headers={"X-Client-Request-Id": "pair-2"})
    assert standard.service_tier == auto.service_tier == "default"
    call = InThread(lambda: flex_chat(client, "pair-2", body))
    until(lambda: sim.summary()["flex"]["waiting"] == 1)
    clock.advance(3600)
    flex = call.result()
    assert flex.usage == standard.usage and flex.choices[0].message.content == standard.choices[0].message.content
    summary = sim.summary()
    default = summary["standard"]["default"]
    assert (default["requests"], default["answered"], default["billed_by_client_id"]["pair-2"]) == (2, 2, 2)
    # one flex answer, billed the tokens of each of the two standard answers
    assert summary["flex"]["input_tokens"] * 2 == default["input_tokens"]


# -- billing ---------------------------------------------------------------------------------------------

def test_a_flex_answer_is_billed_as_the_same_request_in_a_batch(make_sim, clock):
    sim = make_sim(turnaround={"validating": {"median_s": 0}, "in_progress": {"median_s": 60},
                               "finalizing": {"median_s": 0}})
    client = oai(sim)
    body = chat_body(3)
    line = {"custom_id": "pair-3", "method": "POST", "url": "/v1/chat/completions", "body": body}
    file_id = client.files.create(file=("b.jsonl", json.dumps(line).encode()), purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    call = InThread(lambda: flex_chat(client, "pair-3", body))
    until(lambda: sim.summary()["flex"]["waiting"] == 1)
    clock.advance(3600)
    flex = call.result()
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    batch_line = json.loads(client.files.content(batch.output_file_id).text)
    batch_body = batch_line["response"]["body"]
    assert flex.usage.prompt_tokens == batch_body["usage"]["prompt_tokens"] == openai_request_tokens(body)
    assert flex.usage.completion_tokens == batch_body["usage"]["completion_tokens"]
    assert flex.choices[0].message.content == batch_body["choices"][0]["message"]["content"]
    assert flex.usage.total_tokens == flex.usage.prompt_tokens + flex.usage.completion_tokens
    assert sim.flex_billed() == {"pair-3": 1}


def test_a_client_that_gives_up_is_still_billed_when_the_answer_is_due(make_sim, clock):
    sim = make_sim(flex_latency_median_s=10.0, flex_latency_sigma=0.0, timeout_delay_s=0.5)
    client = oai(sim)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(**chat_body(4), service_tier="flex", timeout=0.3,
                                       extra_headers={"X-Client-Request-Id": "pair-4"})
    assert sim.flex_billed() == {}
    clock.advance(60)
    until(lambda: sim.flex_billed() == {"pair-4": 1})   # the answer was made; nobody was there to take it
    # the timeout fault keeps its meaning: the answer, made at its time, is held back timeout_delay_s more
    sim.fail_next("POST /v1/chat/completions", how="timeout")
    call = InThread(lambda: flex_chat(client, "pair-4b", chat_body(4)))
    until(lambda: sim.summary()["flex"]["waiting"] == 1)
    clock.advance(60)
    until(lambda: sim.flex_billed()["pair-4b"] == 1)
    held = time.monotonic()
    assert call.result().service_tier == "flex"
    assert time.monotonic() - held >= 0.3


# -- refusals --------------------------------------------------------------------------------------------

def test_resource_unavailable_is_a_429_with_its_code_and_not_billed(make_sim, clock):
    sim = make_sim(flex_unavailable_rate=1.0)
    client = oai(sim)
    with pytest.raises(openai.RateLimitError) as refused:
        flex_chat(client, "pair-5", chat_body(5))
    assert refused.value.status_code == 429 and refused.value.code == "resource_unavailable"
    assert "Resource Unavailable" in refused.value.message
    assert refused.value.response.headers["retry-after-ms"] == "1000"
    flex = sim.summary()["flex"]
    assert (flex["requests"], flex["refused_unavailable"], flex["answered"], flex["waiting"]) == (1, 1, 0, 0)
    assert flex["billed_by_client_id"] == {} and flex["input_tokens"] == 0
    # the rate is a fault: changed at run time, through the API or POST /sim/faults
    request = urllib.request.Request(sim.base_url + "/sim/faults", data=b'{"flex_unavailable_rate": 0.0}',
                                     method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.load(answer)["flex_unavailable_rate"] == 0.0
    call = InThread(lambda: flex_chat(client, "pair-5", chat_body(5)))
    until(lambda: sim.summary()["flex"]["waiting"] == 1)
    clock.advance(3600)
    assert call.result().service_tier == "flex"
    assert sim.flex_billed() == {"pair-5": 1}


def test_the_unavailable_rate_refuses_about_that_share():
    sim = SimServer(SimConfig(flex_unavailable_rate=0.3, seed=2, flex_max_concurrent=1000), clock=ManualClock())
    refused = 0
    calls = []
    for i in range(200):
        due = sim.handle(Req("POST", "/v1/chat/completions", {}, {"authorization": "Bearer sim"},
                             json.dumps({**chat_body(i), "service_tier": "flex"}).encode(), ""))[0]
        if isinstance(due, Due):
            calls.append(due)
        else:
            assert due.status == 429 and json.loads(due.body)["error"]["code"] == "resource_unavailable"
            refused += 1
    assert 40 <= refused <= 80
    assert sim.summary()["flex"]["refused_unavailable"] == refused and len(calls) == 200 - refused
    for due in calls:
        due.settle(True)
    assert sim.summary()["flex"]["answered"] == 200 - refused


def test_a_model_without_flex_is_refused_with_400_and_no_fallback(make_sim):
    sim = make_sim(flex_models=["o3"])
    client = oai(sim)
    with pytest.raises(openai.BadRequestError) as refused:
        flex_chat(client, "pair-6", chat_body(6, model="gpt-4o-mini"))
    assert refused.value.status_code == 400 and "gpt-4o-mini" in refused.value.message
    assert refused.value.body["type"] == "invalid_request_error" and refused.value.body["param"] == "service_tier"
    # a dated snapshot of a listed model takes flex; the standard tier takes any model
    call = InThread(lambda: flex_chat(client, "pair-6", chat_body(6, model="o3-2025-04-16")))
    until(lambda: sim.summary()["flex"]["waiting"] == 1)
    assert client.chat.completions.create(**chat_body(6, model="gpt-4o-mini")).service_tier == "default"
    flex = sim.summary()["flex"]
    assert (flex["refused_model"], flex["answered"]) == (1, 0)
    sim.clock.advance(3600)
    assert call.result().model == "o3-2025-04-16"


def test_the_default_flex_models_are_the_documented_ones():
    config = SimConfig()
    assert {"o3", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano"} <= set(config.flex_models)
    assert config.flex_supported("o4-mini-2025-04-16") and not config.flex_supported("gpt-4o")
    assert not config.flex_supported("gpt-5-chat-latest")


def test_past_the_concurrency_cap_flex_requests_get_429_rate_limit_exceeded(make_sim, clock):
    sim = make_sim(flex_max_concurrent=3, flex_latency_median_s=20.0, flex_latency_sigma=0.0)
    client = oai(sim)
    calls = [InThread(lambda i=i: flex_chat(client, f"pair-{i}", chat_body(i))) for i in range(3)]
    until(lambda: sim.summary()["flex"]["waiting"] == 3)
    with pytest.raises(openai.RateLimitError) as refused:
        flex_chat(client, "pair-3", chat_body(3))
    assert refused.value.code == "rate_limit_exceeded" and "3" in refused.value.message
    clock.advance(30)
    assert all(c.result().service_tier == "flex" for c in calls)
    until(lambda: sim.summary()["flex"]["waiting"] == 0)
    late = InThread(lambda: flex_chat(client, "pair-3", chat_body(3)))
    until(lambda: sim.summary()["flex"]["waiting"] == 1)
    clock.advance(30)
    assert late.result().service_tier == "flex"
    flex = sim.summary()["flex"]
    assert (flex["requests"], flex["answered"], flex["refused_concurrency"]) == (5, 4, 1)


def test_injected_http_faults_apply_to_flex_requests(make_sim, clock):
    sim = make_sim()
    client = oai(sim, max_retries=2)
    sim.fail_next("POST /v1/chat/completions", times=1, how="http_5xx")
    call = InThread(lambda: flex_chat(client, "pair-7", chat_body(7)))
    until(lambda: sim.summary()["flex"]["waiting"] == 1, timeout=20)
    clock.advance(3600)
    assert call.result(timeout=20).service_tier == "flex"
    summary = sim.summary()
    assert summary["faults"]["http_5xx"] == 1 and summary["http_requests"]["POST /v1/chat/completions"] == 2
    assert sim.flex_billed() == {"pair-7": 1}


def test_bad_requests_are_refused_at_once(make_sim):
    sim = make_sim()
    client = oai(sim)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="o3", messages=[], service_tier="flex")
    with pytest.raises(openai.BadRequestError, match="service_tier"):
        client.chat.completions.create(**chat_body(8), service_tier="scale")
    with pytest.raises(openai.BadRequestError, match="service_tier"):
        client.chat.completions.create(**chat_body(8), extra_body={"service_tier": ["flex"]})
    assert sim.summary()["flex"]["requests"] == 0


# -- the Responses API -----------------------------------------------------------------------------------

def test_the_responses_endpoint_takes_flex(make_sim, clock):
    sim = make_sim(flex_latency_median_s=50.0, flex_latency_sigma=0.0, flex_seconds_per_output_token=0.0)
    client = oai(sim)
    body = {"model": "o3", "input": "List the metaphors in this book. " * 30,
            "text": {"format": {"type": "json_schema", "name": "labels", "schema": SCHEMA}}}
    call = InThread(lambda: client.responses.create(**body, service_tier="flex", timeout=900,
                                                    extra_headers={"X-Client-Request-Id": "book-1"}))
    until(lambda: sim.summary()["flex"]["waiting"] == 1)
    clock.advance(49)
    assert not call.done.wait(0.3)
    clock.advance(1)
    answer = call.result()
    assert answer.service_tier == "flex" and answer.status == "completed"
    assert answer.usage.input_tokens == openai_request_tokens(body)
    assert json.loads(answer.output_text)["label"]
    assert sim.summary()["http_requests"]["POST /v1/responses"] == 1 and sim.flex_billed() == {"book-1": 1}


# -- counters and shutdown -------------------------------------------------------------------------------

def test_counters_in_sim_state(make_sim, clock):
    sim = make_sim(flex_max_concurrent=2)
    client = oai(sim)
    calls = [InThread(lambda i=i: flex_chat(client, "pair-9" if i < 2 else f"pair-{i}", chat_body(9)))
             for i in range(2)]
    until(lambda: state(sim)["flex"]["waiting"] == 2)
    with pytest.raises(openai.RateLimitError):
        flex_chat(client, "pair-10", chat_body(10))
    clock.advance(3600)
    for call in calls:
        call.result()
    client.chat.completions.create(**chat_body(9), extra_headers={"X-Client-Request-Id": "pair-9"})
    seen = state(sim)
    flex = seen["flex"]
    assert (flex["requests"], flex["answered"], flex["refused_concurrency"], flex["waiting"]) == (3, 2, 1, 0)
    assert flex["billed_by_client_id"] == {"pair-9": 2}
    assert flex["input_tokens"] == 2 * openai_request_tokens(chat_body(9))
    assert seen["standard"]["default"]["billed_by_client_id"] == {"pair-9": 1}
    assert sim.flex_billed() == {"pair-9": 2} and sim.sync_billed() == {"pair-9": 3}


def test_stopping_the_server_ends_a_waiting_request_unbilled(make_sim):
    sim = make_sim()
    client = oai(sim)
    call = InThread(lambda: flex_chat(client, "pair-11", chat_body(11)))
    until(lambda: sim.summary()["flex"]["waiting"] == 1)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 3
    flex = sim.summary()["flex"]                  # final as soon as stop() returns
    assert (flex["waiting"], flex["unanswered"], flex["answered"]) == (0, 1, 0) and sim.flex_billed() == {}
    with pytest.raises(openai.APIConnectionError):
        call.result(timeout=5)


# -- settings --------------------------------------------------------------------------------------------

def test_flex_settings_from_yaml_and_their_errors(tmp_path):
    path = tmp_path / "sim.yaml"
    path.write_text("flex_latency_median_s: 20\nflex_latency_sigma: 0.5\nflex_seconds_per_output_token: 0.02\n"
                    "flex_max_concurrent: 50\nflex_models: [gpt-4o-mini]\nfaults:\n  flex_unavailable_rate: 0.1\n")
    config = SimConfig.from_yaml(path)
    assert (config.flex_latency_median_s, config.flex_latency_sigma, config.flex_seconds_per_output_token,
            config.flex_max_concurrent, config.flex_models, config.flex_unavailable_rate) == \
        (20, 0.5, 0.02, 50, ("gpt-4o-mini",), 0.1)
    for bad, key in (({"flex_max_concurrent": 0}, "flex_max_concurrent"),
                     ({"flex_latency_median_s": -1}, "flex_latency_median_s"),
                     ({"flex_models": "o3"}, "flex_models"),
                     ({"flex_unavailable_rate": 1.5}, "flex_unavailable_rate"),
                     ({"flex_latency_sigmaa": 1}, "flex_latency_sigma")):
        with pytest.raises(SpecError) as refused:
            SimConfig.from_dict(bad, file="sim.yaml")
        assert key in str(refused.value) and "sim.yaml" in str(refused.value)


def test_corral_sim_serve_refuses_a_bad_flex_setting(tmp_path):
    (tmp_path / "sim.yaml").write_text("flex_max_concurrent: -3\n")
    done = subprocess.run([sys.executable, "-m", "corral", "sim", "serve", "--config", str(tmp_path / "sim.yaml")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and "flex_max_concurrent" in done.stderr and "Traceback" not in done.stderr
