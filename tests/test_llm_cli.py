"""The frame-pair example end to end through the CLI (check, run, status, export) against the
simulator in real time, for both providers; and `corral run` killed with SIGKILL ten times at random
moments without any batch being created twice."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import cli_env, corral_cli

from corral.sim import Phase, SimConfig, SimServer, Turnaround

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "llm-batch"
ENV = {"OPENAI_API_KEY": "sim", "ANTHROPIC_API_KEY": "sim"}


@pytest.fixture
def sim():
    # Real time, batches of a second or two: `corral run` in a subprocess polls it over HTTP.
    turnaround = Turnaround(validating=Phase(0.3, 0.3), in_progress=Phase(1.0, 0.4, 0.02),
                            finalizing=Phase(0.2, 0.3))
    server = SimServer(SimConfig(seed=3, turnaround=turnaround, retry_after_s=0.01))
    server.start()
    yield server
    server.stop()


def example(folder: Path, sim: SimServer, provider: str, pairs: int | None = None) -> Path:
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(".corral", "__pycache__", "*.json.tmp"))
    config = yaml.safe_load((folder / "corral.yaml").read_text())
    backend = config["backends"]["openai"]
    backend.update(poll_interval="0.3s", pilot=2)
    if provider == "anthropic":
        backend.update(type="anthropic_batch", base_url=sim.base_url)
        backend.pop("enqueued_token_limit")
        stage = config["stages"]["label"]
        request = stage["request"]
        request["model"] = "claude-haiku-4-5"
        request.pop("response_format")
        request["max_tokens"] = request.pop("max_completion_tokens")
        system = request["messages"].pop(0)["content"]
        request["system"] = system
        content = request["messages"][0]["content"]
        for index in (1, 2):
            url = content[index]["image_url"]["url"]
            content[index] = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                                          "data": url.replace("}}", ".split(',')[1] }}")}}
        # The simulator answers an Anthropic request with no schema in plain text: the parse
        # function then fails every task, so the schema goes in as Anthropic's output_format.
        request["output_format"] = {"type": "json_schema", "schema": yaml.safe_load(
            (EXAMPLE / "corral.yaml").read_text())["stages"]["label"]["request"]["response_format"]["json_schema"]["schema"]}
    else:
        backend["base_url"] = sim.base_url + "/v1"
    # The example's own generator, with few distinct frames (the rest are hard links to them).
    subprocess.run([sys.executable, str(folder / "make_frames.py"), "--pairs", str(pairs or 10),
                    "--distinct-frames", "4", "--out", str(folder / "sampled_pairs")], check=True,
                   capture_output=True)
    (folder / "corral.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder / "corral.yaml"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_example_end_to_end(tmp_path, sim, provider):
    folder = tmp_path / "labels"
    example(folder, sim, provider)
    check = corral_cli(folder, "check", env=ENV, check=0)
    assert "label: 10 requests to" in check.stdout and "cost ~$" in check.stdout and "to finish" in check.stdout
    corral_cli(folder, "run", "-q", env=ENV, check=0, timeout=180)
    status = corral_cli(folder, "status", env=ENV, check=0)
    assert "input +" in status.stdout and "spent" in status.stdout
    status_json = json.loads(corral_cli(folder, "status", "--json", env=ENV, check=0).stdout)
    usage = status_json["usage"]["label"]
    assert usage["tokens_in"] > 0 and usage["cost"] > 0
    corral_cli(folder, "export", "--stage", "label", "-f", "json", "-o", "labels.json", env=ENV, check=0)
    records = json.loads((folder / "labels.json").read_text())
    pairs = json.loads((folder / "sampled_pairs" / "frame_pairs.json").read_text())
    assert len(records) == len(pairs) == 10
    for record in records:
        source = pairs[record["pair_index"]]
        assert {k: record[k] for k in source} == source
        assert len(record["instructions"]) == 5 and record["what_changed"] and record["frame1_description"]
        assert record["state"] == "done" and record["tokens_in"] > 0
    provider_key = "openai" if provider == "openai" else "anthropic"
    assert sim.state.requests_enqueued[provider_key] == 10


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_kill9_never_creates_a_batch_twice(tmp_path, sim, provider):
    folder = tmp_path / "labels"
    path = example(folder, sim, provider, pairs=80)
    config = yaml.safe_load(path.read_text())
    # Two batches of five at a time: eight rounds of a couple of seconds, so the kills land
    # while batches are being created, polled and collected.
    config["backends"]["openai"].update(pilot=0, max_requests_per_batch=5, max_concurrent_batches=2)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    rng = random.Random(11)
    kills = 0
    while kills < 10:
        proc = subprocess.Popen([sys.executable, "-m", "corral", "run", "-q"], cwd=folder, env=cli_env(ENV),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(1.0, 2.4))   # the CLI starts in about a second
        if proc.poll() is not None:
            break   # finished before this kill
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 8, "the run finished too early for the kills to mean anything"
    corral_cli(folder, "run", "-q", env=ENV, check=0, timeout=180)
    status = json.loads(corral_cli(folder, "status", "--json", "--submissions", env=ENV, check=0).stdout)
    assert status["stages"]["label"]["done"] == 80
    records = json.loads(corral_cli(folder, "export", "-f", "json", env=ENV, check=0).stdout)
    assert all(r["attempts"] == 1 for r in records), "a kill must not use an attempt"
    # The simulator saw each request once and every batch it holds is one the ledger recorded.
    assert sim.state.requests_enqueued[provider] == 80
    import corral

    camp = corral.open(str(path))
    try:
        run = camp.run()
        recorded = [s["remote_id"] for s in run.submissions(open_only=False)
                    if s["remote_id"] and s["stage"] == "label"]   # not the local merge task
    finally:
        camp.close()
    assert len(recorded) == len(set(recorded))
    assert sim.state.batches_created[provider] == len(recorded)
