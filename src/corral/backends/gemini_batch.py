"""The ``gemini_batch`` backend: the Gemini Batch API (Gemini Developer API) through Google's
official ``google-genai`` SDK.

One submission is one batch job: its requests go up as a JSONL file through the Files API (one
``{"key", "request"}`` line each), the job is created from the file and its results come back as a
generated JSONL file, read once and matched by ``key``. A stage's ``request:`` may be a native
GenerateContentRequest (with ``contents``) or the OpenAI chat-completions shape the other backends
take, translated by ``corral.llm.gemini_request``.

Creating a job is not idempotent: a create sent twice makes two jobs. The submission's
idempotency key is written into the job's display name, the create is sent once (no SDK retry),
and when its answer is lost (timeout, dropped connection, 5xx) or the controller died before
recording it, the jobs are listed and the one with the key adopted instead of creating again;
any second job with the same key is cancelled. A job that expires (48 h) returns nothing, so all
its requests go out again with their attempts kept.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

from corral.backends.base import CapacityError, OutcomeUnknown, StageContext, SubmissionRecord
from corral.llm.gemini_request import gemini_request
from corral.backends.llm_batch import LlmBatchBackend
from corral.backends.llm_results import ApiErrorKind, BatchStatus, ResultLine, iter_jsonl
from corral.backends.openai_batch import input_file_name
from corral.llm.packing import Entry
from corral.spec.llm import GeminiBatchSettings

#: how far back (seconds, by creation time) to look for a job to adopt
FIND_WINDOW = 6 * 3600.0
#: waits (seconds) before looking again for the job of a create whose answer was lost
LOOK_AGAIN = (1.0, 3.0)
#: the display name of a job: this prefix and the submission's idempotency key
NAME_PREFIX = "corral-"
_ENDED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED")
_RUNNING = ("JOB_STATE_RUNNING",)
#: a job's state in the words the shared code (stragglers, `corral status`) reads
_PHASES = {"JOB_STATE_PENDING": "validating", "JOB_STATE_RUNNING": "in_progress", "JOB_STATE_SUCCEEDED": "completed",
           "JOB_STATE_FAILED": "failed", "JOB_STATE_CANCELLED": "cancelled", "JOB_STATE_EXPIRED": "expired"}
_STATUS_CODES = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404, "PERMISSION_DENIED": 403,
                 "RESOURCE_EXHAUSTED": 429, "INTERNAL": 500, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def job_name(key: str) -> str:
    return f"{NAME_PREFIX}{key}"


class GeminiBatchBackend(LlmBatchBackend):
    kind = "gemini_batch"
    provider = "gemini"

    def __init__(self, name: str, settings: GeminiBatchSettings, **kwargs: Any):
        super().__init__(name, settings, **kwargs)
        self.settings: GeminiBatchSettings = settings

    def make_client(self) -> Any:
        from google import genai
        from google.genai import types

        retry = types.HttpRetryOptions(attempts=self.settings.max_retries + 1, initial_delay=0.5, max_delay=30.0)
        return genai.Client(api_key=self.api_key(), http_options=self.http_options(retry))

    def http_options(self, retry: Any) -> Any:
        """The client's HTTP options; a call that gives its own replaces them all, so each has these."""
        from google.genai import types

        return types.HttpOptions(base_url=self.settings.base_url, api_version="v1beta",
                                 timeout=int(self.settings.timeout * 1000), retry_options=retry)

    def line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"key": custom_id, "request": gemini_request(body)}

    def error_kind(self, exc: BaseException) -> ApiErrorKind:
        from google.genai import errors

        if isinstance(exc, _transport_errors()):
            return ApiErrorKind.TRANSIENT
        if isinstance(exc, errors.APIError):
            code = exc.code or 0
            if code in (408, 409, 429) or code >= 500:
                return ApiErrorKind.TRANSIENT
            if code in (401, 403, 404):
                return ApiErrorKind.GONE
        return ApiErrorKind.OTHER

    def create_batch(self, stage: StageContext, submission: SubmissionRecord, entries: list[Entry],
                     model: str, in_flight_tokens: float) -> tuple[str, dict[str, Any]]:
        from google.genai import errors, types

        key = submission.idempotency_key
        data = b"".join(entry.line for entry in entries)
        upload = self.client.files.upload(file=io.BytesIO(data), config=types.UploadFileConfig(
            display_name=input_file_name(self.prefix(stage), key), mime_type="application/jsonl"))
        once = self.http_options(types.HttpRetryOptions(attempts=1))
        try:
            job = self.client.batches.create(model=model, src=upload.name,
                                             config=types.CreateBatchJobConfig(display_name=job_name(key),
                                                                               http_options=once))
        except Exception as exc:
            if isinstance(exc, errors.APIError) and exc.code == 429:
                self._forget_file(upload.name)
                state = self.state(stage)
                self.limit_refused(state, None)
                raise CapacityError(f"job refused at creation (rate limit): {exc.message or exc}",
                                    retry_after=state.backoff) from None
            if self.error_kind(exc) != ApiErrorKind.TRANSIENT:
                self._forget_file(upload.name)
                raise
            # The answer was lost, but the job may exist (or be in the making at the server): a
            # second create would make a second one, so it is looked for first.
            found = self._look_again(stage, submission)
            if found is None:
                self._forget_file(upload.name)
                raise
            self.log(f"{self.name}: the create of {found[0]} got no answer; the job it made is adopted")
            return found[0], {"input_file_id": upload.name}
        return job.name, {"input_file_id": upload.name}

    def _look_again(self, stage: StageContext, submission: SubmissionRecord) -> tuple[str, dict[str, Any]] | None:
        """The job a create whose answer was lost made, if any: listed at once, then after
        ``LOOK_AGAIN`` seconds each, while the listing finds nothing or does not answer."""
        failure = None
        for wait in (0.0, *LOOK_AGAIN):
            time.sleep(wait)
            try:
                found = self.find_batch(stage, submission)
            except Exception as exc:
                if self.error_kind(exc) != ApiErrorKind.TRANSIENT:
                    raise
                self.log(f"{self.name}: looking for the job of a create that got no answer failed ({exc})")
                failure = failure or f"{type(exc).__name__}: {exc}"
                continue
            if found is not None:
                return found
            failure = None   # the list answered without it
        if failure is not None:
            raise OutcomeUnknown(f"the create got no answer and the job list did not answer either ({failure})")
        return None

    def _forget_file(self, name: str) -> None:
        try:
            self.client.files.delete(name=name)
        except Exception:  # noqa: BLE001 - an orphan input file expires by itself after 48 h
            pass

    def find_batch(self, stage: StageContext, submission: SubmissionRecord) -> tuple[str, dict[str, Any]] | None:
        """The oldest job with the submission's key in its display name; any later one with the
        same key (a create sent again) is cancelled."""
        wanted = job_name(submission.idempotency_key)
        oldest = submission.created_at - FIND_WINDOW
        matches = []
        for job in self.client.batches.list(config={"page_size": 100}):
            created = job.create_time.timestamp() if job.create_time else None
            if job.display_name == wanted:
                matches.append((created or 0.0, job.name, job.state))
            if created is not None and created < oldest:
                break
        if not matches:
            return None
        matches.sort()
        kept = matches[0][1]
        for _, name, state in matches[1:]:
            if str(getattr(state, "value", state)) not in _ENDED:
                try:
                    self.client.batches.cancel(name=name)
                    self.log(f"{self.name}: cancelled {name}, a second job made by a create sent again (kept {kept})")
                except Exception as exc:  # noqa: BLE001 - it may have ended meanwhile
                    self.log(f"{self.name}: cancelling the second job {name} failed: {exc}")
        return kept, {"found_by": "display_name"}

    def batch_status(self, sub: SubmissionRecord) -> BatchStatus:
        job = self.client.batches.get(name=sub.remote_id)
        state = str(getattr(job.state, "value", job.state))
        phase = _PHASES.get(state, state.removeprefix("JOB_STATE_").lower())
        if state == "JOB_STATE_FAILED":
            error = job.error
            message = (getattr(error, "message", None) or "the job failed") if error else "the job failed"
            return BatchStatus(ended=True, failed=True, errors=[("job_failed", message, None)], phase=phase, raw=job)
        return BatchStatus(ended=state in _ENDED, running=state in _RUNNING, phase=phase, raw=job)

    def result_lines(self, sub: SubmissionRecord, status: BatchStatus) -> Iterator[ResultLine | None]:
        job = status.raw
        seen: set[str] = set()
        dest = job.dest
        if status.phase != "expired" and dest is not None:
            if dest.file_name:
                data = self.client.files.download(file=dest.file_name)
                for record in iter_jsonl(data.splitlines()):
                    line = _result_line(record)
                    if line is not None:
                        seen.add(line.custom_id)
                    yield line
            for response in dest.inlined_responses or []:
                record = {"key": (response.metadata or {}).get("key"),
                          "response": response.response.model_dump(mode="json", by_alias=True, exclude_none=True)
                          if response.response else None,
                          "error": response.error.model_dump(mode="json", exclude_none=True)
                          if response.error else None}
                line = _result_line(record)
                if line is not None:
                    seen.add(line.custom_id)
                yield line
        # An expired job returns nothing; a cancelled one only what it finished.
        if status.phase in ("expired", "cancelled"):
            prefix = sub.info.get("prefix") or ""
            kind = "expired" if status.phase == "expired" else "cancelled"
            for task_id in sub.info.get("tasks") or []:
                custom_id = f"{prefix}-t{task_id}"
                if custom_id not in seen:
                    yield ResultLine(custom_id, kind, message=f"the job {kind} and returned no result for it")

    def cancel_batch(self, remote_id: str) -> None:
        self.client.batches.cancel(name=remote_id)

    def batch_ended(self, sub: SubmissionRecord) -> None:
        name = sub.info.get("input_file_id")
        if name:
            try:
                self.client.files.delete(name=name)
            except Exception as exc:  # noqa: BLE001 - uploaded files expire after 48 h anyway
                if self.error_kind(exc) != ApiErrorKind.GONE:
                    self.log(f"{self.name}: deleting input file {name} of job {sub.remote_id} failed ({exc})")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """No answer (timeouts, connections): google-genai sends through httpx, or httpx2 where installed."""
    import importlib

    found = []
    for module in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _result_line(record: dict[str, Any] | None) -> ResultLine | None:
    if record is None or not isinstance(record.get("key"), str):
        return None
    key = record["key"]
    error = record.get("error")
    if isinstance(error, dict):
        status = error.get("status") or ""
        code = error.get("code")
        status_code = code if isinstance(code, int) else _STATUS_CODES.get(status, 500)
        return ResultLine(key, "error", status_code=status_code, code=status.lower() or None,
                          message=error.get("message"))
    response = record.get("response")
    if not isinstance(response, dict):
        return None
    usage = response.get("usageMetadata") or {}
    tokens_in = usage.get("promptTokenCount")
    tokens_out = (usage.get("candidatesTokenCount") or 0) + (usage.get("thoughtsTokenCount") or 0)
    return ResultLine(key, "ok", body=response, status_code=200, tokens_in=tokens_in, tokens_out=tokens_out,
                      cached_in=usage.get("cachedContentTokenCount") or 0)
