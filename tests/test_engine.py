"""The engine with the local backend, through the Python API: results, retries, timeouts, needs,
batches, skip_if, verify, retry and cancel."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import corral
from conftest import campaign_dict, corral_cli, live_workers, wait_for_workers, write_campaign, write_module
from corral.backends.base import TaskResult
from corral.engine import Engine, VirtualClock
from corral.engine.record import Changes
from corral.ledger import schema
from corral.states import Outcome

pytestmark = pytest.mark.usefixtures("campaign_ledger")


class Runner:
    """Write a campaign and a ``tasks`` module into a folder, run it to the end, read its records."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.campaigns: list[Any] = []

    def __call__(self, stages: dict[str, Any], tasks: str, items: dict[str, Any] | None = None,
                 run: bool = True, **extra: Any):
        write_module(self.folder, "tasks", tasks)
        write_campaign(self.folder, campaign_dict(stages, items=items, **extra))
        campaign = corral.open(str(self.folder / "corral.yaml"))
        self.campaigns.append(campaign)
        the_run, _ = campaign.start()
        report = the_run.run(max_interval=0.5) if run else None
        return the_run, report

    def close(self) -> None:
        for campaign in self.campaigns:
            campaign.close()


@pytest.fixture
def runner(tmp_path: Path):
    r = Runner(tmp_path)
    yield r
    r.close()


def by_item(run, stage: str, field: str = "x") -> dict[Any, dict[str, Any]]:
    return {r[field]: r for r in run.records(stage=stage)}


def calls(folder: Path, name: str = "calls") -> list[Any]:
    path = folder / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def with_record(source: str) -> str:
    return RECORD_CALL + textwrap.dedent(source)


RECORD_CALL = """
import json, os, time

def record(ctx, **data):
    line = json.dumps({"pid": os.getpid(), "at": time.time(), **data})
    with open(ctx.root / "calls.jsonl", "a") as handle:
        handle.write(line + "\\n")
"""


# -- results and failures -----------------------------------------------------------------------------


def test_call_stage_result_is_recorded(runner):
    run, report = runner({"a": {"call": "tasks:f"}}, """
        def f(item, ctx):
            print("to the log")
            return {"y": item["x"] * 10, "stage": ctx.stage, "key": ctx.item_key}
    """)
    assert report.finished and report.status == "finished"
    records = by_item(run, "a")
    assert sorted(records) == [0, 1, 2, 3]
    for x, r in records.items():
        assert r["state"] == "done" and r["attempts"] == 1 and r["error_class"] is None
        assert r["y"] == x * 10
        assert r["result.stage"] == "a"  # a result field named like a metadata column is prefixed
        assert r["started_at"] <= r["finished_at"] and r["host"]
    status = run.status()
    assert status["run"]["status"] == "finished" and status["progress"] == 1.0
    assert status["stages"]["a"]["done"] == 4


def test_failing_function_is_retried_then_failed(runner, tmp_path: Path):
    run, report = runner({"a": {"call": "tasks:f", "retries": {"max": 2, "backoff": 0}}}, with_record("""
        def f(item, ctx):
            record(ctx, x=item["x"], attempt=ctx.attempt)
            if item["x"] == 1:
                raise ValueError(f"bad input {item['x']}")
            return {"ok": True}
    """))
    assert report.status == "finished_with_failures"
    records = by_item(run, "a")
    bad = records[1]
    assert bad["state"] == "failed" and bad["attempts"] == 3
    assert bad["error_class"] == "ValueError"
    assert "bad input 1" in bad["error_message"]
    assert [c["attempt"] for c in calls(tmp_path) if c["x"] == 1] == [1, 2, 3]  # ctx.attempt increments
    assert all(records[x]["state"] == "done" and records[x]["attempts"] == 1 for x in (0, 2, 3))
    assert run.errors() == [{"stage": "a", "error_class": "ValueError", "count": 1}]


