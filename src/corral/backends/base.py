"""The contract between the engine and an execution engine (local processes, SLURM, batch APIs).

A backend never touches the ledger. The engine hands it tasks to submit and asks it what became of
submissions; the backend answers with plain records. Every method may be called again after a
crash with the same arguments, so each must be safe to repeat.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from corral.clock import Clock, SystemClock
from corral.spec.models import Stage
from corral.states import Outcome


@dataclass(frozen=True)
class TaskSpec:
    """One task as a backend sees it."""

    task_id: int
    key: str            # file names and custom ids: "t<task_id>"
    stage: str
    item_idx: int
    item_id: str
    item_key: str
    params: dict[str, Any]
    attempt: int        # 1 for the first attempt
    last_error: str | None = None   # error class of the previous attempt, if it failed


@dataclass
class StageContext:
    """What a backend needs to know about the stage it submits for."""

    name: str
    spec: Stage
    run_id: str
    root: Path          # the campaign file's folder
    run_dir: Path       # <workdir>/runs/<run_id>
    ledger_url: str
    params: dict[str, Any] = field(default_factory=dict)   # the run's ``params:`` (``ctx.params``)


@dataclass(frozen=True)
class Backlog:
    """A stage's work as the planner sees it: ``ready`` now, ``remaining`` before it is finished
    (ready or waiting on its needs), whether more will become ready, and how long the oldest ready
    task has waited (seconds)."""

    ready: int
    remaining: int
    more_coming: bool = False
    waited: float = 0.0
    mean_seconds: float | None = None   # learned run time of one task, when known
    cost_spent: float = 0.0             # the run's recorded cost so far (for backends with ``wants_cost``)


@dataclass(frozen=True)
class SubmissionPlan:
    """One submission ``plan()`` decided to make: ``size`` ready tasks. A backend that decides more
    than the size (a worker slot, tasks per array element, the token room left) returns a subclass;
    the engine hands each plan back to ``submit`` unchanged but for ``size``. ``submit`` also accepts
    a plain SubmissionPlan (a submission sent again after a restart, or sent ahead of its needs) and
    then decides the rest itself."""

    size: int


@dataclass
class SubmissionRecord:
    """A submission as stored in the ledger."""

    id: int
    stage: str
    idempotency_key: str
    remote_id: str | None
    state: str
    created_at: float
    submitted_at: float | None
    task_count: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Handle:
    """What a backend returns after submitting: the remote id and anything it needs to find it again."""

    remote_id: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskResult:
    """What became of one task."""

    task_id: int
    outcome: Outcome
    result: Any = None
    error_class: str | None = None
    error_message: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    host: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None
    info: dict[str, Any] | None = None


@dataclass
class PollResult:
    """The state of one submission, plus what finished since the last poll.

    ``finished`` is true when the remote side will report nothing more for this submission: the
    engine then treats any of its tasks without a result as lost (not started) or, if
    ``started_task_ids`` lists them, as failed with ``lost_error_class``.
    """

    running: bool = False
    finished: bool = False
    results: list[TaskResult] = field(default_factory=list)
    started_task_ids: set[int] = field(default_factory=set)
    started_at: dict[int, float] = field(default_factory=dict)
    lost_error_class: str = "worker_lost"
    lost_message: str = "the worker stopped without reporting a result"
    info: dict[str, Any] | None = None
    #: the remote side no longer knows this submission (why, in words): it ends (``finished`` must
    #: be true too), its unfinished tasks are treated as above, and the engine records it as failed
    gone: str | None = None


_OUTCOMES = {"done": Outcome.DONE, "skipped": Outcome.SKIPPED, "failed": Outcome.FAILED,
             "interrupted": Outcome.INTERRUPTED}


def result_from_record(data: dict[str, Any]) -> TaskResult:
    """A TaskResult from one line of a worker's ``results.jsonl``."""
    return TaskResult(task_id=int(data["task_id"]), outcome=_OUTCOMES.get(data.get("status"), Outcome.FAILED),
                      result=data.get("result"), error_class=data.get("error_class"),
                      error_message=data.get("error_message"), started_at=data.get("started_at"),
                      finished_at=data.get("finished_at"), host=data.get("host"))


class CapacityError(Exception):
    """The backend refused a submission for lack of capacity or a rate limit: try again later."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        #: a quota on how much may be in flight at once (rather than a transient refusal)
        self.limit = False


class LearnedState:
    """What a backend (or the engine, for one stage) learned in a run: JSON values by key.

    The engine loads it from the ledger and writes back what changed in the tick that changed it,
    so a controller started from cron knows what the one before it learned. Values are kept as
    JSON gives them back (tuples become lists, dict keys strings); ``get`` returns a copy, so a
    change counts only through ``set``.
    """

    def __init__(self, values: Mapping[str, Any] | None = None):
        self._values: dict[str, Any] = {key: _plain(value) for key, value in (values or {}).items()}
        self._changed: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        return _plain(self._values[key]) if key in self._values else default

    def set(self, key: str, value: Any) -> None:
        value = _plain(value)
        if key not in self._values or self._values[key] != value:
            self._values[key] = value
            self._changed.add(key)

    def changed(self) -> dict[str, Any]:
        """The values set since the last ``saved``."""
        return {key: self._values[key] for key in sorted(self._changed)}

    def saved(self) -> None:
        self._changed.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._values


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))
class TransientError(Exception):
    """The call did not get through (connection refused or reset, timeout, HTTP 5xx, a scheduler
    that did not answer): nothing is wrong with the work. At submit its tasks go back to pending
    without using an attempt; at poll it is an outage, and the next poll asks again."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OutcomeUnknown(TransientError):
    """The submit call got no answer, may have taken effect, and the remote side could not be asked
    whether it did. The submission stays unconfirmed, its tasks with it, and is looked up again
    (``find``) at the next tick: sent again under its own key only once the remote side says it
    does not have it, never under a new one."""


