"""A run's identity: what defines its work (refused when changed, unless forced), what only steers it
(recorded, the run continues), and which items it has (new ones are added to the run)."""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel

from corral.spec import identity, models
from corral.spec.backend_types import BACKEND_TYPES


def _models_in(annotation) -> tuple[list[type[BaseModel]], bool]:
    """The models an annotation holds, and whether they sit under a name or a position (dict, list)."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    if origin in (dict, list, typing.Union) or str(origin) == "<class 'types.UnionType'>":
        found: list[type[BaseModel]] = []
        nested = False
        for arg in typing.get_args(annotation):
            inner, _ = _models_in(arg)
            found += inner
            nested = nested or (bool(inner) and origin in (dict, list))
        return found, nested
    return [], False


def _schema_keys(model: type[BaseModel], prefix: str) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{field.alias or name}"
        inner, nested = _models_in(field.annotation)
        plain = [a for a in typing.get_args(field.annotation)
                 if a is not type(None) and not (isinstance(a, type) and issubclass(a, BaseModel))]
        if not inner or (typing.get_origin(field.annotation) in (typing.Union, types.UnionType) and plain):
            keys.append(path)  # also a plain value where a model may stand (verify: [paths] or {run: ...})
        for sub in inner:
            keys += _schema_keys(sub, f"{path}.*." if nested else f"{path}.")
    return keys


def every_schema_key() -> list[str]:
    keys = [k for k in _schema_keys(models.Campaign, "") if k != "backends"]
    for entry in BACKEND_TYPES.values():
        keys += _schema_keys(entry.settings, "backends.*.")
    return sorted(set(keys))


def test_every_key_of_the_schema_is_classified_on_purpose():
    keys = every_schema_key()
    unclassified = [key for key in keys if identity.classified_as(key) != key]
    assert not unclassified, f"classify these keys in corral/spec/identity.py KEY_KINDS: {unclassified}"
    stale = sorted(set(identity.KEY_KINDS) - set(keys))
    assert not stale, f"KEY_KINDS names keys the schema does not have: {stale}"
    assert identity.kind_of("stages.label.request.messages") is identity.KeyKind.DEFINING
    assert identity.kind_of("backends.openai.budget.max_usd") is identity.KeyKind.STEERING
    assert identity.kind_of("items.grid.policy") is identity.KeyKind.MEMBERSHIP


# -- at the user's level: the CLI on small campaigns, on SQLite and PostgreSQL ----------------------

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402
from conftest import cli_env, corral_cli, query_ledger, write_campaign, write_module  # noqa: E402

ledger_tests = pytest.mark.usefixtures("campaign_ledger")

TASKS = """
import json
from pathlib import Path

def work(item, ctx):
    with open(Path(ctx.root) / "calls.jsonl", "a") as handle:
        handle.write(json.dumps(item, sort_keys=True) + "\\n")
    return {"ok": True}

def other(item, ctx):
    return {"ok": False}

def merge(ctx):
    import corral
    records = list(corral.open(str(Path(ctx.root) / "corral.yaml"), ledger=ctx.ledger_url)
                   .run(ctx.run_id).records(stage="work"))
    with open(Path(ctx.root) / "merges.jsonl", "a") as handle:
        handle.write(json.dumps(len(records)) + "\\n")
    return {"merged": len(records)}
