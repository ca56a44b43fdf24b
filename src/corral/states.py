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

    def __str__(self) -> str:
        return self.value


TERMINAL = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)
IN_FLIGHT = (TaskState.QUEUED, TaskState.RUNNING)
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


class Outcome(str, Enum):
    """What a backend reports for one task."""

    DONE = "done"
    SKIPPED = "skipped"          # skip_if matched: done without running
    FAILED = "failed"            # consumes an attempt
    INTERRUPTED = "interrupted"  # stopped by a signal or preemption: run again, attempt kept
    CAPACITY = "capacity"        # rate limit or capacity: run again, attempt kept
    LOST = "lost"                # never started (worker gone): run again, attempt kept

    def __str__(self) -> str:
        return self.value
