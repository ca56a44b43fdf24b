"""Provider profiles of the ``openai_batch`` backend (``profile: groq``): the profile's limits cut the
batches the simulator receives, its discount prices the projection, a setting given explicitly wins
over it, an unknown or refused profile is bad input, and the frame-pair example switched to a
provider with one override runs end to end against the simulator. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import assert_no_ledger, corral_cli, write_campaign

from corral.sim import Phase, SimConfig, SimServer, Turnaround
from corral.spec.llm_profiles import PROFILES

pytest.importorskip("openai", reason="the openai_batch backend needs the llm extra (pip install 'corral[llm]')")
pytest.importorskip("jinja2", reason="request templates need the llm extra (pip install 'corral[llm]')")

pytestmark = pytest.mark.usefixtures("campaign_ledger")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "llm-batch"
GROQ = PROFILES["groq"]
MODEL = "llama-3.1-8b-instant"


def start_sim(**limits: int) -> SimServer:
    turnaround = Turnaround(validating=Phase(0.2, 0.2), in_progress=Phase(0.6, 0.3, 0.0), finalizing=Phase(0.1, 0.2))
    server = SimServer(SimConfig(seed=5, turnaround=turnaround, retry_after_s=0.01, **limits))
    server.start()
    return server


@pytest.fixture
def groq_env(monkeypatch) -> dict[str, str]:
    """Only Groq's key: a run that read OpenAI's variable would fail."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return {"GROQ_API_KEY": "sim"}


def campaign(folder: Path, count: int, **backend: object) -> Path:
    settings = {"type": "openai_batch", "profile": "groq", "poll_interval": "0.2s", "tokenizer": "estimate",
                **backend}
    return write_campaign(folder, {
        "name": "profiled",
        "items": {"grid": {"i": {"range": [0, count]}}},
        "stages": {"ask": {"backend": "api", "request": {
            "model": MODEL, "max_completion_tokens": 5,
            "messages": [{"role": "user", "content": "number {{ item.i }}"}]}}},
        "backends": {"api": settings}})


def provider_of(folder: Path, env: dict[str, str], *overrides: str) -> dict:
    out = corral_cli(folder, "check", "--json", *overrides, env=env, check=0).stdout
    return json.loads(out)["stages"]["ask"]["llm"]


@pytest.mark.slow
def test_batches_are_cut_at_the_profiles_request_limit(tmp_path, groq_env):
    # The simulator refuses a file over Groq's documented 50,000 lines or 200 MB, as Groq does.
    sim = start_sim(openai_max_requests=GROQ.max_requests_per_batch, openai_max_file_bytes=GROQ.max_bytes_per_batch)
    try:
        count = GROQ.max_requests_per_batch + 300   # more than one full batch after the first, smaller one
        # base_url set here wins over the profile's (the simulator instead of api.groq.com)
        campaign(tmp_path, count, base_url=sim.base_url + "/v1", pilot=0)
        corral_cli(tmp_path, "run", "-q", env=groq_env, check=0, timeout=600)
        sizes = [b.n for b in sim.state.batch_list("openai")]
        assert max(sizes) == GROQ.max_requests_per_batch and sum(sizes) == count and len(sizes) >= 2
        assert sim.state.rejections == {} and sim.state.requests_enqueued["openai"] == count
        status = json.loads(corral_cli(tmp_path, "status", "--json", env=groq_env, check=0).stdout)
        assert status["stages"]["ask"]["done"] == count
    finally:
        sim.stop()


def test_check_shows_the_provider_and_its_limits(tmp_path, groq_env):
    campaign(tmp_path, 120_000, pilot=0)
    llm = provider_of(tmp_path, groq_env)
    provider = llm["provider"]
    assert provider["provider"] == "Groq" and provider["profile"] == "groq"
    assert provider["base_url"] == "https://api.groq.com/openai/v1" and provider["api_key_env"] == "GROQ_API_KEY"
    assert (provider["max_requests_per_batch"], provider["max_bytes_per_batch"]) == (50_000, 200_000_000)
    assert provider["completion_windows"] == "24h to 7d" and provider["batch_discount"] == 0.5
    # packing follows the profile's limit: 120,000 requests in batches of 50,000
    assert llm["requests_per_batch"] == 50_000 and llm["batches"] == 3
    text = corral_cli(tmp_path, "check", env=groq_env, check=0).stdout
    assert ("ask: provider Groq (profile groq) at https://api.groq.com/openai/v1, API key from GROQ_API_KEY; "
            "batches of up to 50,000 requests and 200 MB, completion window 24h (accepted: 24h to 7d), "
            "batch discount 50%, files kept 30 days") in text
    assert_no_ledger(tmp_path)