def test_retries_on_restricts_which_errors_retry(runner, tmp_path: Path):
    run, _ = runner({"a": {"call": "tasks:f", "retries": {"max": 2, "backoff": 0, "on": ["ValueError"]}}},
                    with_record("""
        def f(item, ctx):
            record(ctx, x=item["x"], attempt=ctx.attempt)
            if item["x"] == 0:
                raise KeyError("not retried")
            if item["x"] == 1:
                raise ValueError("retried")
            return {}
    """), items={"grid": {"x": [0, 1]}})
    records = by_item(run, "a")
    assert (records[0]["state"], records[0]["attempts"], records[0]["error_class"]) == ("failed", 1, "KeyError")
    assert (records[1]["state"], records[1]["attempts"], records[1]["error_class"]) == ("failed", 3, "ValueError")
    assert len([c for c in calls(tmp_path) if c["x"] == 0]) == 1


def test_backoff_is_respected(runner, tmp_path: Path):
    run, _ = runner({"a": {"call": "tasks:f", "retries": {"max": 1, "backoff": "2s"}}}, with_record("""
        def f(item, ctx):
            if ctx.attempt == 1:
                record(ctx, event="failing")
                raise RuntimeError("first attempt fails")
            return {"attempt": ctx.attempt}
    """), items={"grid": {"x": [0]}})
    record = by_item(run, "a")[0]
    assert record["state"] == "done" and record["attempts"] == 2 and record["attempt"] == 2
    failed_at = calls(tmp_path)[0]["at"]
    assert record["started_at"] - failed_at >= 2.0


def test_backoff_in_virtual_time(tmp_path: Path):
    """With a virtual clock the retry waits for virtual time, not wall time."""
    write_module(tmp_path, "tasks", """
        def f(item, ctx):
            if ctx.attempt == 1:
                raise RuntimeError("first attempt fails")
            return {"attempt": ctx.attempt}
    """)
    write_campaign(tmp_path, campaign_dict({"a": {"call": "tasks:f", "retries": {"max": 1, "backoff": "1h"}}},
                                           items={"grid": {"x": [0]}}))
    campaign = corral.open(str(tmp_path / "corral.yaml"))
    clock = VirtualClock()
    try:
        run, _ = campaign.start(clock=clock)
        engine = Engine(campaign.loaded, campaign.ledger(), run.id, clock=clock)
        deadline = time.monotonic() + 30
        while True:
            engine.tick()
            task = run.task("t1")
            if task["attempts"] == 1:
                break
            assert time.monotonic() < deadline, task
            time.sleep(0.05)
        task = run.task("t1")
        assert task["state"] == "pending" and task["attempts"] == 1
        assert task["not_before"] == pytest.approx(clock.now() + 3600, abs=1)
        clock.advance(3590)
        assert engine.tick().submitted == 0
        clock.advance(20)
        assert engine.tick().submitted == 1
        deadline = time.monotonic() + 30
        while not engine.tick().finished:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert run.task("t1")["state"] == "done"
        engine.close()
    finally:
        campaign.close()


def test_command_exit_code_is_classified(runner):
    run, _ = runner({"a": {"run": ["python", "-c", "import sys; print('oops'); sys.exit(3)"]}}, "",
                    items={"grid": {"x": [0]}})
    record = by_item(run, "a")[0]
    assert record["state"] == "failed" and record["error_class"] == "exit_code"
    assert "exit code 3" in record["error_message"] and "oops" in record["error_message"]


def test_command_result_comes_from_corral_result(runner, tmp_path: Path):
    (tmp_path / "emit.py").write_text(
        "import json, os, sys\n"
        "item = json.loads(os.environ['CORRAL_ITEM'])\n"
        "json.dump({'y': int(sys.argv[1]) + 100, 'item': item, 'attempt': os.environ['CORRAL_ATTEMPT']},"
        " open(os.environ['CORRAL_RESULT'], 'w'))\n")
    run, report = runner({"a": {"run": ["python", "emit.py", "{x}"]}}, "")
    assert report.status == "finished"
    for x, record in by_item(run, "a").items():
        assert record["y"] == x + 100
        assert record["item"] == {"x": x}
        assert record["attempt"] == "1"


