"""Faults of LLM batch campaigns at the user's level: `corral run` and `corral tick` (cron) against
the simulator in real time (batches of a second or two), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from conftest import corral_cli, query_ledger
from test_llm_backends import ANSWER, campaign

from corral.sim import Phase, SimConfig, SimServer, Turnaround

pytestmark = pytest.mark.usefixtures("campaign_ledger")

ENV = {"OPENAI_API_KEY": "sim", "ANTHROPIC_API_KEY": "sim"}


@pytest.fixture
def sim_factory():
    servers = []

    def make(**config) -> SimServer:
        config.setdefault("seed", 3)
        config.setdefault("answer_template", ANSWER)
        config.setdefault("turnaround", Turnaround(validating=Phase(0.2), in_progress=Phase(0.6),
                                                   finalizing=Phase(0.1)))
        config.setdefault("retry_after_s", 0.01)
        server = SimServer(SimConfig(**config))
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def labelling(folder: Path, sim: SimServer, items: int = 8, backend: dict | None = None,
              stage: dict | None = None, **kwargs) -> Path:
    return campaign(folder, sim, "openai", items=items,
                    backend={"pilot": 0, "poll_interval": "0.2s", **(backend or {})}, stage=stage, **kwargs)


def status(folder: Path, *args: str) -> dict:
    return json.loads(corral_cli(folder, "status", "--json", *args, env=ENV, check=0).stdout)


def states(folder: Path, stage: str = "label") -> dict[str, int]:
    return {k: v for k, v in status(folder)["stages"][stage].items() if isinstance(v, int) and v}


def tick_until_finished(folder: Path, deadline_s: float = 120.0, pause: float = 0.2) -> int:
    """`corral tick` as cron would call it, until the run has ended; returns the number of ticks."""
    deadline = time.monotonic() + deadline_s
    ticks = 0
    while True:
        out = corral_cli(folder, "tick", "--json", env=ENV)
        assert out.returncode in (0, 1), out.stderr
        ticks += 1
        if json.loads(out.stdout)["status"] != "active":
            return ticks
        assert time.monotonic() < deadline, f"the run did not finish in {deadline_s:.0f}s of ticks"
        time.sleep(pause)


def test_a_straggler_is_cancelled_under_cron_ticks_as_under_run(tmp_path, sim_factory):
    # A heavy tail (sigma 1.5) over ten batches sent at once: once four came back, a batch past
    # 1.5x their median is cancelled and its unfinished requests sent again. Each tick is a fresh
    # process, so what says "everything was sent" must come from the ledger.
    sim = sim_factory(turnaround=Turnaround(validating=Phase(0.1), in_progress=Phase(6.0, 1.5),
                                            finalizing=Phase(0.1), cancelling=Phase(0.3)), seed=5)
    folder = tmp_path / "labels"
    labelling(folder, sim, items=30, backend={"max_requests_per_batch": 3, "batches_in_flight": 10,
                                              "straggler_after": 1.5, "hedge": {"mode": "off"}})
    tick_until_finished(folder)
    assert states(folder) == {"done": 30, "total": 30}
    infos = [json.loads(info or "{}") for (info,) in query_ledger(folder, "SELECT info FROM submissions")]
    stragglers = [i for i in infos if i.get("straggler")]
    assert stragglers, "no batch was cancelled as a straggler under cron ticks"
    cancels = sum(n for call, n in sim.state.http_requests.items() if call.endswith("/cancel"))
    assert cancels == len(stragglers)
    assert sim.state.requests_enqueued["openai"] > 30


def notes_request(model: str = "gpt-4o-mini") -> dict:
    # Each request reads its trajectory's notes file: a missing file cannot be rendered.
    return {"model": model, "max_tokens": 400, "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "Label {{ item.note }}: "
                                                     "{{ file_text('notes/' ~ item.trajectory ~ '.txt') }}"}]}


def with_notes(folder: Path, trajectories: list[str]) -> None:
    (folder / "notes").mkdir(parents=True, exist_ok=True)
    for name in trajectories:
        (folder / "notes" / f"{name}.txt").write_text(f"notes of {name}")


BUDGET = {"budget": {"max_usd": 100}}


def test_a_request_that_cannot_be_rendered_sent_alone_does_not_stall_a_budgeted_run(tmp_path, sim_factory):
    sim = sim_factory()
    folder = tmp_path / "labels"
    # pair 2 is of traj2, whose notes file is missing; its retry goes out alone
    labelling(folder, sim, items=4, backend=BUDGET,
              stage={"request": notes_request(), "retries": {"max": 1, "backoff": "1s"}})
    with_notes(folder, ["traj0", "traj1"])
    out = corral_cli(folder, "run", "-q", env=ENV, timeout=120)
    assert out.returncode == 1, out.stderr   # finished, with a failure
    assert "no price" not in out.stderr and "Traceback" not in out.stderr
    assert states(folder) == {"done": 3, "failed": 1, "total": 4}
    (error_class, message), = query_ledger(folder, "SELECT error_class, error_message FROM tasks "
                                                   "WHERE state = 'failed'")
    assert error_class == "template" and "traj2.txt" in message
    out = corral_cli(folder, "tick", env=ENV)
    assert out.returncode in (0, 1) and "no price" not in out.stderr


def test_a_model_without_a_price_under_a_budget_fails_its_requests_with_a_clear_message(tmp_path, sim_factory):
    sim = sim_factory()
    folder = tmp_path / "labels"
    labelling(folder, sim, items=4, backend=BUDGET, stage={"request": notes_request("gpt-unpriced")})
    with_notes(folder, ["traj0", "traj1", "traj2"])
    out = corral_cli(folder, "run", "-q", env=ENV, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert states(folder) == {"budget": 4, "total": 4}
    rows = query_ledger(folder, "SELECT error_class, error_message, attempts FROM tasks")
    assert {r[0] for r in rows} == {"budget"} and {r[2] for r in rows} == {0}
    message = rows[0][1]
    assert "model 'gpt-unpriced' has no price" in message and "backends.llm.prices" in message
    assert sim.state.requests_enqueued["openai"] == 0


def test_a_batch_the_provider_forgot_is_given_up_after_a_few_polls_and_sent_again(tmp_path, sim_factory):
    slow = Turnaround(validating=Phase(0.2), in_progress=Phase(600.0), finalizing=Phase(0.1))
    sim = sim_factory(turnaround=slow)
    folder = tmp_path / "labels"
    labelling(folder, sim, items=6)
    corral_cli(folder, "tick", env=ENV, check=0)
    assert sim.state.batches_created["openai"] == 1
    # The provider loses every batch (a fresh simulator on the same address: a key or project change).
    port = int(sim.base_url.rsplit(":", 1)[1])
    sim.stop()
    fresh = SimServer(SimConfig(seed=4, answer_template=ANSWER, retry_after_s=0.01,
                                turnaround=Turnaround(validating=Phase(0.2), in_progress=Phase(0.5),
                                                      finalizing=Phase(0.1))), port=port)
    fresh.start()
    try:
        for poll in (1, 2):
            corral_cli(folder, "tick", env=ENV, check=0)
            shown = corral_cli(folder, "status", env=ENV, check=0).stdout
            assert f"the provider does not know batch_" in shown and f"({poll} polls so far)" in shown, shown
            assert fresh.state.batches_created["openai"] == 0
        out = corral_cli(folder, "tick", env=ENV, check=0)
        assert "after 3 polls" in out.stderr and "given up, its requests are sent again" in out.stderr
        tick_until_finished(folder)
        assert states(folder) == {"done": 6, "total": 6}
        assert fresh.state.batches_created["openai"] == 1
        assert {r[0] for r in query_ledger(folder, "SELECT attempts FROM tasks")} == {1}
        shown = corral_cli(folder, "status", env=ENV, check=0).stdout
        assert "submissions failed as a whole: 1" in shown and "after 3 polls" in shown
    finally:
        fresh.stop()


def test_a_validation_failure_naming_no_request_is_sent_again_once_as_a_whole(tmp_path, sim_factory):
    sim = sim_factory()
    sim.set_faults(validation=1.0)   # the next batch fails validation, with no line numbers
    folder = tmp_path / "labels"
    labelling(folder, sim, items=6)
    corral_cli(folder, "tick", env=ENV, check=0)
    assert sim.state.batches_created["openai"] == 1
    sim.set_faults(validation=0.0)
    tick_until_finished(folder)
    assert states(folder) == {"done": 6, "total": 6}
    assert sim.state.batches_created["openai"] == 2
    assert sim.state.requests_enqueued["openai"] == 12, "the six requests went out again in one batch"
    assert {r[0] for r in query_ledger(folder, "SELECT attempts FROM tasks")} == {1}
    assert "failed validation naming no request" in (folder / ".corral" / "corral.log").read_text()


def test_a_batch_failing_validation_twice_fails_its_requests(tmp_path, sim_factory):
    sim = sim_factory()
    sim.set_faults(validation=1.0)
    folder = tmp_path / "labels"
    labelling(folder, sim, items=6)
    out = corral_cli(folder, "run", "-q", env=ENV, timeout=120)
    assert out.returncode == 1, out.stderr
    assert states(folder) == {"failed": 6, "total": 6}
    assert sim.state.batches_created["openai"] == 2
    rows = query_ledger(folder, "SELECT error_class, error_message, attempts FROM tasks")
    assert {r[0] for r in rows} == {"invalid_request"} and {r[2] for r in rows} == {1}
    assert all("failed validation twice" in r[1] for r in rows)


def run_prefix(folder: Path) -> str:
    import hashlib

    (run_id,) = query_ledger(folder, "SELECT id FROM runs")[0]
    return "c" + hashlib.sha1(run_id.encode()).hexdigest()[:10]


def input_files(sim: SimServer) -> dict[str, str]:
    """The simulator's uploaded batch input files, id -> name."""
    return {f.id: f.filename for f in list(sim.openai.files.values()) if f.purpose == "batch"}


