"""What a task's outcome is: skipped outputs that must pass verify, needs that allow failures,
batches on a clock, verify commands, template failures, retried attempts, values in commands."""

from __future__ import annotations

import json

import pytest

from conftest import assert_no_ledger, campaign_dict, corral_cli, query_ledger, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")


def task_rows(folder, stage: str) -> dict[int, tuple]:
    """item x -> (state, error_class, error_message, attempts, result) of one stage's tasks."""
    rows = query_ledger(folder, "SELECT i.params, t.state, t.error_class, t.error_message, t.attempts, t.result "
                                "FROM tasks t JOIN items i ON i.run_id = t.run_id AND i.idx = t.item_idx "
                                "WHERE t.stage = :stage", {"stage": stage})
    return {json.loads(r[0])["x"]: (r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None) for r in rows}


# -- skip_if and verify --------------------------------------------------------------------------------

EPISODE_SCRIPT = """
import sys
from pathlib import Path

x = sys.argv[1]
out = Path("out") / f"{x}.txt"
out.parent.mkdir(exist_ok=True)
with open("calls.log", "a") as log:
    log.write(x + "\\n")
first = not Path(f"out/{x}.tried").exists()
Path(f"out/{x}.tried").touch()
# episode 2 writes a truncated output the first time it runs
out.write_text("compl" if x == "2" and first else "complete")
"""

CHECKS = """
from pathlib import Path

def complete(item, result, ctx):
    text = (Path(ctx.root) / "out" / f"{item['x']}.txt").read_text()
    return True if text == "complete" else f"out/{item['x']}.txt is truncated ({len(text)} bytes)"
"""


def test_a_skipped_output_must_pass_verify(tmp_path):
    (tmp_path / "episode.py").write_text(EPISODE_SCRIPT)
    write_module(tmp_path, "checks", CHECKS)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "0.txt").write_text("complete")   # done before: skipped
    (tmp_path / "out" / "1.txt").write_text("comp")       # cut short by a crash: runs again
    write_campaign(tmp_path, campaign_dict({"episode": {
        "run": "python episode.py {x}", "skip_if": "out/{x}.txt", "verify": "checks:complete"}}))
    corral_cli(tmp_path, "run", "-q")
    assert sorted((tmp_path / "calls.log").read_text().split()) == ["1", "2", "3"]
    rows = task_rows(tmp_path, "episode")
    assert rows[0][0] == "done" and rows[0][4] == {"skipped": True}
    assert rows[1][0] == "done" and rows[1][4] is None and (tmp_path / "out" / "1.txt").read_text() == "complete"
    assert rows[2][:2] == ("failed", "verify") and "truncated" in rows[2][2]

    corral_cli(tmp_path, "retry", check=0)
    corral_cli(tmp_path, "run", "-q", check=0)
    rows = task_rows(tmp_path, "episode")
    # The truncated output that failed verify is not "skipped" after the retry: it ran again.
    assert rows[2][0] == "done" and rows[2][4] is None and (tmp_path / "out" / "2.txt").read_text() == "complete"
    assert sorted((tmp_path / "calls.log").read_text().split()) == ["1", "2", "2", "3"]


# -- needs that allow failures -----------------------------------------------------------------------

LABELS = """
import json
from pathlib import Path

def label(item, ctx):
    if item["x"] == 1:
        raise ValueError("the labeller refused this pair")
    out = Path(ctx.root) / "labels" / f"{item['x']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"x": item["x"], "label": "cat"}))
    return {"label": "cat"}

def merge(ctx):
    labels = sorted(int(p.stem) for p in (Path(ctx.root) / "labels").glob("*.json"))
    return {"merged": labels}

def report(item, ctx):
    return {"reported": item["x"]}
"""


def labelling(folder, merge_needs, stages=None):
    write_module(folder, "labels", LABELS)
    stages = stages or {"label": {"call": "labels:label"},
                        "merge": {"per": "all", "needs": merge_needs, "call": "labels:merge"}}
    write_campaign(folder, campaign_dict(stages))