def test_item_values_reach_commands_as_one_argument(runner, tmp_path: Path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "argv.py").write_text(
        "import json, os, sys\njson.dump(sys.argv[1:], open(os.environ['CORRAL_RESULT'], 'w'))\n")
    values = [
        f"x; rm -rf /nonexistent-corral-test; rm -rf {victim}",
        f"$(touch {tmp_path / 'pwned1'})",
        f"`touch {tmp_path / 'pwned2'}` && echo hi | cat > {tmp_path / 'pwned3'}",
        "quote ' and \" and \\ and {braces}",
    ]
    run, report = runner({
        "listed": {"run": ["python", "argv.py", "{v}", "--opt={v}"]},
        "string": {"run": "python argv.py {v} --opt={v}"},
    }, "", items={"list": [{"v": v} for v in values]})
    assert report.status == "finished"
    for stage in ("listed", "string"):
        records = by_item(run, stage, "v")
        for v in values:
            assert records[v]["result"] == [v, f"--opt={v}"], stage
    assert victim.exists()
    assert not any((tmp_path / f"pwned{i}").exists() for i in (1, 2, 3))


def test_timeout_for_run_and_call_stages(runner):
    started = time.monotonic()
    run, _ = runner({
        "cmd": {"run": ["python", "-c", "import time; time.sleep(60)"], "timeout": "1s"},
        "fn": {"call": "tasks:slow", "timeout": 1},
    }, """
        import time
        def slow(item, ctx):
            time.sleep(60)
    """, items={"grid": {"x": [0]}})
    assert time.monotonic() - started < 30
    for stage in ("cmd", "fn"):
        record = by_item(run, stage)[0]
        assert record["state"] == "failed" and record["error_class"] == "timeout", record
        assert record["duration_s"] < 15


def test_unimportable_call_fails_with_its_class(runner):
    # The module exists (so `check` accepts it) but importing it fails where the task runs.
    run, _ = runner({"a": {"call": "tasks:f"}}, """
        import no_such_module_here
        def f(item, ctx):
            return {}
    """, items={"grid": {"x": [0]}})
    record = by_item(run, "a")[0]
    assert record["state"] == "failed" and record["error_class"] == "ModuleNotFoundError"
    assert "no_such_module_here" in record["error_message"]


# -- needs, per: all, per: batch ----------------------------------------------------------------------


def test_needs_chain_runs_in_order_and_cancels_downstream_of_failures(runner):
    run, report = runner({
        "a": {"call": "tasks:a"},
        "b": {"call": "tasks:b", "needs": "a"},
    }, """
        import time
        def a(item, ctx):
            time.sleep(0.05)
            if item["x"] == 1:
                raise RuntimeError("a failed")
            return {"a": item["x"]}
        def b(item, ctx):
            return {"b": item["x"]}
    """)
    assert report.status == "finished_with_failures"
    a, b = by_item(run, "a"), by_item(run, "b")
    assert a[1]["state"] == "failed"
    assert b[1]["state"] == "cancelled" and b[1]["error_class"] == "upstream" and b[1]["attempts"] == 0
    for x in (0, 2, 3):
        assert a[x]["state"] == b[x]["state"] == "done"
        assert b[x]["started_at"] >= a[x]["finished_at"]


def test_per_all_runs_once_after_everything(runner, tmp_path: Path):
    run, _ = runner({
        "a": {"call": "tasks:a"},
        "summary": {"call": "tasks:summary", "per": "all", "needs": "a"},
    }, with_record("""
        import time
        def a(item, ctx):
            time.sleep(0.02)
            return {"a": item["x"]}
        def summary(ctx):
            record(ctx, stage=ctx.stage)
            return {"summary": True}
    """), items={"grid": {"x": {"range": [0, 6]}}})
    a = by_item(run, "a")
    summary = list(run.records(stage="summary"))
    assert len(summary) == 1 and summary[0]["state"] == "done" and summary[0]["summary"] is True
    assert summary[0]["item_key"] == "all"
    assert len(calls(tmp_path)) == 1
    assert summary[0]["started_at"] >= max(r["finished_at"] for r in a.values())


def test_per_all_is_cancelled_when_a_need_fails(runner):
    run, _ = runner({
        "a": {"call": "tasks:a"},
        "summary": {"call": "tasks:summary", "per": "all", "needs": "a"},
    }, """
        def a(item, ctx):
            if item["x"] == 2:
                raise RuntimeError("no")
        def summary(ctx):
            raise AssertionError("must not run")
    """)
    summary = list(run.records(stage="summary"))[0]
    assert summary["state"] == "cancelled" and summary["error_class"] == "upstream"


