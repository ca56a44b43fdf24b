"""What the user reads: durations in SLURM's format, errors in config-group files, Hydra's sweep and
group syntax said in corral's terms, expected-value texts, the end of `corral run`, and the README."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import corral_cli, write_campaign

SLURM_CAMPAIGN = """\
name: times
items:
  grid:
    x: [1, 2]
stages:
  train:
    run: [echo, "{x}"]
    backend: cluster
    timeout: "1-12:00:00"
    resources: {time: "72:00:00"}
  evaluate:
    run: [echo, "{x}"]
    backend: cluster
    timeout: "30"
    retries: {max: 1, backoff: "2-0"}
backends:
  cluster: {type: slurm, partition: debug, time: "30:00"}
"""


def _sbatch_time(stage_preview: dict) -> str:
    script = stage_preview["sbatch"][0]["script"]
    return next(line.split("=", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH --time="))


def test_slurm_time_formats_are_durations(tmp_path: Path) -> None:
    write_campaign(tmp_path, SLURM_CAMPAIGN)
    plan = json.loads(corral_cli(tmp_path, "run", "--dry-run", check=0).stdout)
    assert plan["stages"]["train"]["timeout"] == 36 * 3600
    assert _sbatch_time(plan["submissions"]["train"]) == "3-00:00:00"
    assert plan["stages"]["evaluate"]["timeout"] == 30
    assert plan["backends"]["cluster"]["time"] == 30 * 60
    assert _sbatch_time(plan["submissions"]["evaluate"]) == "00:30:00"

    # The same forms on the command line, through the override grammar.
    plan = json.loads(corral_cli(tmp_path, "run", "--dry-run", "stages.evaluate.timeout=2-0",
                                 "stages.train.resources.time=1-12:00:00", check=0).stdout)
    assert plan["stages"]["evaluate"]["timeout"] == 2 * 86400
    assert _sbatch_time(plan["submissions"]["train"]) == "1-12:00:00"


def test_a_wrong_duration_says_what_a_duration_is(tmp_path: Path) -> None:
    write_campaign(tmp_path, SLURM_CAMPAIGN)
    for override in ("stages.train.timeout=5parsecs", "stages.train.resources.time=72:00:00:00",
                     "stages.evaluate.retries.backoff=soon", "backends.cluster.time=1-"):
        proc = corral_cli(tmp_path, "check", override, check=2)
        key, value = override.split("=", 1)
        assert f"{key}: '{value}' is not a duration" in proc.stderr, proc.stderr
        for form in ("seconds (90)", "30s", "10m", "72:00:00", "1-12:00:00"):
            assert form in proc.stderr, proc.stderr
        assert "float" not in proc.stderr and "None" not in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


LOCAL_CAMPAIGN = """\
name: hints
items:
  grid:
    x: [1, 2]
stages:
  train:
    run: [echo, "{x}"]
    timeout: 10m
    retries: {max: 1}
    resources: {gpus: 1, cpus: 2, time: 1h, mem: 1G}
backends:
  local: {workers: 2, gpus: none}
"""


def test_the_expected_text_describes_the_key(tmp_path: Path) -> None:
    write_campaign(tmp_path, LOCAL_CAMPAIGN)
    # override -> (words the expected line must have, words it must not have)
    cases = {
        "stages.train.resources.gpus=two": (["whole number of GPUs per task", "0 for none"], ["auto", "list"]),
        "backends.local.gpus=two": (["'auto', 'none' or a list of GPU ids"], ["per task"]),
        "stages.train.resources.time=soon": (["time limit", "a duration", "1-12:00:00"], []),
        "stages.train.timeout=soon": (["a duration", "or null for none"], []),
        "stages.train.resources.mem=lots": (["a size", "512M"], []),
        "stages.train.retries.max=three": (["whole number of retries"], []),
        "stages.train.resources.cpus=many": (["whole number of CPUs"], []),
    }
    for override, (wanted, unwanted) in cases.items():
        proc = corral_cli(tmp_path, "check", override, check=2)
        expected = next(line for line in proc.stderr.splitlines() if line.strip().startswith("expected:"))
        for word in wanted:
            assert word in expected, (override, proc.stderr)
        for word in [*unwanted, "None", "float", "int"]:
            assert word not in expected, (override, proc.stderr)
