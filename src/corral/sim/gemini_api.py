"""Gemini Batch API endpoints (the Gemini Developer API, ``v1beta``), as ``google-genai`` calls them
with ``http_options.base_url`` = the server.

Files: a resumable upload (``POST /upload/v1beta/files`` to start, then ``upload, finalize`` to the
URL it answers with), ``GET /v1beta/files/{id}:download`` for a results file, ``DELETE``.
Batches: ``POST /v1beta/models/{model}:batchGenerateContent`` with the requests inline or a JSONL
file's name, ``GET /v1beta/batches/{id}``, ``GET /v1beta/batches``, ``POST /v1beta/batches/{id}:cancel``,
``DELETE``. Results come back as the input did: inline in the batch, or as a results file.

The faults of this API: a job expires ``2 x expiry_s`` (48 h by default) after its creation and then
returns nothing, not even the requests it had finished; and creation is not idempotent: a create
whose answer was lost, sent again, makes a second job.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from corral.sim.answers import _shape
from corral.sim.core import Batch, Outcome, Request
from corral.sim.tokens import image_size, text_tokens
from corral.sim.web import ApiError, Req, Resp, json_resp

PROVIDER = "gemini"
#: inline requests of one create call, at most (bytes of the request body)
MAX_INLINE_BYTES = 20 * 1000 * 1000
#: one input file, at most
MAX_FILE_BYTES = 2 * 1000 * 1000 * 1000
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ALREADY_EXISTS", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE"}
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"


class GeminiApi:
    def __init__(self, account: Any) -> None:
        self.acct = account
        self.config = account.config
        self.files: dict[str, dict[str, Any]] = {}        # file id -> metadata and content
        self._uploads: dict[str, dict[str, Any]] = {}     # upload id -> the file being uploaded
        self._shapes: dict[str, Any] = {}
        b = r"/v1beta/batches/([^/:]+)"
        f = r"/v1beta/files/([^/:]+)"
        self.routes: list[tuple[str, re.Pattern[str], str, Callable[..., Resp]]] = [
            ("POST", re.compile(r"/upload/v1beta/files"), "POST /upload/v1beta/files", self.upload),
            ("GET", re.compile(f), "GET /v1beta/files/{id}", self.get_file),
            ("GET", re.compile(f + ":download"), "GET /v1beta/files/{id}:download", self.download),
            ("DELETE", re.compile(f), "DELETE /v1beta/files/{id}", self.delete_file),
            ("POST", re.compile(r"/v1beta/models/([^/:]+):batchGenerateContent"),
             "POST /v1beta/models/{model}:batchGenerateContent", self.create),
            ("GET", re.compile(r"/v1beta/batches"), "GET /v1beta/batches", self.list_batches),
            ("GET", re.compile(b), "GET /v1beta/batches/{id}", self.get),
            ("POST", re.compile(b + ":cancel"), "POST /v1beta/batches/{id}:cancel", self.cancel),
            ("DELETE", re.compile(b), "DELETE /v1beta/batches/{id}", self.delete),
        ]

    @staticmethod
    def error(exc: ApiError) -> Resp:
        body = {"error": {"code": exc.status, "message": exc.message,
                          "status": STATUS_NAMES.get(exc.status, "UNKNOWN")}}
        return json_resp(body, exc.status, exc.headers)

    # -- files ----------------------------------------------------------------------------------
    def upload(self, req: Req, now: float) -> Resp:
        command = req.headers.get("x-goog-upload-command", "")
        upload_id = req.query.get("upload_id")
        if upload_id is None:
            if "start" not in command:
                raise ApiError(400, "invalid", "Expected X-Goog-Upload-Command: start")
            meta = (req.json() or {}).get("file") or {}
            file_id = self.acct.new_id("", 12)
            self._uploads[upload_id := self.acct.new_id("up", 16)] = {
                "id": file_id, "display_name": meta.get("displayName") or "", "mime": meta.get("mimeType")
                or req.headers.get("x-goog-upload-header-content-type", "application/octet-stream"),
                "data": bytearray()}
            url = f"{req.base_url}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
            return Resp(200, b"", headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})
        pending = self._uploads.get(upload_id)
        if pending is None:
            raise ApiError(404, "not_found", f"No upload session {upload_id!r}")
        pending["data"] += req.body
        if len(pending["data"]) > MAX_FILE_BYTES:
            raise ApiError(400, "invalid", f"A file may hold at most {MAX_FILE_BYTES:,} bytes.")
        if "finalize" not in command:
            return Resp(200, b"", headers={"x-goog-upload-status": "active"})
        del self._uploads[upload_id]
        record = self._store(pending["id"], bytes(pending["data"]), pending["display_name"], pending["mime"],
                             now, "UPLOADED")
        self.acct.state.files_uploaded += 1
        return json_resp({"file": self._file_json(record, req.base_url)}, headers={"x-goog-upload-status": "final"})

    def _store(self, file_id: str, data: bytes, display_name: str, mime: str, now: float, source: str
               ) -> dict[str, Any]:
        record = {"id": file_id, "data": data, "display_name": display_name, "mime": mime, "created_at": now,
                  "source": source}
        self.files[file_id] = record
        return record

    def _file(self, file_id: str) -> dict[str, Any]:
        record = self.files.get(file_id)
        if record is None:
            raise ApiError(404, "not_found", f"File files/{file_id} not found.")
        return record

    def get_file(self, req: Req, now: float, file_id: str) -> Resp:
        return json_resp(self._file_json(self._file(file_id), req.base_url))

    def download(self, req: Req, now: float, file_id: str) -> Resp:
        record = self._file(file_id)
        if record["source"] != "GENERATED":
            raise ApiError(400, "invalid", "Only generated files can be downloaded.")
        return Resp(200, record["data"], "application/jsonl")

    def delete_file(self, req: Req, now: float, file_id: str) -> Resp:
        self._file(file_id)
        del self.files[file_id]
        return json_resp({})

    def _file_json(self, record: dict[str, Any], base_url: str) -> dict[str, Any]:
        out = {"name": f"files/{record['id']}", "displayName": record["display_name"], "mimeType": record["mime"],
               "sizeBytes": str(len(record["data"])), "createTime": _iso(record["created_at"]),
               "updateTime": _iso(record["created_at"]), "expirationTime": _iso(record["created_at"] + 48 * 3600),
               "sha256Hash": hashlib.sha256(record["data"]).hexdigest(), "uri": f"{base_url}/v1beta/files/"
               f"{record['id']}", "state": "ACTIVE", "source": record["source"]}
        if record["source"] == "GENERATED":
            out["downloadUri"] = f"{base_url}/download/v1beta/files/{record['id']}:download?alt=media"
        return out

    # -- batches --------------------------------------------------------------------------------
    def create(self, req: Req, now: float, model: str) -> Resp:
        body = req.json()
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, dict):
            raise ApiError(400, "invalid", "batch: required")
        source = batch.get("inputConfig") or {}
        if "fileName" in source:
            name = str(source["fileName"])
            record = self._file(name.removeprefix("files/"))
            lines = []
            for number, text in enumerate(record["data"].splitlines(), start=1):
                if not text.strip():
                    continue
                try:
                    line = json.loads(text)
                except ValueError:
                    raise ApiError(400, "invalid", f"{name}: line {number} is not JSON.") from None
                if not isinstance(line, dict) or not isinstance(line.get("request"), dict):
                    raise ApiError(400, "invalid", f"{name}: line {number} has no 'request' object.")
                lines.append((str(line.get("key", number)), line["request"]))
            inline = False
        else:
            if len(req.body) > MAX_INLINE_BYTES:
                raise ApiError(400, "invalid", f"Inline requests may total at most {MAX_INLINE_BYTES:,} bytes; "
                               "upload a JSONL file through the Files API for larger batches.")
            items = (source.get("requests") or {}).get("requests")
            if not isinstance(items, list):
                raise ApiError(400, "invalid", "batch.inputConfig: requests or fileName required")
            lines = [(str((item.get("metadata") or {}).get("key", number)), item.get("request") or {})
                     for number, item in enumerate(items, start=1) if isinstance(item, dict)]
            inline = True
        if not lines:
            raise ApiError(400, "invalid", "The batch holds no requests.")
        if not self.acct.creation_allowed(PROVIDER, now):
            self.acct.state.rejections["batch_creation_rate"] += 1
            raise ApiError(429, "exhausted", "Batch creations have exceeded the rate limit of "
                           f"{self.config.batch_creations_per_hour} per hour.")
        parsed = [self._request(key, request, model) for key, request in lines]
        batch_id = self.acct.new_id("", 24)
        job = self.acct.add(PROVIDER, lambda seq: Batch(
            PROVIDER, batch_id, seq, f"models/{model}", parsed, now, self.config,
            expiry_s=2 * self.config.expiry_s, display_name=str(batch.get("displayName") or ""), inline=inline),
            now)
        return json_resp(self.batch_json(job, now, req.base_url))

    def _request(self, key: str, request: dict[str, Any], model: str) -> Request:
        invalid = None
        contents = request.get("contents")
        if not isinstance(contents, list) or not contents:
            invalid = "contents is not specified"
        config = request.get("generationConfig") or {}
        max_tokens = config.get("maxOutputTokens")
        shape = None
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        if isinstance(schema, dict):
            shape = _shape({"type": "json_schema", "schema": _json_schema(schema)})
        elif config.get("responseMimeType") == "application/json":
            shape = "json_object"
        if isinstance(shape, dict):
            shape = self._shapes.setdefault(json.dumps(shape, sort_keys=True), shape)
        return Request(key, request_tokens(request), shape, max_tokens if isinstance(max_tokens, int) else None,
                       invalid, model)

    def _batch(self, batch_id: str) -> Batch:
        batch = self.acct.state.batches.get(batch_id)
        if batch is None or batch.provider != PROVIDER:
            raise ApiError(404, "not_found", f"Batch batches/{batch_id} not found.")
        return batch

    def get(self, req: Req, now: float, batch_id: str) -> Resp:
        return json_resp(self.batch_json(self._batch(batch_id), now, req.base_url))

    def list_batches(self, req: Req, now: float) -> Resp:
        batches = list(reversed(self.acct.order[PROVIDER]))
        try:
            size = int(req.query.get("pageSize", 50))
            start = int(req.query.get("pageToken") or 0)
        except ValueError:
            raise ApiError(400, "invalid", "pageSize and pageToken must be numbers") from None
        size = max(1, min(size, 1000))
        page = batches[start:start + size]
        out: dict[str, Any] = {"operations": [self.batch_json(b, now, req.base_url) for b in page]}
        if start + size < len(batches):
            out["nextPageToken"] = str(start + size)
        return json_resp(out)

    def cancel(self, req: Req, now: float, batch_id: str) -> Resp:
        batch = self._batch(batch_id)
        if not batch.ended(now):
            batch.cancel(now)
        return json_resp({})

    def delete(self, req: Req, now: float, batch_id: str) -> Resp:
        batch = self._batch(batch_id)
        del self.acct.state.batches[batch_id]
        self.acct.order[PROVIDER].remove(batch)
        return json_resp({})

    def state_of(self, b: Batch, now: float) -> str:
        phase = b.phase(now)
        return {"validating": "BATCH_STATE_PENDING", "in_progress": "BATCH_STATE_RUNNING",
                "finalizing": "BATCH_STATE_RUNNING", "cancelling": "BATCH_STATE_RUNNING",
                "completed": "BATCH_STATE_SUCCEEDED", "expired": "BATCH_STATE_EXPIRED",
                "cancelled": "BATCH_STATE_CANCELLED", "failed": "BATCH_STATE_FAILED"}[phase]

    def batch_json(self, b: Batch, now: float, base_url: str) -> dict[str, Any]:
        state = self.state_of(b, now)
        ended = state in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_EXPIRED", "BATCH_STATE_CANCELLED",
                          "BATCH_STATE_FAILED")
        counts = b.counts(now) if state != "BATCH_STATE_EXPIRED" else {"succeeded": 0, "errored": 0, "processed": 0}
        stats = {"requestCount": str(b.n), "successfulRequestCount": str(counts["succeeded"]),
                 "failedRequestCount": str(counts["errored"]), "pendingRequestCount": str(b.n - counts["processed"])}
        meta: dict[str, Any] = {"@type": _BATCH_TYPE, "name": f"batches/{b.id}", "model": b.model,
                                "displayName": b.extra["display_name"], "createTime": _iso(b.created_at),
                                "updateTime": _iso(min(now, b.end_time)), "batchStats": stats, "state": state}
        out: dict[str, Any] = {"name": f"batches/{b.id}", "metadata": meta}
        if ended:
            meta["endTime"] = _iso(b.end_time)
            out["done"] = True
            output = self._output(b, base_url) if state in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_CANCELLED") \
                else None
            if output is not None:
                meta["output"] = output
                out["response"] = {"@type": _OUTPUT_TYPE, **output}
        return out

    def _output(self, b: Batch, base_url: str) -> dict[str, Any]:
        """What an ended job returns: every processed request's answer or error (an unprocessed one
        of a cancelled job is absent), inline or in a generated results file."""
        if "output" not in b.extra:
            records = []
            rates = b.rates
            for index, outcome in b.results(b.end_time):
                if outcome.kind in ("expired", "cancelled"):
                    continue
                record = self._record(b, index, outcome)
                if rates["missing_lines"] and b.line_draws(index)[2] < rates["missing_lines"]:
                    continue
                records.append(record)
            if b.extra["inline"]:
                b.extra["output"] = {"inlinedResponses": {"inlinedResponses": [
                    {k: v for k, v in (("response", r.get("response")), ("error", r.get("error")),
                                       ("metadata", {"key": r["key"]})) if v is not None} for r in records]}}
            else:
                lines = []
                for record in records:
                    index = record.pop("_index")
                    line = json.dumps(record, separators=(",", ":")).encode()
                    if rates["malformed_lines"] and b.line_draws(index)[1] < rates["malformed_lines"]:
                        line = line[: len(line) // 2]
                    lines.append(line)
                file_id = f"batch-{b.id}"
                self._store(file_id, b"\n".join(lines) + b"\n", f"results of batches/{b.id}", "application/jsonl",
                            b.end_time, "GENERATED")
                b.extra["output"] = {"responsesFile": f"files/{file_id}"}
        return b.extra["output"]

    def _record(self, b: Batch, index: int, o: Outcome) -> dict[str, Any]:
        req = b.requests[index]
        if o.kind == "errored":
            return {"key": req.custom_id, "_index": index,
                    "error": {"code": o.status_code, "message": o.message,
                              "status": STATUS_NAMES.get(o.status_code, "INTERNAL")}}
        response = {"candidates": [{"content": {"parts": [{"text": o.text}], "role": "model"},
                                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": o.input_tokens, "candidatesTokenCount": o.output_tokens,
                                      "totalTokenCount": o.input_tokens + o.output_tokens},
                    "modelVersion": req.model, "responseId": f"{b.id[:12]}{index:08x}"}
        return {"key": req.custom_id, "_index": index, "response": response}


def request_tokens(request: dict[str, Any]) -> int:
    """Input tokens of a GenerateContentRequest: its text, and 258 per image (Gemini's figure for
    an image of up to 384 px a side; larger ones are tiled in 768 px tiles of 258 each)."""
    total = 0
    parts: list[Any] = []
    for content in request.get("contents") or []:
        parts += (content or {}).get("parts") or [] if isinstance(content, dict) else []
    system = request.get("systemInstruction") or request.get("system_instruction")
    if isinstance(system, dict):
        parts += system.get("parts") or []
    for part in parts:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            total += text_tokens(part["text"])
        data = (part.get("inlineData") or part.get("inline_data") or {}).get("data")
        if isinstance(data, str):
            total += image_tokens(data)
    return max(1, total)


def image_tokens(data_b64: str) -> int:
    import base64

    try:
        size = image_size(base64.b64decode(data_b64[:65536] + "=" * (-len(data_b64[:65536]) % 4)))
    except ValueError:
        size = None
    if size is None or max(size) <= 384:
        return 258
    width, height = size
    return 258 * (-(-width // 768)) * (-(-height // 768))


def _json_schema(schema: Any) -> Any:
    """A Gemini (OpenAPI-style) schema read as JSON Schema, to shape the answers: types in lower case."""
    if isinstance(schema, list):
        return [_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _json_schema(v) for k, v in dict(schema).items()}
    if isinstance(out.get("type"), str):
        out["type"] = out["type"].lower()
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
