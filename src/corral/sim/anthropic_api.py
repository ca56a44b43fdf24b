"""Anthropic Message Batches endpoints, as the official SDK calls them (base_url = server)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from corral.sim.answers import shape_of_anthropic
from corral.sim.core import Account, Batch, Outcome, Request
from corral.sim.tokens import anthropic_request_tokens
from corral.sim.web import ApiError, Req, Resp, json_resp

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
ERROR_TYPES = {400: "invalid_request_error", 500: "api_error"}


class AnthropicApi:
    def __init__(self, account: Account) -> None:
        self.acct = account
        self.config = account.config
        self._shapes: dict[str, Any] = {}
        self.routes: list[tuple[str, re.Pattern[str], str, Callable[..., Resp]]] = [
            ("POST", re.compile(r"/v1/messages/batches"), "POST /v1/messages/batches", self.create),
            ("GET", re.compile(r"/v1/messages/batches"), "GET /v1/messages/batches", self.list_batches),
            ("GET", re.compile(r"/v1/messages/batches/([^/]+)"), "GET /v1/messages/batches/{id}", self.retrieve),
            ("DELETE", re.compile(r"/v1/messages/batches/([^/]+)"), "DELETE /v1/messages/batches/{id}", self.delete),
            ("POST", re.compile(r"/v1/messages/batches/([^/]+)/cancel"), "POST /v1/messages/batches/{id}/cancel",
             self.cancel),
            ("GET", re.compile(r"/v1/messages/batches/([^/]+)/results"), "GET /v1/messages/batches/{id}/results",
             self.results),
        ]

    @staticmethod
    def error(exc: ApiError) -> Resp:
        body = {"type": "error", "error": {"type": exc.kind, "message": exc.message}, "request_id": "req_sim"}
        return json_resp(body, exc.status, exc.headers)

    def create(self, req: Req, now: float) -> Resp:
        if len(req.body) > self.config.anthropic_max_bytes:
            raise ApiError(413, "request_too_large", f"The request is {len(req.body):,} bytes; a batch takes at most "
                           f"{self.config.anthropic_max_bytes:,}.")
        body = req.json()
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise ApiError(400, "invalid_request_error", "requests: a non-empty list of requests is required")
        if len(requests) > self.config.anthropic_max_requests:
            raise ApiError(400, "invalid_request_error", f"requests: a batch takes at most "
                           f"{self.config.anthropic_max_requests:,} requests, got {len(requests):,}")
        seen: set[str] = set()
        parsed: list[Request] = []
        for number, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
                raise ApiError(400, "invalid_request_error", f"requests.{number}.custom_id: {custom_id!r} does not "
                               "match ^[a-zA-Z0-9_-]{1,64}$")
            if custom_id in seen:
                raise ApiError(400, "invalid_request_error", f"requests.{number}.custom_id: {custom_id!r} is used by "
                               "more than one request; custom_id must be unique within a batch")
            seen.add(custom_id)
            params = item.get("params")
            if not isinstance(params, dict):
                raise ApiError(400, "invalid_request_error", f"requests.{number}.params: Field required")
            parsed.append(self._request(custom_id, params))
        if not self.acct.creation_allowed("anthropic", now):
            self.acct.state.rejections["batch_creation_rate"] += 1
            raise ApiError(429, "rate_limit_error", "Number of batch creations has exceeded the rate limit of "
                           f"{self.config.batch_creations_per_hour} per hour.", headers=_retry(self.config))
        queued = self.acct.unfinished_requests("anthropic", now)
        if queued + len(parsed) > self.config.anthropic_queue_limit:
            self.acct.state.rejections["queue_limit"] += 1
            raise ApiError(429, "rate_limit_error", f"Number of batch requests in the processing queue would pass "
                           f"the limit of {self.config.anthropic_queue_limit:,} ({queued:,} already queued).",
                           headers=_retry(self.config))
        models = {r.model for r in parsed}
        model = models.pop() if len(models) == 1 else "mixed"
        batch = self.acct.add("anthropic", lambda seq: Batch(
            "anthropic", self.acct.new_id("msgbatch_01", 22), seq, model, parsed, now, self.config), now)
        return json_resp(self.batch_json(batch, now, req.base_url))

    def _request(self, custom_id: str, params: dict[str, Any]) -> Request:
        # Params are validated after the batch is accepted: a bad one becomes an errored result.
        invalid = None
        model, max_tokens, messages = params.get("model"), params.get("max_tokens"), params.get("messages")
        if not isinstance(model, str) or not model:
            invalid = "model: Field required"
        elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            invalid = "max_tokens: Field required (a positive integer)"
        elif not isinstance(messages, list) or not messages:
            invalid = "messages: Field required (a non-empty list)"
        shape = shape_of_anthropic(params)
        if isinstance(shape, dict):
            shape = self._shapes.setdefault(json.dumps(shape, sort_keys=True), shape)
        return Request(custom_id, anthropic_request_tokens(params), shape,
                       max_tokens if isinstance(max_tokens, int) else None, invalid, str(model))

    def retrieve(self, req: Req, now: float, batch_id: str) -> Resp:
        return json_resp(self.batch_json(self._batch(batch_id), now, req.base_url))

    def list_batches(self, req: Req, now: float) -> Resp:
        batches = list(reversed(self.acct.order["anthropic"]))
        ids = [b.id for b in batches]
        try:
            limit = int(req.query.get("limit", 20))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise ApiError(400, "invalid_request_error", "limit: must be between 1 and 1000")
        after, before = req.query.get("after_id"), req.query.get("before_id")
        for cursor in (after, before):
            if cursor and cursor not in ids:
                raise ApiError(400, "invalid_request_error", f"no message batch with id {cursor!r}")
        if before:
            end = ids.index(before)
            start = max(0, end - limit)
            has_more = start > 0
        else:
            start = ids.index(after) + 1 if after else 0
            end = start + limit
            has_more = end < len(batches)
        data = [self.batch_json(b, now, req.base_url) for b in batches[start:end]]
        return json_resp({"data": data, "has_more": has_more, "first_id": data[0]["id"] if data else None,
                          "last_id": data[-1]["id"] if data else None})

    def cancel(self, req: Req, now: float, batch_id: str) -> Resp:
        batch = self._batch(batch_id)
        if batch.ended(now):
            raise ApiError(400, "invalid_request_error", f"Batch {batch_id} has ended and cannot be canceled.")
        batch.cancel(now)
        return json_resp(self.batch_json(batch, now, req.base_url))

    def delete(self, req: Req, now: float, batch_id: str) -> Resp:
        batch = self._batch(batch_id)
        if not batch.ended(now):
            raise ApiError(400, "invalid_request_error", f"Batch {batch_id} is still processing; cancel it and wait "
                           "for it to end before deleting it.")
        del self.acct.state.batches[batch_id]
        self.acct.order["anthropic"].remove(batch)
        return json_resp({"id": batch_id, "type": "message_batch_deleted"})

    def results(self, req: Req, now: float, batch_id: str) -> Resp:
        batch = self._batch(batch_id)
        if not batch.ended(now):
            raise ApiError(404, "not_found_error", f"Batch {batch_id} has not ended yet; results are available once "
                           "processing_status is 'ended'.")
        cached = batch.extra.get("results")
        if cached is None:
            lines: list[bytes] = []
            rates = batch.rates
            for index, outcome in batch.results(batch.end_time):
                line = json.dumps(self._line(batch, index, outcome), separators=(",", ":")).encode()
                if rates["missing_lines"] or rates["malformed_lines"]:
                    _, u_malformed, u_missing = batch.line_draws(index)
                    if u_missing < rates["missing_lines"]:
                        continue
                    if u_malformed < rates["malformed_lines"]:
                        line = line[: len(line) // 2]
                lines.append(line)
            cached = batch.extra["results"] = b"\n".join(lines) + b"\n"
        return Resp(200, cached, "application/x-jsonl")

    def _batch(self, batch_id: str) -> Batch:
        batch = self.acct.state.batches.get(batch_id)
        if batch is None or batch.provider != "anthropic":
            raise ApiError(404, "not_found_error", f"message batch {batch_id!r} not found")
        return batch

    def batch_json(self, b: Batch, now: float, base_url: str) -> dict[str, Any]:
        ended = b.ended(now)
        status = "ended" if ended else "canceling" if b.cancel_at is not None else "in_progress"
        counts = {"processing": b.n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            done = b.counts(now)
            rest = b.n - done["processed"]
            counts = {"processing": 0, "succeeded": done["succeeded"], "errored": done["errored"],
                      "canceled": rest if b.cancel_at is not None else 0,
                      "expired": 0 if b.cancel_at is not None else rest}
        return {"id": b.id, "type": "message_batch", "processing_status": status, "request_counts": counts,
                "ended_at": _iso(b.end_time) if ended else None, "created_at": _iso(b.created_at),
                "expires_at": _iso(b.expires_at), "archived_at": None,
                "cancel_initiated_at": _iso(b.cancel_at) if b.cancel_at is not None else None,
                "results_url": f"{base_url}/v1/messages/batches/{b.id}/results" if ended else None}

    def _line(self, b: Batch, index: int, o: Outcome) -> dict[str, Any]:
        req = b.requests[index]
        if o.kind == "expired":
            return {"custom_id": req.custom_id, "result": {"type": "expired"}}
        if o.kind == "cancelled":
            return {"custom_id": req.custom_id, "result": {"type": "canceled"}}
        if o.kind == "errored":
            error = {"type": "error", "error": {"type": ERROR_TYPES.get(o.status_code, "api_error"),
                                                "message": o.message}, "request_id": f"req_{b.id[11:23]}{index:08x}"}
            return {"custom_id": req.custom_id, "result": {"type": "errored", "error": error}}
        message = {"id": f"msg_{b.id[11:23]}{index:08x}", "type": "message", "role": "assistant", "model": req.model,
                   "content": [{"type": "text", "text": o.text}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": o.input_tokens, "output_tokens": o.output_tokens,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                             "service_tier": "batch"}}
        return {"custom_id": req.custom_id, "result": {"type": "succeeded", "message": message}}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _retry(config: Any) -> dict[str, str]:
    seconds = config.retry_after_s
    return {"retry-after-ms": str(int(seconds * 1000)), "retry-after": str(max(1, round(seconds)))}
