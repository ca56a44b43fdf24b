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