def test_per_batch_calls_with_lists_of_at_most_size(runner, tmp_path: Path):
    run, report = runner({"a": {"call": "tasks:batch", "per": "batch", "size": 3}}, with_record("""
        def batch(items, ctx):
            record(ctx, xs=[i["x"] for i in items])
            return [{"y": i["x"] * 2} for i in items]
    """), items={"grid": {"x": {"range": [0, 7]}}})
    assert report.status == "finished"
    batches = [c["xs"] for c in calls(tmp_path)]
    assert all(1 <= len(b) <= 3 for b in batches)
    assert sorted(x for b in batches for x in b) == list(range(7))
    records = by_item(run, "a")
    assert {x: r["y"] for x, r in records.items()} == {x: 2 * x for x in range(7)}
    assert all(r["state"] == "done" and r["attempts"] == 1 for r in records.values())


def test_per_batch_single_value_goes_to_every_item(runner):
    run, _ = runner({"a": {"call": "tasks:batch", "per": "batch", "size": 2}}, """
        def batch(items, ctx):
            return {"n": len(items)}
    """, items={"grid": {"x": {"range": [0, 5]}}})
    records = by_item(run, "a")
    sizes = [r["n"] for r in records.values()]
    assert set(sizes) <= {1, 2} and sizes.count(2) % 2 == 0 and len(sizes) == 5
    assert all(r["state"] == "done" for r in records.values())


# -- skip_if, verify, outputs ----------------------------------------------------------------------------


def test_skip_if_paths_exist(runner, tmp_path: Path):
    (tmp_path / "out").mkdir()
    for x in (0, 1):
        (tmp_path / "out" / f"{x}.txt").write_text("already there")
    run, _ = runner({"a": {"call": "tasks:f", "skip_if": "out/{x}.txt"}}, with_record("""
        def f(item, ctx):
            record(ctx, x=item["x"])
            raise RuntimeError("must not be called for finished items")
    """))
    records = by_item(run, "a")
    for x in (0, 1):
        assert records[x]["state"] == "done" and records[x]["skipped"] is True
        assert "skip" in records[x]["error_message"]
    for x in (2, 3):
        assert records[x]["state"] == "failed"
    assert sorted(c["x"] for c in calls(tmp_path)) == [2, 3]


def test_verify_callable_returning_false(runner):
    run, _ = runner({"a": {"call": "tasks:f", "verify": "tasks:check"}}, """
        def f(item, ctx):
            return {"y": item["x"]}
        def check(item, result, ctx):
            if item["x"] == 3:
                return "y is too big"
            return result["y"] != 1
    """)
    records = by_item(run, "a")
    assert records[1]["state"] == "failed" and records[1]["error_class"] == "verify"
    assert "returned False" in records[1]["error_message"]
    assert records[3]["error_class"] == "verify" and records[3]["error_message"] == "y is too big"
    assert records[0]["state"] == records[2]["state"] == "done"


def test_missing_outputs_fail_verify(runner, tmp_path: Path):
    run, _ = runner({"a": {"call": "tasks:f", "outputs": ["out/{x}.txt"]}}, """
        def f(item, ctx):
            if item["x"] % 2 == 0:
                (ctx.root / "out").mkdir(exist_ok=True)
                (ctx.root / "out" / f"{item['x']}.txt").write_text("ok")
    """)
    records = by_item(run, "a")
    assert [records[x]["state"] for x in range(4)] == ["done", "failed", "done", "failed"]
    assert records[1]["error_class"] == "verify" and "out/1.txt" in records[1]["error_message"]


# -- ctx --------------------------------------------------------------------------------------------------


def test_checkpoint_dir_persists_across_attempts(runner):
    run, _ = runner({"a": {"call": "tasks:f", "retries": {"max": 1, "backoff": 0}}}, """
        def f(item, ctx):
            state = ctx.checkpoint_dir / "state.txt"
            if ctx.attempt == 1:
                state.write_text(f"half of {item['x']}")
                raise RuntimeError("crash after the checkpoint")
            return {"resumed_from": state.read_text(), "attempt": ctx.attempt}
    """, items={"grid": {"x": [0, 1]}})
    for x, record in by_item(run, "a").items():
        assert record["state"] == "done" and record["attempts"] == 2
        assert record["resumed_from"] == f"half of {x}" and record["attempt"] == 2


