"""Synchronous OpenAI requests: ``POST /v1/chat/completions`` and ``POST /v1/responses``, at the
standard tier (answered at once) or with ``service_tier: "flex"`` (flex processing: answered after a
drawn latency, sometimes refused with 429 Resource Unavailable, billed at the Batch API price).

A flex answer is computed when the request arrives, under the account's lock, and handed to the
server as a ``Due``: the server waits, outside the lock, until the shared clock reaches its time,
then settles it (counts and bills it) and sends it. A request still waiting when the server stops is
settled unanswered and not billed.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from corral.sim.answers import answer
from corral.sim.core import Outcome, Request
from corral.sim.tokens import text_tokens
from corral.sim.web import ApiError, Req, Resp, json_resp

if TYPE_CHECKING:
    from corral.sim.openai_api import OpenAIApi


class Tier(StrEnum):
    """The service tier a synchronous request was processed at (the response's ``service_tier``)."""

    DEFAULT = "default"
    FLEX = "flex"
    PRIORITY = "priority"


#: the request's ``service_tier`` -> the tier that processes it
TIERS = {None: Tier.DEFAULT, "auto": Tier.DEFAULT, "default": Tier.DEFAULT, "flex": Tier.FLEX,
         "priority": Tier.PRIORITY}


@dataclass
class Due:
    """An answer held back until the shared clock reaches ``at``. ``settle(answered)`` is called once,
    with True when the answer is sent, False when the server stopped first."""

    resp: Resp
    at: float
    settle: Callable[[bool], None]


@dataclass
class TierUsage:
    """What one tier answered and billed."""

    requests: int = 0
    answered: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    billed_by_client_id: Counter = field(default_factory=Counter)

    def bill(self, client_id: str, outcome: Outcome) -> None:
        self.answered += 1
        self.input_tokens += outcome.input_tokens
        self.output_tokens += outcome.output_tokens
        self.billed_by_client_id[client_id] += 1

    def json(self) -> dict[str, Any]:
        return {"requests": self.requests, "answered": self.answered, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "billed_by_client_id": dict(self.billed_by_client_id)}


@dataclass
class FlexRefusals:
    unavailable: int = 0          # 429 Resource Unavailable
    concurrency: int = 0          # 429 rate_limit_exceeded: flex_max_concurrent were waiting
    model: int = 0                # 400: the model does not take flex
    unanswered: int = 0           # still waiting when the server stopped


class SyncApi:
    """The synchronous endpoints of the OpenAI API; guarded, like every handler, by the account's lock."""

    def __init__(self, api: OpenAIApi) -> None:
        self.api = api
        self.acct = api.acct
        self.config = api.config
        self.rng = random.Random(f"{self.config.seed}:flex")
        self.usage: dict[Tier, TierUsage] = {tier: TierUsage() for tier in Tier}
        self.refused = FlexRefusals()
        self.waiting = 0
        self.routes: list[tuple[str, re.Pattern[str], str, Callable[..., Resp | Due]]] = [
            ("POST", re.compile(r"/v1/chat/completions"), "POST /v1/chat/completions", self.chat_completions),
            ("POST", re.compile(r"/v1/responses"), "POST /v1/responses", self.responses),
        ]

    def chat_completions(self, req: Req, now: float) -> Resp | Due:
        return self._create(req, now, "/v1/chat/completions")

    def responses(self, req: Req, now: float) -> Resp | Due:
        return self._create(req, now, "/v1/responses")

    def _create(self, req: Req, now: float, endpoint: str) -> Resp | Due:
        from corral.sim.openai_api import answer_body

        body = req.json()
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request_error", "The request body must be a JSON object.")
        requested = body.get("service_tier")
        if not (requested is None or isinstance(requested, str)) or requested not in TIERS:
            raise ApiError(400, "invalid_request_error", f"Invalid value for 'service_tier': {requested!r}. "
                           "Supported values are: 'auto', 'default', 'flex' and 'priority'.", param="service_tier",
                           code="invalid_value")
        if body.get("stream"):
            raise ApiError(400, "invalid_request_error", "This simulator does not stream answers; send the request "
                           "without 'stream'.", param="stream")
        tier = TIERS[requested]
        client_id = req.headers.get("x-client-request-id") or self.acct.new_id("sync-", 16)
        request = self.api.request_of(client_id, endpoint, body, body.get("model"))
        if request.invalid:
            raise ApiError(400, "invalid_request_error", request.invalid)
        usage = self.usage[tier]
        usage.requests += 1
        if tier is Tier.FLEX:
            self._admit_flex(request.model)
        outcome = self._outcome(request)
        request_id = self.acct.new_id("req_")
        answer_json = answer_body(endpoint, request_id, int(now), request.model, outcome)
        answer_json["service_tier"] = tier.value
        resp = json_resp(answer_json, headers={"x-request-id": request_id})
        if tier is not Tier.FLEX:
            usage.bill(client_id, outcome)
            return resp
        self.waiting += 1
        latency = self.config.flex_latency_median_s * math.exp(self.config.flex_latency_sigma * self.rng.gauss(0, 1))
        latency += self.config.flex_seconds_per_output_token * outcome.output_tokens

        def settle(answered: bool) -> None:
            with self.acct.lock:
                self.waiting -= 1
                if answered:
                    usage.bill(client_id, outcome)
                else:
                    self.refused.unanswered += 1

        return Due(resp, now + latency, settle)

    def _admit_flex(self, model: str) -> None:
        if not self.config.flex_supported(model):
            self.refused.model += 1
            raise ApiError(400, "invalid_request_error", f"The model '{model}' does not support service_tier 'flex'. "
                           f"Models that do: {', '.join(self.config.flex_models) or 'none'}.", param="service_tier",
                           code="unsupported_value")
        if self.waiting >= self.config.flex_max_concurrent:
            self.refused.concurrency += 1
            raise ApiError(429, "requests", f"Rate limit reached for flex requests to {model}: at most "
                           f"{self.config.flex_max_concurrent} in flight at once.", code="rate_limit_exceeded",
                           headers=self._retry_headers())
        if self.rng.random() < self.config.flex_unavailable_rate:
            self.refused.unavailable += 1
            raise ApiError(429, "resource_unavailable", "Resource Unavailable: flex processing has no capacity for "
                           "this request right now. Retry later, or send it at the default service tier. You are "
                           "not charged for this request.", code="resource_unavailable",
                           headers=self._retry_headers())

    def _outcome(self, request: Request) -> Outcome:
        """The answer a batch would give the same request (same custom_id, same seed)."""
        text = answer(request.custom_id, 0, request.shape, self.config.answer_template, self.config.seed)
        out = self.config.output_tokens if self.config.output_tokens is not None else text_tokens(text)
        if request.max_tokens:
            out = min(out, request.max_tokens)
        return Outcome("succeeded", text=text, input_tokens=request.tokens, output_tokens=out)

    def _retry_headers(self) -> dict[str, str]:
        seconds = self.config.retry_after_s
        return {"retry-after-ms": str(int(seconds * 1000)), "retry-after": str(max(1, round(seconds)))}

    # -- what tests and /sim/state read ---------------------------------------------------------------
    def billed(self, tiers: tuple[Tier, ...] = tuple(Tier)) -> Counter:
        """Answers billed per client request id (X-Client-Request-Id) at these tiers."""
        total: Counter = Counter()
        for tier in tiers:
            total.update(self.usage[tier].billed_by_client_id)
        return total

    def summary(self) -> dict[str, Any]:
        flex = self.usage[Tier.FLEX]
        return {
            "flex": {**flex.json(), "waiting": self.waiting, "refused_unavailable": self.refused.unavailable,
                     "refused_concurrency": self.refused.concurrency, "refused_model": self.refused.model,
                     "unanswered": self.refused.unanswered},
            "standard": {tier.value: self.usage[tier].json() for tier in Tier if tier is not Tier.FLEX},
        }
