"""examples/submit: a Hydra-configured SLURM submission with a sweep and a race between two queues,
and the campaign's `sweep:` block it relies on."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from conftest import assert_no_ledger, corral_cli, write_campaign

SWEEP_CAMPAIGN = """
name: sweep
items:
  key: "lr{lr}-s{seed}"
sweep:
  params:
    lr: [0.001, 0.0001]
    seed: {range: [0, 3]}
stages:
  train:
    run: ["python", "-c", "import json, os; json.dump(json.loads(os.environ['CORRAL_ITEM']), open(os.environ['CORRAL_RESULT'], 'w'))"]
backends:
  local: {workers: 2, gpus: none}
"""


def test_every_combination_of_a_sweep_is_one_item(tmp_path: Path, ledger_url: str):
    write_campaign(tmp_path, SWEEP_CAMPAIGN)
    corral_cli(tmp_path, "run", "--quiet", "--ledger", ledger_url, check=0)
    export = corral_cli(tmp_path, "export", "--format", "json", "--ledger", ledger_url, check=0)
    records = json.loads(export.stdout)
    combinations = {(lr, seed) for lr, seed in itertools.product([0.001, 0.0001], range(3))}
    assert sorted((r["lr"], r["seed"]) for r in records) == sorted(combinations)
    assert {r["item_key"] for r in records} == {f"lr{lr}-s{seed}" for lr, seed in combinations}
    assert all(r["state"] == "done" for r in records)


def test_a_sweep_multiplies_the_items_it_is_given(tmp_path: Path):
    write_campaign(tmp_path, SWEEP_CAMPAIGN.replace('  key: "lr{lr}-s{seed}"',
                                                    "  list: [{task: pick}, {task: push}]"))
    plan = json.loads(corral_cli(tmp_path, "check", "--json", check=0).stdout)
    assert plan["items"] == 2 * 2 * 3


@pytest.mark.parametrize("change, key, message, expected", [
    (("    lr: [0.001, 0.0001]", "    lr: []"), "sweep.params.lr", "an empty list gives no items",
     "a non-empty list of values"),
    (("    seed: {range: [0, 3]}", "    seed: {range: [0, 3, 0]}"), "sweep.params.seed.range",
     "a range's step must not be 0", "[start, stop, step] with a step other than 0"),
    (("  params:", "  parms:"), "sweep.parms", "unknown key 'parms'", "one of params"),
    (('  key: "lr{lr}-s{seed}"', "  grid: {seed: [7]}"), "sweep",
     "parameter 'seed' is swept here and also set by items.grid", "remove it from items.grid, or sweep it there"),
    (('  key: "lr{lr}-s{seed}"', "  list: [{lr: 0.1}]"), "sweep",
     "parameter 'lr' is swept here and also set by items.list", "remove it from items.list"),
])
def test_a_sweep_that_cannot_work_is_refused_naming_the_key(tmp_path: Path, change, key, message, expected):
    path = write_campaign(tmp_path, SWEEP_CAMPAIGN.replace(*change))
    for command in ("check", "run"):
        proc = corral_cli(tmp_path, command, check=2)
        assert f"error: {path}: {key}: {message}" in proc.stderr, proc.stderr
        assert expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert_no_ledger(tmp_path)


def test_a_sweep_without_params_is_refused(tmp_path: Path):
    path = write_campaign(tmp_path, SWEEP_CAMPAIGN.replace('  params:\n    lr: [0.001, 0.0001]\n'
                                                           '    seed: {range: [0, 3]}\n', '  params: {}\n'))
    proc = corral_cli(tmp_path, "check", check=2)
    assert f"error: {path}: sweep.params: a sweep needs at least one parameter" in proc.stderr, proc.stderr


# -- the README's smoke sweep on the local SLURM cluster ---------------------------------------

HF_TOKEN, WANDB_KEY = "hf_smokeTokenValue8c1f", "wandb-smoke-key-55e2"
SMOKE_SWEEP = [(lr, seed) for lr in (0.001, 0.0001) for seed in (0, 1)]


def expected_final_loss(lr: float, seed: int, steps: int) -> float:
    """train.py's noisy quadratic, computed here from its definition."""
    import random

    rng, weight = random.Random(seed), 5.0
    for _ in range(steps):
        weight -= lr * 100 * (2 * weight + rng.gauss(0, 0.1))
    return weight * weight