"""


def bench(folder, *, grid=None, items=None, merge=False, **extra):
    """A benchmark of settings x tasks (or rows of an item file) with one call per item."""
    write_module(folder, "tasks", TASKS)
    stages = {"work": {"call": "tasks:work"}}
    if merge:
        stages["merge"] = {"call": "tasks:merge", "per": "all", "needs": ["work"]}
    config = {"name": "bench", "items": items or {"grid": grid or {"setting": ["a", "b"], "task": [1, 2]}},
              "stages": stages, "backends": {"local": {"workers": 2, "gpus": "none"}}, **extra}
    return write_campaign(folder, config)


def calls(folder) -> list[dict]:
    path = folder / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def runs_of(folder) -> list[dict]:
    return json.loads(corral_cli(folder, "runs", "--json", check=0).stdout)


def edit(path, change) -> None:
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def write_ledger(folder, sql: str, params: dict) -> None:
    import os

    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(os.environ.get("CORRAL_LEDGER") or f"sqlite:///{folder / '.corral' / 'ledger.db'}",
                           poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def events(folder, run_id: str, kind: str) -> list[str]:
    return [r[0] for r in query_ledger(folder, "SELECT message FROM events WHERE run_id = :r AND kind = :k "
                                              "ORDER BY id", {"r": run_id, "k": kind})]


@ledger_tests
def test_a_steering_override_on_a_cron_line_continues_the_run_and_records_the_change(tmp_path):
    bench(tmp_path)
    first = corral_cli(tmp_path, "tick", "--json", check=0)
    run_id = json.loads(first.stdout)["run_id"]
    override = ["backends.local.workers=1", "+stages.work.retries.max=3"]
    said = []
    for _ in range(3):  # the cron line gains overrides: the same run, the change said once
        tick = corral_cli(tmp_path, "tick", *override, check=0)
        assert f"run {run_id}:" in tick.stderr
        said.append([line for line in tick.stderr.splitlines() if "config changed" in line])
    assert said == [["config changed: backends.local.workers: 2 -> 1",
                     "config changed: stages.work.retries.max: (unset) -> 3"], [], []]
    assert [r["id"] for r in runs_of(tmp_path)] == [run_id]
    assert events(tmp_path, run_id, "config") == ["config changed: backends.local.workers: 2 -> 1",
                                                  "config changed: stages.work.retries.max: (unset) -> 3"]
    shown = json.loads(corral_cli(tmp_path, "runs", "show", run_id, "--json", check=0).stdout)
    assert shown["config"]["backends"]["local"]["workers"] == 1
    assert shown["config"]["stages"]["work"]["retries"] == {"max": 3}
    assert "backends.local.workers: 2 -> 1" in shown["notes"][-1]["text"]
    corral_cli(tmp_path, "run", "-q", *override, check=0)
    assert len(calls(tmp_path)) == 4


@ledger_tests
def test_a_defining_change_is_refused_under_run_id_with_the_diff_and_forced_once(tmp_path):
    bench(tmp_path)
    corral_cli(tmp_path, "run", "-q", check=0)
    run_id = runs_of(tmp_path)[0]["id"]
    refused = corral_cli(tmp_path, "run", "-q", "--run-id", run_id, "stages.work.call=tasks:other",
                         "backends.local.workers=1", check=2)
    assert "different configuration" in refused.stderr and "--force" in refused.stderr
    assert "-stages.work.call: tasks:work" in refused.stderr and "+stages.work.call: tasks:other" in refused.stderr
    assert "workers" not in refused.stderr and "Traceback" not in refused.stderr
    assert events(tmp_path, run_id, "config") == []
    # Without --run-id, a defining change is another run; with --force the run adopts it, once.
    corral_cli(tmp_path, "run", "-q", "--run-id", run_id, "stages.work.call=tasks:other", "--force", check=0)
    again = corral_cli(tmp_path, "run", "-q", "--run-id", run_id, "stages.work.call=tasks:other", check=0)
    assert "different configuration" not in again.stderr
    assert len(events(tmp_path, run_id, "force")) == 1
    assert "+stages.work.call: tasks:other" in events(tmp_path, run_id, "force")[0]
    assert [r["id"] for r in runs_of(tmp_path)] == [run_id]


@ledger_tests
def test_a_run_of_the_previous_release_is_continued_after_a_steering_change(tmp_path):
    from corral.spec.loader import config_hash

    bench(tmp_path)
    corral_cli(tmp_path, "run", "-q", check=0)
    run_id = runs_of(tmp_path)[0]["id"]
    # As the previous release stored it: the hash of the whole config, no fingerprint of the items.
    (config, selection), = query_ledger(tmp_path, "SELECT config, selection FROM runs")
    config, selection = json.loads(config), json.loads(selection)
    old_hash = config_hash({"config": config, "selection": {"limit": None, "shard": None}})
    selection.pop("members")
    write_ledger(tmp_path, "UPDATE runs SET config_hash = :h, selection = :s",
                 {"h": old_hash, "s": json.dumps(selection)})
    assert "would continue run " + run_id in corral_cli(tmp_path, "check", "backends.local.workers=1", check=0).stdout
    tick = corral_cli(tmp_path, "tick", "backends.local.workers=1", check=0)
    assert "config changed: backends.local.workers: 2 -> 1" in tick.stderr and f"run {run_id}:" in tick.stderr
    assert "adding" not in tick.stderr
    (new_hash,), = query_ledger(tmp_path, "SELECT config_hash FROM runs")
    assert new_hash != old_hash
    assert [r["id"] for r in runs_of(tmp_path)] == [run_id] and len(calls(tmp_path)) == 4


@ledger_tests
def test_tick_takes_force_as_run_does(tmp_path):
    from corral.api import Campaign

    path = bench(tmp_path)
    corral_cli(tmp_path, "tick", check=0)
    run_id = runs_of(tmp_path)[0]["id"]
    refused = corral_cli(tmp_path, "tick", "--run-id", run_id, "stages.work.call=tasks:other", check=2)
    assert "--force to continue it anyway" in refused.stderr and "+stages.work.call: tasks:other" in refused.stderr
    forced = corral_cli(tmp_path, "tick", "--run-id", run_id, "stages.work.call=tasks:other", "--force", check=0)
    assert f"run {run_id}:" in forced.stderr
    with Campaign.load(path, ["stages.work.call=tasks:work"]) as campaign:
        with pytest.raises(Exception, match="different configuration"):
            campaign.tick(run_id=run_id)
        assert campaign.tick(run_id=run_id, force=True)["run_id"] == run_id
    assert len(events(tmp_path, run_id, "force")) == 2


@ledger_tests
def test_adding_a_report_section_does_not_rerun_a_finished_benchmark(tmp_path):
    path = bench(tmp_path, merge=True)
    corral_cli(tmp_path, "run", "-q", check=0)
    run_id = runs_of(tmp_path)[0]["id"]
    edit(path, lambda c: c.update(report={"by_setting": {"by": ["setting"]}}))
    again = corral_cli(tmp_path, "run", "-q", check=0)
    assert f"run {run_id}: finished" in again.stderr
    assert "config changed: report.by_setting.by: (unset) -> [\"setting\"]" in again.stderr
    assert len(calls(tmp_path)) == 4 and (tmp_path / "merges.jsonl").read_text().split() == ["4"]
    assert [r["id"] for r in runs_of(tmp_path)] == [run_id]
    assert "setting" in corral_cli(tmp_path, "report", "by_setting", check=0).stdout


@ledger_tests
def test_lines_added_to_the_item_file_are_added_to_the_run(tmp_path):
    rows = [{"pair": i, "name": f"p{i}"} for i in range(3)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench(tmp_path, items={"from": "pairs.jsonl", "key": "{name}"})
    corral_cli(tmp_path, "run", "-q", check=0)
    run_id = runs_of(tmp_path)[0]["id"]
    with open(tmp_path / "pairs.jsonl", "a") as handle:
        handle.write("".join(json.dumps({"pair": i, "name": f"p{i}"}) + "\n" for i in (3, 4)))
    check = corral_cli(tmp_path, "check", check=0).stdout
    assert f"would continue run {run_id} and add 2 items" in check
    again = corral_cli(tmp_path, "run", "-q", check=0)
    assert f"adding 2 new items to run {run_id}" in again.stderr
    assert sorted(c["pair"] for c in calls(tmp_path)) == [0, 1, 2, 3, 4]  # each item once
    status = json.loads(corral_cli(tmp_path, "status", "--json", check=0).stdout)
    assert status["run"]["id"] == run_id and status["stages"]["work"]["done"] == 5
    assert status["run"]["status"] == "finished"
    assert events(tmp_path, run_id, "items") == ["added 2 new items"]
    assert f"would continue run {run_id}\n" in corral_cli(tmp_path, "check", check=0).stdout + "\n"
    assert "adding" not in corral_cli(tmp_path, "run", "-q", check=0).stderr


@ledger_tests
def test_a_grid_gaining_a_setting_adds_its_items_and_a_finished_merge_runs_again(tmp_path):
    path = bench(tmp_path, merge=True)
    corral_cli(tmp_path, "run", "-q", check=0)
    run_id = runs_of(tmp_path)[0]["id"]
    edit(path, lambda c: c["items"]["grid"]["setting"].append("c"))
    again = corral_cli(tmp_path, "run", "-q", check=0)
    assert f"run {run_id}: finished" in again.stderr
    assert f"adding 2 new items to run {run_id} (merge will run again)" in again.stderr
    assert len(calls(tmp_path)) == 6 and sorted({c["setting"] for c in calls(tmp_path)}) == ["a", "b", "c"]
    assert (tmp_path / "merges.jsonl").read_text().split() == ["4", "6"]
    (attempts, result), = query_ledger(tmp_path, "SELECT attempts, result FROM tasks WHERE run_id = :r AND "
                                                 "stage = 'merge'", {"r": run_id})
    assert attempts == 2 and json.loads(result) == {"merged": 6}
    assert [r["id"] for r in runs_of(tmp_path)] == [run_id]


@ledger_tests
def test_items_no_longer_in_the_campaign_are_kept_and_said(tmp_path):
    path = bench(tmp_path)
    corral_cli(tmp_path, "run", "-q", check=0)
    run_id = runs_of(tmp_path)[0]["id"]
    edit(path, lambda c: c["items"]["grid"].update(setting=["a"]))
    check = corral_cli(tmp_path, "check", check=0).stdout
    assert f"would continue run {run_id}" in check and "2 items of run" in check
    again = corral_cli(tmp_path, "run", "-q", check=0)
    assert f"2 items of run {run_id} are no longer in the campaign; they stay in the run" in again.stderr
    status = json.loads(corral_cli(tmp_path, "status", "--json", check=0).stdout)
    assert status["stages"]["work"]["done"] == 4
    assert events(tmp_path, run_id, "items") == ["2 items are no longer in the campaign; kept"]


@ledger_tests
def test_new_items_are_those_of_the_same_shard(tmp_path):
    from corral.spec.items import shard_of

    path = bench(tmp_path, grid={"task": {"range": [0, 8]}})
    corral_cli(tmp_path, "run", "-q", "--shard", "0/2", check=0)
    run_id = runs_of(tmp_path)[0]["id"]
    edit(path, lambda c: c["items"]["grid"].update(task={"range": [0, 16]}))
    again = corral_cli(tmp_path, "run", "-q", "--shard", "0/2", check=0)
    ids = [r[0] for r in query_ledger(tmp_path, "SELECT item_id FROM items WHERE run_id = :r", {"r": run_id})]
    assert {shard_of(i, 2) for i in ids} == {0} and len(ids) == len(set(ids))
    from corral.spec.items import item_identity

    assert len(ids) == sum(1 for t in range(16) if shard_of(item_identity({"task": t}), 2) == 0)
    assert f"adding {len(ids) - sum(1 for t in range(8) if shard_of(item_identity({'task': t}), 2) == 0)} " \
           f"new items to run {run_id}" in again.stderr
    assert [r["id"] for r in runs_of(tmp_path)] == [run_id]


@ledger_tests
def test_a_limited_smoke_run_continued_at_full_size_takes_the_items_it_lacks(tmp_path):
    bench(tmp_path, grid={"task": {"range": [0, 6]}})
    corral_cli(tmp_path, "run", "-q", "--limit", "2", check=0)
    run_id = runs_of(tmp_path)[0]["id"]
    refused = corral_cli(tmp_path, "run", "-q", "--run-id", run_id, check=2)
    assert "the item selection differs" in refused.stderr and "--force" in refused.stderr
    forced = corral_cli(tmp_path, "run", "-q", "--run-id", run_id, "--force", check=0)
    assert f"adding 4 new items to run {run_id}" in forced.stderr
    assert [(r["id"], r["items"], r["done"]) for r in runs_of(tmp_path)] == [(run_id, 6, 6)]
    # The run has the full selection now: the next tick continues it without --force, adding nothing.
    again = corral_cli(tmp_path, "run", "-q", "--run-id", run_id, check=0)
    assert "adding" not in again.stderr and len(runs_of(tmp_path)) == 1


@ledger_tests
def test_a_new_item_parameter_is_a_new_run(tmp_path):
    path = bench(tmp_path)
    corral_cli(tmp_path, "run", "-q", check=0)
    run_id = runs_of(tmp_path)[0]["id"]
    edit(path, lambda c: c["items"]["grid"].update(seed=[0]))
    assert "would start a new run" in corral_cli(tmp_path, "check", check=0).stdout
    refused = corral_cli(tmp_path, "run", "-q", "--run-id", run_id, check=2)
    assert "item parameters: setting, task -> seed, setting, task" in refused.stderr
    started = corral_cli(tmp_path, "run", "-q", check=0)
    assert len(runs_of(tmp_path)) == 2 and runs_of(tmp_path)[0]["id"] in started.stderr


@ledger_tests
def test_two_ticks_at_once_add_the_new_items_once(tmp_path):
    path = bench(tmp_path, grid={"task": {"range": [0, 50]}}, merge=True)
    corral_cli(tmp_path, "run", "-q", check=0)
    run_id = runs_of(tmp_path)[0]["id"]
    edit(path, lambda c: c["items"]["grid"].update(task={"range": [0, 300]}))
    ticks = [subprocess.Popen([sys.executable, "-m", "corral", "tick"], cwd=tmp_path, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [tick.communicate(timeout=120) for tick in ticks]
    assert [tick.returncode for tick in ticks] == [0, 0], outputs
    said = [err for _, err in outputs if "adding 250 new items" in err]
    assert len(said) == 1, outputs
    (count, distinct), = query_ledger(tmp_path, "SELECT count(*), count(DISTINCT item_id) FROM items "
                                                "WHERE run_id = :r", {"r": run_id})
    assert count == distinct == 300
    (tasks,), = query_ledger(tmp_path, "SELECT count(*) FROM tasks WHERE run_id = :r AND stage = 'work'",
                             {"r": run_id})
    assert tasks == 300
    assert events(tmp_path, run_id, "items") == ["added 250 new items; merge open again"]
    assert [r["id"] for r in runs_of(tmp_path)] == [run_id]


LABELS = """
import json

