"""The engine: one ``tick`` = reconcile -> poll -> collect -> release -> plan -> submit.

A tick is idempotent and safe to run from cron, a loop or several machines: it holds the run's
tick lock for its whole duration and skips (or waits) when another controller holds it.
Every submission row is written, with its idempotency key, before the backend is called.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from corral.backends import Backend, make_backend
from corral.backends.base import (Backlog, CapacityError, StageContext, SubmissionPlan, SubmissionRecord, TaskSpec,
                                  TransientError)
from corral.engine.claims import Claims
from corral.engine.clock import Clock, SystemClock
from corral.engine.learning import Learning
from corral.engine.record import Changes, Recorder
from corral.engine.sending import Sending, gone
from corral.ledger import Ledger, dumps, loads, task_key
from corral.ledger import engine_queries as queries
from corral.spec import LoadedCampaign
from corral.states import (ACTIVE, ENDED_BADLY, FAILURES, IN_FLIGHT, POLLED_SUBMISSIONS, ErrorClass, Outcome,
                           RunStatus, SubmissionState, TaskState)


@dataclass
class TickReport:
    locked: bool = False
    submitted: int = 0
    submitted_tasks: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    requeued: int = 0
    stopped: int = 0          # tasks the budget stopped (state budget)
    in_flight: int = 0
    finished: bool = False
    status: str = RunStatus.ACTIVE
    next_wake: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.submitted or self.completed or self.failed or self.retried or self.requeued or self.stopped)


class Engine(Sending):
    def __init__(self, campaign: LoadedCampaign, ledger: Ledger, run_id: str, *, clock: Clock | None = None,
                 log: Callable[[str], None] | None = None, backends: dict[str, Backend] | None = None,
                 controller: str | None = None, lease: float | None = None):
        self.campaign = campaign
        self.ledger = ledger
        self.run_id = run_id
        self.clock = clock or SystemClock()
        self.log = log or (lambda message: None)
        spec = campaign.spec
        self.order = campaign.stage_order()
        self.run_dir = campaign.root / spec.workdir / "runs" / run_id
        self.stages: dict[str, StageContext] = {
            name: StageContext(name=name, spec=stage, run_id=run_id, root=campaign.root, run_dir=self.run_dir,
                               ledger_url=ledger.url, params=dict(spec.params))
            for name, stage in spec.stages.items()}
        #: what this run learned so far (durations per stage, each backend's memory), from the ledger
        self.learning = Learning(ledger, run_id)
        self.backends: dict[str, Backend] = backends or {}
        for name, settings in campaign.backends.items():
            if name not in self.backends and any(s.backend == name for s in spec.stages.values()):
                self.backends[name] = make_backend(name, settings, clock=self.clock, log=self.log,
                                                   wake=getattr(self.clock, "wake", None),
                                                   memory=self.learning.backend(name))
        self.recorder = Recorder(run_id, spec.stages, self.order, log=self.log)
        self.claims = Claims(ledger, run_id, controller=controller, lease=lease, log=self.log)
        self._status: str | None = None
        self._run_stamp: tuple | None = None
        self._next_wake: float | None = None
        #: open submissions with a failed task: a job waiting on them with afterok would never start
        self._failing_subs: set[int] = set()
        #: an open submission still to be collected though its tasks all ended (see holds_run_open)
        self._held_open = False
        Sending.__init__(self)

    # -- the tick ------------------------------------------------------------------

    def tick(self, *, wait_for_lock: bool = False, submit: bool = True) -> TickReport:
        """One pass. With ``submit=False`` it only reconciles, polls and records (used when stopping)."""
        report = TickReport()
        with self.ledger.tick_lock(self.claims.lock_name, wait=wait_for_lock) as got:
            if not got:
                report.locked = True
                return report
            if self.claims.shared:
                self.claims.heartbeat(self.clock.now())
                report.requeued += self.claims.reclaim_expired(self.recorder, self.clock.now())
            subs = self._open_submissions()
            if any(s.state == SubmissionState.SUBMITTING for s in subs):
                self._reconcile(subs, report)
            finished = self._poll(subs, report)
            subs = [s for s in subs if s.id not in finished]
            self._held_open = any(self._holds_open(s) for s in subs)
            if submit:
                self._send_backups(subs, report)
                self._plan_and_submit(subs, report)
            self.learning.flush(self.clock.now())
            if report.changed or self._status is None or finished or self._status_changed_elsewhere():
                self._finish(report)
            else:
                report.status, report.finished = self._status, self._status != RunStatus.ACTIVE
                report.next_wake = self._next_wake
        return report

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()

    # -- reconcile --------------------------------------------------------------------

    def _open_submissions(self) -> list[SubmissionRecord]:
        with self.ledger.read() as conn:
            rows = self.claims.mine(self.ledger.open_submissions(conn, self.run_id))
        return [_record(row) for row in rows]

    def _reconcile(self, subs: list[SubmissionRecord], report: TickReport) -> None:
        """Submissions written but not confirmed (a crash between the row and the backend call)."""
        for sub in subs:
            if sub.state != SubmissionState.SUBMITTING:
                continue
            backend = self.backends.get(self._backend_of(sub))
            stage = self.stages.get(sub.stage)
            if backend is None or stage is None:
                continue
            try:
                handle = backend.find(stage, sub)
            except TransientError as exc:
                self._error(report, f"looking up submission {sub.id} failed (trying again at the next tick): {exc}")
                continue
            if handle is not None:
                self._confirm(sub.id, handle.remote_id, handle.info, adopted=True)
                sub.remote_id, sub.state = handle.remote_id, SubmissionState.SUBMITTED
                sub.info = {**sub.info, **handle.info}
                self.log(f"submission {sub.id} ({sub.stage}) adopted after a restart: {handle.remote_id}")
                continue
            with self.ledger.read() as conn:
                rows = self.ledger.submission_task_rows(conn, sub.id)
            rows = [r for r in rows if r["state"] in IN_FLIGHT]
            if not rows:
                with self.ledger.write() as conn:
                    self.ledger.update_submission(conn, sub.id, state=SubmissionState.CANCELLED,
                                                  finished_at=self.clock.now())
                sub.state = SubmissionState.CANCELLED
                continue
            self.log(f"submission {sub.id} ({sub.stage}) was never sent; sending it now")
            self._send(stage, backend, sub, [self._task_spec(sub.stage, r) for r in rows], report,
                       SubmissionPlan(size=len(rows)))

    # -- poll and collect --------------------------------------------------------------------

    def _poll(self, subs: list[SubmissionRecord], report: TickReport) -> set[int]:
        """Poll open submissions and record what they report. Returns the ids that finished."""
        open_subs = [s for s in subs if s.state in POLLED_SUBMISSIONS]
        by_backend: dict[str, list[SubmissionRecord]] = {}
        for sub in open_subs:
            by_backend.setdefault(self._backend_of(sub), []).append(sub)
        now = self.clock.now()
        changes = Changes()
        polls = {}
        for name, subs in by_backend.items():
            backend = self.backends.get(name)
            if backend is None:
                continue
            try:
                polls.update(backend.poll(self.stages, subs))
            except (TransientError, ConnectionError, TimeoutError) as exc:   # an outage; anything else is a bug
                self._error(report, f"polling backend {name!r} failed (asking again at the next poll): {exc!r}")
        report.in_flight = len(open_subs)
        finished = {sid for sid, poll in polls.items() if poll.finished}
        if not any(p.results or p.finished or p.info or p.started_task_ids for p in polls.values()):
            return finished
        self._learn_durations(open_subs, polls)
        with self.ledger.write() as conn:
            for sub in open_subs:
                poll = polls.get(sub.id)
                if poll is None:
                    continue
                finished_now = {r.task_id for r in poll.results}
                started = poll.started_at or {t: now for t in poll.started_task_ids}
                self.recorder.mark_started(conn, {t: at for t, at in started.items() if t not in finished_now})
                self.recorder.apply(conn, poll.results, sub.id, now, changes)
                if any(r.outcome == Outcome.FAILED for r in poll.results):
                    self._failing_subs.add(sub.id)
                if poll.finished:
                    self.recorder.lose(conn, sub.id, now, poll.lost_error_class, poll.lost_message, changes)
                    state, info, message = gone(sub, poll)
                    self.ledger.update_submission(conn, sub.id, state=state, finished_at=now, **info)
                    changes.events.append({"at": now, "run_id": self.run_id, "kind": "submission", "stage": sub.stage,
                                           "submission_id": sub.id, "to_state": state, "message": message})
                    if message:
                        self._error(report, f"{message}; its unfinished tasks run again")
                elif poll.running and sub.state == SubmissionState.SUBMITTED:
                    self.ledger.update_submission(conn, sub.id, state=SubmissionState.RUNNING)
                if poll.info and poll.gone is None:
                    sub.info = {**sub.info, **poll.info}
                    self.ledger.update_submission(conn, sub.id, info=sub.info)
            self.recorder.release(conn, changes, now)
            self.ledger.add_events(conn, changes.events)
            self.learning.save(conn, now)
        report.completed += changes.completed
        report.failed += changes.failed
        report.retried += changes.retried
        report.requeued += changes.requeued
        report.stopped += changes.stopped
        report.in_flight = len(open_subs) - len(finished)
        if changes.any:
            stopped = f", {changes.stopped} stopped by the budget" if changes.stopped else ""
            self.log(f"collected: {changes.completed} done, {changes.failed} failed, {changes.retried} to retry, "
                     f"{changes.requeued} to run again{stopped}")
        return finished

    def _holds_open(self, sub: SubmissionRecord) -> bool:
        backend = self.backends.get(self._backend_of(sub))
        return backend is not None and backend.holds_run_open(sub)

    def _send_backups(self, subs: list[SubmissionRecord], report: TickReport) -> None:
        """Backups a poll decided on (now, or before a restart) go out with the submission's
        unfinished tasks; what the backend sent and learned is written in one transaction."""
        for sub in subs:
            backend = self.backends.get(self._backend_of(sub))
            stage = self.stages.get(sub.stage)
            if backend is None or stage is None or sub.state not in POLLED_SUBMISSIONS or not backend.backup_due(sub):
                continue
            with self.ledger.read() as conn:
                rows = [r for r in self.ledger.submission_task_rows(conn, sub.id) if r["state"] in IN_FLIGHT]
            same_backend = [s for s in subs if self._backend_of(s) == self._backend_of(sub)]
            try:
                info = backend.send_backup(stage, sub, [self._task_spec(sub.stage, r) for r in rows], same_backend)
            except (TransientError, CapacityError) as exc:
                self._error(report, f"the backup of submission {sub.id} was not sent (trying again at the next "
                                    f"tick): {exc}")
                continue
            if info:
                sub.info = {**sub.info, **info}
                with self.ledger.write() as conn:
                    self.ledger.update_submission(conn, sub.id, info=sub.info)
                    self.learning.save(conn, self.clock.now())

    def _learn_durations(self, subs: list[SubmissionRecord], polls: dict[int, Any]) -> None:
        """A moving average of task run time per stage, from the results a poll brought."""
        for sub in subs:
            poll = polls.get(sub.id)
            if poll is not None and sub.stage in self.stages:
                self.learning.learn_seconds(sub.stage, [max(0.0, r.finished_at - r.started_at) for r in poll.results
                                                        if r.started_at is not None and r.finished_at is not None])

    # -- plan and submit ------------------------------------------------------------------------

    def _plan_and_submit(self, open_subs: list[SubmissionRecord], report: TickReport) -> None:
        open_subs = list(open_subs)
        for name in reversed(self.order):
            stage = self.stages[name]
            backend = self.backends[stage.spec.backend]
            backend_subs = [s for s in open_subs if self._backend_of(s) == stage.spec.backend]
            if not backend.has_capacity(stage, backend_subs):
                continue
            now = self.clock.now()
            with self.ledger.read() as conn:
                ready = self.ledger.count_ready(conn, self.run_id, name, now)
                if not ready:
                    continue
                groups = self._batch_groups(conn, stage, ready, now)
                if groups == 0:
                    continue
                if stage.spec.per == "item":
                    more = self.ledger.any_in_states(conn, self.run_id, [name], (TaskState.WAITING,))
                    remaining = self.ledger.count_states(conn, self.run_id, name,
                                                         (TaskState.PENDING, TaskState.WAITING))
                    oldest = self.ledger.oldest_ready_at(conn, self.run_id, name)
                    backlog = Backlog(ready=ready, remaining=remaining, more_coming=more,
                                      waited=(now - oldest) if oldest is not None else 0.0,
                                      mean_seconds=self.learning.mean_seconds(name))
                else:
                    backlog = Backlog(ready=groups, remaining=groups)
                if backend.wants_cost:
                    backlog = replace(backlog, cost_spent=queries.cost_spent(conn, self.run_id))
            stage_subs = [s for s in backend_subs if s.stage == name]
            plans = backend.plan(stage, backlog, stage_subs, backend_subs)
            if stage.spec.per == "batch":
                plans = [replace(plan, size=stage.spec.size or ready) for plan in plans]
            elif stage.spec.per == "all":
                plans = [replace(plan, size=1) for plan in plans[:1]]
            for plan in plans:
                sub = self._queue(stage, plan.size)
                if sub is None:
                    break
                record, tasks = sub
                ok = self._send(stage, backend, record, tasks, report, plan)
                open_subs.append(record)
                if not ok:
                    break
        self._submit_ahead(open_subs, report)

    def _submit_ahead(self, open_subs: list[SubmissionRecord], report: TickReport) -> None:
        """Whole-stage dependencies on a backend that can hold a submission until others succeed
        (SLURM's afterok): send the dependent stage now, so the cluster runs the pipeline even while
        no controller is running. Item-level dependencies stay with the engine."""
        for name in self.order:
            stage = self.stages[name]
            spec = stage.spec
            backend = self.backends[spec.backend]
            if not spec.needs or not backend.supports_dependencies:
                continue
            if any(spec.allowed_ends(n) for n in spec.needs):
                continue  # the cluster would start it only after its needs succeeded
            needs = [self.stages[n].spec for n in spec.needs]
            if any(n.backend != spec.backend for n in needs):
                continue
            if spec.per != "all" and any(n.per != "all" for n in needs):
                continue
            upstream = [s for s in open_subs if s.stage in spec.needs]
            if not upstream or any(s.state == SubmissionState.SUBMITTING or not s.remote_id
                                   or s.id in self._failing_subs for s in upstream):
                continue
            with self.ledger.read() as conn:
                if not self.ledger.any_in_states(conn, self.run_id, [name], (TaskState.WAITING,)):
                    continue
                if self.ledger.any_in_states(conn, self.run_id, spec.needs,
                                             (TaskState.WAITING, TaskState.PENDING, *ENDED_BADLY)):
                    continue
                waiting = self.ledger.count_states(conn, self.run_id, name, (TaskState.WAITING,))
            after = sorted({rid for s in upstream for rid in (s.remote_id or "").split(",") if rid})
            plans = backend.plan(stage, Backlog(ready=waiting, remaining=waiting), [], open_subs) or \
                [SubmissionPlan(size=waiting)]
            for plan in plans:
                queued = self._queue(stage, plan.size, info={"after": after}, ahead=True)
                if queued is None:
                    break
                record, tasks = queued
                self.log(f"stage {name}: {len(tasks)} tasks sent ahead, after {', '.join(after)}")
                ok = self._send(stage, backend, record, tasks, report, plan)
                open_subs.append(record)
                if not ok:
                    break

    def _batch_groups(self, conn, stage: StageContext, ready: int, now: float) -> int:
        """How many submissions a stage may make now. ``per: batch`` holds back a partial batch
        until ``every`` has passed since its oldest item was ready, or nothing more can arrive."""
        spec = stage.spec
        if spec.per != "batch":
            return ready
        # Without a size, every batch is partial: what is ready goes once ``every`` has passed.
        full = ready // spec.size if spec.size else 0
        if spec.size and ready % spec.size == 0:
            return full
        oldest = self.ledger.oldest_ready_at(conn, self.run_id, stage.name)
        waited = oldest is not None and spec.every is not None and now - oldest >= spec.every
        upstream_open = self.ledger.any_in_states(conn, self.run_id, spec.needs, ACTIVE) or \
            self.ledger.any_in_states(conn, self.run_id, [stage.name], (TaskState.WAITING,))
        return full + (1 if waited or not upstream_open else 0)

    def _queue(self, stage: StageContext, size: int, info: dict[str, Any] | None = None,
               ahead: bool = False) -> tuple[SubmissionRecord, list[TaskSpec]] | None:
        """Write the submission row and move its tasks to queued, before any backend call.
        ``ahead``: the stage's waiting tasks go out before their needs are done (in the same
        transaction, so none is left pending for an ordinary submission)."""
        now = self.clock.now()
        key = f"corral-{uuid.uuid4().hex[:20]}"
        info = dict(info or {})
        with self.ledger.write() as conn:
            if ahead:
                queries.pend_waiting(conn, self.run_id, stage.name, size, now)
            rows = self.claims.ready_tasks(conn, stage.name, now, size)
            if not rows:
                return None
            sub_id = self.ledger.insert_submission(conn, {
                "run_id": self.run_id, "stage": stage.name, "backend": stage.spec.backend,
                "idempotency_key": key, "state": SubmissionState.SUBMITTING, "created_at": now,
                "task_count": len(rows), "info": dumps(info), "controller": self.claims.controller})
            queries.queue_tasks(conn, [r["id"] for r in rows], sub_id, now)
        record = SubmissionRecord(id=sub_id, stage=stage.name, idempotency_key=key, remote_id=None,
                                  state=SubmissionState.SUBMITTING, created_at=now, submitted_at=None,
                                  task_count=len(rows), info=info)
        return record, [self._task_spec(stage.name, r) for r in rows]

    def _confirm(self, sub_id: int, remote_id: str, info: dict[str, Any], adopted: bool = False) -> None:
        now = self.clock.now()
        with self.ledger.write() as conn:
            self.ledger.update_submission(conn, sub_id, remote_id=remote_id, state=SubmissionState.SUBMITTED,
                                          submitted_at=now, info=info)
            self.learning.save(conn, now)
            self.ledger.add_events(conn, [{"at": now, "run_id": self.run_id, "kind": "submission",
                                           "submission_id": sub_id, "to_state": SubmissionState.SUBMITTED,
                                           "message": ("adopted " if adopted else "") + remote_id}])

    def _unqueue(self, sub: SubmissionRecord, retry_after: float, message: str, consume: bool,
                 error_class: ErrorClass | None = None) -> int:
        """Take a submission's tasks back (``consume``: as a failed attempt). Returns how many."""
        from corral.backends.base import TaskResult

        now = self.clock.now()
        changes = Changes()
        error_class = error_class or (ErrorClass.SUBMIT if consume else ErrorClass.CAPACITY)
        with self.ledger.write() as conn:
            rows = self.ledger.submission_task_rows(conn, sub.id)
            outcome = Outcome.FAILED if consume else Outcome.CAPACITY
            results = [TaskResult(task_id=r["id"], outcome=outcome, error_class=error_class,
                                  error_message=message, info={"retry_after": retry_after})
                       for r in rows if r["state"] in IN_FLIGHT]
            self.recorder.apply(conn, results, sub.id, now, changes)
            self.ledger.update_submission(conn, sub.id, state=SubmissionState.FAILED, finished_at=now,
                                          info={"error": message})
            self.recorder.release(conn, changes, now)
            self.ledger.add_events(conn, changes.events)
        return len(results)

    # -- finishing -----------------------------------------------------------------------------

    def _status_changed_elsewhere(self) -> bool:
        """The run's row changed since this controller last read it: `corral cancel` or `retry`
        from another terminal, or another controller of a shared ledger recording the run's end."""
        with self.ledger.read() as conn:
            stamp = self.ledger.run_stamp(conn, self.run_id)
        return stamp != self._run_stamp

    def _finish(self, report: TickReport) -> None:
        now = self.clock.now()
        with self.ledger.read() as conn:
            active = self.ledger.any_in_states(conn, self.run_id, self.order, ACTIVE)
            stopped = (not active) and self.ledger.any_in_states(conn, self.run_id, self.order, (TaskState.BUDGET,))
            bad = (not active) and self.ledger.any_in_states(conn, self.run_id, self.order, FAILURES)
            stamp = self.ledger.run_stamp(conn, self.run_id)
            current = stamp[0] if stamp else None
            # Only needed to sleep until a backoff ends when nothing else will wake the loop.
            idle = active and not report.in_flight and not report.submitted
            next_retry = self.ledger.next_not_before(conn, self.run_id, now) if idle else None
        active = active or self._held_open
        # A run the budget stopped is not finished: raising the budget and retrying finishes it.
        status = RunStatus.ACTIVE if active else RunStatus.BUDGET_REACHED if stopped else \
            RunStatus.FINISHED_WITH_FAILURES if bad else RunStatus.FINISHED
        if current == RunStatus.CANCELLED and not active:
            status = RunStatus.CANCELLED
        if status != current:
            with self.ledger.write() as conn:
                # Several controllers of a shared ledger may see the end at once, and a cancel or
                # retry may land after this snapshot: the status is set only over what was read.
                written = self.ledger.set_run_status(conn, self.run_id, status, now, only_if=stamp)
                if written:
                    self.ledger.add_events(conn, [{"at": now, "run_id": self.run_id, "kind": "run",
                                                   "from_state": current, "to_state": status}])
                    self.log(f"run {self.run_id} is {status}")
                stamp = self.ledger.run_stamp(conn, self.run_id)
            status = stamp[0] if stamp else status
            active = status == RunStatus.ACTIVE
            if not written:
                stamp = None  # changed by someone else meanwhile: look again at the next tick
        report.status = status
        report.finished = not active
        report.next_wake = next_retry
        self._status, self._next_wake, self._run_stamp = status, next_retry, stamp

    # -- helpers ----------------------------------------------------------------------------------

    def _backend_of(self, sub: SubmissionRecord) -> str:
        stage = self.stages.get(sub.stage)
        return sub.info.get("backend") or (stage.spec.backend if stage else "local")

    def _task_spec(self, stage: str, row: dict[str, Any]) -> TaskSpec:
        params = loads(row["params"]) if row.get("params") else {}
        return TaskSpec(task_id=row["id"], key=task_key(row["id"]), stage=stage, item_idx=row["item_idx"],
                        item_id=row.get("item_id") or "all", item_key=row.get("key") or "all", params=params,
                        attempt=row["attempts"] + 1, last_error=row.get("error_class"))

    def keep_polling(self) -> None:
        """This controller ticks until the run ends (``corral run``), not once (``corral tick``)."""
        for backend in self.backends.values():
            backend.polls_on = True

    def poll_interval(self) -> float:
        intervals = [b.poll_interval for b in self.backends.values()]
        return min(intervals) if intervals else 1.0

    # -- stopping -------------------------------------------------------------------------------

    def interrupt(self, grace: float = 10.0) -> TickReport:
        """The controller is stopping: backends that run on this machine stop their work, which is
        then collected (finished tasks recorded, interrupted ones back to pending, attempts kept)."""
        subs = [s for s in self._open_submissions() if s.state != SubmissionState.SUBMITTING]
        for name, backend in self.backends.items():
            mine = [s for s in subs if self._backend_of(s) == name]
            if mine:
                backend.interrupt(self.stages, mine, grace)
        return self.tick(wait_for_lock=True, submit=False)

    def cancel(self, stage: str | None = None) -> int:
        """Cancel every unfinished task (of one stage) and ask backends to stop their submissions."""
        now = self.clock.now()
        subs = [s for s in self._open_submissions() if stage is None or s.stage == stage]
        for name, backend in self.backends.items():
            mine = [s for s in subs if self._backend_of(s) == name and s.state != SubmissionState.SUBMITTING]
            if mine:
                backend.cancel(self.stages, mine)
        with self.ledger.write() as conn:
            count, idxs = queries.cancel_active(conn, self.run_id, stage, now)
            if stage is not None:
                # What waits on the cancelled stage will never run: cancel it too.
                changes = Changes()
                changes.ended_badly[stage].extend(idxs)
                changes.cancelled[stage].extend(idxs)
                self.recorder.release(conn, changes, now)
                self.ledger.add_events(conn, changes.events)
            for sub in subs:
                self.ledger.update_submission(conn, sub.id, state=SubmissionState.CANCELLED, finished_at=now)
            # Either way the run's row changes, which a running controller notices.
            self.ledger.set_run_status(conn, self.run_id, RunStatus.CANCELLED if stage is None else RunStatus.ACTIVE,
                                       now)
            self.ledger.add_events(conn, [{"at": now, "run_id": self.run_id, "kind": "cancel", "stage": stage,
                                           "to_state": TaskState.CANCELLED, "count": count}])
        self.log(f"cancelled {count} tasks of run {self.run_id}" + (f" stage {stage}" if stage else ""))
        return count

    def retry(self, stage: str | None = None, error_class: str | None = None,
              include_cancelled: bool = False) -> int:
        """Failed tasks and those the budget stopped (and their dependents cancelled because of them) run
        again: their attempt numbers go on, with the retries `retries` allows counted afresh."""
        now = self.clock.now()
        states = [TaskState.FAILED, TaskState.BUDGET] + ([TaskState.CANCELLED] if include_cancelled else [])
        with self.ledger.write() as conn:
            rows = queries.retryable(conn, self.run_id, states, stage, error_class)
            ids = [r[0] for r in rows]
            by_stage: dict[str, list[int]] = {}
            for _, name, idx in rows:
                by_stage.setdefault(name, []).append(idx)
            for name, idxs in by_stage.items():
                # A task with needs waits for them again (they may have been cancelled too).
                state = TaskState.WAITING if self.stages[name].spec.needs else TaskState.PENDING
                queries.reset_for_retry(conn, self.run_id, name, idxs, states, state, now)
            reopened = self._reopen_dependents(conn, by_stage)
            self._release_waiting(conn, by_stage, now)
            if ids:
                self.ledger.set_run_status(conn, self.run_id, RunStatus.ACTIVE, now)
                self.ledger.add_events(conn, [{"at": now, "run_id": self.run_id, "kind": "retry", "stage": stage,
                                               "to_state": TaskState.PENDING, "count": len(ids),
                                               "message": f"{reopened} dependents waiting again"}])
        self.log(f"retry: {len(ids)} tasks of run {self.run_id} back to pending")
        return len(ids)

    def reparse(self, stage: str | None = None):
        """Kept raw answers of LLM stages through ``parse`` again (see corral.engine.reparse)."""
        from corral.engine.reparse import reparse

        return reparse(self, stage)

    def _reopen_dependents(self, conn, by_stage: dict[str, list[int]]) -> int:
        total = 0
        for name in self.order:
            spec = self.stages[name].spec
            idxs = sorted({i for need in spec.needs for i in by_stage.get(need, [])})
            if not idxs:
                continue
            if spec.per == "all":
                idxs = [-1]
            elif -1 in idxs:
                # A once-per-run stage it needs runs again: every item of this stage may run again.
                idxs = None
            hit = queries.reopen_upstream_cancelled(conn, self.run_id, name, idxs)
            if hit:
                by_stage.setdefault(name, []).extend(hit)
                total += len(hit)
        return total


    def _release_waiting(self, conn, by_stage: dict[str, list[int]], now: float) -> None:
        """Waiting tasks put back by ``retry``: pending at once where their needs are already done."""
        for name in self.order:
            if name not in by_stage:
                continue
            spec = self.stages[name].spec
            if not spec.needs:
                continue
            if spec.per == "all":
                self.recorder._release_once(conn, name, spec, now, Changes())
                continue
            item_needs = [n for n in spec.needs if self.stages[n].spec.per != "all"]
            once_needs = [n for n in spec.needs if self.stages[n].spec.per == "all"]
            if once_needs and not self.recorder._once_done(conn, once_needs, name):
                continue
            self.recorder._promote(conn, name, item_needs, sorted(set(by_stage[name])), now)


def _record(row: dict[str, Any]) -> SubmissionRecord:
    return SubmissionRecord(id=row["id"], stage=row["stage"], idempotency_key=row["idempotency_key"],
                            remote_id=row["remote_id"], state=row["state"], created_at=row["created_at"],
                            submitted_at=row["submitted_at"], task_count=row["task_count"],
                            info={**(loads(row["info"]) or {}), "backend": row["backend"]})