def sacct_by_partition(job_name: str) -> dict[str, list[str]]:
    import subprocess

    out = subprocess.run(["sacct", "--name", job_name, "--parsable2", "--noheader", "--starttime", "now-1hour",
                          "--format", "JobID,State,Partition"], capture_output=True, text=True, check=True).stdout
    states: dict[str, list[str]] = {}
    for line in out.splitlines():
        job, state, partition = line.split("|")
        if "." not in job:   # the array elements, not their steps
            states.setdefault(partition, []).append(state)
    return states


@pytest.mark.slurm
def test_the_readme_smoke_sweep_races_two_partitions_on_slurm(tmp_path: Path, cluster: str):
    import subprocess

    from support.readme import copy_example, run_readme_block

    from corral.backends.slurm import job_name_for

    folder = copy_example("submit", tmp_path)
    (folder / ".env").write_text(f"HF_TOKEN={HF_TOKEN}\nWANDB_API_KEY={WANDB_KEY}\n")
    # 'low' takes jobs but starts none: 'high' wins every race, and the copies on 'low' are cancelled.
    subprocess.run(["scontrol", "update", "partition=low", "state=down"], check=True)
    try:
        results = run_readme_block(folder, folder / "README.md", "smoke", timeout=300)
    finally:
        subprocess.run(["scontrol", "update", "partition=low", "state=up"], check=True)

    # The dry run printed the array script of each queue, one element per combination.
    dry_run = next(r for r in results if "--dry-run" in r.command).stdout
    assert "#SBATCH --partition=low" in dry_run and "#SBATCH --partition=high" in dry_run, dry_run
    assert dry_run.count("#SBATCH --array=0-3") == 2, dry_run

    (run_dir,) = (folder / ".corral" / "runs").iterdir()
    states = sacct_by_partition(job_name_for(run_dir.name))
    assert sorted(states) == ["high", "low"], states
    assert states["high"] == ["COMPLETED"] * 4, states
    assert len(states["low"]) >= 1 and all(s.startswith("CANCELLED") for s in states["low"]), states

    for lr, seed in SMOKE_SWEEP:
        metrics = json.loads((folder / "runs" / f"laq-lr{lr}-s{seed}" / "metrics.json").read_text())
        assert metrics["steps"] == 2 * 5 and metrics["partition"] == "high"
        assert metrics["final_loss"] == pytest.approx(expected_final_loss(lr, seed, 10), rel=1e-12)
        assert metrics["container"] == "local-stand-in"
        assert metrics["hf_token_set"] and metrics["wandb_key_set"]
    import csv

    with (folder / "smoke.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((float(r["lr"]), int(r["seed"])) for r in rows) == sorted(SMOKE_SWEEP)
    assert {r["state"] for r in rows} == {"done"}

    import corral

    campaign = corral.open(str(folder / "corral.yaml"), overrides=["+preset=smoke", "cluster=local"])
    try:
        submissions = campaign.run(run_dir.name).submissions(open_only=False)
    finally:
        campaign.close()
    assert submissions and all(s["info"]["race_winner"] == "high" for s in submissions), submissions

    # The tokens reached the jobs by name only: not in a script, the ledger, a log or the dry run.
    for result in results:
        assert HF_TOKEN not in result.stdout + result.stderr and WANDB_KEY not in result.stdout + result.stderr
    for path in [*(folder / ".corral").rglob("*"), *(folder / "runs").rglob("*"), folder / "smoke.csv"]:
        if path.is_file():
            data = path.read_bytes()
            assert HF_TOKEN.encode() not in data and WANDB_KEY.encode() not in data, f"a token was written to {path}"


def test_the_full_size_dry_run_prints_each_queue_with_its_qos_and_container(tmp_path: Path):
    from support.readme import copy_example

    folder = copy_example("submit", tmp_path)
    env = {"HF_TOKEN": HF_TOKEN, "WANDB_API_KEY": WANDB_KEY}
    out = corral_cli(folder, "run", "--dry-run", env=env, check=0).stdout
    assert "#SBATCH --qos=lrz_x100" in out and "#SBATCH --qos=mcml" in out, out
    assert "#SBATCH --partition=lrz-hgx-h100-94x4,lrz-hgx-a100-80x4,lrz-dgx-a100-80x8" in out
    assert "#SBATCH --partition=mcml-hgx-h100-94x4,mcml-hgx-a100-80x4,mcml-dgx-a100-40x8" in out
    assert out.count("#SBATCH --array=0-5") == 2 and out.count("#SBATCH --gres=gpu:1") == 2, out
    assert "srun --container-image=" in out and HF_TOKEN not in out and WANDB_KEY not in out
    assert_no_ledger(folder)
