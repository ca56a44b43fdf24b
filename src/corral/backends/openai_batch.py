"""The ``openai_batch`` backend: the OpenAI Batch API through the official ``openai`` SDK.

One submission is one batch: its requests go up as a JSONL file (``purpose=batch``), the batch is
created with the settings' ``completion_window`` (24h at OpenAI) and the submission's idempotency
key in its ``metadata``, so that after a crash the batch is found again through the list endpoint
and adopted, never created twice. When the batch ends its output and error files are read once,
line by line, and matched by ``custom_id``. A provider that takes OpenAI's format is reached with
``profile:`` (corral.spec.llm_profiles): its base URL, limits and completion windows. HTTP retries (429, 5xx, timeouts) are the SDK's own, with ``max_retries`` and
``timeout`` from the settings; a call they gave up on is an outage (TransientError at submit: no
attempt used), a 404 for a batch says it is gone. Scheduling, packing and collection are shared
with the Anthropic backend (corral.backends.llm_batch).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from corral.backends.base import CapacityError, Handle, OutcomeUnknown, StageContext, SubmissionRecord
from corral.backends.llm_batch import LlmBatchBackend
from corral.backends.llm_flex import FlexTail
from corral.backends.llm_results import (
    ApiErrorKind,
    BatchStatus,
    ResultLine,
    iter_jsonl,
    sdk_error_kind,
)
from corral.llm.packing import Entry
from corral.llm.pricing import ModelPrice
from corral.llm.projection import backend_price
from corral.spec.llm import OpenAIBatchSettings
from corral.spec.llm_profiles import PROFILES

#: how far back (seconds, by creation time) to look for a batch to adopt after a crash
FIND_WINDOW = 6 * 3600.0
#: an input file of the run no unfinished batch uses is left behind once this old (seconds)
ORPHAN_AGE = 15 * 60.0
#: how often (seconds) the provider's files are searched for ones left behind
SWEEP_EVERY = 3600.0
_RUNNING = ("in_progress", "finalizing", "cancelling")
_ENDED = ("completed", "expired", "cancelled", "failed")


class OpenAIBatchBackend(FlexTail, LlmBatchBackend):
    kind = "openai_batch"
    provider = "openai"

    def __init__(self, name: str, settings: OpenAIBatchSettings, **kwargs: Any):
        super().__init__(name, settings, **kwargs)
        self.settings: OpenAIBatchSettings = settings
        self._flex_client: Any = None
        self._flex_lock = threading.Lock()

    def make_client(self) -> Any:
        import openai

        return openai.OpenAI(api_key=self.api_key(), base_url=self.settings.base_url,
                             max_retries=self.settings.max_retries, timeout=self.settings.timeout)

    def price(self, model: str | None) -> ModelPrice | None:
        return backend_price(model, self.settings)

    def flex_request(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request of the stage's endpoint with ``service_tier: "flex"``, its custom id as the
        client request id. No retries here: a try that timed out may have run and been billed."""
        with self._flex_lock:
            if self._flex_client is None:
                self._flex_client = self.client.with_options(timeout=self.settings.hedge.flex_timeout, max_retries=0)
        answer = self._flex_client.post(self.settings.endpoint.removeprefix("/v1"), cast_to=object,
                                        body={**body, "service_tier": "flex"},
                                        options={"headers": {"X-Client-Request-Id": custom_id}})
        return answer if isinstance(answer, dict) else {}

    def line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": self.settings.endpoint, "body": body}

    def error_kind(self, exc: BaseException) -> ApiErrorKind:
        import openai

        return sdk_error_kind(exc, openai.APIConnectionError, openai.APIStatusError)

    def create_batch(self, stage: StageContext, submission: SubmissionRecord, entries: list[Entry],
                     model: str, in_flight_tokens: float) -> tuple[str, dict[str, Any]]:
        import openai

        key = submission.idempotency_key
        data = b"".join(entry.line for entry in entries)
        upload = self.client.files.create(file=(input_file_name(self.prefix(stage), key), data, "application/jsonl"),
                                          purpose="batch")
        try:
            batch = self.client.batches.create(
                input_file_id=upload.id, endpoint=self.settings.endpoint,
                completion_window=self.settings.completion_window,
                metadata={"corral_key": key, "corral_run": stage.run_id[:512], "corral_stage": stage.name[:512]})
        except (openai.APITimeoutError, openai.APIConnectionError):
            # Every try went unanswered, but one may have created the batch: adopt it if so.
            # If this lookup fails too, whether the batch exists is unknown: its file stays (the
            # sweep deletes it later unless an open batch of the run uses it).
            try:
                found = self.find_batch(stage, submission)
            except Exception as lookup:
                if self.error_kind(lookup) != ApiErrorKind.TRANSIENT:
                    raise
                raise OutcomeUnknown(f"the create got no answer and the batch list did not answer either "
                                     f"({type(lookup).__name__}: {lookup})") from None
            if found is None:
                self._forget_file(upload.id)
                raise
            self._cancel_duplicates(key, found[0], submission.created_at)
            return found[0], {"input_file_id": upload.id}
        except openai.APIStatusError as exc:
            code = _error_code(exc)
            self._forget_file(upload.id)
            if code == "token_limit_exceeded" or exc.status_code == 429:
                state = self.state(stage)
                self.limit_refused(state, in_flight_tokens + sum(e.tokens for e in entries))
                raise CapacityError(f"batch refused at creation ({code or exc.status_code}): {_message(exc)}",
                                    retry_after=state.backoff) from None
            raise
        except Exception:
            self._forget_file(upload.id)
            raise
        if self.settings.max_retries:
            self._cancel_duplicates(key, batch.id, submission.created_at)
        return batch.id, {"input_file_id": upload.id}

    def _cancel_duplicates(self, key: str, kept: str, since: float) -> None:
        """The SDK retries a create whose answer timed out; the first try may have created a
        batch all the same. Batches with this submission's key other than the one kept are
        cancelled at once (their requests are in the kept one)."""
        try:
            for batch in self._newest_batches():
                if batch.created_at < since - 60:
                    break
                if batch.id != kept and (batch.metadata or {}).get("corral_key") == key and \
                        batch.status not in ("cancelling", "cancelled", "failed", "completed", "expired"):
                    self.client.batches.cancel(batch.id)
                    self.log(f"{self.name}: cancelled {batch.id}, a second batch created by a retried request "
                             f"(kept {kept})")
        except Exception as exc:  # noqa: BLE001 - best effort; the kept batch is recorded either way
            self.log(f"{self.name}: could not check for duplicate batches of {key}: {exc}")

    def _newest_batches(self) -> Iterator[Any]:
        """The provider's batches, newest first: every page where the list pages as OpenAI's does
        (the SDK follows ``after``/``has_more``), else its first page only, so that a provider that
        pages otherwise is never asked the same page again and again."""
        page = self.client.batches.list(limit=100)
        if PROFILES[self.settings.profile or "openai"].pages_like_openai:
            yield from page
        else:
            yield from page.data

    def batch_ended(self, sub: SubmissionRecord) -> None:
        file_id = sub.info.get("input_file_id")
        if not file_id:
            return
        try:
            self.client.files.delete(file_id)
        except Exception as exc:  # noqa: BLE001 - left for the sweep
            if self.error_kind(exc) != ApiErrorKind.GONE:
                self.log(f"{self.name}: deleting input file {file_id} of batch {sub.remote_id} failed ({exc}); "
                         "the next sweep deletes it")

    def sweep(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord]) -> None:
        """Input files of this run (named ``<run prefix>-<key>.jsonl``) older than ``ORPHAN_AGE``
        that no unfinished batch uses are deleted: left by a stop between the upload and the
        batch's creation, or by a delete that did not get through. At most every ``SWEEP_EVERY``."""
        now = self.now()
        last = self.memory.get("swept_at")
        if not stages or (last is not None and now - last < SWEEP_EVERY):
            return
        self.memory.set("swept_at", now)
        prefixes = tuple(f"{self.prefix(stage)}-" for stage in stages.values())
        try:
            candidates = [f for f in self.client.files.list(purpose="batch")
                          if (f.filename or "").startswith(prefixes) and (f.filename or "").endswith(".jsonl")
                          and now - f.created_at >= ORPHAN_AGE]
            if not candidates:
                return
            oldest = min(f.created_at for f in candidates)
            in_use = {s.info.get("input_file_id") for s in submissions}
            for batch in self._newest_batches():
                if batch.created_at < oldest - 60:
                    break
                if batch.status not in _ENDED:
                    in_use.add(batch.input_file_id)
            deleted = 0
            for orphan in candidates:
                if orphan.id not in in_use:
                    self.client.files.delete(orphan.id)
                    deleted += 1
        except Exception as exc:  # noqa: BLE001 - housekeeping: tried again at the next sweep
            self.log(f"{self.name}: looking for input files left behind failed ({type(exc).__name__}: {exc})")
            return
        if deleted:
            self.log(f"{self.name}: deleted {deleted} input files left behind by an earlier stop")

    def _forget_file(self, file_id: str) -> None:
        try:
            self.client.files.delete(file_id)
        except Exception:  # noqa: BLE001 - an orphan input file costs nothing but space
            pass

    def find(self, stage: StageContext, submission: SubmissionRecord) -> Handle | None:
        """A batch created before a stop, or by a create whose answer was lost: adopted, and the
        other batches the SDK's retries of that create made with the same key cancelled."""
        handle = super().find(stage, submission)
        if handle is not None and self.settings.max_retries:
            self._cancel_duplicates(submission.idempotency_key, handle.remote_id, submission.created_at)
        return handle

    def find_batch(self, stage: StageContext, submission: SubmissionRecord) -> tuple[str, dict[str, Any]] | None:
        key = submission.idempotency_key
        oldest = submission.created_at - FIND_WINDOW
        for batch in self._newest_batches():
            if (batch.metadata or {}).get("corral_key") == key:
                return batch.id, {"input_file_id": batch.input_file_id}
            if batch.created_at < oldest:
                break
        return None

    def batch_status(self, sub: SubmissionRecord) -> BatchStatus:
        batch = self.client.batches.retrieve(sub.remote_id)
        status = batch.status
        usage = None
        if batch.usage is not None:
            usage = {"input_tokens": batch.usage.input_tokens, "output_tokens": batch.usage.output_tokens}
        if status == "failed":
            errors = _batch_errors(batch.errors)
            return BatchStatus(ended=True, failed=True, errors=errors, phase=status, raw=batch)
        counts = None
        if batch.request_counts is not None:
            counts = {"total": batch.request_counts.total, "done": batch.request_counts.completed,
                      "failed": batch.request_counts.failed}
        files = {key: value for key, value in (("output_file_id", batch.output_file_id),
                                                ("error_file_id", batch.error_file_id)) if value}
        return BatchStatus(ended=status in _ENDED, running=status in _RUNNING, phase=status, usage=usage, raw=batch,
                           counts=counts, files=files)

    def result_lines(self, sub: SubmissionRecord, status: BatchStatus) -> Iterator[ResultLine | None]:
        batch = status.raw
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            with self.client.files.with_streaming_response.content(file_id) as response:
                for record in iter_jsonl(response.iter_lines()):
                    yield _result_line(record)

    def cancel_batch(self, remote_id: str) -> None:
        self.client.batches.cancel(remote_id)


