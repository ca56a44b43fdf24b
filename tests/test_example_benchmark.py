"""examples/benchmark: the README's commands, checked against the result files the example wrote.

The smoke block runs two shards in two folders (two machines), ingests machine B's results folder,
merges the shards and reports; the shared-pg block runs two controllers on one PostgreSQL ledger.
Success rates are recomputed here in plain Python from the episode JSON files.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from support.readme import EXAMPLES, copy_example, run_readme_block

README = EXAMPLES / "benchmark" / "README.md"
SETTINGS = {"s00_lighting_lm_start", "s13_camera_hv_mid"}
TASKS = {"adjust_bottle", "lift_pot", "stack_blocks_three"}
POLICIES = {"Motus", "lingbot"}
EPISODES = len(SETTINGS) * len(TASKS) * 2 * len(POLICIES)


def _episode_files(*folders: Path) -> dict[tuple, dict]:
    """(policy, setting, task, repeat) -> the episode's JSON, from results/<policy>/<setting>/<task>/episode_<N>.json."""
    episodes = {}
    for folder in folders:
        for path in sorted(folder.glob("*/*/*/episode_*.json")):
            policy, setting, task = path.relative_to(folder).parts[:3]
            repeat = int(path.stem.removeprefix("episode_"))
            record = json.loads(path.read_text())
            assert record["params"]["policy"] == policy and record["params"]["setting"] == setting
            assert record["params"]["task"] == task and record["params"]["repeat"] == repeat
            key = (policy, setting, task, repeat)
            assert key not in episodes, f"episode {key} written by two shards"
            episodes[key] = record
    return episodes


