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
import urllib.request
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


def test_openai_responses_endpoint(make_sim, clock):
    sim = make_sim()
    client = oai(sim)
    line = {"custom_id": "r-0", "method": "POST", "url": "/v1/responses",
            "body": {"model": "gpt-4.1-mini", "input": "Two short instructions.",
                     "text": {"format": {"type": "json_schema", "name": "labels", "schema": SCHEMA}}}}
    batch = client.batches.create(input_file_id=upload(client, [line]), endpoint="/v1/responses",
                                  completion_window="24h")
    done, _ = wait(client, clock, batch.id)
    body = jsonl(client, done.output_file_id)[0]["response"]["body"]
    assert body["object"] == "response" and body["usage"]["input_tokens"] == openai_request_tokens(line["body"])
    assert len(json.loads(body["output"][0]["content"][0]["text"])["instructions"]) == 5


def test_openai_file_limits_fail_validation(make_sim, clock):
    sim = make_sim(openai_max_requests=3, openai_max_file_bytes=1_000)
    client = oai(sim)
    done, _ = wait(client, clock, submit(client, [chat_line(i) for i in range(4)]).id)
    assert done.status == "failed"
    assert {e.code for e in done.errors.data} == {"too_many_requests", "file_too_large"}
    done, _ = wait(client, clock, submit(client, [chat_line(0)]).id)
    assert done.status == "completed"


def test_raw_http_chunked_upload_and_error_shapes(make_sim):
    import http.client

    sim = make_sim()
    host, port = sim.base_url.removeprefix("http://").split(":")
    line = json.dumps(chat_line(0)).encode()
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n"
            b"Content-Type: application/jsonl\r\n\r\n" + line + b"\n\r\n--XyZ--\r\n")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest("POST", "/v1/files")
    conn.putheader("Authorization", "Bearer sim")
    conn.putheader("Content-Type", "multipart/form-data; boundary=XyZ")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for start in range(0, len(body), 100):
        piece = body[start:start + 100]
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.send(b"0\r\n\r\n")
    answer = conn.getresponse()
    uploaded = json.loads(answer.read())
    assert answer.status == 200 and uploaded["bytes"] == len(line) + 1 and uploaded["purpose"] == "batch"
    # the same connection is kept alive for the next request
    conn.request("GET", "/v1/batches/batch_nope", headers={"Authorization": "Bearer sim"})
    answer = conn.getresponse()
    assert answer.status == 404 and json.loads(answer.read())["error"]["type"] == "invalid_request_error"
    conn.request("GET", "/v1/messages/batches/msgbatch_nope", headers={"x-api-key": "sim"})
    answer = conn.getresponse()
    error = json.loads(answer.read())
    assert answer.status == 404 and error["type"] == "error" and error["error"]["type"] == "not_found_error"
    conn.request("GET", "/v1/batches")
    answer = conn.getresponse()
    assert answer.status == 401 and "API key" in json.loads(answer.read())["error"]["message"]
    conn.close()


def test_a_stopped_simulator_answers_nothing(make_sim):
    sim = make_sim()
    client = oai(sim, max_retries=0, timeout=2)
    client.batches.list()                # opens a kept-alive connection
    sim.stop()
    with pytest.raises(openai.APIConnectionError):
        client.batches.list()


def test_anthropic_size_limits(make_sim):
    sim = make_sim(anthropic_max_requests=3, anthropic_max_bytes=5_000)
    client = ant(sim, max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[a_request(i) for i in range(4)])
    with pytest.raises(anthropic.APIStatusError) as too_large:
        client.messages.batches.create(requests=[a_request(0, system="s" * 6000)])
    assert too_large.value.status_code == 413


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