def test_explicit_settings_win_over_the_profile(tmp_path, groq_env):
    campaign(tmp_path, 100, pilot=0, max_requests_per_batch=30, api_key_env="MY_GROQ_KEY", completion_window="7d",
             prices={MODEL: {"input": 1.0, "output": 2.0}})
    env = {**groq_env, "MY_GROQ_KEY": "sim"}
    llm = provider_of(tmp_path, env)
    provider = llm["provider"]
    assert provider["max_requests_per_batch"] == 30 and provider["api_key_env"] == "MY_GROQ_KEY"
    assert provider["completion_window"] == "7d"
    assert provider["max_bytes_per_batch"] == GROQ.max_bytes_per_batch   # not set: the profile's
    assert llm["requests_per_batch"] == 30 and llm["batches"] == 4
    # The profile's discount (50%) on a price that gives none; an explicit batch_discount wins; a
    # price's own discount wins over both.
    rates = {row["type"]: row["rate_per_million"] for row in llm["cost_by_type"]}
    assert rates["input"] == pytest.approx(0.5) and rates["output"] == pytest.approx(1.0)
    llm = provider_of(tmp_path, env, "+backends.api.batch_discount=0.25")
    assert {row["type"]: row["rate_per_million"] for row in llm["cost_by_type"]}["input"] == pytest.approx(0.75)
    campaign(tmp_path, 100, pilot=0, max_requests_per_batch=30, api_key_env="MY_GROQ_KEY", batch_discount=0.25,
             prices={MODEL: {"input": 1.0, "output": 2.0, "batch_discount": 0.1}})
    llm = provider_of(tmp_path, env)
    assert {row["type"]: row["rate_per_million"] for row in llm["cost_by_type"]}["input"] == pytest.approx(0.9)


@pytest.mark.parametrize("override, key, words", [
    ("backends.api.profile=groqq", "backends.api.profile", ["unknown profile 'groqq'", "valid profiles: groq, openai"]),
    ("backends.api.profile=together", "backends.api.profile", ["profile 'together' is not offered",
                                                               "valid profiles: groq, openai"]),
    ("backends.api.profile=azure", "backends.api.profile", ["AzureOpenAI", "valid profiles: groq, openai"]),
    ("+backends.api.completion_window=8d", "backends.api.completion_window", ["'8d' is not accepted by Groq",
                                                           "24h to 7d"]),
    ("+backends.api.endpoint=/v1/embeddings", "backends.api", ["not served by Groq's Batch API",
                                                              "/v1/chat/completions"]),
])
def test_bad_profile_settings_are_refused(tmp_path, groq_env, override, key, words):
    path = campaign(tmp_path, 10)
    for command in (["check"], ["run", "-q"]):
        proc = corral_cli(tmp_path, *command, override, env=groq_env, check=2)
        assert str(path) in proc.stderr and f"{key}:" in proc.stderr, proc.stderr
        for word in words:
            assert word in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert_no_ledger(tmp_path)


@pytest.mark.slow
def test_example_switched_to_groq_with_one_override(tmp_path, groq_env):
    folder = tmp_path / "labels"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(".corral", "__pycache__", "sampled_pairs*",
                                                                    "batch_run*"))
    subprocess.run([sys.executable, str(folder / "make_frames.py"), "--pairs", "48", "--distinct-frames", "4",
                    "--out", str(folder / "sampled_pairs_smoke")], check=True, capture_output=True)
    preset = yaml.safe_load((folder / "preset" / "smoke.yaml").read_text())["backends"]["openai"]
    # The simulator's limits are the smoke preset's, which it sets explicitly over the profile's.
    sim = start_sim(openai_max_requests=preset["max_requests_per_batch"],
                    openai_max_file_bytes=preset["max_bytes_per_batch"], output_tokens=1199)
    try:
        env = {**groq_env, "GROQ_BASE_URL": sim.base_url + "/v1"}
        check = corral_cli(folder, "check", "+preset=smoke", "+provider=groq", env=env, check=0).stdout
        assert (f"label: provider Groq (profile groq) at {sim.base_url}/v1, API key from GROQ_API_KEY; batches of "
                "up to 6 requests and 7 MB") in check
        assert "48 requests to meta-llama/llama-4-scout-17b-16e-instruct" in check
        corral_cli(folder, "run", "-q", "+preset=smoke", "+provider=groq", "backends.openai.poll_interval=0.3s",
                   env=env, check=0, timeout=300)
        batches = sim.state.batch_list("openai")
        assert sum(b.n for b in batches) == 48 and max(b.n for b in batches) <= 6
        assert {b.model for b in batches} == {"meta-llama/llama-4-scout-17b-16e-instruct"}
        assert sim.state.rejections == {}
        merged = json.loads((folder / "batch_run_smoke" / "final" / "all_instructions.json").read_text())
        assert len(merged) == 48 and all(len(entry["instructions"]) == 5 for entry in merged)
    finally:
        sim.stop()


def test_a_failed_batchs_errors_are_read_in_either_shape():
    from corral.backends.openai_batch import _batch_errors

    # Groq's documented batch object gives the validation errors as a bare list.
    groq = [{"code": "invalid_method", "message": "Invalid value: 'GET'. Supported values are: 'POST'",
             "param": "method", "line": 4}]
    assert _batch_errors(groq) == [("invalid_method", "Invalid value: 'GET'. Supported values are: 'POST'", 4)]
    assert _batch_errors(None) == []
