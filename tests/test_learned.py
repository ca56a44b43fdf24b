"""What the engine and the backends learn in a run is kept in the ledger (SQLite and PostgreSQL):
a new controller, such as each `corral tick` from cron, decides from what the ones before learned."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import corral
from conftest import campaign_dict, corral_cli, query_ledger, write_campaign, write_module
from corral.backends.base import Backlog, LearnedState, StageContext, SubmissionRecord
from corral.engine import Engine, VirtualClock
from corral.ledger import Ledger
from corral.ledger import learned as store

# -- the ledger functions ----------------------------------------------------------------------------


def test_learned_values_are_loaded_and_upserted(ledger_url: str):
    ledger = Ledger(ledger_url)
    try:
        with ledger.write() as conn:
            assert store.save(conn, "r1", {"stage:a": {"mean_seconds": 1.5},
                                           "backend:hpc": {"job_limit": 40, "failed_nodes": {"n1": 10.0}}}, 1.0) == 3
            assert store.save(conn, "r2", {"stage:a": {"mean_seconds": 9.0}}, 1.0) == 1
            assert store.save(conn, "r1", {}, 1.0) == 0
        with ledger.write() as conn:
            # A second write of a key replaces it; the others stay.
            store.save(conn, "r1", {"backend:hpc": {"job_limit": None, "pilot.a": {"submission": 3}}}, 2.0)
        with ledger.read() as conn:
            assert store.load(conn, "r1") == {
                "stage:a": {"mean_seconds": 1.5},
                "backend:hpc": {"job_limit": None, "failed_nodes": {"n1": 10.0}, "pilot.a": {"submission": 3}}}
            assert store.load(conn, "r2") == {"stage:a": {"mean_seconds": 9.0}}
            assert store.load(conn, "other") == {}
    finally:
        ledger.close()


def test_controllers_writing_the_same_keys_at_once_never_fail(ledger_url: str):
    """Two controllers of a shared ledger write overlapping keys: the last writer wins, and no
    write deadlocks or fails on a duplicate key."""
    first, second = Ledger(ledger_url), Ledger(ledger_url)
    errors: list[BaseException] = []

    def write(ledger: Ledger, name: str, keys: list[str]) -> None:
        try:
            for n in range(40):
                with ledger.write() as conn:
                    store.save(conn, "r", {"backend:hpc": {k: [name, n] for k in keys},
                                           f"stage:{name}": {"mean_seconds": float(n)}}, float(n))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(first, "one", ["a", "b", "c"])),
               threading.Thread(target=write, args=(second, "two", ["c", "b", "a"]))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        with first.read() as conn:
            values = store.load(conn, "r")
        assert {values["backend:hpc"][k][1] for k in "abc"} == {39}
        assert values["stage:one"] == {"mean_seconds": 39.0} and values["stage:two"] == {"mean_seconds": 39.0}
    finally:
        first.close()
        second.close()


def test_memory_tracks_what_changed():
    memory = LearnedState({"limit": 4, "nodes": {"n1": 1.0}})
    assert memory.changed() == {}
    nodes = memory.get("nodes")
    nodes["n2"] = 2.0          # a copy: nothing changes until it is set
    assert memory.changed() == {} and memory.get("nodes") == {"n1": 1.0}
    memory.set("limit", 4)     # the same value is no change
    memory.set("nodes", nodes)
    memory.set("pair", (1, 2))
    assert memory.changed() == {"nodes": {"n1": 1.0, "n2": 2.0}, "pair": [1, 2]}
    memory.saved()
    assert memory.changed() == {} and "pair" in memory and memory.get("missing", 0) == 0
    with pytest.raises(TypeError):
        memory.set("bad", object())


# -- the engine's durations -----------------------------------------------------------------------------

SLEEPY = "import time\n\ndef f(item, ctx):\n    time.sleep(0.05)\n    return {'x': item['x']}\n"

FLAKY = """
import time

def f(item, ctx):
    time.sleep(0.05)
    if item["x"] >= 3 and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"x": item["x"]}