def test_input_files_are_deleted_once_their_batch_ended(tmp_path, sim_factory):
    sim = sim_factory()
    folder = tmp_path / "labels"
    labelling(folder, sim, items=9, backend={"max_requests_per_batch": 3})
    corral_cli(folder, "tick", env=ENV, check=0)
    uploaded = input_files(sim)
    assert uploaded and all(name.startswith(run_prefix(folder) + "-corral-") for name in uploaded.values())
    tick_until_finished(folder)
    assert states(folder) == {"done": 9, "total": 9}
    batches = sim.state.batches_created["openai"]
    assert batches >= 3
    assert sim.state.files_uploaded == batches
    assert input_files(sim) == {}, "an input file was left after its batch ended"


def test_an_input_file_left_by_a_stop_during_upload_is_found_by_name_and_deleted(tmp_path, sim_factory):
    import openai

    sim = sim_factory()
    folder = tmp_path / "labels"
    labelling(folder, sim, items=3)
    corral_cli(folder, "tick", env=ENV, check=0)   # one batch in flight
    prefix = run_prefix(folder)
    client = openai.OpenAI(base_url=sim.base_url + "/v1", api_key="sim")
    # What a stop between the upload and the batch's creation leaves, an hour ago; a fresh one
    # (its batch may be being created now); and one of another run.
    left = client.files.create(file=(f"{prefix}-corral-0123456789abcdef0123.jsonl", b"{}\n"), purpose="batch")
    fresh = client.files.create(file=(f"{prefix}-corral-fedcba98765432100123.jsonl", b"{}\n"), purpose="batch")
    other = client.files.create(file=("c0000000000-corral-00000000000000000000.jsonl", b"{}\n"), purpose="batch")
    for file_id in (left.id, other.id):
        sim.openai.files[file_id].created_at -= 3600
    client.close()
    tick_until_finished(folder)
    assert states(folder) == {"done": 3, "total": 3}
    remaining = input_files(sim)
    assert left.id not in remaining, "the file left behind was not deleted"
    assert fresh.id in remaining and other.id in remaining
    assert sim.state.http_requests["GET /v1/files"] == 1, "files were listed more than once an hour"
    assert "deleted 1 input files left behind" in (folder / ".corral" / "corral.log").read_text()


