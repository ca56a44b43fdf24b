"""What became of the tasks of a SLURM array element whose job ended before they reported a final
result: read from the worker's files and the scheduler's last word on the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.backends.base import TaskResult
from corral.backends.slurm_cli import ENDED, JobRow, SlurmState, Verdict
from corral.states import ErrorClass, Outcome
from corral.worker import protocol


def ended_results(manifest: dict[str, Any], element: int, edir: Path, row: JobRow | None,
                  dependency: bool = False) -> list[TaskResult]:
    """Results for an element's tasks that reported nothing final before its job ended."""
    start, end = manifest["elements"][element]
    tasks = manifest["tasks"][start:end]
    every, _ = protocol.read_results(edir)
    final: dict[int, dict[str, Any]] = {}
    for record in every:
        final[int(record["task_id"])] = record
    started, _ = protocol.read_started(edir)
    out: list[TaskResult] = []
    state = row.state if row is not None else None
    where = f"job {row.job_id}_{row.index}" if row is not None and row.index is not None else "its job"
    node = row.node if row is not None else None
    for task in tasks:
        tid = task["task_id"]
        record = final.get(tid)
        if record is not None and record.get("status") != Outcome.INTERRUPTED:
            continue   # already reported
        if record is not None and state in (SlurmState.TIMEOUT, SlurmState.DEADLINE):
            # Stopped by the time limit itself (the --signal warning, if any, did not save it).
            out.append(TaskResult(task_id=tid, outcome=Outcome.FAILED, error_class=ErrorClass.TIMEOUT,
                                  error_message=f"{where} reached its time limit ({state.value})",
                                  started_at=record.get("started_at"), host=node))
            continue
        if record is not None:
            # Stopped cleanly by a signal (--signal before the limit, preemption): runs again.
            out.append(TaskResult(task_id=tid, outcome=Outcome.INTERRUPTED, error_class=ErrorClass.INTERRUPTED,
                                  error_message=record.get("error_message")))
            continue
        if dependency:
            out.append(TaskResult(task_id=tid, outcome=Outcome.LOST, error_class=ErrorClass.UPSTREAM,
                                  error_message="a job it depends on did not succeed "
                                                "(DependencyNeverSatisfied); cancelled"))
            continue
        if state is None:
            verdict, error_class = Verdict.FAILED, ErrorClass.WORKER_LOST
        else:
            verdict, error_class = ENDED.get(state, (Verdict.FAILED, ErrorClass.WORKER_LOST))
        if state == SlurmState.FAILED and row is not None and row.signal == 9:
            error_class = ErrorClass.OOM
        message = (f"{where} ended {state.value if state else 'without a trace'}"
                   + (f" (exit {row.exit_code}:{row.signal})" if row is not None else "")
                   + (f" on {node}" if node else "") + f"; see {edir.parent}/slurm-*_{row.index if row else ''}.out")
        if tid not in started or verdict == Verdict.REQUEUE:
            out.append(TaskResult(task_id=tid, outcome=Outcome.LOST, error_class=error_class,
                                  error_message=message))
        else:
            out.append(TaskResult(task_id=tid, outcome=Outcome.FAILED, error_class=error_class,
                                  error_message=message, started_at=started.get(tid), host=node,
                                  info={"slurm_state": state.value if state else None}))
    return out
