"""Several controllers on one PostgreSQL ledger: who polls what, claiming without overlap, leases.

Each controller has an id (``--controller-id``, else ``CORRAL_HOST``, else the host name) and a
lease row it renews every tick. A submission records the controller that made it, and only that
controller polls and reconciles it (a local worker can only be seen from its own host). Ready
tasks are claimed with row locks that other controllers skip (PostgreSQL's ``SKIP LOCKED``), so
two controllers never put one task into two submissions. When a controller's lease has expired,
the next controller to tick marks its open submissions failed and returns their tasks to pending
without using an attempt, as for a worker that was lost.

On SQLite (one writer host per file) none of this changes anything: one tick lock per run, every
submission polled by whichever controller ticks.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Sequence

from corral.backends.base import TaskResult
from corral.engine.record import Changes, Recorder
from corral.ledger import Ledger
from corral.ledger import engine_queries as queries
from corral.states import Outcome, SubmissionState

if TYPE_CHECKING:
    from corral.ledger.engine_queries import Connection

DEFAULT_LEASE = 60.0


class Claims:
    """One controller's view of a shared ledger, for one run."""

    def __init__(self, ledger: Ledger, run_id: str, controller: str | None = None, lease: float | None = None,
                 log: Callable[[str], None] | None = None):
        self.ledger = ledger
        self.run_id = run_id
        self.controller = controller or socket.gethostname()
        self.lease = max(1.0, lease) if lease is not None else DEFAULT_LEASE
        self.shared = not ledger.is_sqlite
        self.log = log or (lambda message: None)

    @property
    def lock_name(self) -> str:
        """What the tick lock serialises: a run on SQLite, one controller's ticks of a run on PostgreSQL."""
        return f"{self.run_id}@{self.controller}" if self.shared else self.run_id

    def mine(self, rows: Sequence[Any]) -> list[Any]:
        """The submissions this controller polls: its own, and those no controller claims."""
        if not self.shared:
            return list(rows)
        return [row for row in rows if row.get("controller") in (None, self.controller)]

    # -- leases ---------------------------------------------------------------------------

    def heartbeat(self, now: float) -> None:
        with self.ledger.write() as conn:
            queries.renew_lease(conn, self.controller, socket.gethostname(), os.getpid(), now, now + self.lease)

    def reclaim_expired(self, recorder: Recorder, now: float) -> int:
        """Open submissions of controllers whose lease expired: failed, their tasks pending again
        (attempts kept). Returns how many tasks went back."""
        if not self.shared:
            return 0
        changes = Changes()
        with self.ledger.write() as conn:
            dead = queries.expired_controllers(conn, now, besides=self.controller)
            if not dead:
                return 0
            for sub_id, stage, owner in queries.open_submissions_of(conn, self.run_id, dead):
                ids = queries.in_flight_ids(conn, sub_id)
                results = [TaskResult(task_id=i, outcome=Outcome.LOST,
                                      error_message=f"controller {owner} stopped renewing its lease") for i in ids]
                recorder.apply(conn, results, sub_id, now, changes)
                self.ledger.update_submission(conn, sub_id, state=SubmissionState.FAILED, finished_at=now,
                                              info={"error": f"controller {owner} lease expired",
                                                    "reclaimed_by": self.controller})
                changes.events.append({"at": now, "run_id": self.run_id, "kind": "submission", "stage": stage,
                                       "submission_id": sub_id, "to_state": SubmissionState.FAILED,
                                       "message": f"controller {owner} lease expired; {len(ids)} tasks pending "
                                                  f"again (reclaimed by {self.controller})"})
            # A dead controller with nothing left open in any run is forgotten.
            for owner in dead:
                queries.forget_idle_controller(conn, owner)
            self.ledger.add_events(conn, changes.events)
        if changes.requeued:
            self.log(f"reclaimed {changes.requeued} tasks of controllers whose lease expired: {', '.join(dead)}")
        return changes.requeued

    # -- claiming -----------------------------------------------------------------------------

    def ready_tasks(self, conn: Connection, stage: str, now: float, limit: int) -> list[dict[str, Any]]:
        """Ready tasks to put in a new submission, locked so no other controller takes them."""
        return self.ledger.ready_tasks(conn, self.run_id, stage, now, limit, claim=self.shared)
