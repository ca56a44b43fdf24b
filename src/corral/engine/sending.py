"""How the engine hands a planned submission to its backend, and what it makes of the answer: the
remote id recorded; a refusal for capacity or a call that did not get through (connection, timeout,
5xx: backed off, growing with each failure in a row) sends the tasks back to pending with their
attempts kept; any other failure uses an attempt of each task. Also what a submission the remote
side no longer knows is recorded as. ``Engine`` inherits this part."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.backends.base import (
    Backend,
    CapacityError,
    OutcomeUnknown,
    PollResult,
    StageContext,
    SubmissionPlan,
    SubmissionRecord,
    TaskSpec,
    TransientError,
)
from corral.errors import CorralError
from corral.states import ErrorClass, SubmissionState

if TYPE_CHECKING:
    from corral.engine.engine import TickReport

#: after a submit call that did not get through: seconds before the next, doubling per failure in a row
TRANSIENT_BACKOFF = 15.0
TRANSIENT_BACKOFF_MAX = 900.0


class TransientBackoff:
    """Submit calls in a row per backend that did not get through. Kept in memory only: the wait
    itself is each task's ``not_before``, so a fresh controller starts again at the first step."""

    def __init__(self) -> None:
        self._failures: dict[str, int] = {}

    def failed(self, backend: str, exc: TransientError, tasks: int) -> tuple[float, str]:
        """The wait before the next try, and what to log."""
        failures = self._failures[backend] = self._failures.get(backend, 0) + 1
        delay = max(exc.retry_after or 0.0, min(TRANSIENT_BACKOFF_MAX, TRANSIENT_BACKOFF * 2 ** (failures - 1)))
        return delay, (f"did not get through ({type(exc).__name__}: {exc}); its {tasks} tasks are pending again, "
                       f"attempts kept; next try in {delay:g}s ({failures} in a row)")

    def succeeded(self, backend: str) -> None:
        self._failures.pop(backend, None)


def gone(sub: SubmissionRecord, poll: PollResult) -> tuple[SubmissionState, dict[str, Any], str | None]:
    """The state, info (when it changes) and error message to record for a submission that ended."""
    if poll.gone is None:
        return SubmissionState.FINISHED, {}, None
    return (SubmissionState.FAILED, {"info": {**sub.info, **(poll.info or {}), "error": poll.gone}},
            f"submission {sub.id} ({sub.stage}, {sub.remote_id}) is gone: {poll.gone}")


class Sending:
    """The engine's calls of ``Backend.submit`` (mixed into Engine, whose ledger methods it uses)."""

    def __init__(self) -> None:
        self._transient = TransientBackoff()

    def _send(self, stage: StageContext, backend: Backend, sub: SubmissionRecord, tasks: list[TaskSpec],
              report: TickReport, plan: SubmissionPlan) -> bool:
        try:
            handle = backend.submit(stage, sub, tasks, plan)
        except CapacityError as exc:
            self._unqueue(sub, retry_after=exc.retry_after or 30.0, message=str(exc), consume=False)
            self.log(f"backend {backend.name!r} refused submission {sub.id} for capacity: {exc}")
            return False
        except OutcomeUnknown as exc:
            self._error(report, f"submission {sub.id} to {backend.name!r} may have been made ({exc}); it is looked "
                                "up again at the next tick, and sent again only if the backend does not have it")
            return False
        except TransientError as exc:
            delay, message = self._transient.failed(backend.name, exc, len(tasks))
            self._unqueue(sub, retry_after=delay, message=f"not sent, the backend did not answer: {exc}",
                          consume=False, error_class=ErrorClass.TRANSIENT)
            self._error(report, f"submission {sub.id} to {backend.name!r} {message}")
            return False
        except CorralError:
            self._unqueue(sub, retry_after=0.0, message="submission failed", consume=False)
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the tasks; their attempts are used
            # The tasks' attempts are used up: the run may have ended, so the tick must look.
            report.failed += self._unqueue(sub, retry_after=0.0, message=f"{type(exc).__name__}: {exc}",
                                           consume=True)
            report.errors.append(f"submitting to {backend.name!r} failed: {exc}")
            self.log(f"error: submission {sub.id} to {backend.name!r} failed: {exc!r}")
            return False
        self._transient.succeeded(backend.name)
        self._confirm(sub.id, handle.remote_id, handle.info)
        sub.remote_id, sub.state, sub.info = handle.remote_id, SubmissionState.SUBMITTED, handle.info
        report.submitted += 1
        report.submitted_tasks += len(tasks)
        self.log(f"submitted {sub.id} stage={stage.name} tasks={len(tasks)} backend={backend.name} "
                 f"remote={handle.remote_id}")
        return True

    def _error(self, report: TickReport, message: str) -> None:
        report.errors.append(message)
        self.log(f"error: {message}")