def test_anthropic_cancel_and_expiry(make_sim, clock):
    sim = make_sim(turnaround={"validating": {"median_s": 10}, "in_progress": {"median_s": 1000},
                               "cancelling": {"median_s": 60}})
    client = ant(sim)
    batch = client.messages.batches.create(requests=[a_request(i) for i in range(40)])
    clock.advance(510)
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    done = a_wait(client, clock, batch.id, step=30)
    counts = done.request_counts
    assert counts.canceled > 0 and counts.succeeded > 0 and counts.canceled + counts.succeeded == 40
    kinds = [r.result.type for r in client.messages.batches.results(batch.id)]
    assert kinds.count("canceled") == counts.canceled and kinds.count("succeeded") == counts.succeeded
    with pytest.raises(anthropic.BadRequestError):
        client.with_options(max_retries=0).messages.batches.cancel(batch.id)

    sim.set_faults(expire=1.0)
    batch = client.messages.batches.create(requests=[a_request(i) for i in range(40)])
    clock.advance(DAY - 60)
    assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    clock.advance(60)
    done = client.messages.batches.retrieve(batch.id)
    assert done.processing_status == "ended" and 0 < done.request_counts.expired < 40
    kinds = [r.result.type for r in client.messages.batches.results(batch.id)]
    assert kinds.count("expired") == done.request_counts.expired
    assert kinds.count("succeeded") == done.request_counts.succeeded


def test_anthropic_list_pagination_and_queue_limit(make_sim, clock):
    sim = make_sim(anthropic_queue_limit=25, retry_after_s=0.01)
    client = ant(sim, max_retries=0)
    ids = []
    for i in range(5):
        ids.append(client.messages.batches.create(requests=[a_request(j) for j in range(5)]).id)
        clock.advance(1)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.batches.create(requests=[a_request(0)])
    assert sim.state.rejections["queue_limit"] == 1
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more and page.last_id == ids[3]
    assert [b.id for b in client.messages.batches.list(limit=2)] == ids[::-1]
    before = client.messages.batches.list(before_id=ids[2], limit=10)
    assert [b.id for b in before.data] == [ids[4], ids[3]]
    for batch_id in ids:
        a_wait(client, clock, batch_id)
    client.messages.batches.create(requests=[a_request(0)])  # the queue has room again


# -- faults ------------------------------------------------------------------------------------------------

def test_http_5xx_and_429_are_retried_by_the_sdks(make_sim, clock):
    sim = make_sim(seed=5, http_5xx=0.3, http_429=0.2, retry_after_s=0.001)
    client = oai(sim, max_retries=20)
    batch = submit(client, [chat_line(i) for i in range(5)])
    done, _ = wait(client, clock, batch.id, step=1800)
    assert len(jsonl(client, done.output_file_id)) == 5
    a_client = ant(sim, max_retries=20)
    a_batch = a_client.messages.batches.create(requests=[a_request(i) for i in range(5)])
    a_wait(a_client, clock, a_batch.id, step=1800)
    assert len(list(a_client.messages.batches.results(a_batch.id))) == 5
    assert sim.state.faults["http_5xx"] >= 3 and sim.state.faults["http_429"] >= 2
    sim.set_faults(http_5xx=1.0, http_429=0.0)
    with pytest.raises(openai.InternalServerError):
        oai(sim, max_retries=1).batches.list()
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        ant(sim, max_retries=1).messages.batches.list()
    assert overloaded.value.status_code == 529


