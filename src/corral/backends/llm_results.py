"""What comes back from a batch API, as the provider-neutral part of the LLM batch backends reads
it: a batch's status, its result lines, what each line means for its task, and which SDK errors
are an outage (try again) or say the batch is gone."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from corral.backends.base import TaskResult
from corral.llm.pricing import ModelPrice
from corral.states import ErrorClass, Outcome

#: in a TaskResult's info: sent again as a whole after a validation failure that named no request
SENT_AGAIN_WHOLE = "sent_again_whole"
#: retry-after for requests refused inside a batch for rate limits (seconds)
RATE_LIMIT_RETRY = 60.0


@dataclass
class BatchStatus:
    """A remote batch as the common code needs it."""

    ended: bool                       # nothing more will change: collect it
    running: bool = False
    phase: str = ""                   # the provider's status word
    failed: bool = False              # rejected as a whole (validation, token limit): no results
    errors: list[tuple[str, str, int | None]] = field(default_factory=list)  # (code, message, line)
    usage: dict[str, int] | None = None
    raw: Any = None
    #: the provider's own request counts: total, done (succeeded) and failed so far
    counts: dict[str, int] | None = None
    #: the provider's files of an ended batch (``output_file_id``, ``error_file_id``), if any
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class ResultLine:
    """One request's outcome as the provider reported it."""

    custom_id: str
    kind: str                          # ok | error | expired | cancelled
    body: Any = None
    status_code: int | None = None
    code: str | None = None
    message: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cached_in: int = 0


class ApiErrorKind(str, Enum):
    """What an exception from a provider's SDK means for the call that raised it."""

    TRANSIENT = "transient"   # no answer (connection, timeout), 408, 429, 5xx: the same call may work later
    GONE = "gone"             # 404 (or 401/403) for a batch: the provider does not know it (any more)
    OTHER = "other"           # a refusal (4xx) or a bug: not to be retried as is


def sdk_error_kind(exc: BaseException, connection_error: type, status_error: type) -> ApiErrorKind:
    """Classify an exception of an SDK whose errors are ``connection_error`` (timeouts included) and
    ``status_error`` (with ``status_code``), as both the openai and the anthropic SDKs have."""
    if isinstance(exc, connection_error):
        return ApiErrorKind.TRANSIENT
    if isinstance(exc, status_error):
        status = getattr(exc, "status_code", None) or 0
        if status in (408, 409, 429) or status >= 500:
            return ApiErrorKind.TRANSIENT
        if status in (401, 403, 404):
            return ApiErrorKind.GONE
    return ApiErrorKind.OTHER


def reasoning_tokens(body: Any) -> int:
    """The reasoning ("thinking") tokens of an answer where the provider reports them apart (they are
    billed as output, and counted in its output tokens): OpenAI's ``completion_tokens_details`` or
    ``output_tokens_details``, Gemini's ``thoughtsTokenCount``."""
    if not isinstance(body, dict):
        return 0
    usage = body.get("usage") or {}
    for key in ("completion_tokens_details", "output_tokens_details"):
        details = usage.get(key) if isinstance(usage, dict) else None
        if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
            return details["reasoning_tokens"]
    thoughts = (body.get("usageMetadata") or {}).get("thoughtsTokenCount")
    return thoughts if isinstance(thoughts, int) else 0


def usage_detail(line: ResultLine) -> dict[str, Any] | None:
    """What a task's ``info`` keeps of its billed usage beyond tokens in and out (``corral check``'s
    cost range reads it): cached input and reasoning tokens, where there were any."""
    detail = {"cached_in": line.cached_in or 0, "reasoning_out": reasoning_tokens(line.body)}
    detail = {k: v for k, v in detail.items() if v}
    return {"usage": detail} if detail else None