def _rates(episodes: dict[tuple, dict], position: int) -> dict[str, tuple[int, int, int]]:
    """Per value of the key's ``position``: (successes among done, done, failed)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for key, record in episodes.items():
        entry = counts[key[position]]
        if record["state"] == "done":
            entry[0] += bool(record["result"]["success"])
            entry[1] += 1
        else:
            entry[2] += 1
    return {value: tuple(entry) for value, entry in counts.items()}


def _report_counts(report: dict, dimension: str) -> dict[str, tuple[int, int, int]]:
    return {group["key"][dimension]: (group["success"]["k"], group["success"]["n"], group["failed"])
            for group in report["groups"]}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, list]:
    folder = copy_example("benchmark", tmp_path_factory.mktemp("bench"))
    results = run_readme_block(folder, README, "smoke", expect_ok=False)
    for result in results:
        allowed = (0, 1) if " corral run " in f" {result.command} " else (0,)
        assert result.returncode in allowed, (result.command, result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    return folder, results


def test_the_two_shards_write_every_episode_in_the_seed_layout_failed_ones_included(smoke):
    folder, _ = smoke
    episodes = _episode_files(folder / "results", folder.parent / "machine-b" / "results")
    assert len(episodes) == EPISODES
    assert {k[0] for k in episodes} == POLICIES and {k[1] for k in episodes} == SETTINGS
    assert {k[2] for k in episodes} == TASKS and {k[3] for k in episodes} == {0, 1}
    failed = [r for r in episodes.values() if r["state"] == "failed"]
    assert failed, "the smoke preset has episodes that fail for good"
    for record in failed:
        assert record["error"]["class"] == "InvalidScene"
        assert "cannot be applied" in record["error"]["message"]
    both_shards = {r["corral"]["run_id"] for r in episodes.values()}
    assert both_shards == {"benchmark-smoke-A", "benchmark-smoke-B"}
    gpus = {r["result"]["gpu"] for r in episodes.values() if r["state"] == "done"}
    assert gpus <= {"0", "1"} and len(gpus) == 2, gpus


def test_the_report_rates_per_policy_and_setting_match_the_result_files(smoke):
    folder, _ = smoke
    episodes = _episode_files(folder / "results", folder.parent / "machine-b" / "results")
    per_policy = json.loads((folder / "reports" / "per_policy.json").read_text())
    assert [run["id"] for run in per_policy["runs"]] == ["benchmark-smoke-all"]
    assert _report_counts(per_policy, "policy") == _rates(episodes, 0)
    for group in per_policy["groups"]:
        k, n = group["success"]["k"], group["success"]["n"]
        assert group["success"]["rate"] == pytest.approx(k / n)
    assert per_policy["total"]["expected"] == EPISODES

    per_setting = json.loads((folder / "reports" / "per_setting.json").read_text())
    pairs: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    for (policy, setting, _task, _repeat), record in episodes.items():
        entry = pairs[(policy, setting)]
        if record["state"] == "done":
            entry[0] += bool(record["result"]["success"])
            entry[1] += 1
        else:
            entry[2] += 1
    reported = {(g["key"]["policy"], g["key"]["setting"]): (g["success"]["k"], g["success"]["n"], g["failed"])
                for g in per_setting["groups"]}
    assert reported == {key: tuple(value) for key, value in pairs.items()}
    for name in ("per_perturb_type", "per_severity", "per_timing", "per_task"):
        assert (folder / "reports" / f"{name}.json").exists() and (folder / "reports" / f"{name}.md").exists()


def test_status_and_the_best_and_worst_tasks_are_shown(smoke):
    folder, results = smoke
    status = next(r for r in results if r.command.startswith("corral status"))
    assert "benchmark-smoke-all" in status.stdout and f"{EPISODES} tasks" in status.stdout
    per_task = next(r for r in results if "per_task" in r.command)
    assert "best 5:" in per_task.stdout and "worst 5:" in per_task.stdout
    ingest = next(r for r in results if r.command.startswith("corral ingest"))
    assert "new run benchmark-smoke-B: 16 items" in ingest.stdout + ingest.stderr


@pytest.mark.postgres
def test_a_shared_postgresql_ledger_gives_the_same_numbers_without_sharing_files(smoke, pg_fresh_url, tmp_path):
    folder, _ = smoke
    sqlite_episodes = _episode_files(folder / "results", folder.parent / "machine-b" / "results")
    shared = copy_example("benchmark", tmp_path)
    results = run_readme_block(shared, README, "shared-pg", env={"BENCH_PG_URL": pg_fresh_url}, expect_ok=False)
    for result in results:
        allowed = (0, 1) if " corral run " in f" {result.command} " else (0,)
        assert result.returncode in allowed, (result.command, result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    assert not (shared / ".corral" / "ledger.db").exists()
    assert f"{EPISODES} tasks" in results[1].stdout
    report = json.loads((shared / "per_policy_pg.json").read_text())
    assert len(report["runs"]) == 1
    assert _report_counts(report, "policy") == _rates(sqlite_episodes, 0)
    assert _rates(_episode_files(shared / "results"), 0) == _rates(sqlite_episodes, 0)


@pytest.mark.parametrize("preset, spec, repeats", [(None, "benchmark_spec.json", 50),
                                                    ("lm20", "benchmark_spec_lm20.json", 20)])
def test_the_full_and_compact_specs_plan_every_episode_of_their_spec_file(tmp_path, preset, spec, repeats):
    from conftest import corral_cli

    folder = copy_example("benchmark", tmp_path)
    settings = json.loads((folder / "benchmark" / spec).read_text())["items"]
    assert len(settings) == (20 if preset is None else 10)
    assert all(set(s) == {"setting", "perturb_type", "severity", "timing"} for s in settings)
    args = ["check"] + ([f"+preset={preset}"] if preset else [])
    proc = corral_cli(folder, *args, env={"CUDA_VISIBLE_DEVICES": "0,1"}, check=0)
    episodes = len(settings) * 50 * repeats * len(POLICIES)
    assert f"items: {episodes}   tasks: {episodes}" in proc.stdout
    assert "GPUs of local: 0, 1" in proc.stdout and "4 workers, 1 GPU each" in proc.stdout