def once_row(folder, stage):
    rows = query_ledger(folder, "SELECT state, error_class, result FROM tasks WHERE stage = :s", {"s": stage})
    assert len(rows) == 1
    state, error_class, result = rows[0]
    return state, error_class, json.loads(result) if result else None


def test_a_merge_that_allows_failed_needs_runs_over_what_finished(tmp_path):
    labelling(tmp_path, [{"stage": "label", "allow": "failed"}])
    corral_cli(tmp_path, "run", "-q")
    assert [r[0] for r in task_rows(tmp_path, "label").values()].count("failed") == 1
    assert once_row(tmp_path, "merge") == ("done", None, {"merged": [0, 2, 3]})


def test_a_per_item_need_that_allows_failures_runs_for_failed_items(tmp_path):
    labelling(tmp_path, None, stages={
        "label": {"call": "labels:label"},
        "report": {"needs": {"stage": "label", "allow": ["failed", "cancelled"]}, "call": "labels:report"}})
    corral_cli(tmp_path, "run", "-q")
    assert task_rows(tmp_path, "label")[1][:2] == ("failed", "ValueError")
    assert {x: row[0] for x, row in task_rows(tmp_path, "report").items()} == {0: "done", 1: "done", 2: "done",
                                                                              3: "done"}


def test_a_bad_allow_value_is_refused_with_the_key_and_valid_values(tmp_path):
    labelling(tmp_path, [{"stage": "label", "allow": "sometimes"}])
    proc = corral_cli(tmp_path, "check", check=2)
    assert "corral.yaml: stages.merge.needs.0.allow" in proc.stderr
    assert "'sometimes'" in proc.stderr and "failed | cancelled" in proc.stderr
    assert "Traceback" not in proc.stderr
    corral_cli(tmp_path, "run", "-q", check=2)
    assert_no_ledger(tmp_path)


def test_a_plain_need_still_cancels_the_merge(tmp_path):
    labelling(tmp_path, ["label"])
    corral_cli(tmp_path, "run", "-q")
    assert once_row(tmp_path, "merge")[:2] == ("cancelled", "upstream")


# -- batches on a clock ------------------------------------------------------------------------------

UPLOADS = """
import time

def episode(item, ctx):
    time.sleep(0.4)
    return {"frames": 10}

def upload(items, ctx):
    return [{"uploaded": True} for _ in items]
"""


def test_a_batch_with_only_every_waits_for_every(tmp_path):
    write_module(tmp_path, "pipeline", UPLOADS)
    write_campaign(tmp_path, campaign_dict({
        "episode": {"call": "pipeline:episode"},
        "upload": {"needs": "episode", "per": "batch", "every": "2s", "call": "pipeline:upload"}},
        items={"grid": {"x": {"range": [0, 16]}}}))
    corral_cli(tmp_path, "run", "-q", check=0)
    batches = query_ledger(tmp_path, "SELECT u.submission_id, min(e.finished_at), max(u.queued_at), count(*) "
                                     "FROM tasks u JOIN tasks e ON e.run_id = u.run_id AND e.item_idx = u.item_idx "
                                     "AND e.stage = 'episode' WHERE u.stage = 'upload' AND u.state = 'done' "
                                     "GROUP BY u.submission_id ORDER BY max(u.queued_at)")
    assert sum(b[3] for b in batches) == 16
    # 16 episodes take about 3.2 s on two workers: a batch every 2 s, not one per tick.
    assert 1 <= len(batches) <= 3, batches
    for _, first_episode_done, sent, _ in batches[:-1]:
        assert sent - first_episode_done >= 1.99  # the last one goes when no more can arrive


# -- verify as a command -------------------------------------------------------------------------------

VERIFY_SCRIPT = """
#!/bin/bash
# the pipeline's own check: the output must say it is complete
grep -qx complete "$1" || { echo "incomplete: $1"; exit 1; }
"""


