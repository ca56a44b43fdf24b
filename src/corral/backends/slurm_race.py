"""A race: one submission's work sent to several queues (``race:`` targets), one array each. The
first target with an element that starts (or ends) wins; the other targets' jobs are cancelled,
and how long each waited is kept with the submission."""

from __future__ import annotations

from typing import Any

from corral.backends.slurm_cli import ENDED, STARTED, JobRow


def race(jobs: list[dict[str, Any]], winner: str | None, by_job: dict[str, dict[int, JobRow]],
         pending: dict[str, JobRow], now: float) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[str]]:
    """The winning target's jobs (none while no target has started), the waits to record once a
    winner is first known (else None), and the job ids to cancel."""
    if winner is None:
        for job in jobs:
            if any(r.state in STARTED or r.state in ENDED for r in by_job.get(job["id"], {}).values()):
                winner = job["target"]
                break
        if winner is None:
            return [], None, []
        known = False
    else:
        known = True
    waits, cancel = {}, []
    for job in jobs:
        rows = list(by_job.get(job["id"], {}).values()) + ([pending[job["id"]]] if job["id"] in pending else [])
        submit = min((r.submit for r in rows if r.submit), default=None)
        start = min((r.start for r in rows if r.start), default=None)
        if job["target"] != winner:
            cancel.append(job["id"])
            waits[job["target"]] = {"queued_s": round((now - submit), 1) if submit else None, "started": False}
        else:
            waits[job["target"]] = {"queued_s": round(start - submit, 1) if start and submit else None,
                                    "started": True}
    return [j for j in jobs if j["target"] == winner], None if known else waits, cancel
