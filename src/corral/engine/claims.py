"""Several controllers on one PostgreSQL ledger: who polls what, claiming without overlap, leases.

Each controller has an id (``--controller-id``, else ``CORRAL_HOST``, else the host name) and a
lease row it renews every tick. A submission records the controller that made it, and only that
controller polls and reconciles it (a local worker can only be seen from its own host). Ready
tasks are claimed with ``SELECT ... FOR UPDATE SKIP LOCKED``, so two controllers never put one task
into two submissions. When a controller's lease has expired, the next controller to tick marks
its open submissions failed and returns their tasks to pending without using an attempt, as for a
worker that was lost.

On SQLite (one writer host per file) none of this changes anything: one tick lock per run, every
submission polled by whichever controller ticks.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from corral.backends.base import TaskResult
from corral.engine.record import Changes, Recorder
from corral.ledger import Ledger, dumps, schema
from corral.states import OPEN_SUBMISSIONS, Outcome

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
        c = schema.controllers
        values = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat_at": now, "expires_at": now + self.lease}
        with self.ledger.write() as conn:
            hit = conn.execute(update(c).where(c.c.id == self.controller).values(**values)).rowcount
            if not hit:
                if conn.dialect.name == "postgresql":
                    from sqlalchemy.dialects.postgresql import insert

                    conn.execute(insert(c).values(id=self.controller, started_at=now, **values)
                                 .on_conflict_do_update(index_elements=[c.c.id], set_=values))
                else:
                    conn.execute(c.insert().prefix_with("OR REPLACE"),
                                 [{"id": self.controller, "started_at": now, **values}])

    def reclaim_expired(self, recorder: Recorder, now: float) -> int:
        """Open submissions of controllers whose lease expired: failed, their tasks pending again
        (attempts kept). Returns how many tasks went back."""
        if not self.shared:
            return 0
        c, s, t = schema.controllers, schema.submissions, schema.tasks
        changes = Changes()
        with self.ledger.write() as conn:
            dead = [r[0] for r in conn.execute(
                select(c.c.id).where(c.c.expires_at < now, c.c.id != self.controller)
                .with_for_update(skip_locked=True))]
            if not dead:
                return 0
            subs = conn.execute(select(s.c.id, s.c.stage, s.c.controller, s.c.info).where(
                s.c.run_id == self.run_id, s.c.controller.in_(dead),
                s.c.state.in_([str(x) for x in OPEN_SUBMISSIONS])).with_for_update(skip_locked=True)).all()
            for sub_id, stage, owner, _info in subs:
                ids = [r[0] for r in conn.execute(select(t.c.id).where(
                    t.c.submission_id == sub_id, t.c.state.in_(["queued", "running"])))]
                results = [TaskResult(task_id=i, outcome=Outcome.LOST,
                                      error_message=f"controller {owner} stopped renewing its lease") for i in ids]
                recorder.apply(conn, results, sub_id, now, changes)
                conn.execute(update(s).where(s.c.id == sub_id).values(
                    state="failed", finished_at=now,
                    info=dumps({"error": f"controller {owner} lease expired", "reclaimed_by": self.controller})))
                changes.events.append({"at": now, "run_id": self.run_id, "kind": "submission", "stage": stage,
                                       "submission_id": sub_id, "to_state": "failed",
                                       "message": f"controller {owner} lease expired; {len(ids)} tasks pending "
                                                  f"again (reclaimed by {self.controller})"})
            # A dead controller with nothing left open in any run is forgotten.
            for owner in dead:
                still = conn.execute(select(s.c.id).where(s.c.controller == owner,
                                                          s.c.state.in_([str(x) for x in OPEN_SUBMISSIONS]))
                                     .limit(1)).first()
                if still is None:
                    conn.execute(delete(c).where(c.c.id == owner))
            self.ledger.add_events(conn, changes.events)
        if changes.requeued:
            self.log(f"reclaimed {changes.requeued} tasks of controllers whose lease expired: {', '.join(dead)}")
        return changes.requeued

    # -- claiming -----------------------------------------------------------------------------

    def ready_tasks(self, conn: Connection, stage: str, now: float, limit: int) -> list[dict[str, Any]]:
        """Ready tasks to put in a new submission, locked so no other controller takes them."""
        return self.ledger.ready_tasks(conn, self.run_id, stage, now, limit, claim=self.shared)
