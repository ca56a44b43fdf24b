"""The Batch API simulator, driven by the official openai and anthropic SDKs over real HTTP."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import anthropic
import openai
import pytest

from corral.sim import ManualClock, SimConfig, SimServer
from corral.sim.tokens import anthropic_request_tokens, openai_request_tokens

HOUR = 3600.0
DAY = 24 * HOUR
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["instructions", "description"],
          "properties": {"instructions": {"type": "array", "items": {"type": "string"}, "minItems": 5, "maxItems": 5},
                         "description": {"type": "string"}}}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_sim(clock):
    servers: list[SimServer] = []

    def make(**settings) -> SimServer:
        settings.setdefault("token_limit_create_error_rate", 0.0)
        sim = SimServer(SimConfig(**settings), clock=clock)
        sim.start()
        servers.append(sim)
        return sim

    yield make
    for sim in servers:
        sim.stop()


def oai(sim: SimServer, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url + "/v1", api_key="sim", **kw)


def ant(sim: SimServer, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.base_url, api_key="sim", **kw)


def chat_line(i: int, model: str = "gpt-4o-mini", text: str | None = None, **body) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text or f"describe pair {i}"}],
                     "response_format": {"type": "json_schema", "json_schema": {"name": "labels", "schema": SCHEMA}},
                     **body}}


def upload(client: openai.OpenAI, lines: list[dict]) -> str:
    data = "\n".join(json.dumps(line) for line in lines).encode()
    return client.files.create(file=("batch.jsonl", data), purpose="batch").id


def submit(client: openai.OpenAI, lines: list[dict], **kw):
    return client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                 completion_window="24h", **kw)


def wait(client: openai.OpenAI, clock: ManualClock, batch_id: str, step: float = 300.0, until: float = 2 * DAY):
    seen = []
    for _ in range(int(until / step)):
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch, seen
        clock.advance(step)
    raise AssertionError(f"batch {batch_id} still {seen[-1]}")


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]


def a_wait(client: anthropic.Anthropic, clock: ManualClock, batch_id: str, step: float = 300.0):
    for _ in range(int(2 * DAY / step)):
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        clock.advance(step)
    raise AssertionError("batch never ended")


# -- OpenAI ------------------------------------------------------------------------------------------------

def test_openai_full_lifecycle(make_sim, clock):
    sim = make_sim(seed=3)
    client = oai(sim)
    lines = [chat_line(i) for i in range(40)]
    batch = submit(client, lines, metadata={"corral_key": "run1-s1"})
    assert batch.status == "validating" and batch.metadata == {"corral_key": "run1-s1"}
    done, seen = wait(client, clock, batch.id, step=120)
    assert seen[0] == "validating" and seen[-1] == "completed"
    assert "in_progress" in seen
    assert done.request_counts.total == 40 and done.request_counts.completed == 40
    assert done.in_progress_at <= done.finalizing_at <= done.completed_at
    assert done.error_file_id is None
    out = jsonl(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in out) == sorted(f"req-{i}" for i in range(40))
    body = out[0]["response"]["body"]
    answer = json.loads(body["choices"][0]["message"]["content"])
    assert len(answer["instructions"]) == 5 and isinstance(answer["description"], str)
    assert done.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in out)
    assert done.usage.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in out)
    # Deterministic: the same custom_id gets the same answer from another simulator with the same seed.
    again = make_sim(seed=3)
    other = oai(again)
    out2 = jsonl(other, wait(other, clock, submit(other, lines[:1]).id)[0].output_file_id)
    first = next(line for line in out if line["custom_id"] == "req-0")
    assert out2[0]["response"]["body"]["choices"] == first["response"]["body"]["choices"]
    assert sim.state.batches_created["openai"] == 1


def test_openai_progressive_requests_and_file_endpoints(make_sim, clock):
    sim = make_sim(seed=1, turnaround={"validating": {"median_s": 60}, "in_progress": {"median_s": 3600},
                                       "finalizing": {"median_s": 60}})
    client = oai(sim)
    batch = submit(client, [chat_line(i) for i in range(100)])
    clock.advance(60 + 1800)
    half = client.batches.retrieve(batch.id)
    assert half.status == "in_progress" and 40 <= half.request_counts.completed <= 60
    assert 0 < half.usage.input_tokens
    info = client.files.retrieve(batch.input_file_id)
    assert info.purpose == "batch" and info.bytes > 0
    assert client.files.content(batch.input_file_id).text.count("\n") == 99
    assert client.files.delete(batch.input_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(batch.input_file_id)


def test_openai_list_pagination_newest_first(make_sim, clock):
    sim = make_sim()
    client = oai(sim)
    file_id = upload(client, [chat_line(0)])
    ids = []
    for _ in range(7):
        ids.append(client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                         completion_window="24h").id)
        clock.advance(1)
    page = client.batches.list(limit=3)
    assert [b.id for b in page.data] == ids[::-1][:3] and page.has_more
    assert [b.id for b in client.batches.list(limit=3)] == ids[::-1]  # the SDK follows `after`
    last = client.batches.list(after=ids[1], limit=3)
    assert [b.id for b in last.data] == [ids[0]] and not last.has_more


def test_openai_cancel_keeps_partial_results(make_sim, clock):
    sim = make_sim(turnaround={"validating": {"median_s": 10}, "in_progress": {"median_s": 1000},
                               "cancelling": {"median_s": 120}})
    client = oai(sim)
    batch = submit(client, [chat_line(i) for i in range(50)])
    clock.advance(10 + 400)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    clock.advance(200)
    done = client.batches.retrieve(batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    out, errors = jsonl(client, done.output_file_id), jsonl(client, done.error_file_id)
    assert 10 <= len(out) <= 30 and len(out) + len(errors) == 50
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert done.request_counts.completed == len(out)
    with pytest.raises(openai.ConflictError):
        client.with_options(max_retries=0).batches.cancel(batch.id)


def test_openai_expiry_partial_output_and_batch_expired(make_sim, clock):
    sim = make_sim(expire=1.0)
    client = oai(sim)
    batch = submit(client, [chat_line(i) for i in range(60)])
    done, seen = wait(client, clock, batch.id, step=1800)
    assert done.status == "expired" and seen[-2] == "in_progress"
    assert done.expired_at - done.created_at == pytest.approx(DAY, abs=2)
    out, errors = jsonl(client, done.output_file_id), jsonl(client, done.error_file_id)
    assert 0 < len(out) < 60 and len(out) + len(errors) == 60
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)
    assert done.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in out)


def test_openai_all_failed_has_no_output_file(make_sim, clock):
    sim = make_sim(all_failed=1.0)
    client = oai(sim)
    done, _ = wait(client, clock, submit(client, [chat_line(i) for i in range(8)]).id)
    assert done.status == "completed" and done.output_file_id is None
    errors = jsonl(client, done.error_file_id)
    assert len(errors) == 8 and {e["response"]["status_code"] for e in errors} == {500}
    assert done.request_counts.failed == 8 and done.usage.input_tokens == 0


def test_openai_validation_failures(make_sim, clock):
    sim = make_sim()
    client = oai(sim)
    bad = [chat_line(0), chat_line(0), chat_line(1, model="gpt-4o")]
    done, _ = wait(client, clock, submit(client, bad).id)
    assert done.status == "failed"
    codes = {e.code for e in done.errors.data}
    assert {"duplicate_custom_id", "mismatched_model"} <= codes
    assert any(e.line == 2 for e in done.errors.data if e.code == "duplicate_custom_id")
    sim.set_faults(validation=1.0)
    done, _ = wait(client, clock, submit(client, [chat_line(5)]).id)
    assert done.status == "failed" and done.errors.data[0].code == "validation_failed"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=upload(client, [chat_line(1)]), endpoint="/v1/chat/completions",
                              completion_window="48h")  # type: ignore[arg-type]


def test_openai_invalid_request_lands_in_error_file(make_sim, clock):
    sim = make_sim()
    client = oai(sim)
    lines = [chat_line(0), {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions",
                            "body": {"model": "gpt-4o-mini"}}]
    done, _ = wait(client, clock, submit(client, lines).id)
    assert done.status == "completed"
    errors = jsonl(client, done.error_file_id)
    assert errors[0]["custom_id"] == "no-messages" and errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["type"] == "invalid_request_error"


def test_openai_token_limit_exceeded_then_success(make_sim, clock):
    sim = make_sim(enqueued_token_limit=10_000, turnaround={"validating": {"median_s": 60},
                                                            "in_progress": {"median_s": 3600}})
    client = oai(sim)
    text = "x" * 4 * 300   # about 300 tokens per request
    lines = [chat_line(i, text=text) for i in range(20)]
    tokens = sum(openai_request_tokens(line["body"]) for line in lines)
    assert 5_000 < tokens < 10_000
    first = submit(client, lines)
    second = submit(client, [chat_line(i + 100, text=text) for i in range(20)])
    clock.advance(120)
    assert client.batches.retrieve(first.id).status == "in_progress"
    failed = client.batches.retrieve(second.id)
    assert failed.status == "failed" and failed.errors.data[0].code == "token_limit_exceeded"
    assert sim.state.token_limit_failures == 1
    wait(client, clock, first.id)
    third, _ = wait(client, clock, submit(client, [chat_line(i + 200, text=text) for i in range(20)]).id)
    assert third.status == "completed"
    # Some creations over the limit are refused at once (HTTP 400) instead of failing later.
    sim.config.token_limit_create_error_rate = 1.0
    submit(client, lines[:10])
    with pytest.raises(openai.BadRequestError) as refused:
        submit(client, [chat_line(i + 300, text=text) for i in range(20)])
    assert refused.value.code == "token_limit_exceeded"


def test_openai_batch_creation_rate_limit(make_sim, clock):
    sim = make_sim(batch_creations_per_hour=2, retry_after_s=0.01)
    client = oai(sim, max_retries=0)
    file_id = upload(client, [chat_line(0)])
    for _ in range(2):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.RateLimitError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    clock.advance(HOUR)
    client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")


# -- Anthropic ---------------------------------------------------------------------------------------------

def a_request(i: int, **params) -> dict:
    return {"custom_id": f"item_{i}", "params": {"model": "claude-sonnet-4-5", "max_tokens": 1024,
                                                  "messages": [{"role": "user", "content": f"describe pair {i}"}],
                                                  **params}}


def test_anthropic_full_lifecycle(make_sim, clock):
    sim = make_sim(seed=2)
    client = ant(sim)
    fmt = {"type": "json_schema", "schema": SCHEMA}
    batch = client.messages.batches.create(requests=[a_request(i, output_format=fmt) for i in range(30)]
                                           + [a_request(99, max_tokens=0)])
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 31
    assert batch.results_url is None
    done = a_wait(client, clock, batch.id)
    assert done.request_counts.succeeded == 30 and done.request_counts.errored == 1
    assert done.ended_at is not None and done.results_url.endswith(f"/v1/messages/batches/{batch.id}/results")
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert len(results) == 31
    assert results["item_99"].type == "errored"
    assert results["item_99"].error.error.type == "invalid_request_error"
    message = results["item_0"].message
    assert len(json.loads(message.content[0].text)["instructions"]) == 5
    assert message.usage.input_tokens == anthropic_request_tokens(a_request(0, output_format=fmt)["params"])
    assert sim.state.batches_created["anthropic"] == 1


def test_anthropic_invalid_custom_id_is_refused(make_sim):
    sim = make_sim()
    client = ant(sim, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.batches.create(requests=[a_request(0), {**a_request(1), "custom_id": "pair/1"}])
    assert "custom_id" in str(refused.value)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[a_request(0), a_request(0)])
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[{**a_request(1), "custom_id": "x" * 65}])
    assert sim.state.batches_created["anthropic"] == 0
