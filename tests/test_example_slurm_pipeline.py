"""examples/slurm-pipeline: the ten-stage pipeline on the local SLURM cluster, and the data registry
it relies on (runs by benchmark/model/status, the latest run, merging collection runs without
duplicate trajectories)."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import corral_cli, write_campaign, write_module

# Collection runs as the pipeline's users make them: one per teacher model, run ids in their format,
# one item per (seed, episode), each episode's actions hashed. Two teachers that solve an episode
# the same way produce the same action hash: the merged training set keeps one of them.
COLLECT = """
name: collect
run_id: "{benchmark}_{provider}_{model}_{timestamp}"
params: {benchmark: webarena, provider: openai, model: gpt-4o, first: 0, episodes: 6}
items:
  grid:
    teacher: ["${params.model}"]
    seed: [1, 2]
    episode: {range: ["${params.first}", "${params.episodes}"]}
stages:
  collect:
    call: collect:collect
backends:
  local: {workers: 2, gpus: none}
"""

COLLECT_MODULE = """
import hashlib

def collect(item, ctx):
    actions = f"seed{item['seed']}-episode{item['episode']}"
    return {"action_hash": hashlib.sha256(actions.encode()).hexdigest()[:16], "teacher": item["teacher"]}
"""


def action_hash(seed: int, episode: int) -> str:
    return hashlib.sha256(f"seed{seed}-episode{episode}".encode()).hexdigest()[:16]


def collection_runs(tmp_path):
    folder = tmp_path / "collect"
    write_campaign(folder, COLLECT)
    write_module(folder, "collect", COLLECT_MODULE)
    corral_cli(folder, "run", "-q", check=0)
    corral_cli(folder, "run", "-q", "params.model=claude-3-5-sonnet", "params.provider=anthropic",
               "params.first=3", "params.episodes=9", check=0)
    runs = json.loads(corral_cli(folder, "runs", "--json", check=0).stdout)
    return folder, {r["id"].split("_")[2]: r["id"] for r in runs}


@pytest.mark.usefixtures("campaign_ledger")
def test_two_collection_runs_merge_without_duplicate_action_hashes(tmp_path):
    folder, ids = collection_runs(tmp_path)
    assert set(ids) == {"gpt-4o", "claude-3-5-sonnet"}
    assert all(run_id.startswith(f"webarena_{'openai' if m == 'gpt-4o' else 'anthropic'}_{m}_2")
               for m, run_id in ids.items())
    gpt = {action_hash(s, e) for s in (1, 2) for e in range(0, 6)}
    claude = {action_hash(s, e) for s in (1, 2) for e in range(3, 9)}
    merged = json.loads(corral_cli(folder, "runs", "merge", ids["gpt-4o"], ids["claude-3-5-sonnet"],
                                   "--into", "webarena_all", "--prefer", ids["gpt-4o"], "--force",
                                   "--dedupe-by", "collect.action_hash", "--json", check=0).stdout)
    assert merged["duplicates_dropped"] == len(gpt & claude) == 6
    assert merged["items_added"] == len(gpt | claude) == 18 and merged["without_key"] == 0
    out = tmp_path / "merged.jsonl"
    corral_cli(folder, "export", "--run-id", "webarena_all", "--format", "jsonl", "-o", str(out), check=0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    hashes = [r["action_hash"] for r in rows]
    assert sorted(hashes) == sorted(gpt | claude)
    # The preferred run keeps the shared episodes; the other contributes only its own.
    teachers = [r["result.teacher"] for r in rows]
    assert teachers.count("gpt-4o") == len(gpt) and teachers.count("claude-3-5-sonnet") == len(claude - gpt)

    again = json.loads(corral_cli(folder, "runs", "merge", ids["gpt-4o"], ids["claude-3-5-sonnet"],
                                  "--into", "webarena_all", "--prefer", ids["gpt-4o"], "--force",
                                  "--dedupe-by", "collect.action_hash", "--json", check=0).stdout)
    assert again["items_added"] == 0 and again["tasks_added"] == 0 and again["tasks_updated"] == 0


@pytest.mark.usefixtures("campaign_ledger")
def test_a_dedupe_key_no_item_has_is_refused_naming_the_fields(tmp_path):
    folder, ids = collection_runs(tmp_path)
    proc = corral_cli(folder, "runs", "merge", *ids.values(), "--into", "all", "--force",
                      "--dedupe-by", "action_hsh", check=2)
    assert "--dedupe-by 'action_hsh'" in proc.stderr and "action_hash" in proc.stderr
    assert "Traceback" not in proc.stderr
    runs = json.loads(corral_cli(folder, "runs", "--json", check=0).stdout)
    assert "all" not in {r["id"] for r in runs}


@pytest.mark.usefixtures("campaign_ledger")
def test_runs_are_found_by_benchmark_model_and_status(tmp_path):
    folder, ids = collection_runs(tmp_path)
    found = json.loads(corral_cli(folder, "runs", "--where", "benchmark=webarena", "--where", "model=gpt-4o",
                                  "--where", "status=done", "--json", check=0).stdout)
    assert [r["id"] for r in found] == [ids["gpt-4o"]]
    latest = json.loads(corral_cli(folder, "runs", "latest", "--where", "benchmark=webarena",
                                   "--json", check=0).stdout)
    assert latest["id"] == ids["claude-3-5-sonnet"]
    none = json.loads(corral_cli(folder, "runs", "--where", "benchmark=swebench", "--json", check=0).stdout)
    assert none == []
