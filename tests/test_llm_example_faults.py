"""The fault demo of examples/llm-batch/README.md, as a user runs it: the simulator with the
example's sim.yaml at real speed, the faults the README injects, and `corral run`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import corral_cli

from corral.sim import RealClock, SimConfig, SimServer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "llm-batch"
ENV = {"OPENAI_API_KEY": "sim"}

pytestmark = pytest.mark.usefixtures("campaign_ledger")


def readme_faults() -> dict:
    text = (EXAMPLE / "README.md").read_text()
    line = next(line for line in text.splitlines() if "/sim/faults" in line)
    return json.loads(line.split("-d '", 1)[1].split("'", 1)[0])


def test_the_readme_fault_demo_of_the_llm_example_finishes_in_seconds(tmp_path):
    sim = SimServer(SimConfig.from_yaml(EXAMPLE / "sim.yaml"), clock=RealClock(1.0))
    sim.start()
    try:
        folder = tmp_path / "labels"
        shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(".corral", "__pycache__", "sampled_pairs*"))
        subprocess.run([sys.executable, "make_frames.py", "--pairs", "10", "--out", "sampled_pairs_smoke"], cwd=folder,
                       check=True, capture_output=True)
        config = yaml.safe_load((folder / "corral.yaml").read_text())
        config["backends"]["openai"]["base_url"] = sim.base_url + "/v1"
        (folder / "corral.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        faults = readme_faults()
        assert faults.get("expire", 0) > 0
        request = urllib.request.Request(f"{sim.base_url}/sim/faults", data=json.dumps(faults).encode(),
                                         method="POST")
        urllib.request.urlopen(request, timeout=10).read()
        started = time.monotonic()
        corral_cli(folder, "run", "+preset=smoke", "-q", env=ENV, check=0, timeout=240)
        took = time.monotonic() - started
        status = json.loads(corral_cli(folder, "status", "+preset=smoke", "--json", env=ENV, check=0).stdout)
        assert status["stages"]["label"]["done"] == 10
        assert sim.state.faults["expire"] > 0 or any(b.fault == "expire" for b in sim.state.batches.values()), \
            "no batch expired: the demo shows nothing"
        assert took < 180, f"the demo took {took:.0f}s"
    finally:
        sim.stop()