def input_file_name(prefix: str, key: str) -> str:
    """The name of a batch's uploaded input file: the run's prefix and the submission's key, so
    that files left behind are found by name."""
    return f"{prefix}-{key}.jsonl"


def _batch_errors(errors: Any) -> list[tuple[str, str, int | None]]:
    """A failed batch's validation errors as (code, message, line): OpenAI's ``{"data": [...]}``, or the
    bare list Groq gives."""
    items = errors if isinstance(errors, list) else (getattr(errors, "data", None) or [])
    out = []
    for error in items:
        values = error if isinstance(error, dict) else {k: getattr(error, k, None) for k in ("code", "message", "line")}
        out.append((values.get("code") or "", values.get("message") or "", values.get("line")))
    return out


def _result_line(record: dict[str, Any] | None) -> ResultLine | None:
    if record is None or not isinstance(record.get("custom_id"), str):
        return None
    custom_id = record["custom_id"]
    response = record.get("response") or {}
    error = record.get("error") or None
    status_code = response.get("status_code")
    body = response.get("body")
    if error:
        code = error.get("code") or ""
        if code == "batch_expired":
            return ResultLine(custom_id, "expired", code=code, message=error.get("message"))
        if code == "batch_cancelled":
            return ResultLine(custom_id, "cancelled", code=code, message=error.get("message"))
        return ResultLine(custom_id, "error", status_code=status_code, code=code, message=error.get("message"))
    if status_code == 200 and isinstance(body, dict):
        usage = body.get("usage") or {}
        tokens_in = usage.get("prompt_tokens", usage.get("input_tokens"))
        tokens_out = usage.get("completion_tokens", usage.get("output_tokens"))
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        return ResultLine(custom_id, "ok", body=body, status_code=200, tokens_in=tokens_in, tokens_out=tokens_out,
                          cached_in=details.get("cached_tokens") or 0)
    if not isinstance(body, dict):
        return None if status_code is None else ResultLine(custom_id, "error", status_code=status_code,
                                                           message="no response body")
    err = body.get("error") or {}
    return ResultLine(custom_id, "error", status_code=status_code, code=err.get("code") or err.get("type"),
                      message=err.get("message") or f"HTTP {status_code}")


def _error_code(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        return str(inner.get("code") or inner.get("type") or "")
    return str(getattr(exc, "code", "") or "")


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if inner.get("message"):
            return str(inner["message"])
    return str(exc)