# -- exactly-once recording --------------------------------------------------------------------------------


def test_a_second_result_for_a_task_is_ignored(runner):
    run, _ = runner({"a": {"call": "tasks:f"}}, """
        def f(item, ctx):
            return {"y": 1}
    """, items={"grid": {"x": [0]}})
    engine = run.engine()
    try:
        task = run.task("t1")
        with run.ledger.write() as conn:
            changes = Changes()
            engine.recorder.apply(conn, [TaskResult(task_id=task["id"], outcome=Outcome.DONE, result={"y": 2}),
                                         TaskResult(task_id=task["id"], outcome=Outcome.FAILED,
                                                    error_class="late")], None, time.time(), changes)
        assert changes.completed == 0 and changes.failed == 0
        again = run.task("t1")
        assert (again["state"], again["attempts"], json.loads(again["result"])) == ("done", 1, {"y": 1})
        with run.ledger.read() as conn:
            from sqlalchemy import select

            e = schema.events
            done = conn.execute(select(e.c.id).where(e.c.task_id == task["id"], e.c.to_state == "done")).all()
        assert len(done) == 1
    finally:
        engine.close()


# -- retry and cancel through the CLI ----------------------------------------------------------------------


def test_retry_after_fixing_the_function(tmp_path: Path):
    write_module(tmp_path, "tasks", """
        def a(item, ctx):
            if item["x"] % 2:
                raise ValueError("odd")
            return {"a": item["x"]}
        def b(item, ctx):
            return {"b": item["x"]}
    """)
    write_campaign(tmp_path, campaign_dict({"a": {"call": "tasks:a"}, "b": {"call": "tasks:b", "needs": "a"}}))
    corral_cli(tmp_path, "run", "-q", check=1)
    write_module(tmp_path, "tasks", """
        def a(item, ctx):
            return {"a": item["x"], "fixed": True}
        def b(item, ctx):
            return {"b": item["x"]}
    """)
    proc = corral_cli(tmp_path, "retry", check=0)
    assert "2 tasks" in proc.stderr
    campaign, run = None, None
    campaign = corral.open(str(tmp_path / "corral.yaml"))
    try:
        counts = campaign.run().counts()
        assert counts["a"]["pending"] == 2 and counts["b"]["waiting"] == 2  # dependents wait again
        corral_cli(tmp_path, "run", "-q", check=0)
        run = campaign.run()
        assert run.status()["run"]["status"] == "finished"
        a = by_item(run, "a")
        assert all(r["state"] == "done" for r in a.values())
        assert a[1]["fixed"] is True and a[1]["attempts"] == 2 and "fixed" not in a[0]  # attempt 2 after the retry
        assert all(r["state"] == "done" for r in by_item(run, "b").values())
        assert len(campaign.runs()) == 1
    finally:
        campaign.close()


def test_retry_by_error_class(tmp_path: Path):
    write_module(tmp_path, "tasks", """
        def a(item, ctx):
            if item["x"] == 0:
                raise KeyError("k")
            if item["x"] == 1:
                raise ValueError("v")
    """)
    write_campaign(tmp_path, campaign_dict({"a": {"call": "tasks:a"}}))
    corral_cli(tmp_path, "run", "-q", check=1)
    assert "1 tasks" in corral_cli(tmp_path, "retry", "--error-class", "KeyError", check=0).stderr
    campaign = corral.open(str(tmp_path / "corral.yaml"))
    try:
        records = by_item(campaign.run(), "a")
        assert records[0]["state"] == "pending" and records[1]["state"] == "failed"
    finally:
        campaign.close()


