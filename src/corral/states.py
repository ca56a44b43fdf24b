"""Task and submission states, shared by every layer."""

from __future__ import annotations

from enum import Enum


class TaskState(str, Enum):
    WAITING = "waiting"      # needs of this task are not done yet
    PENDING = "pending"      # ready to plan (after ``not_before`` when backing off)
    QUEUED = "queued"        # in a submission that has not started it
    RUNNING = "running"      # started by a worker
    DONE = "done"
    FAILED = "failed"        # attempts exhausted or not retryable; the last error is kept
    CANCELLED = "cancelled"  # by the user, or because a needed task failed (error class "upstream")
    #: not sent because sending it would pass the backend's money budget: no attempt used, not a
    #: failure; `corral retry --error-class budget` after raising the budget sends it
    BUDGET = "budget"

    def __str__(self) -> str:
        return self.value


TERMINAL = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED, TaskState.BUDGET)
IN_FLIGHT = (TaskState.QUEUED, TaskState.RUNNING)
#: not finished: waiting on needs, ready, or with a backend
ACTIVE = (TaskState.WAITING, TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING)
#: ended without a result
ENDED_BADLY = (TaskState.FAILED, TaskState.CANCELLED, TaskState.BUDGET)
#: ended without a result because something went wrong (a stop by the budget is not a failure)
FAILURES = (TaskState.FAILED, TaskState.CANCELLED)
ALL_STATES = tuple(TaskState)


class SubmissionState(str, Enum):
    SUBMITTING = "submitting"  # row written, backend call not confirmed
    SUBMITTED = "submitted"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


OPEN_SUBMISSIONS = (SubmissionState.SUBMITTING, SubmissionState.SUBMITTED, SubmissionState.RUNNING)
#: confirmed by the backend and not yet ended: what a poll asks about
POLLED_SUBMISSIONS = (SubmissionState.SUBMITTED, SubmissionState.RUNNING)


class RunStatus(str, Enum):
    ACTIVE = "active"
    FINISHED = "finished"
    FINISHED_WITH_FAILURES = "finished_with_failures"
    #: nothing left to do but tasks the budget stopped (state ``budget``): raise the budget and
    #: `corral retry --error-class budget` to finish it
    BUDGET_REACHED = "budget_reached"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class ErrorClass(str, Enum):
    """Why a task did not end done, as corral classifies it. A task whose own code raised keeps the
    exception's type name (``ValueError``) instead: ``error_class`` columns hold either."""

    # the task ran and failed (an attempt is used)
    EXIT_CODE = "exit_code"            # the command exited non-zero
    SIGNAL = "signal"                  # the command was killed by a signal
    EXCEPTION = "exception"            # a ``call:`` raised (when its type is unknown)
    TIMEOUT = "timeout"                # ran past the stage's (or the job's) time limit
    OOM = "oom"                        # out of memory
    VERIFY = "verify"                  # the output failed ``verify``
    PARSE = "parse"                    # an LLM answer that ``parse`` could not read
    INVALID_REQUEST = "invalid_request"
    SERVER_ERROR = "server_error"
    NODE_FAIL = "node_fail"
    WORKER_LOST = "worker_lost"        # started, then its worker vanished without a result
    SUBMIT = "submit"                  # the backend refused the submission for good
    GONE = "gone"                      # started, then the backend forgot its submission (HTTP 404)
    # failed at once, never retried: the same task would fail the same way
    TEMPLATE = "template"              # a command, path or request template cannot be filled for this item
    # run again without using an attempt
    INTERRUPTED = "interrupted"        # stopped by a signal or preemption
    PREEMPTED = "preempted"
    CAPACITY = "capacity"              # the backend had no room
    TRANSIENT = "transient"            # the submit call did not get through (connection, timeout, 5xx)
    RATE_LIMIT = "rate_limit"
    TOKEN_LIMIT = "token_limit"
    EXPIRED = "expired"                # the provider's batch window ended first
    # never ran
    UPSTREAM = "upstream"              # a task it needs failed or was cancelled
    CANCELLED = "cancelled"            # by the user
    BUDGET = "budget"                  # sending it would pass the budget

    def __str__(self) -> str:
        return self.value


class Outcome(str, Enum):
    """What a backend reports for one task."""

    DONE = "done"
    SKIPPED = "skipped"          # skip_if matched: done without running
    FAILED = "failed"            # consumes an attempt
    INTERRUPTED = "interrupted"  # stopped by a signal or preemption: run again, attempt kept
    CAPACITY = "capacity"        # rate limit or capacity: run again, attempt kept
    LOST = "lost"                # never started (worker gone): run again, attempt kept
    BUDGET = "budget"            # not sent: it would pass the budget (state budget, attempt kept)

    def __str__(self) -> str:
        return self.value


#: Result fields corral itself writes (a skipped task's ``{"skipped": true}``): never a report's
#: default metric.
CORRAL_RESULT_FIELDS = frozenset({Outcome.SKIPPED.value})
#: The result field a report rates when none is named and the results have it.
DEFAULT_METRIC = "success"