from corral.llm import text_of


def parse(body):
    return json.loads(text_of(body))
"""


@pytest.fixture
def sim():
    from corral.sim import Phase, SimConfig, SimServer, Turnaround

    # Real time, batches of a second or two: the CLI in a subprocess polls it over HTTP.
    turnaround = Turnaround(validating=Phase(0.3, 0.3), in_progress=Phase(1.0, 0.4, 0.02), finalizing=Phase(0.2, 0.3))
    server = SimServer(SimConfig(seed=3, turnaround=turnaround, retry_after_s=0.01,
                                 answer_template={"label": "ok", "id": "{custom_id}"}))
    server.start()
    yield server
    server.stop()


@ledger_tests
def test_raising_max_usd_then_retrying_the_budget_failures_continues_the_same_run(tmp_path, sim):
    env = {"OPENAI_API_KEY": "sim"}
    (tmp_path / "pairs.json").write_text(json.dumps([{"pair": i, "note": f"pair {i}"} for i in range(12)]))
    write_module(tmp_path, "labels", LABELS)
    request = {"model": "gpt-4o-mini", "max_tokens": 100, "response_format": {"type": "json_object"},
               "messages": [{"role": "user", "content": "A label, as JSON, for {{ item.note }}."}]}
    # Priced so that one request costs about a cent: the budget affords a few of the twelve.
    backend = {"type": "openai_batch", "base_url": sim.base_url + "/v1", "pilot": 2, "poll_interval": "0.3s",
               "tokenizer": "estimate", "expected_output_tokens": 40, "budget": {"max_usd": 0.05},
               "prices": {"gpt-4o-mini": {"input": 400.0, "output": 400.0, "batch_discount": 0.5}}}
    path = write_campaign(tmp_path, {"name": "labels", "items": {"from": "pairs.json"},
                                     "stages": {"label": {"backend": "llm", "request": request,
                                                          "parse": "labels:parse"}},
                                     "backends": {"llm": backend}})
    corral_cli(tmp_path, "run", "-q", env=env, check=1)
    run_id = runs_of(tmp_path)[0]["id"]
    failed = query_ledger(tmp_path, "SELECT error_class FROM tasks WHERE state = 'budget'")
    assert failed and {r[0] for r in failed} == {"budget"}
    assert not query_ledger(tmp_path, "SELECT id FROM tasks WHERE state = 'failed'")
    sent = sim.state.requests_enqueued["openai"]
    assert sent < 12
    # The documented workflow: raise max_usd, retry the budget failures, run again.
    edit(path, lambda c: c["backends"]["llm"]["budget"].update(max_usd=10))
    retried = corral_cli(tmp_path, "retry", "--error-class", "budget", env=env, check=0)
    assert str(len(failed)) in retried.stderr + retried.stdout
    again = corral_cli(tmp_path, "run", "-q", env=env, check=0)
    assert f"run {run_id}: finished" in again.stderr
    assert "config changed: backends.llm.budget.max_usd: 0.05 -> 10" in again.stderr
    assert [r["id"] for r in runs_of(tmp_path)] == [run_id]
    status = json.loads(corral_cli(tmp_path, "status", "--json", env=env, check=0).stdout)
    assert status["stages"]["label"]["done"] == 12
    assert sim.state.requests_enqueued["openai"] == 12  # nothing that was done was sent again


@ledger_tests
def test_items_missing_from_an_ingested_results_folder_run_when_the_run_is_continued(tmp_path):
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    for folder in (machine_a, machine_b):
        bench(folder, results="results/{setting}/{task}.json")
    corral_cli(machine_a, "run", "-q", "--ledger", str(machine_a / "own.db"), check=0)
    (machine_a / "results" / "b" / "2.json").unlink()  # one result never reached the other machine
    corral_cli(machine_b, "ingest", str(machine_a / "results"), check=0)
    run_id = runs_of(machine_b)[0]["id"]
    # ingest itself adds the campaign's items that had no file (ready to run), so nothing is left to add
    assert f"would continue run {run_id}" in corral_cli(machine_b, "check", check=0).stdout
    corral_cli(machine_b, "run", "-q", check=0)
    assert calls(machine_b) == [{"setting": "b", "task": 2}]
    status = json.loads(corral_cli(machine_b, "status", "--json", check=0).stdout)
    assert status["stages"]["work"]["done"] == 4 and status["run"]["id"] == run_id
