"""The command line as a user meets it: real `python -m corral` processes in a scratch folder."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from conftest import assert_no_ledger, campaign_dict, corral_cli, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

TASKS = """
import time

def f(item, ctx):
    ctx.log.info("working on %s", item)
    return {"y": item["x"] * 2}

def maybe(item, ctx):
    if item["x"] == 2:
        raise ValueError("two is bad")
    return {"y": item["x"]}

def slow(item, ctx):
    time.sleep(30)
"""


def small(tmp_path: Path, stages=None, items=None, **extra) -> None:
    write_module(tmp_path, "tasks", TASKS)
    write_campaign(tmp_path, campaign_dict(stages or {"a": {"call": "tasks:f"}}, items=items, **extra))


def test_init_check_run_status_export_logs(tmp_path: Path):
    proc = corral_cli(tmp_path, "init", check=0)
    assert (tmp_path / "corral.yaml").exists() and (tmp_path / "tasks.py").exists()
    assert "corral.yaml" in proc.stderr and proc.stdout == ""
    assert corral_cli(tmp_path, "init").returncode == 2  # no overwrite without --force

    plan = json.loads(corral_cli(tmp_path, "check", "--json", check=0).stdout)
    assert plan["items"] == 10
    assert {name: s["tasks"] for name, s in plan["stages"].items()} == {"evaluate": 10, "summarize": 1}
    assert plan["tasks"] == 11 and plan["resumes"] is None
    assert_no_ledger(tmp_path)

    proc = corral_cli(tmp_path, "run", "-q", check=0)
    assert proc.stdout == ""
    assert proc.stderr.startswith("run my-campaign_") and "finished" in proc.stderr
    first_run = proc.stderr.split(":", 1)[0]

    status = json.loads(corral_cli(tmp_path, "status", "--json", check=0).stdout)
    assert status["run"]["status"] == "finished" and status["run"]["items"] == 10
    assert status["stages"]["evaluate"]["done"] == 10 and status["stages"]["evaluate"]["total"] == 10
    assert status["stages"]["summarize"]["done"] == 1
    assert all(status["stages"]["evaluate"][s] == 0 for s in ("failed", "pending", "queued", "running"))
    assert status["totals"]["done"] == 11 and status["progress"] == 1.0

    jsonl = corral_cli(tmp_path, "export", "--format", "jsonl", check=0)
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert "exported 11 records" in jsonl.stderr
    evaluate = [r for r in records if r["stage"] == "evaluate"]
    assert len(records) == 11 and len(evaluate) == 10
    assert {(r["model"], r["seed"]) for r in evaluate} == {(m, s) for m in ("small", "large") for s in range(5)}
    assert all(isinstance(r["score"], float) and r["state"] == "done" for r in evaluate)
    assert {r["item_key"] for r in evaluate} == {f"{m}-s{s}" for m in ("small", "large") for s in range(5)}

    rows = list(csv.DictReader(io.StringIO(corral_cli(tmp_path, "export", "--format", "csv", check=0).stdout)))
    assert len(rows) == 11
    assert {"model", "seed", "score", "state", "stage", "item_key"} <= set(rows[0])
    assert {(r["model"], r["seed"]) for r in rows if r["stage"] == "evaluate"} == \
        {(r["model"], str(r["seed"])) for r in evaluate}

    corral_cli(tmp_path, "export", "--format", "json", "-o", "out.json", check=0)
    as_json = json.loads((tmp_path / "out.json").read_text())
    assert sorted(json.dumps(r, sort_keys=True) for r in as_json) == \
        sorted(json.dumps(r, sort_keys=True) for r in records)

    logs = corral_cli(tmp_path, "logs", "t1", check=0)
    assert "task t1 stage=evaluate" in logs.stdout and "state=done" in logs.stdout
    assert "evaluating" in logs.stdout  # the starter's ctx.log line

    again = corral_cli(tmp_path, "run", check=0)
    assert f"continuing {first_run}" in again.stderr

    log = (tmp_path / ".corral" / "corral.log").read_text().splitlines()
    assert any("created run my-campaign_" in line for line in log)
    assert any("submitted" in line for line in log)
    assert any("is finished" in line for line in log)


def test_dry_run_writes_no_ledger(tmp_path: Path):
    small(tmp_path)
    proc = corral_cli(tmp_path, "run", "--dry-run", check=0)
    plan = json.loads(proc.stdout)
    assert plan["items"] == 4 and plan["stages"]["a"]["tasks"] == 4
    assert_no_ledger(tmp_path)
    assert not (tmp_path / ".corral" / "runs").exists()


def test_limit(tmp_path: Path):
    small(tmp_path, items={"grid": {"x": {"range": [0, 10]}}})
    corral_cli(tmp_path, "run", "-q", "--limit", "3", check=0)
    records = [json.loads(line) for line in corral_cli(tmp_path, "export", check=0).stdout.splitlines()]
    assert sorted(r["x"] for r in records) == [0, 1, 2]
    assert corral_cli(tmp_path, "run", "--limit", "0").returncode == 2


def test_shards_cover_all_items_without_overlap(tmp_path: Path):
    small(tmp_path, items={"grid": {"x": {"range": [0, 12]}}})
    corral_cli(tmp_path, "run", "-q", "--shard", "0/2", check=0)
    corral_cli(tmp_path, "run", "-q", "--shard", "1/2", check=0)
    runs = json.loads(corral_cli(tmp_path, "runs", "--json", check=0).stdout)
    assert len(runs) == 2 and {r["status"] for r in runs} == {"finished"}
    assert sum(r["items"] for r in runs) == 12
    seen: list[int] = []
    for run in runs:
        out = corral_cli(tmp_path, "export", "--run-id", run["id"], check=0).stdout
        xs = [json.loads(line)["x"] for line in out.splitlines()]
        assert len(xs) == run["items"]
        seen += xs
    assert sorted(seen) == list(range(12))


def test_runs_json(tmp_path: Path):
    small(tmp_path)
    corral_cli(tmp_path, "run", "-q", check=0)
    corral_cli(tmp_path, "run", "-q", "--new", check=0)
    runs = json.loads(corral_cli(tmp_path, "runs", "--json", check=0).stdout)
    assert len(runs) == 2 and len({r["id"] for r in runs}) == 2
    for run in runs:
        assert run["name"] == "t" and run["status"] == "finished"
        assert run["items"] == 4 and run["tasks"] == 4 and run["done"] == 4 and run["failed"] == 0
    assert runs[0]["created_at"] >= runs[1]["created_at"]


def test_failures_exit_1_and_stdout_stays_data(tmp_path: Path):
    small(tmp_path, stages={"a": {"call": "tasks:maybe"}})
    proc = corral_cli(tmp_path, "run", "-q", check=1)
    assert proc.stdout == ""
    assert "finished_with_failures" in proc.stderr
    status = corral_cli(tmp_path, "status", "--json", check=0)
    data = json.loads(status.stdout)  # nothing but JSON on stdout
    assert data["stages"]["a"]["failed"] == 1 and data["stages"]["a"]["done"] == 3
    assert "Traceback" not in status.stderr
    logs = corral_cli(tmp_path, "logs", "x=2", check=2)  # an override-looking task ref is not a task
    assert "Traceback" not in logs.stderr
    failed = [json.loads(line) for line in
              corral_cli(tmp_path, "export", "--state", "failed", check=0).stdout.splitlines()]
    assert [(r["x"], r["error_class"]) for r in failed] == [(2, "ValueError")]


def test_overrides_preset_and_name(tmp_path: Path):
    small(tmp_path, items={"grid": {"x": {"range": [0, 10]}}})
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "smoke.yaml").write_text(
        "# @package _global_\nname: t-smoke\nitems:\n  grid:\n    x: {range: [0, 2]}\n")
    plan = json.loads(corral_cli(tmp_path, "check", "+preset=smoke", "--json", check=0).stdout)
    assert plan["items"] == 2 and plan["name"] == "t-smoke"
    corral_cli(tmp_path, "run", "-q", "+preset=smoke", check=0)
    status = json.loads(corral_cli(tmp_path, "status", "+preset=smoke", "--json", check=0).stdout)
    assert status["run"]["id"].startswith("t-smoke_") and status["run"]["items"] == 2

    corral_cli(tmp_path, "run", "-q", "name=other", "+params.note=hello", check=0)
    runs = json.loads(corral_cli(tmp_path, "runs", "name=other", "--json", check=0).stdout)
    assert len(runs) == 1 and runs[0]["id"].startswith("other_") and runs[0]["items"] == 10
    # the plain campaign has no run yet: the preset and the override made runs of other names
    assert json.loads(corral_cli(tmp_path, "runs", "--json", check=0).stdout) == []


def test_preset_type_clash_says_why(tmp_path: Path):
    small(tmp_path, items={"grid": {"x": {"range": [0, 10]}}})
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "smoke.yaml").write_text("# @package _global_\nitems:\n  grid:\n    x: [0, 1]\n")
    proc = corral_cli(tmp_path, "check", "+preset=smoke", check=2)
    assert "Traceback" not in proc.stderr and "preset/smoke" in proc.stderr
    assert "Cannot merge DictConfig with ListConfig" in proc.stderr


def test_tick_then_status_lists_in_flight_submissions(tmp_path: Path):
    small(tmp_path, stages={"a": {"call": "tasks:slow"}})
    tick = json.loads(corral_cli(tmp_path, "tick", "--json", check=0).stdout)
    assert tick["created"] is True and tick["submitted"] >= 1 and tick["submitted_tasks"] >= 1
    assert tick["status"] == "active"
    data = json.loads(corral_cli(tmp_path, "status", "--submissions", "--json", check=0).stdout)
    subs = data["submissions"]
    assert len(subs) == tick["submitted"] and data["submissions_open"] == len(subs)
    for sub in subs:
        assert sub["state"] in ("submitted", "running") and sub["stage"] == "a" and sub["backend"] == "local"
        assert sub["remote_id"].startswith("pid:") and sub["remote_id"][4:].isdigit()
    text = corral_cli(tmp_path, "status", "--submissions", check=0).stdout
    assert "in-flight submissions" in text and subs[0]["remote_id"] in text
    corral_cli(tmp_path, "cancel", check=0)


def test_a_run_with_a_failing_command_ends_with_failures(tmp_path):
    """Three items, one failing command: on either ledger the run ends finished_with_failures, and
    every later command on it answers normally."""
    write_campaign(tmp_path, campaign_dict({"s": {"run": ["sh", "-c", "test {x} -ne 2"]}},
                                           items={"list": [{"x": 1}, {"x": 2}, {"x": 3}]}))
    run = corral_cli(tmp_path, "run", check=1)
    assert "finished_with_failures" in run.stderr + run.stdout and "Traceback" not in run.stderr
    status = json.loads(corral_cli(tmp_path, "status", "--json", check=0).stdout)
    assert status["run"]["status"] == "finished_with_failures"
    assert status["totals"]["done"] == 2 and status["totals"]["failed"] == 1
    assert json.loads(corral_cli(tmp_path, "tick", "--json", check=0).stdout)["status"] == "finished_with_failures"
    corral_cli(tmp_path, "run", "-q", check=1)
    corral_cli(tmp_path, "cancel", check=0)
    assert json.loads(corral_cli(tmp_path, "status", "--json", check=0).stdout)["run"]["status"] in (
        "finished_with_failures", "cancelled")
    assert corral_cli(tmp_path, "retry", check=0)
    corral_cli(tmp_path, "run", "-q", check=1)  # the command still fails for x=2


def test_version_prints_the_installed_version_and_writes_nothing(tmp_path: Path):
    import corral

    proc = corral_cli(tmp_path, "--version", check=0)
    assert proc.stdout.strip() == f"corral {corral.__version__}"
    assert list(tmp_path.iterdir()) == []