class Backend(ABC):
    """One execution engine. Subclasses live one per file in this package."""

    kind: str = "abstract"
    #: True when a submission can wait remotely for others: ``submission.info["after"]`` lists their
    #: remote ids (whole-stage dependencies sent ahead, e.g. SLURM's afterok)
    supports_dependencies: bool = False
    #: seconds between polls while this backend has work in flight
    poll_interval: float = 1.0
    #: whether plan() needs ``Backlog.cost_spent`` (a sum over the run's tasks, so only on request)
    wants_cost: bool = False

    def __init__(self, name: str, settings: Any, *, clock: Clock | None = None,
                 log: Callable[[str], None] | None = None, wake: Callable[[], None] | None = None,
                 memory: LearnedState | None = None):
        self.name = name
        self.settings = settings
        #: the engine's clock, virtual in tests and benchmarks: every time decision reads ``now()``
        self.clock: Clock = clock or SystemClock()
        self.log = log or (lambda message: None)
        #: call to end the controller's sleep early when something changed (a worker exited)
        self.wake = wake or (lambda: None)
        #: what this backend learned in the run so far (kept in the ledger by the engine)
        self.memory = memory if memory is not None else LearnedState()
        #: whether the controller keeps polling after this tick (``corral run``), so that work this
        #: process holds itself (threads waiting on answers) is collected; False for one pass
        #: (``corral tick``), whose process ends with the tick
        self.polls_on = False

    def now(self) -> float:
        return self.clock.now()

    @abstractmethod
    def plan(self, stage: StageContext, backlog: Backlog, in_flight: list[SubmissionRecord],
             all_in_flight: list[SubmissionRecord]) -> list[SubmissionPlan]:
        """The submissions to make now from ``backlog.ready`` tasks (none when full or when waiting
        for more tasks makes a better submission). Everything ``submit`` needs from this decision
        travels in the plans, never in the backend object.

        ``in_flight`` are this stage's open submissions on this backend, ``all_in_flight`` those of
        every stage on this backend (they share its capacity).
        """

    def has_capacity(self, stage: StageContext, all_in_flight: list[SubmissionRecord]) -> bool:
        """A cheap check before the engine counts ready tasks: False when nothing could be submitted."""
        return True

    @abstractmethod
    def submit(self, stage: StageContext, submission: SubmissionRecord, tasks: list[TaskSpec],
               plan: SubmissionPlan) -> Handle:
        """Start ``tasks`` remotely, as ``plan`` (one of ``plan()``'s, or a plain SubmissionPlan)
        says. Raise CapacityError when refused for capacity, TransientError when the call did not
        get through; any other exception is a permanent failure and uses an attempt of each task."""

    def preview(self, stage: StageContext, submission: SubmissionRecord, tasks: list[TaskSpec]) -> dict[str, Any] | None:
        """For ``--dry-run``: what ``submit`` would send (commands, scripts, requests), sending nothing."""
        return None

    def describe_task(self, stage: StageContext, submission: SubmissionRecord, task_id: int) -> dict[str, Any] | None:
        """For ``corral logs``: where the task ran remotely (job id, state, output file, usage)."""
        return None

    @abstractmethod
    def find(self, stage: StageContext, submission: SubmissionRecord) -> Handle | None:
        """After a crash between writing a submission and recording its remote id: find it by its
        idempotency key, or return None if it was never created."""

    @abstractmethod
    def poll(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord]) -> dict[int, PollResult]:
        """What became of these submissions (of any stage) since the last poll, with as few remote
        calls as possible: one call for all of them, never one per submission or task.

        Raise TransientError when the remote side cannot be reached (the engine polls again later);
        a submission the remote side no longer knows is reported with ``PollResult.gone``. Any
        other exception is a bug and stops the controller."""

    def backup_due(self, submission: SubmissionRecord) -> bool:
        """Whether a poll decided this open submission gets a backup (its unfinished tasks sent a
        second time alongside it); the decision is in its info, so a restart carries it out."""
        return False

    def holds_run_open(self, submission: SubmissionRecord) -> bool:
        """Whether this open submission still has something to collect after all of its tasks
        ended (a cancelled second copy whose billed answers are yet to be counted): the run stays
        active until it has."""
        return False

    def send_backup(self, stage: StageContext, submission: SubmissionRecord, tasks: list[TaskSpec],
                    all_in_flight: list[SubmissionRecord]) -> dict[str, Any] | None:
        """Send the backup ``backup_due`` asked for, with ``tasks`` (the submission's unfinished
        ones). Returns what to merge into the submission's info, or None to try again at the next
        tick. Must find a backup created before a crash instead of creating a second one."""
        return None

    @abstractmethod
    def cancel(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord]) -> None:
        """Ask the remote side to stop these submissions; their results still come through poll."""

    def interrupt(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord],
                  grace: float) -> None:
        """The controller is stopping (SIGINT/SIGTERM). Backends whose work lives and dies with this
        machine stop it gracefully; remote backends leave their work running to adopt later."""

    def close(self) -> None:
        """Release resources held by this backend object."""