def test_timeouts_are_retried_and_the_effect_happened(make_sim, clock):
    sim = make_sim(timeout=1.0, timeout_delay_s=0.6)
    client = oai(sim, max_retries=0, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        client.batches.list()
    sim.set_faults(timeout=0.0)
    lines = [chat_line(0)]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    file_id = client.files.create(file=("b.jsonl", data), purpose="batch").id
    sim.set_faults(timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    # The answer was lost but the batch exists, as with a real network timeout: find it by listing.
    assert sim.state.batches_created["openai"] == 1
    sim.set_faults(timeout=0.5)
    retried = oai(sim, max_retries=10, timeout=0.2)
    assert len(retried.batches.list().data) == 1
    assert sim.state.faults["timeout"] >= 2


def test_malformed_and_missing_lines_at_the_configured_rates(make_sim, clock):
    sim = make_sim(seed=11, malformed_lines=0.1, missing_lines=0.05)
    client = oai(sim)
    n = 2000
    done, _ = wait(client, clock, submit(client, [chat_line(i) for i in range(n)]).id, step=3600)
    raw = client.files.content(done.output_file_id).text.splitlines()
    good = bad = 0
    for line in raw:
        try:
            json.loads(line)
            good += 1
        except ValueError:
            bad += 1
    missing = n - len(raw)
    assert done.request_counts.completed == n      # counts still cover every request
    assert 0.07 * n < bad < 0.13 * n and 0.03 * n < missing < 0.07 * n
    a_client = ant(sim)
    batch = a_client.messages.batches.create(requests=[a_request(i) for i in range(n)])
    a_wait(a_client, clock, batch.id, step=3600)
    response = a_client.messages.batches.with_raw_response.results(batch.id)
    lines = response.http_response.read().decode().splitlines()
    assert 0.03 * n < n - len(lines) < 0.07 * n
    assert 0.07 * n < sum(1 for line in lines if not _parses(line)) < 0.13 * n


def test_request_errors_at_the_configured_rate(make_sim, clock):
    sim = make_sim(seed=4, request_error=0.2)
    client = oai(sim)
    done, _ = wait(client, clock, submit(client, [chat_line(i) for i in range(500)]).id, step=3600)
    errors = jsonl(client, done.error_file_id)
    assert 60 < len(errors) < 140 and {e["response"]["status_code"] for e in errors} == {500}
    assert done.request_counts.failed == len(errors)
    assert done.request_counts.completed + len(errors) == 500


def test_anthropic_all_failed_and_request_errors(make_sim, clock):
    sim = make_sim(seed=8, all_failed=1.0)
    client = ant(sim)
    batch = client.messages.batches.create(requests=[a_request(i) for i in range(6)])
    done = a_wait(client, clock, batch.id)
    assert done.request_counts.errored == 6
    errors = [r.result for r in client.messages.batches.results(batch.id)]
    assert {e.error.error.type for e in errors} == {"api_error"}
    sim.set_faults(all_failed=0.0, request_error=0.5)
    batch = client.messages.batches.create(requests=[a_request(i) for i in range(200)])
    done = a_wait(client, clock, batch.id)
    assert 60 < done.request_counts.errored < 140 and done.request_counts.succeeded + done.request_counts.errored == 200


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


# -- token model -------------------------------------------------------------------------------------------

def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_token_model_on_a_literal_request():
    image = base64.b64encode(png(1024, 768)).decode()
    text = "Describe the two frames."      # 24 bytes: 6 tokens
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]}]}
    # 3 per request + 4 per message + 6 text + (85 + 170 * 2x2 tiles) = 778
    assert openai_request_tokens(body) == 778
    body["messages"][0]["content"][1]["image_url"]["detail"] = "low"
    assert openai_request_tokens(body) == 3 + 4 + 6 + 85
    params = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "text", "text": text},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}}]}]}
    assert anthropic_request_tokens(params) == 3 + 4 + 6 + 1049   # ceil(1024 * 768 / 750)


def test_token_model_reads_jpeg_sizes_and_scales_large_images():
    from io import BytesIO

    PIL = pytest.importorskip("PIL.Image")
    buffer = BytesIO()
    PIL.new("RGB", (2000, 1000), (10, 20, 30)).save(buffer, format="JPEG")
    url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    # 2000x1000 -> shortest side 768: 1536x768 -> 3x2 tiles
    assert openai_request_tokens(body) == 3 + 4 + 85 + 170 * 6
    params = {"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/jpeg", "data": url.split(",", 1)[1]}}]}]}
    assert anthropic_request_tokens(params) == 3 + 4 + 1640   # 1568x784 / 750


def test_token_model_other_formats_through_pillow():
    from io import BytesIO

    PIL = pytest.importorskip("PIL.Image")
    buffer = BytesIO()
    PIL.new("RGB", (512, 300)).save(buffer, format="BMP")
    url = "data:image/bmp;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    assert openai_request_tokens(body) == 3 + 4 + 85 + 170 * 1