def test_a_failed_batch_creation_leaves_no_input_file(tmp_path, sim_factory):
    sim = sim_factory()
    sim.fail_next("POST /v1/batches", times=1, how="disconnect")
    folder = tmp_path / "labels"
    labelling(folder, sim, items=4, backend={"max_retries": 0})
    corral_cli(folder, "tick", env=ENV, check=0)
    assert sim.state.files_uploaded == 1 and sim.state.batches_created["openai"] == 0
    assert input_files(sim) == {}, "the failed creation left its input file"
    assert {r[0] for r in query_ledger(folder, "SELECT attempts FROM tasks")} == {0}


def test_status_shows_provider_progress_and_an_eta_of_running_batches(tmp_path, sim_factory):
    # Batches of 4 whose requests finish evenly over 40 s: a few seconds in, the provider reports
    # some of them done.
    sim = sim_factory(turnaround=Turnaround(validating=Phase(0.1), in_progress=Phase(40.0), finalizing=Phase(0.1)))
    folder = tmp_path / "labels"
    labelling(folder, sim, items=12, backend={"max_requests_per_batch": 4, "batches_in_flight": 2,
                                              "expected_turnaround": "10m"})
    corral_cli(folder, "tick", env=ENV, check=0)
    deadline = time.monotonic() + 60
    while True:
        time.sleep(2)
        corral_cli(folder, "tick", env=ENV, check=0)
        llm = status(folder)["llm"]["label"]
        if llm["provider_done"]:
            break
        assert time.monotonic() < deadline, llm
    assert llm["batches_in_flight"] >= 1 and llm["requests_in_flight"] == 4 * llm["batches_in_flight"]
    assert llm["not_sent"] == 12 - llm["requests_in_flight"]
    assert 0 < llm["provider_done"] < llm["requests_in_flight"]
    # no batch finished yet: a batch without progress is expected to take expected_turnaround, one
    # with progress what its rate implies (under a minute here)
    assert llm["turnaround_basis"] == "expected_turnaround" and llm["median_turnaround_s"] == 600
    assert 0 < llm["eta_s"] <= 600 * (2 if llm["not_sent"] else 1), llm
    shown = corral_cli(folder, "status", env=ENV, check=0).stdout
    assert (f"label: {llm['batches_in_flight']} batches in flight, the provider reports {llm['provider_done']} of "
            f"{llm['requests_in_flight']} requests done") in shown or "requests done" in shown, shown
    assert "ETA ~" in shown and "expected_turnaround 10m00s per batch" in shown, shown


def test_an_llm_tasks_log_names_its_batch_custom_id_and_files(tmp_path, sim_factory):
    sim = sim_factory()
    folder = tmp_path / "labels"
    labelling(folder, sim, items=3)
    corral_cli(folder, "run", "-q", env=ENV, check=0, timeout=120)
    (batch,) = [b.id for b in sim.state.batch_list("openai")]
    shown = corral_cli(folder, "logs", "t2", env=ENV, check=0).stdout
    assert f"batch={batch}" in shown and f"custom_id={run_prefix(folder)}-t2" in shown, shown
    files = {f.id for f in sim.openai.files.values()}
    output_file = sim.state.batches[batch].files["output"]
    assert f"output_file={output_file}" in shown and output_file in files
    assert "input_file=file-" in shown and "batch_state=completed" in shown
    raw = shown.split("raw_answers=", 1)[1].split()[0]
    assert raw.endswith("/llm/raw/label/1.jsonl.gz") and Path(raw).exists()