def test_cancel_marks_unfinished_tasks_cancelled(tmp_path: Path):
    write_module(tmp_path, "tasks", """
        import time
        def slow(item, ctx):
            time.sleep(60)
    """)
    write_campaign(tmp_path, campaign_dict({"a": {"call": "tasks:slow"}, "b": {"call": "tasks:slow", "needs": "a"}},
                                           items={"grid": {"x": {"range": [0, 6]}}}))
    tick = json.loads(corral_cli(tmp_path, "tick", "--json", check=0).stdout)
    assert tick["submitted_tasks"] > 0
    assert live_workers(tmp_path)
    proc = corral_cli(tmp_path, "cancel", check=0)
    assert "cancelled 12 tasks" in proc.stderr
    status = json.loads(corral_cli(tmp_path, "status", "--json", check=0).stdout)
    assert status["run"]["status"] == "cancelled"
    assert status["totals"]["cancelled"] == 12 and status["totals"]["done"] == 0
    assert wait_for_workers(tmp_path, timeout=20), "cancel did not stop the workers"
    # a later tick of the cancelled run collects the stopped workers without reviving any task
    corral_cli(tmp_path, "tick", "--run-id", tick["run_id"], check=0)
    campaign = corral.open(str(tmp_path / "corral.yaml"))
    try:
        run = campaign.run(tick["run_id"])
        assert run.counts()["a"]["cancelled"] == 6 and run.counts()["b"]["cancelled"] == 6
        assert all(r["error_class"] == "cancelled" for r in run.records())
    finally:
        campaign.close()


def test_sys_exit_in_a_function_is_a_task_failure(runner):
    run, _ = runner({"a": {"call": "tasks:f"}}, """
        import sys
        def f(item, ctx):
            if item["x"] == 1:
                sys.exit(3)
            return {"ok": True}
    """, items={"grid": {"x": [0, 1, 2]}}, workers=1)
    records = by_item(run, "a")
    assert records[1]["state"] == "failed"
    assert records[1]["error_class"] == "SystemExit" and "3" in records[1]["error_message"]
    assert records[0]["state"] == records[2]["state"] == "done"


def test_a_capacity_refusal_keeps_the_last_failure_class(tmp_path):
    """An out-of-memory failure, then a submission refused for capacity (a cluster's submit limit):
    the retry still knows it follows an oom, so its memory is still scaled."""
    write_module(tmp_path, "tasks", "def f(item, ctx):\n    return {}\n")
    path = write_campaign(tmp_path, campaign_dict({"a": {"call": "tasks:f", "retries": {
        "max": 2, "backoff": 0, "on": ["oom"]}}}, items={"list": [{"x": 0}]}))
    campaign = corral.open(str(path))
    run, _ = campaign.start()
    engine = run.engine()
    try:
        stage = engine.stages["a"]
        for outcome, error_class in ((Outcome.FAILED, "oom"), (Outcome.CAPACITY, "capacity")):
            _, tasks = engine._queue(stage, 1)
            with run.ledger.write() as conn:
                engine.recorder.apply(conn, [TaskResult(task_id=tasks[0].task_id, outcome=outcome,
                                                        error_class=error_class, error_message="refused")],
                                      None, time.time(), Changes())
        with run.ledger.read() as conn:
            (ready,) = run.ledger.ready_tasks(conn, run.id, "a", time.time() + 1, 10, claim=not run.ledger.is_sqlite)
        assert ready["error_class"] == "oom" and ready["attempts"] == 1
        _, tasks = engine._queue(stage, 1)
        assert tasks[0].last_error == "oom" and tasks[0].attempt == 2
    finally:
        engine.close()
        campaign.close()


@pytest.mark.usefixtures("campaign_ledger")
def test_a_function_reads_the_runs_params_after_overrides(tmp_path: Path):
    write_module(tmp_path, "uses_params", "def each(item, ctx):\n    return {'out': ctx.params['out'], 'x': item['x']}\n"
                                          "def once(ctx):\n    return dict(ctx.params)\n")
    write_campaign(tmp_path, {"name": "p", "params": {"out": "results", "n": 3}, "items": {"grid": {"x": [1, 2]}},
                              "stages": {"each": {"call": "uses_params:each"},
                                         "once": {"call": "uses_params:once", "per": "all", "needs": "each"}},
                              "backends": {"local": {"workers": 2, "gpus": "none"}}})
    corral_cli(tmp_path, "run", "-q", "params.out=elsewhere", check=0)
    records = json.loads(corral_cli(tmp_path, "export", "params.out=elsewhere", "-f", "json", check=0).stdout)
    assert sorted((r["stage"], r.get("out")) for r in records) == [("each", "elsewhere"), ("each", "elsewhere"),
                                                                  ("once", "elsewhere")]
    assert next(r for r in records if r["stage"] == "once")["n"] == 3
