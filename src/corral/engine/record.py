"""Turning what backends report into ledger state, in one transaction per tick.

Exactly-once recording: a task's result is written only while the task is not terminal; a second
result for the same task (a backend that ran it twice) is ignored. Failures count against
attempts; interruptions, capacity refusals and never-started tasks do not. Dependents of a task
are released or cancelled in the same transaction that records it, so a crash can never leave a
finished task whose dependents were not told.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from corral.backends.base import TaskResult
from corral.ledger import dumps
from corral.ledger import engine_queries as queries
from corral.spec.models import Stage
from corral.states import ACTIVE, ENDED_BADLY, IN_FLIGHT, TERMINAL, ErrorClass, Outcome, TaskState

if TYPE_CHECKING:
    from corral.ledger.engine_queries import Connection


@dataclass
class Changes:
    """What one transaction did, per stage: item indexes that became done or ended badly."""

    done: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    ended_badly: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: those of ``ended_badly`` that were cancelled (the others failed, or were stopped by the budget)
    cancelled: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: those of ``ended_badly`` stopped by the budget
    budget: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: tasks sent back to pending (interrupted, lost, refused): stages with needs re-check them
    requeued_items: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    retried: int = 0
    requeued: int = 0
    failed: int = 0
    completed: int = 0
    stopped: int = 0       # by the budget
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.completed or self.failed or self.retried or self.requeued or self.stopped)


class Recorder:
    def __init__(self, run_id: str, stages: dict[str, Stage], order: list[str],
                 log: Callable[[str], None] | None = None):
        self.run_id = run_id
        self.stages = stages
        self.order = order
        self.log = log or (lambda m: None)
        self.dependents: dict[str, list[str]] = defaultdict(list)
        for name in order:
            for need in stages[name].needs:
                self.dependents[need].append(name)

    # -- writing ----------------------------------------------------------------

    def mark_started(self, conn: Connection, started: dict[int, float]) -> None:
        queries.mark_started(conn, started)

    def apply(self, conn: Connection, results: list[TaskResult], submission_id: int | None, now: float,
              changes: Changes) -> None:
        if not results:
            return
        rows = queries.lock_task_rows(conn, self.run_id, [r.task_id for r in results])
        updates: list[dict[str, Any]] = []
        for res in results:
            row = rows.get(res.task_id)
            if row is None:
                continue
            state = row["state"]
            if res.outcome in (Outcome.DONE, Outcome.SKIPPED):
                if state in TERMINAL:
                    continue
            elif state not in IN_FLIGHT or (
                    submission_id is not None and row["submission_id"] != submission_id):
                continue
            update_row = self._decide(row, res, now, changes)
            row["state"] = update_row["state"]
            updates.append(update_row)
        queries.write_outcomes(conn, updates)

    def lose(self, conn: Connection, submission_id: int, now: float, error_class: str, message: str,
             changes: Changes) -> None:
        """Tasks of a finished submission that never reported: started ones failed, others requeue."""
        updates = []
        for row in queries.lock_unfinished(conn, submission_id):
            if row["state"] == TaskState.RUNNING:
                res = TaskResult(task_id=row["id"], outcome=Outcome.FAILED, error_class=error_class,
                                 error_message=message)
            else:
                res = TaskResult(task_id=row["id"], outcome=Outcome.LOST)
            updates.append(self._decide(row, res, now, changes))
        queries.write_outcomes(conn, updates)

    def _decide(self, row: dict[str, Any], res: TaskResult, now: float, changes: Changes) -> dict[str, Any]:
        stage = self.stages[row["stage"]]
        base = {"tid": row["id"], "result": None, "error_class": None, "error_message": None,
                "started_at": res.started_at, "finished_at": res.finished_at, "host": res.host,
                "tokens_in": res.tokens_in, "tokens_out": res.tokens_out, "cost": res.cost,
                "info": dumps(res.info) if res.info else None, "attempts": row["attempts"],
                "not_before": None, "submission_id": row["submission_id"], "ready_at": None}
        event = {"at": now, "run_id": self.run_id, "kind": "task", "stage": row["stage"], "task_id": row["id"],
                 "submission_id": row["submission_id"], "from_state": row["state"]}
        outcome = res.outcome
        if outcome in (Outcome.DONE, Outcome.SKIPPED):
            base.update(state=TaskState.DONE, result=dumps(res.result), attempts=row["attempts"] + 1)
            if outcome == Outcome.SKIPPED:
                base["error_message"] = "skipped: skip_if matched"
            changes.done[row["stage"]].append(row["item_idx"])
            changes.completed += 1
        elif outcome == Outcome.FAILED:
            attempts = row["attempts"] + 1
            error_class = res.error_class or ErrorClass.EXCEPTION
            base.update(attempts=attempts, error_class=error_class, error_message=res.error_message,
                        result=dumps(res.result) if res.result is not None else None)
            since_retry = attempts - (row.get("attempt_base") or 0)
            if since_retry <= stage.retries.max and stage.retries.retries_on(error_class):
                delay = stage.retries.delay(since_retry)
                base.update(state=TaskState.PENDING, not_before=now + delay, ready_at=now, submission_id=None)
                event["message"] = f"attempt {attempts} failed ({error_class}); retry in {delay:g}s"
                changes.retried += 1
            else:
                base["state"] = TaskState.FAILED
                changes.ended_badly[row["stage"]].append(row["item_idx"])
                changes.failed += 1
                event["message"] = f"{error_class}: {(res.error_message or '')[:500]}"
        elif outcome == Outcome.BUDGET:
            # Not sent: the budget would be passed. It ends here without using an attempt, and what
            # needs it waits no more (a retry after raising the budget reopens both).
            base.update(state=TaskState.BUDGET, error_class=ErrorClass.BUDGET, error_message=res.error_message,
                        submission_id=None, started_at=None, finished_at=now)
            changes.ended_badly[row["stage"]].append(row["item_idx"])
            changes.budget[row["stage"]].append(row["item_idx"])
            changes.stopped += 1
            event["message"] = f"budget: {(res.error_message or '')[:500]}"
        else:
            # Interrupted, refused for capacity, or never started: the attempt is not used, and the
            # last failure's class stays (the next attempt's memory or time is scaled by it).
            base.update(state=TaskState.PENDING, ready_at=now, submission_id=None, started_at=None, finished_at=None,
                        error_class=row.get("error_class") or res.error_class, error_message=res.error_message,
                        not_before=(now + (res.info or {}).get("retry_after", 0)) if outcome == Outcome.CAPACITY else None)
            changes.requeued += 1
            changes.requeued_items[row["stage"]].append(row["item_idx"])
            event["message"] = f"{outcome.value}: runs again, attempt kept"
        event["to_state"] = base["state"]
        changes.events.append(event)
        return base

    # -- dependencies ----------------------------------------------------------------

    def release(self, conn: Connection, changes: Changes, now: float) -> None:
        """Move waiting dependents to pending (all needs done, or ended as the stage allows) or
        cancelled (a need ended badly in a way the stage does not allow)."""
        for name in self.order:
            stage = self.stages[name]
            if not stage.needs:
                continue
            if changes.requeued_items.get(name):
                self._rewait(conn, name, changes.requeued_items[name], now, changes)
            if stage.per == "all":
                self._release_once(conn, name, stage, now, changes)
                continue
            item_needs = [n for n in stage.needs if self.stages[n].per != "all"]
            once_needs = [n for n in stage.needs if self.stages[n].per == "all"]
            if any(-1 in self._blocking_ends(name, n, changes) for n in once_needs):
                every = queries.waiting_idxs(conn, self.run_id, name)
                self._cancel_waiting(conn, name, every, now, changes, because=once_needs)
                continue
            bad = sorted({i for need in item_needs for i in self._blocking_ends(name, need, changes)})
            if bad:
                self._cancel_waiting(conn, name, bad, now, changes, because=item_needs)
            if once_needs and not self._once_done(conn, once_needs, name):
                continue
            if any(-1 in self._finished(name, n, changes) for n in once_needs):
                self._promote(conn, name, item_needs, None, now)
                continue
            done = sorted({i for need in item_needs for i in self._finished(name, need, changes)})
            if done:
                self._promote(conn, name, item_needs, done, now)

    def _blocking_ends(self, name: str, need: str, changes: Changes) -> list[int]:
        """Items of ``need`` that ended badly in this transaction in a way ``name`` does not allow."""
        allowed = self.stages[name].allowed_ends(need)
        cancelled, budget = set(changes.cancelled.get(need, [])), set(changes.budget.get(need, []))

        def end(i: int) -> TaskState:
            return TaskState.CANCELLED if i in cancelled else TaskState.BUDGET if i in budget else TaskState.FAILED
        return [i for i in changes.ended_badly.get(need, []) if end(i).value not in allowed]

    def _finished(self, name: str, need: str, changes: Changes) -> list[int]:
        """Items of ``need`` that finished in this transaction as ``name`` needs: done, or ended as allowed."""
        blocking = set(self._blocking_ends(name, need, changes))
        return changes.done.get(need, []) + [i for i in changes.ended_badly.get(need, []) if i not in blocking]

    def blocking_states(self, name: str, need: str) -> list[TaskState]:
        """The end states of ``need``'s tasks that cancel ``name``'s."""
        allowed = self.stages[name].allowed_ends(need)
        return [s for s in ENDED_BADLY if s.value not in allowed]

    def _rewait(self, conn: Connection, name: str, idxs: list[int], now: float, changes: Changes) -> None:
        """Tasks sent ahead of their needs (a cluster holding them with afterok) that came back to
        pending wait again; the release below promotes those whose needs are done, or cancels."""
        queries.wait_again(conn, self.run_id, name, idxs)
        stage = self.stages[name]
        if stage.per == "all":
            return
        item_needs = [n for n in stage.needs if self.stages[n].per != "all"]
        once_needs = [n for n in stage.needs if self.stages[n].per == "all"]
        if any(queries.has_tasks_in(conn, self.run_id, [n], self.blocking_states(name, n)) for n in once_needs):
            self._cancel_waiting(conn, name, idxs, now, changes, because=once_needs)
            return
        if once_needs and not self._once_done(conn, once_needs, name):
            return
        self._promote(conn, name, item_needs, sorted(set(idxs)), now)

    def _once_done(self, conn: Connection, stages: list[str], dependent: str | None = None) -> bool:
        """Whether the once-per-run tasks of ``stages`` are done (or ended as ``dependent`` allows)."""
        def finished(stage: str) -> bool:
            state = queries.once_state(conn, self.run_id, stage)
            allowed = self.stages[dependent].allowed_ends(stage) if dependent else frozenset()
            return state == TaskState.DONE or (state is not None and str(state) in allowed)
        return all(finished(stage) for stage in stages)

    def _promote(self, conn: Connection, name: str, needs: list[str], idxs: list[int] | None,
                 now: float) -> None:
        """Waiting tasks of ``name`` (for items ``idxs``, or all) whose per-item needs are done."""
        stage = self.stages[name]
        queries.promote_waiting(conn, self.run_id, name, needs, idxs, now,
                                allowed={need: stage.allowed_ends(need) for need in needs})

    def _cancel_waiting(self, conn: Connection, name: str, idxs: list[int], now: float, changes: Changes,
                        because: list[str]) -> None:
        message = f"a needed task ({', '.join(because)}) did not finish"
        for part in queries.chunks(idxs):
            hit = queries.cancel_waiting(conn, self.run_id, name, part, now, message)
            if not hit:
                continue
            changes.ended_badly[name].extend(hit)
            changes.cancelled[name].extend(hit)
            changes.events.append({"at": now, "run_id": self.run_id, "kind": "upstream", "stage": name,
                                   "from_state": TaskState.WAITING, "to_state": TaskState.CANCELLED,
                                   "count": len(hit),
                                   "message": f"{len(hit)} tasks cancelled: a needed task did not finish"})

    def _release_once(self, conn: Connection, name: str, stage: Stage, now: float, changes: Changes) -> None:
        if queries.once_state(conn, self.run_id, name) != TaskState.WAITING:
            return
        if queries.has_tasks_in(conn, self.run_id, stage.needs, ACTIVE):
            return
        if any(queries.has_tasks_in(conn, self.run_id, [n], self.blocking_states(name, n)) for n in stage.needs):
            self._cancel_waiting(conn, name, [-1], now, changes, because=stage.needs)
            return
        queries.release_once(conn, self.run_id, name, now)
