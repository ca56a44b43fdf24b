"""`corral reparse`: the raw answers of an LLM stage are kept, compressed, in the run's folder,
and a fixed `parse` function turns parse failures done from them without sending anything again.
The CLI runs against the simulator in real time (batches of a second or two)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from conftest import corral_cli, write_module
from test_llm_backends import PARSE, campaign

from corral.sim import Phase, SimConfig, SimServer, Turnaround
from test_llm_backends import ANSWER

pytestmark = pytest.mark.usefixtures("campaign_ledger")

ENV = {"OPENAI_API_KEY": "sim", "ANTHROPIC_API_KEY": "sim"}
PICKY = PARSE.replace("% 4 == 0", "% 3 == 0")   # every third task id's answer is refused
FIXED = PARSE.replace('raise ValueError("refusing every fourth answer")', "pass")

SUMMARY = """
def summarise(item, ctx):
    return {"pair": item["pair"]}
"""


@pytest.fixture
def sim():
    turnaround = Turnaround(validating=Phase(0.2), in_progress=Phase(0.6), finalizing=Phase(0.1))
    server = SimServer(SimConfig(seed=3, answer_template=ANSWER, turnaround=turnaround, retry_after_s=0.01))
    server.start()
    yield server
    server.stop()


def labelling(folder: Path, sim: SimServer, items: int = 12, summary: bool = False) -> Path:
    path = campaign(folder, sim, "openai", items=items, parse="labels:picky",
                    backend={"pilot": 0, "poll_interval": "0.2s"}, stage={"retries": {"max": 0}})
    write_module(folder, "labels", PICKY)
    if summary:
        config = yaml.safe_load(path.read_text())
        write_module(folder, "summary", SUMMARY)
        config["stages"]["summary"] = {"call": "summary:summarise", "needs": ["label"]}
        config["backends"]["local"] = {"workers": 2, "gpus": "none"}
        config["stages"]["summary"]["backend"] = "local"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def states(folder: Path, stage: str) -> dict[str, int]:
    status = json.loads(corral_cli(folder, "status", "--json", env=ENV, check=0).stdout)
    return {k: v for k, v in status["stages"][stage].items() if isinstance(v, int) and v}


def test_a_fixed_parse_turns_parse_failures_done_without_sending_again(tmp_path, sim):
    folder = tmp_path / "labels"
    labelling(folder, sim)
    corral_cli(folder, "run", "-q", env=ENV, timeout=120)
    failed = states(folder, "label")["failed"]
    assert failed == 4   # t3, t6, t9, t12
    sent = sim.state.requests_enqueued["openai"]
    assert sent == 12
    raw = list((folder / ".corral" / "runs").glob("*/llm/raw/label/*.jsonl.gz"))
    assert raw, "no raw answers kept"
    kept = [json.loads(line) for path in raw for line in gzip.open(path, "rt")]
    assert len(kept) == 12 and all("choices" in k["body"] for k in kept)

    write_module(folder, "labels", FIXED)
    out = corral_cli(folder, "reparse", "--json", env=ENV, check=0)
    done = json.loads(out.stdout)
    assert (done["answers"], done["fixed"], done["still_failing"]) == (12, failed, 0)
    assert states(folder, "label") == {"done": 12, "total": 12}
    records = json.loads(corral_cli(folder, "export", "-f", "json", env=ENV, check=0).stdout)
    assert all(r["attempts"] == 1 and r["state"] == "done" and r["instructions"] for r in records)
    assert sim.state.requests_enqueued["openai"] == sent, "reparse sent requests again"
    status = json.loads(corral_cli(folder, "status", "--json", env=ENV, check=0).stdout)
    assert status["run"]["status"] == "finished"


def test_reparse_releases_what_waited_on_a_parse_failure(tmp_path, sim):
    folder = tmp_path / "labels"
    labelling(folder, sim, items=8, summary=True)
    corral_cli(folder, "run", "-q", env=ENV, timeout=120)
    failed = states(folder, "label")["failed"]
    assert failed and states(folder, "summary") == {"done": 8 - failed, "cancelled": failed, "total": 8}

    write_module(folder, "labels", FIXED)
    out = corral_cli(folder, "reparse", env=ENV, check=0)
    assert f"{failed} parse failures now done" in out.stderr and f"{failed} waiting tasks released" in out.stderr
    corral_cli(folder, "run", "-q", env=ENV, check=0, timeout=120)
    assert states(folder, "label") == {"done": 8, "total": 8}
    assert states(folder, "summary") == {"done": 8, "total": 8}
    assert sim.state.requests_enqueued["openai"] == 8


def test_reparse_of_a_stage_without_llm_backend_is_refused(tmp_path, sim):
    folder = tmp_path / "labels"
    labelling(folder, sim, items=4, summary=True)
    corral_cli(folder, "run", "-q", env=ENV, timeout=120)
    out = corral_cli(folder, "reparse", "--stage", "summary", env=ENV, check=2)
    assert "stage 'summary' runs on backend 'local'" in out.stderr and "Traceback" not in out.stderr
    assert "LLM batch backend" in out.stderr