def test_billed_usage_follows_the_token_model(make_sim, clock):
    sim = make_sim(output_tokens=1199)
    client = oai(sim)
    line = chat_line(0, text="y" * 400)
    done, _ = wait(client, clock, submit(client, [line]).id)
    usage = jsonl(client, done.output_file_id)[0]["response"]["body"]["usage"]
    assert usage["prompt_tokens"] == openai_request_tokens(line["body"]) and usage["completion_tokens"] == 1199


# -- settings and command line -----------------------------------------------------------------------------

def test_settings_from_yaml_and_errors(tmp_path):
    from corral.errors import SpecError

    path = tmp_path / "sim.yaml"
    path.write_text("seed: 4\nlimits:\n  enqueued_token_limit: 1000\nfaults:\n  http_5xx: 0.1\n"
                    "turnaround:\n  in_progress: {median_s: 60, sigma: 0.5}\n")
    config = SimConfig.from_yaml(path)
    assert (config.seed, config.enqueued_token_limit, config.http_5xx) == (4, 1000, 0.1)
    assert config.turnaround.in_progress.sigma == 0.5 and config.turnaround.validating.median_s == 120
    path.write_text("faults:\n  http_5x: 0.1\n")
    with pytest.raises(SpecError) as bad:
        SimConfig.from_yaml(path)
    assert "http_5xx" in str(bad.value) and str(path) in str(bad.value)
    with pytest.raises(SpecError):
        SimConfig.from_dict({"expire": 2})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_corral_sim_serve_answers(tmp_path):
    port = free_port()
    (tmp_path / "sim.yaml").write_text("turnaround:\n  validating: {median_s: 0}\n  in_progress: {median_s: 0}\n"
                                       "  finalizing: {median_s: 0}\n")
    proc = subprocess.Popen([sys.executable, "-m", "corral", "sim", "serve", "--port", str(port), "--seed", "3",
                             "--config", str(tmp_path / "sim.yaml"), "--speed", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sim", max_retries=0)
        deadline = time.time() + 20
        while True:
            try:
                client.batches.list()
                break
            except openai.APIConnectionError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        batch = submit(client, [chat_line(0)])
        for _ in range(100):
            batch = client.batches.retrieve(batch.id)
            if batch.status == "completed":
                break
            time.sleep(0.05)
        assert batch.status == "completed"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/state", timeout=5) as answer:
            state = json.load(answer)
        assert state["batches_created"] == {"openai": 1} and state["batches_by_status"] == {"openai:completed": 1}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/sim/faults", data=b'{"http_429": 0.5}',
                                         method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert json.load(answer)["http_429"] == 0.5
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    assert f"http://127.0.0.1:{port}" in stderr


def test_corral_sim_serve_refuses_a_bad_config(tmp_path):
    (tmp_path / "sim.yaml").write_text("faults: {expire: 3}\n")
    done = subprocess.run([sys.executable, "-m", "corral", "sim", "serve", "--config", str(tmp_path / "sim.yaml")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and "expire" in done.stderr and "Traceback" not in done.stderr


def test_throughput_benchmark_runs_on_a_small_workload(tmp_path):
    bench = Path(__file__).resolve().parent.parent / "bench" / "llm_batch_throughput.py"
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(bench), "--requests", "400", "--turnaround", "both",
                           "--json", str(out)], capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data["turnaround"]) == {"default", "heavy"}
    for part in data["turnaround"].values():
        results = {r["key"]: r for r in part["results"]}
        assert set(results) == {"corral", "cron", "submit-all"}
        assert results["corral"]["finished"] and results["corral"]["done"] == 400
        # every policy is billed for each request exactly once
        assert {r["billed"]["tokens_in"] for r in results.values()} == {400 * 2617}
        assert results["corral"]["recorded"]["tokens_in"] == 400 * 2617
        assert "cron / corral" in part["ratios"] and results["corral"]["main_phase"]["tail_h"] >= 0
    assert "Little's law bound" in done.stderr and "turnaround model: heavy" in done.stderr
