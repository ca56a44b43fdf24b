"""The simulated account: batches, their drawn schedules, the enqueued-token limit and the faults.

Nothing runs in the background. A batch's schedule (validation end, processing time, finalizing,
faults) is drawn when it is created; its state at any instant follows from the clock. The only
decisions that depend on other batches, admission under the enqueued-token limit, are taken in time
order by ``sync(now)`` before each API call is answered.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import secrets
import threading
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.sim.answers import answer
from corral.sim.model import SimConfig
from corral.sim.tokens import text_tokens

INF = math.inf


class Request:
    """One request of a batch, as much of it as the simulator keeps (never the body)."""

    __slots__ = ("custom_id", "invalid", "max_tokens", "model", "shape", "tokens")

    def __init__(self, custom_id: str, tokens: int, shape: Any, max_tokens: int | None, invalid: str | None,
                 model: str) -> None:
        self.custom_id, self.tokens, self.shape = custom_id, tokens, shape
        self.max_tokens, self.invalid, self.model = max_tokens, invalid, model


@dataclass
class Outcome:
    """What happened to one request once its batch stops processing it."""

    kind: str                 # succeeded | errored | expired | cancelled
    status_code: int = 200    # for errored: the HTTP status of the failed request
    error_type: str = ""
    message: str = ""
    text: str = ""            # the answer (succeeded)
    input_tokens: int = 0
    output_tokens: int = 0


class Batch:
    """One batch of either provider with its drawn schedule."""

    def __init__(self, provider: str, batch_id: str, seq: int, model: str, requests: list[Request],
                 created_at: float, config: SimConfig, expiry_s: float | None = None, **extra: Any) -> None:
        self.provider, self.id, self.seq, self.model = provider, batch_id, seq, model
        self.requests = requests
        self.n = len(requests)
        self.tokens = sum(r.tokens for r in requests)
        self.created_at = created_at
        self.expires_at = created_at + (config.expiry_s if expiry_s is None else expiry_s)
        self.extra = extra
        self.rates = config.fault_rates()
        self._seed = config.seed
        self._template = config.answer_template
        self._fixed_output = config.output_tokens
        rng = random.Random(f"{config.seed}:{provider}:{seq}")
        t = config.turnaround
        self.valid_at = created_at + t.validating.draw(rng.gauss(0, 1), self.n)
        self.ip_duration = max(1e-6, t.in_progress.draw(rng.gauss(0, 1), self.n))
        self.fin_duration = t.finalizing.draw(rng.gauss(0, 1), self.n)
        self.cancel_duration = min(600.0, t.cancelling.draw(rng.gauss(0, 1), 0))
        u_validation, u_expire, u_all_failed = rng.random(), rng.random(), rng.random()
        expire_fraction = rng.uniform(0.2, 0.9)
        self._line_seed = rng.getrandbits(64)
        self.fault: str | None = None
        if provider == "openai" and u_validation < self.rates["validation"]:
            self.fault = "validation"
        elif u_expire < self.rates["expire"]:
            self.fault = "expire"
            window = max(1.0, self.expires_at - self.valid_at)
            self.ip_duration = window / expire_fraction
        elif u_all_failed < self.rates["all_failed"]:
            self.fault = "all_failed"
        self.failed_at: float | None = None
        self.errors: list[dict[str, Any]] = []
        self.admitted = provider != "openai"
        self.cancel_at: float | None = None
        self.files: dict[str, str | None] | None = None    # OpenAI output/error file ids, once ended
        self._outcomes: list[Outcome] | None = None
        self._order: list[int] | None = None
        self._prefix: tuple[list[int], list[int], list[int]] | None = None

    # -- schedule ---------------------------------------------------------------------------------
    @property
    def ip_end(self) -> float:
        return self.valid_at + self.ip_duration

    @property
    def expires(self) -> bool:
        return self.ip_end > self.expires_at

    @property
    def cut(self) -> float:
        """When requests stop finishing: processing done, expiry or cancellation."""
        return min(self.ip_end, self.expires_at, INF if self.cancel_at is None else self.cancel_at)

    @property
    def natural_end(self) -> float:
        return self.expires_at if self.expires else self.ip_end + self.fin_duration

    @property
    def end_time(self) -> float:
        if self.failed_at is not None:
            return self.failed_at
        if self.cancel_at is not None:
            return self.cancel_at + self.cancel_duration
        return self.natural_end

    def ended(self, now: float) -> bool:
        return now >= self.end_time

    def phase(self, now: float) -> str:
        """validating | failed | in_progress | finalizing | completed | expired | cancelling | cancelled"""
        if self.failed_at is not None and now >= self.failed_at:
            return "failed"
        if self.cancel_at is not None and now >= self.cancel_at:
            return "cancelled" if now >= self.cancel_at + self.cancel_duration else "cancelling"
        if now < self.valid_at:
            return "validating"
        if self.expires:
            return "in_progress" if now < self.expires_at else "expired"
        if now < self.ip_end:
            return "in_progress"
        return "finalizing" if now < self.ip_end + self.fin_duration else "completed"

    def done_count(self, now: float) -> int:
        """Requests processed by ``now`` (they finish evenly through in_progress, in a random order)."""
        if self.failed_at is not None or not self.admitted:
            return 0
        t = min(now, self.cut)
        if t <= self.valid_at:
            return 0
        if t >= self.ip_end:
            return self.n
        return min(self.n, int(self.n * (t - self.valid_at) / self.ip_duration))

    def cancel(self, now: float) -> bool:
        if self.cancel_at is not None or self.failed_at is not None or now >= self.natural_end:
            return False
        self.cancel_at = now
        return True

    # -- outcomes ---------------------------------------------------------------------------------
    def order(self) -> list[int]:
        """Request indexes in the order they finish."""
        if self._order is None:
            self._order = list(range(self.n))
            random.Random(self._line_seed).shuffle(self._order)
        return self._order

    def line_draws(self, index: int) -> tuple[float, float, float]:
        """(request error, malformed line, missing line) uniforms of one request, fixed per batch."""
        rng = random.Random(self._line_seed ^ (index * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF))
        return rng.random(), rng.random(), rng.random()

    def outcome(self, index: int, processed: bool) -> Outcome:
        req = self.requests[index]
        if not processed:
            return Outcome("cancelled" if self.cancel_at is not None else "expired")
        if self.fault == "all_failed":
            return Outcome("errored", 500, "server_error", "The server had an error processing your request.")
        if req.invalid:
            return Outcome("errored", 400, "invalid_request_error", req.invalid)
        if self.rates["request_error"] and self.line_draws(index)[0] < self.rates["request_error"]:
            return Outcome("errored", 500, "server_error", "The server had an error processing your request.")
        text = answer(req.custom_id, index, req.shape, self._template, self._seed)
        out = self._fixed_output if self._fixed_output is not None else text_tokens(text)
        if req.max_tokens:
            out = min(out, req.max_tokens)
        return Outcome("succeeded", text=text, input_tokens=req.tokens, output_tokens=out)

    def prefix(self) -> tuple[list[int], list[int], list[int]]:
        """Cumulative (succeeded, input tokens, output tokens) over requests in finishing order."""
        if self._prefix is None:
            ok, tin, tout = [0], [0], [0]
            for index in self.order():
                o = self.outcome(index, True)
                good = o.kind == "succeeded"
                ok.append(ok[-1] + good)
                tin.append(tin[-1] + (o.input_tokens if good else 0))
                tout.append(tout[-1] + (o.output_tokens if good else 0))
            self._prefix = (ok, tin, tout)
        return self._prefix

    def counts(self, now: float) -> dict[str, int]:
        """succeeded, errored (processed but failed) and unprocessed requests at ``now``."""
        done = self.done_count(now)
        if done == 0:
            return {"succeeded": 0, "errored": 0, "processed": 0, "input_tokens": 0, "output_tokens": 0}
        ok, tin, tout = self.prefix()
        return {"succeeded": ok[done], "errored": done - ok[done], "processed": done,
                "input_tokens": tin[done], "output_tokens": tout[done]}

    def results(self, now: float) -> list[tuple[int, Outcome]]:
        """Every request's outcome once the batch has ended, in finishing order."""
        done = self.done_count(now)
        order = self.order()
        return [(index, self.outcome(index, rank < done)) for rank, index in enumerate(order)]


