"""The gemini_batch backend through google-genai against the simulator's Gemini Batch API: the
llm-batch example switched to Gemini by one override, a job that expires with nothing returned, a
create whose answer was lost, kill -9 during a create, and the translation of the OpenAI-shaped
request template. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import cli_env, corral_cli, query_ledger, write_campaign, write_module
from support.readme import copy_example
from sqlalchemy import select

from corral.api import Campaign
from corral.engine.clock import VirtualClock
from corral.ledger import schema
from corral.llm import text_of
from corral.llm.gemini_request import gemini_request, gemini_schema
from corral.sim import Phase, SimConfig, SimServer, Turnaround

pytest.importorskip("google.genai", reason="the gemini_batch backend needs the llm extra (pip install 'corral[llm]')")
pytest.importorskip("jinja2", reason="LLM stages need the llm extra (pip install 'corral[llm]')")

pytestmark = pytest.mark.usefixtures("campaign_ledger")

CREATE = "POST /v1beta/models/{model}:batchGenerateContent"
ANSWER = {"instructions": ["a", "b", "c", "d", "e"], "id": "{custom_id}"}
PARSE = """
import json

from corral.llm import text_of


def parse(body):
    answer = json.loads(text_of(body))
    if len(answer["instructions"]) != 5:
        raise ValueError("wanted five instructions")
    return {"instructions": answer["instructions"], "id": answer["id"]}