def test_verify_as_a_shell_command_fails_the_task_and_retry_does_not_skip_it(tmp_path):
    (tmp_path / "episode.py").write_text(EPISODE_SCRIPT)
    (tmp_path / "verify.sh").write_text(VERIFY_SCRIPT.lstrip())
    write_campaign(tmp_path, campaign_dict({"episode": {
        "run": "python episode.py {x}", "skip_if": "out/{x}.txt", "verify": "bash verify.sh out/{x}.txt"}}))
    corral_cli(tmp_path, "check", check=0)
    corral_cli(tmp_path, "run", "-q")
    rows = task_rows(tmp_path, "episode")
    assert rows[2][:2] == ("failed", "verify") and "exited 1" in rows[2][2] and "incomplete: out/2.txt" in rows[2][2]
    assert all(rows[x][0] == "done" for x in (0, 1, 3))
    (failed_key,) = query_ledger(tmp_path, "SELECT i.key FROM tasks t JOIN items i ON i.run_id = t.run_id "
                                           "AND i.idx = t.item_idx WHERE t.state = 'failed'")[0]
    log = corral_cli(tmp_path, "logs", failed_key, check=0).stdout
    assert "verify: bash verify.sh out/2.txt" in log and "incomplete: out/2.txt" in log

    corral_cli(tmp_path, "retry", check=0)
    corral_cli(tmp_path, "run", "-q", check=0)
    rows = task_rows(tmp_path, "episode")
    assert rows[2][0] == "done" and rows[2][4] is None  # ran again, not "skipped"
    assert (tmp_path / "out" / "2.txt").read_text() == "complete"


# -- template failures ---------------------------------------------------------------------------------


def numbered_items(count: int, bad_every: int | None = None) -> dict:
    """Items x = 0..count-1; with ``bad_every``, every such item (from the third) has a text x that
    ``{x:03d}`` cannot format."""
    rows = [{"x": f"n{i}" if bad_every and i % bad_every == 2 else i} for i in range(count)]
    return {"list": rows}


def test_a_template_failure_fails_at_once_without_retries(tmp_path):
    write_campaign(tmp_path, campaign_dict({"episode": {
        "run": "echo episode_{x:03d}", "retries": {"max": 3, "backoff": "30s"}}}, items=numbered_items(4, 4)))
    corral_cli(tmp_path, "run", "-q", timeout=60)
    rows = query_ledger(tmp_path, "SELECT state, error_class, attempts, error_message FROM tasks ORDER BY item_idx")
    assert [r[:3] for r in rows] == [("done", None, 1), ("done", None, 1), ("failed", "template", 1),
                                     ("done", None, 1)]
    assert "cannot fill the command template" in rows[2][3]


def test_check_says_how_many_sampled_items_would_fail_a_template(tmp_path):
    write_campaign(tmp_path, campaign_dict({"episode": {"run": "echo episode_{x:03d}"}},
                                           items=numbered_items(40, 4)))
    proc = corral_cli(tmp_path, "check", check=0)
    assert "episode: 10 of 20 sampled items would fail a template (about 20 of 40)" in proc.stdout
    assert "stages.episode.run" in proc.stdout
    plan = json.loads(corral_cli(tmp_path, "check", "--json", check=0).stdout)
    assert plan["stages"]["episode"]["template_failures"]["estimated"] == 20
    # A template no item can fill is an error in the file, as before.
    write_campaign(tmp_path, campaign_dict({"episode": {"run": "echo {y}"}}, items=numbered_items(40)))
    proc = corral_cli(tmp_path, "check", check=2)
    assert "stages.episode.run" in proc.stderr and "'y'" in proc.stderr


