"""SLURM's job states and command failures as corral reads them, from literal sacct/squeue output
(no cluster needed): every state word SLURM prints translates explicitly, and a word corral does not
know is UNKNOWN: neither running nor ended, logged once, asked about again at the next poll."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.backends.base import (
    CapacityError,
    StageContext,
    SubmissionRecord,
    TransientError,
)
from corral.backends.slurm import SlurmBackendImpl, job_name_for
from corral.backends.slurm_cli import (
    ENDED,
    LIVE,
    SCHEDULER_STATES,
    STARTED,
    SlurmError,
    SlurmState,
    failure,
    parse_sacct,
    parse_squeue,
)
from corral.clock import VirtualClock
from corral.spec.models import Stage
from corral.spec.slurm import SlurmBackend

SACCT = """\
4100_0|COMPLETED|0:0|00:00:05||1|node1|2026-01-05T10:00:00|2026-01-05T10:00:01|2026-01-05T10:00:06|None|corral-k:0
4100_0.batch|COMPLETED|0:0|00:00:05|2048K|1|node1|2026-01-05T10:00:01|2026-01-05T10:00:01|2026-01-05T10:00:06||
4100_1|CANCELLED by 1000|0:15|00:00:02||1|node1|2026-01-05T10:00:00|2026-01-05T10:00:01|2026-01-05T10:00:03|None|corral-k:0
4100_2|OUT_OF_MEMORY|0:125|00:01:00||1|node2|2026-01-05T10:00:00|2026-01-05T10:00:01|2026-01-05T10:01:01|None|corral-k:0
4100_3|NODE_FAIL|1:0|00:00:30||1|node3|2026-01-05T10:00:00|2026-01-05T10:00:01|2026-01-05T10:00:31|None|corral-k:0
4100_4|SPECIAL_EXIT|0:0|00:00:30||1|node3|2026-01-05T10:00:00|2026-01-05T10:00:01|2026-01-05T10:00:31|None|corral-k:0
4100_5|LAUNCH_FAILED|1:0|00:00:00||1|node3|2026-01-05T10:00:00|2026-01-05T10:00:01|2026-01-05T10:00:01|None|corral-k:0
4100_6|WARPED_BY_PLUGIN|0:0|00:00:10||1|node1|2026-01-05T10:00:00|2026-01-05T10:00:01|Unknown|None|corral-k:0
4100_[7-9%2]|PENDING|0:0|00:00:00||1|None assigned|2026-01-05T10:00:00|Unknown|Unknown|JobArrayTaskLimit|corral-k:0
"""

SQUEUE = """\
4200_0|RUNNING|None|corral-k:0|node1
4200_[1-3]|PENDING|Priority|corral-k:0|
4201|CG|None|corral-k:1|node2
4202|REQUEUE_HOLD|JobHeldAdmin|corral-k:2|
4203|RESV_DEL_HOLD|None|corral-k:3|
4204|BRAND_NEW_STATE|None|corral-k:4|
"""


def test_every_state_word_translates_explicitly():
    for word in ("PENDING", "RUNNING", "COMPLETING", "COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                 "PREEMPTED", "CANCELLED", "BOOT_FAIL", "DEADLINE", "REQUEUED", "RESIZING", "SUSPENDED", "REVOKED",
                 "SPECIAL_EXIT", "STOPPED", "CONFIGURING", "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESV_DEL_HOLD"):
        assert SlurmState.parse(word).value == word
    compact = {"PD": "PENDING", "R": "RUNNING", "CG": "COMPLETING", "CD": "COMPLETED", "F": "FAILED", "TO": "TIMEOUT",
               "OOM": "OUT_OF_MEMORY", "NF": "NODE_FAIL", "PR": "PREEMPTED", "CA": "CANCELLED", "BF": "BOOT_FAIL",
               "DL": "DEADLINE", "RQ": "REQUEUED", "RS": "RESIZING", "S": "SUSPENDED", "RV": "REVOKED",
               "SE": "SPECIAL_EXIT", "ST": "STOPPED"}
    for code, word in compact.items():
        assert SCHEDULER_STATES[code].value == word
    assert SlurmState.parse("CANCELLED by 1000") == SlurmState.CANCELLED
    assert SlurmState.parse("RUNNING+") == SlurmState.RUNNING
    assert SlurmState.parse("WARPED_BY_PLUGIN") == SlurmState.UNKNOWN
    assert SlurmState.parse("") == SlurmState.UNKNOWN
    # Each known state is live or ended, never both; UNKNOWN is neither, and not started.
    for state in SlurmState:
        assert (state in LIVE) + (state in ENDED) == (0 if state == SlurmState.UNKNOWN else 1), state
    assert SlurmState.UNKNOWN not in STARTED


def test_sacct_lines():
    rows = {row.key if row.pending_range is None else row.pending_range: row for row in parse_sacct(SACCT)}
    assert rows["4100_0"].state == SlurmState.COMPLETED and rows["4100_0"].max_rss == 2048 * 1024
    assert rows["4100_0"].elapsed == 5.0 and rows["4100_0"].node == "node1" and rows["4100_0"].comment == "corral-k:0"
    assert rows["4100_1"].state == SlurmState.CANCELLED and rows["4100_1"].signal == 15
    assert rows["4100_2"].state == SlurmState.OUT_OF_MEMORY and rows["4100_2"].exit_code == 0
    assert rows["4100_3"].state == SlurmState.NODE_FAIL and rows["4100_3"].exit_code == 1
    assert rows["4100_4"].state == SlurmState.SPECIAL_EXIT and rows["4100_4"].state in LIVE
    assert rows["4100_5"].state == SlurmState.LAUNCH_FAILED and rows["4100_5"].state in ENDED
    unknown = rows["4100_6"]
    assert unknown.state == SlurmState.UNKNOWN and unknown.raw_state == "WARPED_BY_PLUGIN"
    pending = rows["[7-9%2]"]
    assert pending.state == SlurmState.PENDING and pending.node is None and pending.reason == "JobArrayTaskLimit"


def test_squeue_lines():
    rows = {row.key if row.pending_range is None else row.pending_range: row for row in parse_squeue(SQUEUE)}
    assert rows["4200_0"].state == SlurmState.RUNNING and rows["4200_0"].node == "node1"
    assert rows["[1-3]"].state == SlurmState.PENDING and rows["[1-3]"].job_id == "4200"
    assert rows["4201"].state == SlurmState.COMPLETING and rows["4201"].index is None
    assert rows["4202"].state == SlurmState.REQUEUE_HOLD and rows["4202"].reason == "JobHeldAdmin"
    assert rows["4203"].state == SlurmState.RESV_DEL_HOLD
    assert rows["4204"].state == SlurmState.UNKNOWN and rows["4204"].raw_state == "BRAND_NEW_STATE"


@pytest.mark.parametrize("message, kind", [
    ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", TransientError),
    ("slurm_load_jobs error: Unable to contact slurm controller (connect failure)", TransientError),
    ("sbatch: error: Batch job submission failed: Resource temporarily unavailable", TransientError),
    ("squeue: error: slurm_receive_msg: Zero Bytes were transmitted or received", TransientError),
    ("sbatch: error: AssocMaxSubmitJobLimit", CapacityError),
    ("sbatch: error: Batch job submission failed: Invalid partition name specified", SlurmError),
    ("slurm_load_jobs error: Invalid job id specified", SlurmError),
])
def test_command_failures_are_classified(message, kind):
    assert type(failure("sbatch", 1, message)) is kind


class FakeCommands:
    """sacct lists one array whose element 0 is in a state corral does not know."""

    def __init__(self, state: str):
        self.state = state

    def sacct(self, name: str, since: float):
        return parse_sacct(f"5000_0|{self.state}|0:0|00:00:10||1|node1|2026-01-05T10:00:00|"
                           "2026-01-05T10:00:01|Unknown|None|corral-k:0\n")

    def squeue(self, name: str, all_states: bool = False):
        return []

    def scancel(self, job_ids):
        raise AssertionError("nothing is cancelled")

    def max_array_size(self) -> int:
        return 1001


def test_an_unknown_state_is_neither_running_nor_ended_and_logged_once(tmp_path: Path):
    clock, said = VirtualClock(), []
    backend = SlurmBackendImpl("cluster", SlurmBackend(), clock=clock, log=said.append)
    backend.commands = FakeCommands("WARPED_BY_PLUGIN")
    stage = StageContext(name="work", spec=Stage(call="m:f", backend="cluster"), run_id="r1", root=tmp_path,
                         run_dir=tmp_path / "runs" / "r1", ledger_url="")
    sub = SubmissionRecord(id=1, stage="work", idempotency_key="corral-k", remote_id="5000", state="running",
                           created_at=clock.now(), submitted_at=clock.now(), task_count=1,
                           info={"jobs": [{"id": "5000", "offset": 0, "count": 1, "target": None}], "elements": 1,
                                 "job_name": job_name_for("r1")})
    for _ in range(3):
        clock.advance(3600)   # long past missing_grace: an unlisted job would count as gone by now
        poll = backend.poll({"work": stage}, [sub])[1]
        assert not poll.running and not poll.finished and not poll.results and poll.gone is None
    assert len([m for m in said if "WARPED_BY_PLUGIN" in m]) == 1, said
    backend.commands = FakeCommands("RUNNING")
    assert backend.poll({"work": stage}, [sub])[1].running


class NoJobs(FakeCommands):
    def sacct(self, name: str, since: float):
        return []


def test_a_job_unknown_to_sacct_and_squeue_long_after_submission_is_gone(tmp_path: Path):
    from corral.worker import protocol

    clock = VirtualClock()
    backend = SlurmBackendImpl("cluster", SlurmBackend(), clock=clock)
    backend.commands = NoJobs("")
    stage = StageContext(name="work", spec=Stage(call="m:f", backend="cluster"), run_id="r1", root=tmp_path,
                         run_dir=tmp_path / "runs" / "r1", ledger_url="")
    folder = protocol.submission_dir(stage.run_dir, 1)
    protocol.write_manifest(folder, {"elements": [[0, 2]], "tasks": [{"task_id": 7}, {"task_id": 8}]})
    sub = SubmissionRecord(id=1, stage="work", idempotency_key="corral-k", remote_id="5000", state="submitted",
                           created_at=clock.now(), submitted_at=clock.now(), task_count=2,
                           info={"jobs": [{"id": "5000", "offset": 0, "count": 1, "target": None}], "elements": 1,
                                 "job_name": job_name_for("r1")})
    poll = backend.poll({"work": stage}, [sub])[1]
    assert not poll.finished, "just submitted: not listed yet"
    clock.advance(3600)
    poll = backend.poll({"work": stage}, [sub])[1]
    assert poll.finished and "no record of job(s) 5000" in poll.gone
    # Never started: both run again with their attempts kept.
    assert sorted((r.task_id, r.outcome.value) for r in poll.results) == [(7, "lost"), (8, "lost")]


def test_the_first_target_to_start_wins_a_race():
    from corral.backends.slurm_race import race

    jobs = [{"id": "6000", "offset": 0, "count": 1, "target": "low"},
            {"id": "6001", "offset": 0, "count": 1, "target": "debug"}]
    rows = parse_squeue("6000|PENDING|Priority|k:0|\n6001|RUNNING|None|k:1|node1\n")
    by_job = {row.job_id: {0: row} for row in rows}
    assert race(jobs, None, {"6000": by_job["6000"]}, {}, 100.0) == ([], None, [])
    won, waits, cancel = race(jobs, None, by_job, {}, 100.0)
    assert [j["target"] for j in won] == ["debug"] and cancel == ["6000"]
    assert waits == {"low": {"queued_s": None, "started": False}, "debug": {"queued_s": None, "started": True}}
    # Once the winner is recorded, the waits are not recorded again; the loser is still cancelled.
    assert race(jobs, "debug", by_job, {}, 200.0) == ([jobs[1]], None, ["6000"])
    # An element in a state corral does not know has not started: no winner yet.
    odd = {"6001": {0: parse_squeue("6001|BRAND_NEW_STATE|None|k:1|\n")[0]}}
    assert race(jobs, None, odd, {}, 100.0) == ([], None, [])