def classify_line(line: ResultLine, parse: Any, price: ModelPrice | None) -> TaskResult:
    """The task result for one result line (``task_id`` left 0 for the caller to set)."""
    usage = {"tokens_in": line.tokens_in, "tokens_out": line.tokens_out}
    cost = (price.cost(line.tokens_in or 0, line.tokens_out or 0, line.cached_in)
            if price and line.tokens_in is not None else None)
    if line.kind == "ok":
        detail = usage_detail(line)
        try:
            value = parse(line.body)
        except Exception as exc:  # noqa: BLE001 - the user's parse function failed on this answer
            return TaskResult(0, Outcome.FAILED, error_class=ErrorClass.PARSE,
                              error_message=f"{type(exc).__name__}: {exc}", cost=cost,
                              info={"raw": line.body, **(detail or {})}, **usage)
        return TaskResult(0, Outcome.DONE, result=value, cost=cost, info=detail, **usage)
    if line.kind in ("expired", "cancelled"):
        return TaskResult(0, Outcome.INTERRUPTED, error_class=ErrorClass.EXPIRED if line.kind == "expired" else None,
                          error_message=f"the batch {line.kind} before this request ran")
    code, status = (line.code or ""), line.status_code
    message = f"{code}: {line.message}" if code else (line.message or "request failed")
    if status == 429 or "rate_limit" in code:
        return TaskResult(0, Outcome.CAPACITY, error_class=ErrorClass.RATE_LIMIT, error_message=message,
                          info={"retry_after": RATE_LIMIT_RETRY})
    if (status is not None and status >= 500) or code in ("api_error", "overloaded_error", "server_error"):
        return TaskResult(0, Outcome.FAILED, error_class=ErrorClass.SERVER_ERROR, error_message=message, cost=cost,
                          **usage)
    return TaskResult(0, Outcome.FAILED, error_class=ErrorClass.INVALID_REQUEST, error_message=message, cost=cost,
                      **usage)


def validation_failure(task_ids: list[int], status: BatchStatus, sent_again: set[int] | frozenset[int] = frozenset()
                       ) -> list[TaskResult]:
    """A batch that failed validation as a whole: the requests its errors name fail; with such
    errors the others run again (attempt kept). Errors that name no request may be a passing fault
    of the provider: the requests run again once (attempt kept), and fail if their batch fails so
    again; ``sent_again`` are the tasks already sent again for that reason."""
    by_line: dict[int, str] = {}
    general = []
    for code, message, line in status.errors:
        text = f"{code}: {message}" if code else message
        if line is not None and 1 <= line <= len(task_ids):
            by_line[line] = text
        else:
            general.append(text)
    results = []
    for index, task_id in enumerate(task_ids, start=1):
        if index in by_line:
            results.append(TaskResult(task_id, Outcome.FAILED, error_class=ErrorClass.INVALID_REQUEST,
                                      error_message=f"the batch failed validation: {by_line[index]}"))
        elif by_line:
            results.append(TaskResult(task_id, Outcome.INTERRUPTED, error_class=ErrorClass.INVALID_REQUEST,
                                      error_message="another request of its batch failed validation"))
        else:
            message = "; ".join(general) or "the batch failed without saying why"
            if task_id in sent_again:
                results.append(TaskResult(task_id, Outcome.FAILED, error_class=ErrorClass.INVALID_REQUEST,
                                          error_message=f"the batch failed validation twice: {message}"))
            else:
                results.append(TaskResult(task_id, Outcome.INTERRUPTED, error_class=ErrorClass.INVALID_REQUEST,
                                          error_message="the batch failed validation naming no request "
                                                        f"({message}): sent again once",
                                          info={SENT_AGAIN_WHOLE: True}))
    return results


def early_results(info: dict[str, Any]) -> list[TaskResult]:
    """Requests of a submission never sent (rejected alone, or deferred to a later batch)."""
    results = []
    for task_id, (error_class, message) in (info.get("rejected") or {}).items():
        # Not sent because of the budget: stopped, not failed (no attempt used).
        outcome = Outcome.BUDGET if error_class == ErrorClass.BUDGET else Outcome.FAILED
        results.append(TaskResult(int(task_id), outcome, error_class=error_class, error_message=message))
    for task_id in info.get("deferred") or []:
        results.append(TaskResult(int(task_id), Outcome.CAPACITY, error_class=ErrorClass.CAPACITY,
                                  error_message="did not fit this batch; goes in a later one",
                                  info={"retry_after": 0.0}))
    return results


def task_of(custom_id: str, prefix: str) -> int | None:
    head, sep, tail = custom_id.rpartition("-t")
    if not sep or head != prefix or not tail.isdigit():
        return None
    return int(tail)


def max_output(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int):
            return value
    return None


def iter_jsonl(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any] | None]:
    for raw in lines:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            yield None
            continue
        yield value if isinstance(value, dict) else None