"""


@pytest.mark.usefixtures("campaign_ledger")
def test_durations_survive_a_new_engine(tmp_path: Path):
    write_module(tmp_path, "tasks", FLAKY)
    path = write_campaign(tmp_path, campaign_dict({"a": {"call": "tasks:f", "retries": {"max": 1, "backoff": "1h"}}},
                                                  items={"grid": {"x": {"range": [0, 6]}}}))
    campaign = corral.open(str(path))
    clock = VirtualClock()
    try:
        run, _ = campaign.start(clock=clock)
        first = Engine(campaign.loaded, campaign.ledger(), run.id, clock=clock)
        try:
            deadline = time.monotonic() + 60
            report = first.tick()
            # Until the worker has exited too: a new controller then has nothing left to read of it.
            while run.counts()["a"].get("done") != 3 or run.counts()["a"].get("pending") != 3 or report.in_flight:
                report = first.tick()
                assert time.monotonic() < deadline, run.counts()
                time.sleep(0.05)
            learned = first.learning.mean_seconds("a")
            assert learned is not None and 0.04 < learned < 5
        finally:
            first.close()
        # The retries' backoff ends; a new engine (a new controller) plans them with what was learned.
        clock.advance(7200)
        second = Engine(campaign.loaded, campaign.ledger(), run.id, clock=clock)
        seen: list[Backlog] = []
        backend = second.backends["local"]
        plan = backend.plan

        def spy(stage, backlog, *args):
            seen.append(backlog)
            return plan(stage, backlog, *args)

        backend.plan = spy
        try:
            assert second.learning.mean_seconds("a") == learned
            assert second.tick().submitted_tasks >= 1
            assert seen and seen[0].mean_seconds == learned and seen[0].ready == 3
        finally:
            second.close()
    finally:
        campaign.close()


@pytest.mark.usefixtures("campaign_ledger")
def test_cron_ticks_learn_durations_into_the_ledger(tmp_path: Path):
    """`corral tick` from cron: each a new process, the durations are still learned and kept."""
    write_module(tmp_path, "tasks", SLEEPY)
    write_campaign(tmp_path, campaign_dict({"a": {"call": "tasks:f"}, "b": {"call": "tasks:f", "needs": "a"}},
                                           items={"grid": {"x": {"range": [0, 8]}}}))
    for _ in range(200):
        data = json.loads(corral_cli(tmp_path, "tick", "--json", check=0).stdout)
        if data["status"] != "active":
            break
    assert data["status"] == "finished"
    rows = dict(query_ledger(tmp_path, "SELECT scope, value FROM learned WHERE key = 'mean_seconds'"))
    assert set(rows) == {"stage:a", "stage:b"}
    assert all(0.04 < json.loads(v) < 5 for v in rows.values())


# -- the SLURM backend's memory (its plan, without a cluster) ---------------------------------------------


def slurm(memory: LearnedState, **settings):
    from corral.backends.slurm import SlurmBackendImpl
    from corral.spec.slurm import SlurmBackend

    return SlurmBackendImpl("hpc", SlurmBackend(**{"type": "slurm", **settings}), memory=memory)


def stage_context(tmp_path: Path) -> StageContext:
    from corral.spec.models import Stage

    return StageContext(name="work", spec=Stage.model_validate({"run": ["true"], "backend": "hpc"}), run_id="r",
                        root=tmp_path, run_dir=tmp_path / "run", ledger_url="")


def sub(sub_id: int) -> SubmissionRecord:
    return SubmissionRecord(id=sub_id, stage="work", idempotency_key=f"k{sub_id}", remote_id="1", state="submitted",
                            created_at=0.0, submitted_at=0.0, task_count=10)


def sizes(plans) -> list[int]:
    return [plan.size for plan in plans]


def test_one_pilot_per_stage_whatever_the_controller(tmp_path: Path):
    stage = stage_context(tmp_path)
    backlog = Backlog(ready=300, remaining=300)
    memory = LearnedState()
    backend = slurm(memory)
    first = backend.plan(stage, backlog, [], [])
    assert sizes(first) == [10] and first[0].pilot
    backend._record_pilot(stage, sub(1))
    stored = memory.changed()
    assert stored["pilot.work"]["submission"] == 1
    # A new controller (the next `corral tick`) with the memory from the ledger: while the pilot
    # runs the rest waits; once it has ended the rest goes, packed, and no second pilot is sent.
    again = slurm(LearnedState(stored))
    assert again.plan(stage, backlog, [sub(1)], [sub(1)]) == []
    assert sizes(again.plan(stage, Backlog(ready=300, remaining=300, waited=301), [sub(1)], [sub(1)])) == [300]
    assert sizes(again.plan(stage, backlog, [], [])) == [300]
    assert sizes(again.plan(stage, Backlog(ready=290, remaining=290, mean_seconds=0.1), [], [])) == [290]
    assert again.tasks_per_element(Backlog(ready=290, remaining=290, mean_seconds=0.1)) == 600
    # A fresh memory (as every tick had before) would send another pilot.
    assert sizes(slurm(LearnedState()).plan(stage, backlog, [], [])) == [10]


def test_job_limit_and_failed_nodes_are_remembered(tmp_path: Path):
    memory = LearnedState()
    backend = slurm(memory, max_jobs=100)
    backend._limit = 12
    backend.memory.set("failed_nodes", {"n3": 5.0})
    again = slurm(LearnedState(memory.changed()), max_jobs=100)
    assert again.job_limit() == 12 and again.failed_nodes() == {"n3": 5.0}
    again._nodes[None] = ["n1", "n3"]
    assert again._exclusions(stage_context(tmp_path)) == ["n3"]


# -- the standard-library report reader ------------------------------------------------------------------


def test_report_fast_path_reads_the_current_schema(tmp_path: Path):
    from corral.ledger.sqlite_reader import SqliteReader

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).close()
    reader = SqliteReader.open(tmp_path / "ledger.db")
    assert reader is not None
    reader.close()


# -- the LLM batch backends' state --------------------------------------------------------------------


def test_llm_state_moves_from_the_run_folder_into_the_memory(tmp_path: Path):
    """A run begun when the state lived in ``<run>/llm/<backend>.json`` goes on from that file;
    from then on the state is in the backend's memory, which the engine keeps in the ledger."""
    from corral.backends.openai_batch import OpenAIBatchBackend
    from corral.llm.scheduler import State
    from corral.spec.llm import OpenAIBatchSettings

    stage = stage_context(tmp_path)
    old = State(tokens_per_request=321.0, pilot_done=True, history=[(1.0, 2.0)])
    old.save(stage.run_dir / "llm" / "gpt.json")
    memory = LearnedState()
    backend = OpenAIBatchBackend("gpt", OpenAIBatchSettings(), memory=memory)
    state = backend.state(stage)
    assert state.tokens_per_request == 321.0 and state.pilot_done
    state.limit_factor = 0.5
    backend.save_state()
    saved = memory.changed()["state"]
    assert saved["limit_factor"] == 0.5 and saved["tokens_per_request"] == 321.0
    (stage.run_dir / "llm" / "gpt.json").unlink()
    again = OpenAIBatchBackend("gpt", OpenAIBatchSettings(), memory=LearnedState({"state": saved})).state(stage)
    assert again.limit_factor == 0.5 and again.history == [(1.0, 2.0)] and again.pilot_done
