"""The ``anthropic_batch`` backend: Anthropic Message Batches through the official ``anthropic`` SDK.

One submission is one message batch, its requests sent inline (``custom_id`` + ``params``).
Processing is ``in_progress`` -> ``canceling`` -> ``ended``; then results are streamed once as
JSONL: ``succeeded``, ``errored`` (params are validated asynchronously, so an invalid request fails
here, alone), ``canceled`` and ``expired`` (run again, attempt kept).

Message batches carry no metadata, so finding a batch after a crash between its creation and
its recording works in two steps: the backend appends every batch it creates to a journal in the
run folder right after the API answers (``<run>/llm/<backend>-batches.jsonl``), which names it
exactly; if the crash fell before that line was written, the list endpoint is searched for the
one batch created after the submission row (by the same clock) with no more requests than the
submission holds and that no journal line claims.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from corral.backends.base import CapacityError, StageContext, SubmissionRecord
from corral.backends.llm_batch import LlmBatchBackend
from corral.backends.llm_results import (
    ApiErrorKind,
    BatchStatus,
    ResultLine,
    iter_jsonl,
    sdk_error_kind,
)
from corral.llm.packing import Entry
from corral.spec.llm import AnthropicBatchSettings

#: how long after its submission row a batch may have been created (the SDK's retries included)
FIND_AFTER = 3600.0
#: clock difference tolerated between this machine and the provider when matching creation times
CLOCK_SKEW = 2.0


class AnthropicBatchBackend(LlmBatchBackend):
    kind = "anthropic_batch"
    provider = "anthropic"

    def __init__(self, name: str, settings: AnthropicBatchSettings, **kwargs: Any):
        super().__init__(name, settings, **kwargs)
        self.settings: AnthropicBatchSettings = settings

    def make_client(self) -> Any:
        import anthropic

        return anthropic.Anthropic(api_key=self.api_key(), base_url=self.settings.base_url,
                                   max_retries=self.settings.max_retries, timeout=self.settings.timeout)

    def line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "params": body}

    def error_kind(self, exc: BaseException) -> ApiErrorKind:
        import anthropic

        return sdk_error_kind(exc, anthropic.APIConnectionError, anthropic.APIStatusError)

    def create_batch(self, stage: StageContext, submission: SubmissionRecord, entries: list[Entry],
                     model: str, in_flight_tokens: float) -> tuple[str, dict[str, Any]]:
        import anthropic

        requests = [json.loads(entry.line) for entry in entries]
        try:
            batch = self.client.messages.batches.create(requests=requests)
        except anthropic.RateLimitError as exc:
            state = self.state(stage)
            self.limit_refused(state, None)
            raise CapacityError(f"batch refused at creation (rate or queue limit): {exc}",
                                retry_after=state.backoff) from None
        return batch.id, {}

    def find_batch(self, stage: StageContext, submission: SubmissionRecord) -> tuple[str, dict[str, Any]] | None:
        journal = self.read_journal(stage)
        for entry in journal:
            if entry.get("key") == submission.idempotency_key:
                return entry["remote_id"], {"found_by": "journal"}
        claimed = {entry.get("remote_id") for entry in journal}
        start = submission.created_at - CLOCK_SKEW
        candidates = []
        for batch in self.client.messages.batches.list(limit=100):
            created = batch.created_at.timestamp()
            if created < start:
                break
            counts = batch.request_counts
            total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
            if batch.id not in claimed and created <= submission.created_at + FIND_AFTER and \
                    total <= submission.task_count:
                candidates.append((created, batch.id))
        if not candidates:
            return None
        return min(candidates)[1], {"found_by": "list"}

    def batch_status(self, sub: SubmissionRecord) -> BatchStatus:
        batch = self.client.messages.batches.retrieve(sub.remote_id)
        status = batch.processing_status
        c = batch.request_counts
        counts = {"total": c.processing + c.succeeded + c.errored + c.canceled + c.expired, "done": c.succeeded,
                  "failed": c.errored + c.canceled + c.expired}
        return BatchStatus(ended=status == "ended", running=status in ("in_progress", "canceling"), phase=status,
                           raw=batch, counts=counts)

    def result_lines(self, sub: SubmissionRecord, status: BatchStatus) -> Iterator[ResultLine | None]:
        if not status.raw.results_url:
            return
        with self.client.messages.batches.with_streaming_response.results(sub.remote_id) as response:
            for record in iter_jsonl(response.iter_lines()):
                yield _result_line(record)

    def cancel_batch(self, remote_id: str) -> None:
        self.client.messages.batches.cancel(remote_id)


def _result_line(record: dict[str, Any] | None) -> ResultLine | None:
    if record is None or not isinstance(record.get("custom_id"), str):
        return None
    custom_id = record["custom_id"]
    result = record.get("result") or {}
    kind = result.get("type")
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        message = result["message"]
        usage = message.get("usage") or {}
        cached = (usage.get("cache_read_input_tokens") or 0)
        tokens_in = usage.get("input_tokens")
        if tokens_in is not None:
            tokens_in += cached + (usage.get("cache_creation_input_tokens") or 0)
        return ResultLine(custom_id, "ok", body=message, status_code=200, tokens_in=tokens_in,
                          tokens_out=usage.get("output_tokens"), cached_in=cached)
    if kind == "expired":
        return ResultLine(custom_id, "expired")
    if kind == "canceled":
        return ResultLine(custom_id, "cancelled")
    if kind == "errored":
        error = result.get("error") or {}
        inner = error.get("error") if isinstance(error.get("error"), dict) else error
        code = inner.get("type") or ""
        status = 429 if code == "rate_limit_error" else 500 if code in ("api_error", "overloaded_error") else 400
        return ResultLine(custom_id, "error", status_code=status, code=code, message=inner.get("message"))
    return None