@dataclass
class SimState:
    """What the simulator saw and did; tests read it."""

    batches_created: Counter = field(default_factory=Counter)       # per provider
    requests_enqueued: Counter = field(default_factory=Counter)     # per provider
    http_requests: Counter = field(default_factory=Counter)         # "GET /v1/batches/{id}" -> count
    faults: Counter = field(default_factory=Counter)                # injected fault -> count
    rejections: Counter = field(default_factory=Counter)            # refused creations by reason
    token_limit_failures: int = 0
    files_uploaded: int = 0
    batches: dict[str, Batch] = field(default_factory=dict)         # every batch by id

    def batch_list(self, provider: str) -> list[Batch]:
        return [b for b in self.batches.values() if b.provider == provider]


class Account:
    """Shared state of one simulated organisation (both providers), guarded by one lock."""

    def __init__(self, config: SimConfig, now: Callable[[], float]) -> None:
        self.config = config
        self.now = now
        self.lock = threading.RLock()
        self.state = SimState()
        self.rng = random.Random(config.seed)
        self.create_rng = random.Random(f"{config.seed}:create")
        self._seq: Counter = Counter()
        self._pending: list[tuple[float, int, Batch]] = []   # openai batches awaiting admission
        self._tiebreak = itertools.count()
        self._admitted: dict[str, list[Batch]] = defaultdict(list)
        self._creations: dict[str, deque[float]] = defaultdict(deque)
        self.order: dict[str, list[Batch]] = defaultdict(list)  # per provider, oldest first

    def new_id(self, prefix: str, size: int = 24) -> str:
        return prefix + secrets.token_hex(size // 2)

    def sync(self, now: float) -> None:
        """Take admission decisions due by ``now``, in time order."""
        while self._pending and self._pending[0][0] <= now:
            t, _, batch = heapq.heappop(self._pending)
            if batch.cancel_at is not None and batch.cancel_at <= t:
                continue
            problems = batch.extra.get("problems")
            if problems or batch.fault == "validation":
                batch.failed_at = t
                batch.errors = [{"param": None, **p} for p in problems] if problems else [
                    {"code": "validation_failed", "message": "The batch input file failed validation.",
                     "param": None, "line": None}]
                continue
            limit = self.config.token_limit(batch.model)
            enqueued = self.enqueued_tokens(batch.model, t)
            if enqueued + batch.tokens > limit:
                batch.failed_at = t
                self.state.token_limit_failures += 1
                batch.errors = [{"code": "token_limit_exceeded", "param": None, "line": None,
                                 "message": _limit_message(batch.model, limit, enqueued)}]
                continue
            batch.admitted = True
            self._admitted[batch.model].append(batch)

    def enqueued_tokens(self, model: str, at: float) -> int:
        live = [b for b in self._admitted[model] if b.end_time > at]
        self._admitted[model] = live
        return sum(b.tokens for b in live)

    def validating_tokens(self, model: str) -> int:
        return sum(b.tokens for _, _, b in self._pending if b.model == model and b.cancel_at is None)

    def creation_allowed(self, provider: str, now: float) -> bool:
        limit = self.config.batch_creations_per_hour
        recent = self._creations[provider]
        while recent and recent[0] <= now - 3600:
            recent.popleft()
        return not limit or len(recent) < limit

    def add(self, provider: str, make: Callable[[int], Batch], now: float) -> Batch:
        seq = self._seq[provider]
        self._seq[provider] += 1
        batch = make(seq)
        self._creations[provider].append(now)
        self.state.batches[batch.id] = batch
        self.state.batches_created[provider] += 1
        self.state.requests_enqueued[provider] += batch.n
        self.order[provider].append(batch)
        if provider == "openai":
            heapq.heappush(self._pending, (batch.valid_at, next(self._tiebreak), batch))
        return batch

    def peek_seq(self, provider: str) -> int:
        return self._seq[provider]

    def unfinished_requests(self, provider: str, now: float) -> int:
        return sum(b.n for b in self.order[provider] if not b.ended(now))

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate


def _limit_message(model: str, limit: int, enqueued: int) -> str:
    return (f"Enqueued token limit reached for {model} in organization org-sim. Limit: {limit:,} enqueued tokens. "
            f"Currently enqueued: {enqueued:,}. Please try again once some in_progress batches have been completed.")