"""


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "sim")


@pytest.fixture
def clock():
    return VirtualClock()


@pytest.fixture
def sim_factory(clock):
    servers = []

    def make(virtual: bool = True, **config):
        config.setdefault("seed", 1)
        config.setdefault("answer_template", ANSWER)
        config.setdefault("retry_after_s", 0.01)
        config.setdefault("turnaround", Turnaround(validating=Phase(20.0, 0.3), in_progress=Phase(300.0, 0.5, 1.0),
                                                   finalizing=Phase(20.0, 0.3)))
        server = SimServer(SimConfig(**config), clock=clock if virtual else None)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def campaign(folder: Path, sim: SimServer, *, items: int = 12, backend: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.json").write_text(json.dumps([{"pair": i, "note": f"pair {i}"} for i in range(items)]))
    write_module(folder, "labels", PARSE)
    request = {"model": "gemini-2.5-flash", "max_completion_tokens": 400,
               "response_format": {"type": "json_object"},
               "messages": [{"role": "system", "content": "Answer as JSON."},
                            {"role": "user", "content": "Five instructions for {{ item.note }}."}]}
    settings = {"type": "gemini_batch", "base_url": sim.base_url, "pilot": 0, "poll_interval": "20s",
                "tokenizer": "estimate", "max_retries": 3}
    settings.update(backend or {})
    return write_campaign(folder, {"name": "labels", "items": {"from": "pairs.json"},
                                   "stages": {"label": {"backend": "llm", "request": request, "parse": "labels:parse",
                                                        "retries": {"max": 2, "backoff": "1m"}}},
                                   "backends": {"llm": settings}})


def tasks(run) -> list[dict]:
    t = schema.tasks
    with run.ledger.read() as conn:
        return [dict(r) for r in conn.execute(select(t).where(t.c.run_id == run.id).order_by(t.c.id)).mappings()]


def recorded_jobs(run) -> list[str]:
    s = schema.submissions
    with run.ledger.read() as conn:
        ids = [r[0] for r in conn.execute(select(s.c.remote_id).where(s.c.run_id == run.id))]
    return [i for i in ids if i and not i.startswith("none:")]


# -- the example, switched by one override ----------------------------------------------------------

def test_the_example_runs_on_gemini_with_one_override(tmp_path):
    pytest.importorskip("PIL", reason="the example draws its frames with Pillow")
    folder = copy_example("llm-batch", tmp_path)
    port = _free_port()
    env = {"GEMINI_API_KEY": "sim", "SIM_PORT": str(port)}
    subprocess.run([sys.executable, "make_frames.py", "--pairs", "48", "--out", "sampled_pairs_smoke"], cwd=folder,
                   check=True, capture_output=True, env=cli_env())
    server = subprocess.Popen([sys.executable, "-m", "corral", "sim", "serve", "--config", "sim.yaml", "--port",
                               str(port)], cwd=folder, env=cli_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_for(port)
        check = corral_cli(folder, "check", "+preset=smoke", "+provider=gemini", env=env, check=0)
        assert "gemini-2.5-flash" in check.stdout and "$0.15/1M" in check.stdout   # half the standard $0.30
        corral_cli(folder, "run", "+preset=smoke", "+provider=gemini", env=env, check=0, timeout=240)
        state = json.loads(_get(port, "/sim/state"))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    merged = json.loads((folder / "batch_run_smoke" / "final" / "all_instructions.json").read_text())
    assert len(merged) == 48 and all(len(entry["instructions"]) == 5 for entry in merged)
    assert set(state["batches_created"]) == {"gemini"}, "the switch left requests going to another provider"
    assert state["requests_enqueued"]["gemini"] == 48
    jobs = query_ledger(folder, "SELECT remote_id, task_count FROM submissions WHERE stage = 'label' "
                                  "AND remote_id NOT LIKE 'none:%'")
    assert len(jobs) == state["batches_created"]["gemini"] >= 8   # 48 requests, at most 6 a job
    assert all(count <= 6 for _, count in jobs)
    billed = query_ledger(folder, "SELECT SUM(tokens_in), SUM(tokens_out), SUM(cost) FROM tasks "
                                  "WHERE stage = 'label'")[0]
    billed = [float(value) for value in billed]
    assert billed[1] == 48 * 1199          # sim.yaml bills 1,199 output tokens per answer
    assert billed[2] == pytest.approx((billed[0] * 0.30 + billed[1] * 2.50) / 1e6 / 2)


# -- faults ---------------------------------------------------------------------------------------

def test_an_expired_job_returns_nothing_and_every_request_goes_out_again(tmp_path, clock, sim_factory):
    sim = sim_factory()
    sim.set_faults(expire=1.0)
    path = campaign(tmp_path, sim, items=12)
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    engine = run.engine(clock)
    engine.tick()
    engine.close()
    sim.set_faults(expire=0.0)
    [first] = sim.state.batch_list("gemini")
    assert first.expires_at - first.created_at == 48 * 3600
    run.run(clock=clock, max_interval=600.0, should_stop=lambda: clock.now() > first.created_at + 5 * 86400)
    assert first.phase(clock.now()) == "expired" and first.done_count(first.expires_at) > 0, \
        "the job had finished requests when it expired"
    assert "output" not in sim.gemini.batch_json(first, clock.now(), sim.base_url)["metadata"]
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"} and len(rows) == 12
    assert all(r["attempts"] == 1 for r in rows), "an expiry used an attempt"
    assert sim.state.requests_enqueued["gemini"] == 24, "not every request of the expired job went out again"
    answered = [json.loads(line)["key"] for line in _answers(sim)]
    assert sorted(answered) == sorted(set(answered)) and len(answered) == 12, "an item was answered twice"
    camp.close()


def test_a_create_whose_answer_timed_out_is_adopted_not_made_twice(tmp_path, clock, sim_factory):
    # The create takes effect and its answer comes after the client gave up: sent again, it would
    # make a second job (the API is not idempotent); the backend lists and adopts the first.
    sim = sim_factory(timeout_delay_s=1.0)
    sim.fail_next(CREATE, how="timeout")
    path = campaign(tmp_path, sim, items=8, backend={"timeout": 0.3})
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    run.run(clock=clock, max_interval=600.0, should_stop=lambda: clock.now() > 1e12)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
    assert sim.state.faults["timeout"] == 1
    assert sim.state.http_requests[CREATE] == 1
    assert sim.state.batches_created["gemini"] == 1 and recorded_jobs(run) == [
        f"batches/{b.id}" for b in sim.state.batch_list("gemini")]
    billed = sum(json.loads(line)["response"]["usageMetadata"]["promptTokenCount"] for line in _answers(sim))
    assert sum(r["tokens_in"] for r in rows) == billed
    camp.close()


def test_a_create_that_never_reached_the_api_is_sent_again_once(tmp_path, clock, sim_factory, monkeypatch):
    import corral.backends.gemini_batch as gemini_batch

    monkeypatch.setattr(gemini_batch, "LOOK_AGAIN", (0.0,))
    sim = sim_factory()
    sim.fail_next(CREATE, how="disconnect")    # no job made, no answer
    path = campaign(tmp_path, sim, items=6)
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    run.run(clock=clock, max_interval=600.0, should_stop=lambda: clock.now() > 1e12)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
    assert sim.state.http_requests[CREATE] == 2 and sim.state.batches_created["gemini"] == 1
    assert sim.state.http_requests["GET /v1beta/batches"] >= 2, "the create was sent again without looking first"
    camp.close()


def test_a_duplicate_job_made_by_a_second_create_is_cancelled_and_the_first_kept(tmp_path, clock, sim_factory):
    sim = sim_factory()
    path = campaign(tmp_path, sim, items=6)
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    engine = run.engine(clock)
    backend = engine.backends["llm"]
    real_create = backend.create_batch

    def create_twice_then_die(*args, **kwargs):
        real_create(*args, **kwargs)
        clock.advance(1.0)
        real_create(*args, **kwargs)       # as a client that sent the create again would
        raise KeyboardInterrupt("killed before the job was recorded")

    backend.create_batch = create_twice_then_die
    with pytest.raises(KeyboardInterrupt):
        engine.tick()
    engine.close()
    first, second = sim.state.batch_list("gemini")
    run.run(clock=clock, max_interval=600.0, should_stop=lambda: clock.now() > 1e12)
    assert recorded_jobs(run) == [f"batches/{first.id}"]
    assert second.cancel_at is not None and second.done_count(second.cancel_at) == 0, "the duplicate was billed"
    assert {r["state"] for r in tasks(run)} == {"done"}
    camp.close()


def test_kill_9_during_a_create_never_leaves_two_jobs_recorded(tmp_path, sim_factory):
    sim = sim_factory(virtual=False, timeout_delay_s=30.0,
                      turnaround=Turnaround(validating=Phase(0.3), in_progress=Phase(1.0), finalizing=Phase(0.2)))
    sim.fail_next(CREATE, how="timeout")      # the job is made, its answer held back 30 s
    path = campaign(tmp_path, sim, items=8, backend={"poll_interval": "1s", "timeout": 60})
    run = subprocess.Popen([sys.executable, "-m", "corral", "run"], cwd=path.parent, env=cli_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while sim.state.batches_created["gemini"] == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert sim.state.batches_created["gemini"] == 1
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.wait(timeout=10)
    corral_cli(path.parent, "run", check=0, timeout=120)
    jobs = [r[0] for r in query_ledger(path.parent, "SELECT remote_id FROM submissions WHERE stage = 'label' AND "
                                                    "remote_id NOT LIKE 'none:%'")]
    assert len(jobs) == len(set(jobs)) == sim.state.batches_created["gemini"] == 1
    states = query_ledger(path.parent, "SELECT state, attempts FROM tasks")
    assert states == [("done", 1)] * 8


def test_stragglers_are_cancelled_and_what_they_finished_is_kept(tmp_path, clock, sim_factory):
    sim = sim_factory(turnaround=Turnaround(validating=Phase(10.0), in_progress=Phase(300.0, 1.5),
                                            finalizing=Phase(10.0)))
    path = campaign(tmp_path, sim, items=60, backend={"max_requests_per_batch": 6, "straggler_after": 1.5,
                                                                   "hedge": {"mode": "off"}})
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    run.run(clock=clock, max_interval=600.0, should_stop=lambda: clock.now() > 1e12)
    rows = tasks(run)
    assert {r["state"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows)
    stragglers = [s for s in run.submissions(open_only=False) if s["info"].get("straggler")]
    assert stragglers, "no job was slow enough to be cancelled"
    assert sim.state.http_requests["POST /v1beta/batches/{id}:cancel"] == len(stragglers)
    assert sim.state.requests_enqueued["gemini"] > 60
    answered = [json.loads(line)["key"] for line in _answers(sim)]
    assert len(answered) == len(set(answered)) == 60, "a request was answered twice or not at all"
    camp.close()


def test_a_request_gemini_cannot_take_fails_alone_naming_the_key(tmp_path, clock, sim_factory):
    sim = sim_factory()
    path = campaign(tmp_path, sim, items=4)
    config = yaml.safe_load(path.read_text())
    config["stages"]["label"]["request"]["logprobs"] = True
    path.write_text(yaml.safe_dump(config))
    camp = Campaign.load(path)
    run, _ = camp.start(clock=clock)
    run.run(clock=clock, max_interval=600.0, should_stop=lambda: clock.now() > 1e12)
    rows = {r["item_idx"]: r for r in tasks(run)}
    assert all(r["state"] == "failed" and r["error_class"] == "template" for r in rows.values())
    assert "the request cannot be sent to gemini: request key 'logprobs' has no Gemini counterpart" in \
        rows[0]["error_message"]
    assert sim.state.batches_created["gemini"] == 0
    camp.close()


# -- the parts ------------------------------------------------------------------------------------

def test_the_chat_shape_translates_to_a_generate_content_request():
    body = {"model": "gemini-2.5-flash", "max_completion_tokens": 4000, "temperature": 0.2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
                "type": "object", "additionalProperties": False, "required": ["b", "a"],
                "properties": {"b": {"type": "array", "items": {"$ref": "#/$defs/word"}, "minItems": 5},
                               "a": {"type": ["string", "null"]}, "c": {"const": "fixed"}},
                "$defs": {"word": {"type": "string"}}}}},
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "look"},
                                                      {"type": "image_url", "image_url": {"url": "data:image/jpeg;"
                                                                                                 "base64,AAAA"}}]},
                         {"role": "assistant", "content": "ok"}]}
    request = gemini_request(body)
    assert request["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert request["contents"] == [
        {"role": "user", "parts": [{"text": "look"}, {"inlineData": {"mimeType": "image/jpeg", "data": "AAAA"}}]},
        {"role": "model", "parts": [{"text": "ok"}]}]
    config = request["generationConfig"]
    assert (config["maxOutputTokens"], config["temperature"], config["responseMimeType"]) == \
        (4000, 0.2, "application/json")
    assert config["responseSchema"] == {
        "type": "OBJECT", "required": ["b", "a"], "propertyOrdering": ["b", "a", "c"],
        "properties": {"b": {"type": "ARRAY", "items": {"type": "STRING"}, "minItems": 5},
                       "a": {"type": "STRING", "nullable": True}, "c": {"enum": ["fixed"], "type": "STRING",
                                                                         "format": "enum"}}}
    native = {"model": "m", "contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"topK": 3}}
    assert gemini_request(native) == {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"topK": 3}}


@pytest.mark.parametrize("body, wanted", [
    ({"messages": [], "logprobs": True}, "'logprobs' has no Gemini counterpart"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role 'tool'"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "part type 'input_audio'"),
])
def test_what_gemini_cannot_take_is_an_error_not_dropped(body, wanted):
    with pytest.raises(ValueError, match=wanted):
        gemini_request(body)
    with pytest.raises(ValueError, match="patternProperties"):
        gemini_schema({"type": "object", "patternProperties": {}})


def test_text_of_reads_a_gemini_answer_without_its_thoughts():
    body = {"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking", "thought": True},
                                                                   {"text": "{\"a\": "}, {"text": "1}"}]}}]}
    assert text_of(body) == "{\"a\": 1}"
    assert text_of({"candidates": []}) == ""


def test_a_duplicate_create_makes_a_second_job_in_the_simulator(sim_factory):
    from google import genai
    from google.genai import types

    sim = sim_factory()
    client = genai.Client(api_key="sim", http_options=types.HttpOptions(base_url=sim.base_url, api_version="v1beta"))
    request = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "metadata": {"key": "k"}}
    names = {client.batches.create(model="gemini-2.5-flash", src=[request], config={"display_name": "same"}).name
             for _ in range(2)}
    assert len(names) == 2 and sim.state.batches_created["gemini"] == 2
    listed = [job.display_name for job in client.batches.list(config={"page_size": 1})]
    assert listed == ["same", "same"]          # two pages of one


# -- helpers --------------------------------------------------------------------------------------

def _answers(sim: SimServer) -> list[str]:
    lines = []
    for record in sim.gemini.files.values():
        if record["source"] == "GENERATED":
            lines += [line for line in record["data"].decode().splitlines() if line.strip()]
    return lines


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return answer.read()


def _wait_for(port: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            _get(port, "/sim/state")
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the simulator did not start")