def test_check_says_how_many_sampled_llm_requests_would_fail_on_a_missing_file(tmp_path):
    (tmp_path / "texts").mkdir()
    for i in range(40):
        if i % 4 != 2:
            (tmp_path / "texts" / f"{i}.txt").write_text(f"caption {i}")
    config = campaign_dict({"label": {"backend": "openai", "request": {
        "model": "gpt-4o-mini", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Label: {{ file_text(item.path) }}"}]}}},
        items={"list": [{"path": f"texts/{i}.txt"} for i in range(40)]})
    config["backends"]["openai"] = {"type": "openai_batch", "base_url": "http://127.0.0.1:9/v1"}
    write_campaign(tmp_path, config)
    proc = corral_cli(tmp_path, "check", check=0, env={"OPENAI_API_KEY": "sim"})
    assert "10 of 40 sampled requests would fail (about 10 of 40)" in proc.stdout, proc.stdout
    assert "texts/2.txt" in proc.stdout


# -- retried attempts ----------------------------------------------------------------------------------

FLAKY = """
import os
import sys

attempt = int(os.environ["CORRAL_ATTEMPT"])
print(f"episode {sys.argv[1]} attempt {attempt}")
sys.exit(1 if sys.argv[1] == "1" and attempt < 4 else 0)
"""


def test_retry_continues_attempt_numbers_with_a_log_per_attempt(tmp_path):
    (tmp_path / "flaky.py").write_text(FLAKY)
    write_campaign(tmp_path, campaign_dict({"episode": {
        "run": "python flaky.py {x}", "retries": {"max": 1, "backoff": 0}}}))
    corral_cli(tmp_path, "run", "-q")
    assert task_rows(tmp_path, "episode")[1][:2] == ("failed", "exit_code")
    assert task_rows(tmp_path, "episode")[1][3] == 2

    corral_cli(tmp_path, "retry", check=0)
    corral_cli(tmp_path, "run", "-q", check=0)
    # Attempt 3 failed too and was retried: the retries allowed count from `corral retry`.
    assert task_rows(tmp_path, "episode")[1][0] == "done" and task_rows(tmp_path, "episode")[1][3] == 4
    task_id = next(tid for tid, params in query_ledger(
        tmp_path, "SELECT t.id, i.params FROM tasks t JOIN items i ON i.run_id = t.run_id AND i.idx = t.item_idx")
        if json.loads(params)["x"] == 1)
    logs = sorted(tmp_path.glob(f".corral/runs/*/logs/episode/t{task_id}.*.log"))
    assert [p.name for p in logs] == [f"t{task_id}.{n}.log" for n in (1, 2, 3, 4)]
    for number, path in enumerate(logs, start=1):
        assert path.read_text().splitlines() == [f"episode 1 attempt {number}"]


# -- values in commands --------------------------------------------------------------------------------

SHOW = """
import json
import os
import sys
from pathlib import Path

out = Path("out") / f"{sys.argv[1]}.txt"
out.parent.mkdir(exist_ok=True)
out.write_text(json.dumps(sys.argv[1:] + [os.environ["USE_CACHE"]]))
"""


def test_booleans_and_null_in_commands_render_as_yaml_does(tmp_path):
    (tmp_path / "show.py").write_text(SHOW)
    write_campaign(tmp_path, campaign_dict({"episode": {
        "run": "python show.py {name} --cache={cache} --seed={seed} --scale={scale:.1f}",
        "outputs": "out/{name}.txt", "env": {"USE_CACHE": "{cache}"}}},
        items={"list": [{"name": "a", "cache": True, "seed": None, "scale": 2},
                        {"name": "b", "cache": False, "seed": 7, "scale": 0.5}]}))
    corral_cli(tmp_path, "run", "-q", check=0)
    assert json.loads((tmp_path / "out" / "a.txt").read_text()) == ["a", "--cache=true", "--seed=null", "--scale=2.0",
                                                                    "true"]
    assert json.loads((tmp_path / "out" / "b.txt").read_text()) == ["b", "--cache=false", "--seed=7", "--scale=0.5",
                                                                    "false"]
