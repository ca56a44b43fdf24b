"""OpenAI Files and Batches endpoints, as the official SDK calls them (base_url = server + "/v1")."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.sim.answers import shape_of_openai
from corral.sim.core import Account, Batch, Outcome, Request
from corral.sim.tokens import openai_request_tokens
from corral.sim.web import ApiError, Req, Resp, json_resp, multipart

ENDPOINTS = ("/v1/chat/completions", "/v1/responses")
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_ERRORS = 100


@dataclass
class InputFile:
    """What validating a batch input file found, kept instead of the request bodies."""

    requests: list[Request] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    urls: set[str] = field(default_factory=set)


@dataclass
class SimFile:
    id: str
    filename: str
    purpose: str
    size: int
    created_at: int
    content: bytes | None
    parsed: InputFile | None = None

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.size, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}


class OpenAIApi:
    def __init__(self, account: Account) -> None:
        self.acct = account
        self.config = account.config
        self.files: dict[str, SimFile] = {}
        self._shapes: dict[str, Any] = {}
        self.routes: list[tuple[str, re.Pattern[str], str, Callable[..., Resp]]] = [
            ("POST", re.compile(r"/v1/files"), "POST /v1/files", self.upload),
            ("GET", re.compile(r"/v1/files"), "GET /v1/files", self.list_files),
            ("GET", re.compile(r"/v1/files/([^/]+)"), "GET /v1/files/{id}", self.get_file),
            ("GET", re.compile(r"/v1/files/([^/]+)/content"), "GET /v1/files/{id}/content", self.content),
            ("DELETE", re.compile(r"/v1/files/([^/]+)"), "DELETE /v1/files/{id}", self.delete_file),
            ("POST", re.compile(r"/v1/batches"), "POST /v1/batches", self.create),
            ("GET", re.compile(r"/v1/batches"), "GET /v1/batches", self.list_batches),
            ("GET", re.compile(r"/v1/batches/([^/]+)"), "GET /v1/batches/{id}", self.retrieve),
            ("POST", re.compile(r"/v1/batches/([^/]+)/cancel"), "POST /v1/batches/{id}/cancel", self.cancel),
        ]
        from corral.sim.flex import SyncApi

        #: synchronous Chat Completions and Responses requests, standard or flex
        self.sync = SyncApi(self)
        self.routes += self.sync.routes

    @staticmethod
    def error(exc: ApiError) -> Resp:
        body = {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}
        return json_resp(body, exc.status, exc.headers)

    # -- files ------------------------------------------------------------------------------------
    def upload(self, req: Req, now: float) -> Resp:
        fields = multipart(req.body, req.headers.get("content-type", ""))
        if "file" not in fields:
            raise ApiError(400, "invalid_request_error", "Missing required parameter: 'file'.", param="file")
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if purpose not in PURPOSES:
            raise ApiError(400, "invalid_request_error", f"Invalid value for 'purpose': {purpose!r}. Expected one of "
                           f"{', '.join(PURPOSES)}.", param="purpose")
        filename, data = fields["file"]
        parsed = self._parse_input(data) if purpose == "batch" else None
        keep = self.config.keep_input_content or purpose != "batch"
        sim_file = SimFile(self.acct.new_id("file-"), filename or "upload", purpose, len(data), int(now),
                           data if keep else None, parsed)
        self.files[sim_file.id] = sim_file
        self.acct.state.files_uploaded += 1
        return json_resp(sim_file.json())

    def list_files(self, req: Req, now: float) -> Resp:
        purpose = req.query.get("purpose")
        items = [f for f in reversed(self.files.values()) if purpose is None or f.purpose == purpose]
        return json_resp(_page([f.json() for f in items], req.query, "after"))

    def get_file(self, req: Req, now: float, file_id: str) -> Resp:
        return json_resp(self._file(file_id).json())

    def content(self, req: Req, now: float, file_id: str) -> Resp:
        sim_file = self._file(file_id)
        if sim_file.content is None:
            raise ApiError(400, "invalid_request_error", "This simulator was configured not to keep the content of "
                           "batch input files (keep_input_content: false).")
        return Resp(200, sim_file.content, "application/octet-stream")

    def delete_file(self, req: Req, now: float, file_id: str) -> Resp:
        self._file(file_id)
        del self.files[file_id]
        return json_resp({"id": file_id, "object": "file", "deleted": True})

    def _file(self, file_id: str) -> SimFile:
        sim_file = self.files.get(file_id)
        if sim_file is None:
            raise ApiError(404, "invalid_request_error", f"No such File object: {file_id}", param="id")
        return sim_file

    def _parse_input(self, data: bytes) -> InputFile:
        parsed = InputFile()
        seen: set[str] = set()
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            if not isinstance(line, dict):
                self._input_error(parsed, number, "invalid_json_line", "This line is not a JSON object.")
                continue
            custom_id, method, url, body = (line.get(k) for k in ("custom_id", "method", "url", "body"))
            missing = [k for k, v in (("custom_id", custom_id), ("method", method), ("url", url), ("body", body))
                       if v is None]
            if missing or not isinstance(custom_id, str) or not isinstance(body, dict):
                self._input_error(parsed, number, "missing_required_parameter",
                                  f"Missing or invalid required parameter: {', '.join(missing) or 'custom_id/body'}.")
                continue
            if method != "POST":
                self._input_error(parsed, number, "invalid_method", f"The method must be POST, not {method!r}.")
            if custom_id in seen:
                self._input_error(parsed, number, "duplicate_custom_id",
                                  f"The custom_id {custom_id!r} appears more than once in this file.")
            seen.add(custom_id)
            parsed.urls.add(str(url))
            model = body.get("model")
            parsed.models.add(str(model))
            parsed.requests.append(self.request_of(custom_id, str(url), body, model))
        return parsed

    def request_of(self, custom_id: str, url: str, body: dict[str, Any], model: Any) -> Request:
        """What the simulator keeps of one request body (a batch line's or a synchronous request's)."""
        invalid = None
        if not isinstance(model, str) or not model:
            invalid = "Missing required parameter: 'model'."
        elif url == "/v1/chat/completions" and not (isinstance(body.get("messages"), list) and body["messages"]):
            invalid = "Missing required parameter: 'messages'."
        elif url == "/v1/responses" and not body.get("input"):
            invalid = "Missing required parameter: 'input'."
        shape = shape_of_openai(body)
        if isinstance(shape, dict):
            key = json.dumps(shape, sort_keys=True)
            shape = self._shapes.setdefault(key, shape)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
        return Request(custom_id, openai_request_tokens(body), shape,
                       max_tokens if isinstance(max_tokens, int) else None, invalid, str(model))

    @staticmethod
    def _input_error(parsed: InputFile, line: int, code: str, message: str) -> None:
        if len(parsed.errors) < MAX_ERRORS:
            parsed.errors.append({"code": code, "message": message, "param": None, "line": line})

    # -- batches ----------------------------------------------------------------------------------
    def create(self, req: Req, now: float) -> Resp:
        body = req.json()
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request_error", "The request body must be a JSON object.")
        file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        for name, value in (("input_file_id", file_id), ("endpoint", endpoint),
                            ("completion_window", body.get("completion_window"))):
            if not isinstance(value, str):
                raise ApiError(400, "invalid_request_error", f"Missing required parameter: '{name}'.", param=name)
        if body["completion_window"] != "24h":
            raise ApiError(400, "invalid_request_error", "Invalid value for 'completion_window': only '24h' is "
                           "supported.", param="completion_window")
        if endpoint not in ENDPOINTS:
            raise ApiError(400, "invalid_request_error", f"Invalid value for 'endpoint': {endpoint!r}. This simulator "
                           f"supports {', '.join(ENDPOINTS)}.", param="endpoint")
        metadata = body.get("metadata")
        _check_metadata(metadata)
        sim_file = self.files.get(file_id)
        if sim_file is None:
            raise ApiError(404, "invalid_request_error", f"No such File object: {file_id}", param="input_file_id")
        if sim_file.purpose != "batch" or sim_file.parsed is None:
            raise ApiError(400, "invalid_request_error", f"File {file_id} was not uploaded with purpose 'batch'.",
                           param="input_file_id")
        if not self.acct.creation_allowed("openai", now):
            self.acct.state.rejections["batch_creation_rate"] += 1
            raise ApiError(429, "requests", "Rate limit reached for batch creation: "
                           f"{self.config.batch_creations_per_hour} per hour.", code="rate_limit_exceeded",
                           headers=_retry_headers(self.config.retry_after_s))
        parsed = sim_file.parsed
        model = next(iter(parsed.models)) if len(parsed.models) == 1 else ",".join(sorted(parsed.models))
        tokens = sum(r.tokens for r in parsed.requests)
        limit = self.config.token_limit(model)
        if self.acct.create_rng.random() < self.config.token_limit_create_error_rate:
            enqueued = self.acct.enqueued_tokens(model, now) + self.acct.validating_tokens(model)
            if enqueued + tokens > limit:
                self.acct.state.rejections["token_limit_exceeded"] += 1
                raise ApiError(400, "invalid_request_error", f"Enqueued token limit reached for {model} in "
                               f"organization org-sim. Limit: {limit:,} enqueued tokens. Please try again once "
                               "some in_progress batches have been completed.", code="token_limit_exceeded")
        problems = list(parsed.errors)
        if not parsed.requests and not problems:
            problems.append({"code": "empty_file", "message": "The input file has no requests.", "line": None})
        if len(parsed.requests) > self.config.openai_max_requests:
            problems.append({"code": "too_many_requests", "line": None, "message": f"The input file has "
                             f"{len(parsed.requests):,} requests; a batch takes at most "
                             f"{self.config.openai_max_requests:,}."})
        if sim_file.size > self.config.openai_max_file_bytes:
            problems.append({"code": "file_too_large", "line": None, "message": f"The input file has "
                             f"{sim_file.size:,} bytes; a batch input file takes at most "
                             f"{self.config.openai_max_file_bytes:,}."})
        if len(parsed.models) > 1:
            problems.append({"code": "mismatched_model", "line": None, "message": "A batch input file may use only "
                             f"one model; this one uses {', '.join(sorted(parsed.models))}."})
        if parsed.urls - {endpoint}:
            problems.append({"code": "mismatched_endpoint", "line": None, "message": "Every line's url must be the "
                             f"batch endpoint {endpoint}; found {', '.join(sorted(parsed.urls - {endpoint}))}."})
        batch = self.acct.add("openai", lambda seq: Batch(
            "openai", self.acct.new_id("batch_"), seq, model, parsed.requests, now, self.config,
            endpoint=endpoint, input_file_id=file_id, metadata=metadata, problems=problems), now)
        return json_resp(self.batch_json(batch, now))

    def retrieve(self, req: Req, now: float, batch_id: str) -> Resp:
        return json_resp(self.batch_json(self._batch(batch_id), now))

    def list_batches(self, req: Req, now: float) -> Resp:
        batches = list(reversed(self.acct.order["openai"]))
        after = req.query.get("after")
        start = 0
        if after:
            ids = [b.id for b in batches]
            if after not in ids:
                raise ApiError(400, "invalid_request_error", f"No such batch: {after}", param="after")
            start = ids.index(after) + 1
        limit = _limit(req.query, 20, 100)
        chunk = batches[start:start + limit]
        data = [self.batch_json(b, now) for b in chunk]
        return json_resp({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                          "last_id": data[-1]["id"] if data else None, "has_more": start + limit < len(batches)})

    def cancel(self, req: Req, now: float, batch_id: str) -> Resp:
        batch = self._batch(batch_id)
        status = batch.phase(now)
        if status in ("completed", "failed", "expired", "cancelled"):
            raise ApiError(409, "invalid_request_error", f"Cannot cancel a batch with status {status!r}.",
                           headers={"x-should-retry": "false"})
        batch.cancel(now)
        return json_resp(self.batch_json(batch, now))

    def _batch(self, batch_id: str) -> Batch:
        batch = self.acct.state.batches.get(batch_id)
        if batch is None or batch.provider != "openai":
            raise ApiError(404, "invalid_request_error", f"No such batch: {batch_id}", param="batch_id")
        return batch

    def batch_json(self, b: Batch, now: float) -> dict[str, Any]:
        status = b.phase(now)
        counts = b.counts(now)
        total = 0 if status == "validating" or (status == "failed" and not b.admitted) else b.n
        failed = counts["errored"] + (b.n - counts["processed"] if status in ("expired", "cancelled") else 0)
        ended = status in ("completed", "expired", "cancelled")
        if ended and b.files is None:
            self._make_files(b, now)
        files = b.files or {}
        admitted_at = b.valid_at if b.admitted else None
        return {
            "id": b.id, "object": "batch", "endpoint": b.extra["endpoint"], "model": b.model,
            "errors": {"object": "list", "data": b.errors} if b.errors and status == "failed" else None,
            "input_file_id": b.extra["input_file_id"], "completion_window": "24h", "status": status,
            "output_file_id": files.get("output"), "error_file_id": files.get("error"),
            "created_at": int(b.created_at),
            "in_progress_at": _at(admitted_at, now),
            "expires_at": int(b.expires_at),
            "finalizing_at": _at(b.ip_end, now) if b.admitted and status in ("finalizing", "completed") else None,
            "completed_at": _at(b.ip_end + b.fin_duration, now) if status == "completed" else None,
            "failed_at": _at(b.failed_at, now),
            "expired_at": _at(b.expires_at, now) if status == "expired" else None,
            "cancelling_at": _at(b.cancel_at, now),
            "cancelled_at": _at(b.end_time, now) if status == "cancelled" else None,
            "request_counts": {"total": total, "completed": counts["succeeded"], "failed": failed},
            "usage": {"input_tokens": counts["input_tokens"], "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": counts["output_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": counts["input_tokens"] + counts["output_tokens"]},
            "metadata": b.extra["metadata"],
        }

    def _make_files(self, b: Batch, now: float) -> None:
        out: list[bytes] = []
        err: list[bytes] = []
        rates = b.rates
        for index, outcome in b.results(b.end_time):
            line = json.dumps(self._line(b, index, outcome), separators=(",", ":")).encode()
            if rates["missing_lines"] or rates["malformed_lines"]:
                _, u_malformed, u_missing = b.line_draws(index)
                if u_missing < rates["missing_lines"]:
                    continue
                if u_malformed < rates["malformed_lines"]:
                    line = line[: len(line) // 2]
            (out if outcome.kind == "succeeded" else err).append(line)
        b.files = {"output": self._store(b, "output", out, now), "error": self._store(b, "error", err, now)}

    def _store(self, b: Batch, kind: str, lines: list[bytes], now: float) -> str | None:
        if not lines:
            return None
        data = b"\n".join(lines) + b"\n"
        sim_file = SimFile(self.acct.new_id("file-"), f"batch_{b.id}_{kind}.jsonl", "batch_output", len(data),
                           int(now), data)
        self.files[sim_file.id] = sim_file
        return sim_file.id

    def _line(self, b: Batch, index: int, o: Outcome) -> dict[str, Any]:
        req = b.requests[index]
        line_id = f"batch_req_{b.id[6:18]}{index:08x}"
        request_id = f"req_{b.id[6:14]}{index:08x}"
        if o.kind in ("expired", "cancelled"):
            code = "batch_expired" if o.kind == "expired" else "batch_cancelled"
            message = ("This request could not be executed before the completion window expired."
                       if o.kind == "expired" else "This request was not executed because the batch was cancelled.")
            return {"id": line_id, "custom_id": req.custom_id, "response": None,
                    "error": {"code": code, "message": message}}
        if o.kind == "errored":
            body = {"error": {"message": o.message, "type": o.error_type, "param": None, "code": None}}
            return {"id": line_id, "custom_id": req.custom_id, "error": None,
                    "response": {"status_code": o.status_code, "request_id": request_id, "body": body}}
        body = answer_body(b.extra["endpoint"], request_id, int(b.valid_at), req.model, o)
        return {"id": line_id, "custom_id": req.custom_id, "error": None,
                "response": {"status_code": 200, "request_id": request_id, "body": body}}


def answer_body(endpoint: str, request_id: str, created: int, model: str, o: Outcome) -> dict[str, Any]:
    """A succeeded request's answer: a ``chat.completion`` or, for /v1/responses, a ``response``."""
    if endpoint == "/v1/responses":
        return {"id": f"resp_{request_id[4:]}", "object": "response", "created_at": created, "model": model,
                "status": "completed",
                "output": [{"type": "message", "id": f"msg_{request_id[4:]}", "role": "assistant",
                            "status": "completed",
                            "content": [{"type": "output_text", "text": o.text, "annotations": []}]}],
                "usage": {"input_tokens": o.input_tokens, "output_tokens": o.output_tokens,
                          "total_tokens": o.input_tokens + o.output_tokens,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
    return {"id": f"chatcmpl-{request_id[4:]}", "object": "chat.completion", "created": created,
            "model": model, "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": o.text, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": o.input_tokens, "completion_tokens": o.output_tokens,
                      "total_tokens": o.input_tokens + o.output_tokens,
                      "prompt_tokens_details": {"cached_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}}}


def _at(t: float | None, now: float) -> int | None:
    return int(t) if t is not None and t <= now else None


def _limit(query: dict[str, str], default: int, most: int) -> int:
    try:
        limit = int(query.get("limit", default))
    except ValueError:
        raise ApiError(400, "invalid_request_error", "limit must be a whole number", param="limit") from None
    if not 1 <= limit <= most:
        raise ApiError(400, "invalid_request_error", f"limit must be between 1 and {most}", param="limit")
    return limit


def _page(items: list[dict[str, Any]], query: dict[str, str], cursor: str) -> dict[str, Any]:
    start = 0
    after = query.get(cursor)
    if after:
        ids = [i["id"] for i in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    limit = _limit(query, 10000, 10000)
    chunk = items[start:start + limit]
    return {"object": "list", "data": chunk, "first_id": chunk[0]["id"] if chunk else None,
            "last_id": chunk[-1]["id"] if chunk else None, "has_more": start + limit < len(items)}


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16 or any(
            not isinstance(k, str) or len(k) > 64 or not isinstance(v, str) or len(v) > 512
            for k, v in metadata.items()):
        raise ApiError(400, "invalid_request_error", "metadata takes at most 16 string keys (up to 64 characters) "
                       "with string values (up to 512 characters).", param="metadata")


def _retry_headers(seconds: float) -> dict[str, str]:
    return {"retry-after-ms": str(int(seconds * 1000)), "retry-after": str(max(1, round(seconds)))}
