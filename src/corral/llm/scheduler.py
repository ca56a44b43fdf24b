"""How many requests to send now, and in batches of what size.

The limit that bounds a batch API's throughput is the enqueued-token limit: input tokens of all
unfinished batches of a model at one time (not a daily quota). The scheduler keeps the estimated
tokens in flight under ``enqueued_token_limit x`` the safety ratio, refills the moment a batch
finishes, splits what fits into about ``batches_in_flight`` batches (so capacity frees in steps
and the tail is short), and honours the optional limits: concurrent batches, batches per hour,
tokens per rolling window and the money budget. A ``token_limit_exceeded`` refusal backs off
(doubling, up to 30 minutes) and lowers the limit it aims for, by 5% and to below what was in
flight when the refusal came: the provider counts tokens its own way and no endpoint tells what
is left.

The safety ratio is learned from the bill: estimates are corrected by the calibration (billed over
estimated input tokens), and the margin left is what the corrected estimate's error, measured batch
by batch, needs at its upper quantile (``safety_ratio``). A configured ``safety_ratio`` is the
ratio used until enough batches are billed, and a cap the learned one never passes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corral.llm.tokens import Calibration

MAX_BACKOFF = 1800.0
HOUR = 3600.0
#: the share of the enqueued limit aimed at before the estimate's error is measured
PRIOR_SAFETY_RATIO = 0.9
#: billed batches needed before their spread sets the margin
MIN_ERROR_SAMPLES = 3
#: the share of batches whose bill may pass the margin (before refusals correct it)
ERROR_QUANTILE = 0.95
#: margin kept even where the corrected estimates match the bill exactly (rounding, a batch's
#: tokens counted at creation by the provider's own tokenizer)
MIN_MARGIN = 0.02
MIN_SAFETY_RATIO = 0.1


@dataclass
class InFlight:
    """One open batch as the scheduler sees it (from its submission's info)."""

    tokens: float
    requests: int
    cost: float = 0.0


@dataclass
class State:
    """What the backend learned, kept in ``<run dir>/llm/<backend>.json`` across restarts. It is
    a cache of estimates, never the record of what happened: losing it costs a new pilot batch."""

    tokens_per_request: float | None = None      # estimated, corrected by the calibration
    tokens_factor: float | None = None           # the calibration factor tokens_per_request was corrected by
    bytes_per_request: float | None = None
    cost_per_request: float | None = None
    output_per_request: float | None = None      # billed output tokens per request
    calibration: Calibration = field(default_factory=Calibration)
    pilot_done: bool = False
    limit_factor: float = 1.0
    blocked_until: float = 0.0
    backoff: float = 0.0
    history: list[tuple[float, float]] = field(default_factory=list)   # (submitted at, tokens)
    turnarounds: list[float] = field(default_factory=list)             # seconds, last finished batches
    #: batches that were in flight when a request did not fit the budget: none is planned for it
    #: again until fewer are (one finished, and its bill says what is left)
    budget_waits: int | None = None

    @classmethod
    def load(cls, path: Path) -> State:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        state = cls()
        for key, value in data.items():
            if key == "calibration":
                state.calibration = Calibration(**value)
            elif key == "history":
                state.history = [tuple(entry) for entry in value]
            elif hasattr(state, key):
                setattr(state, key, value)
        return state

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        tmp.replace(path)

    def record_submit(self, now: float, tokens: float, keep: float) -> None:
        self.history = [(t, n) for t, n in self.history if t > now - keep] + [(now, tokens)]

    def learn_request(self, tokens: float, nbytes: float, cost: float | None, weight: float) -> None:
        """Running means per request from a rendered batch (``weight`` = its request count)."""
        def mix(old: float | None, new: float) -> float:
            return new if old is None else 0.7 * old + 0.3 * new
        if weight > 0:
            self.follow_calibration()
            self.tokens_per_request = mix(self.tokens_per_request, tokens)
            self.tokens_factor = self.calibration.factor
            self.bytes_per_request = mix(self.bytes_per_request, nbytes)
            if cost is not None:
                self.cost_per_request = mix(self.cost_per_request, cost)

    def follow_calibration(self) -> None:
        """Rescale ``tokens_per_request`` to the calibration as it is now: a batch billed since the
        mean was measured changes the correction its estimates need."""
        factor = self.calibration.factor
        if self.tokens_per_request is not None and self.tokens_factor and factor != self.tokens_factor:
            self.tokens_per_request *= factor / self.tokens_factor
        self.tokens_factor = factor

    def token_limit_hit(self, now: float, base: float, ceiling: float | None = None,
                        configured: float | None = None) -> None:
        """A refusal: wait, and aim lower: 5% lower, and below 90% of ``ceiling`` (the tokens in
        flight, this batch included, when it was refused: the real limit is under that)."""
        self.backoff = min(MAX_BACKOFF, max(base, self.backoff * 2 if self.backoff else base))
        self.blocked_until = now + self.backoff
        factor = self.limit_factor * 0.95
        if ceiling and configured:
            factor = min(factor, 0.9 * ceiling / configured)
        self.limit_factor = max(0.01, factor)

    def batch_accepted(self) -> None:
        self.backoff = 0.0


@dataclass
class Decision:
    sizes: list[int]
    reason: str = ""
    over_budget: bool = False      # nothing in flight and the budget allows no request: fail them


def plan_sizes(settings: Any, state: State, *, now: float, ready: int, remaining: int,
               in_flight: list[InFlight], spent: float = 0.0, cost_per_request: float | None = None) -> Decision:
    """Sizes of the batches to create now from ``ready`` requests; ``cost_per_request``: the cost of
    a request as estimated now (default: the mean of the estimates the batches were sent with)."""
    if ready <= 0:
        return Decision([], "nothing ready")
    state.follow_calibration()
    if now < state.blocked_until:
        return Decision([], f"backing off after token_limit_exceeded for {state.blocked_until - now:.0f}s")
    if settings.pilot and not state.pilot_done:
        if in_flight:
            return Decision([], "waiting for the pilot batch")
        return Decision([min(ready, settings.pilot)], "pilot batch")
    per_tokens = state.tokens_per_request
    if per_tokens is None:
        # Nothing measured yet: one small batch measures the requests, the next tick fills up.
        return Decision([min(ready, 100, settings.max_requests_per_batch)], "first batch")
    per_tokens = max(1.0, per_tokens)

    budget = budget_requests(settings, state, spent, in_flight, cost_per_request)
    if state.budget_waits is not None and len(in_flight) < state.budget_waits:
        state.budget_waits = None
    if budget is not None and (budget < 1 or state.budget_waits is not None):
        if in_flight:
            return Decision([], "budget: waiting for the batches in flight to be billed")
        return Decision([ready], "budget reached", over_budget=True)

    capacity = enqueued_capacity(settings, state)
    used = sum(b.tokens for b in in_flight)
    free_tokens = capacity - used if capacity is not None else math.inf
    free_requests = math.inf
    request_limit = getattr(settings, "queue_request_limit", None)
    if request_limit:
        # Requests are counted exactly: only the configured ratio applies.
        share = settings.safety_ratio if settings.safety_ratio is not None else PRIOR_SAFETY_RATIO
        free_requests = request_limit * share - sum(b.requests for b in in_flight)
    slots = math.inf
    if settings.max_concurrent_batches:
        slots = settings.max_concurrent_batches - len(in_flight)
    if settings.max_batches_per_hour:
        recent = sum(1 for t, _ in state.history if t > now - HOUR)
        slots = min(slots, settings.max_batches_per_hour - recent)
    window_free = math.inf
    if settings.token_window:
        window = settings.token_window
        window_free = window.tokens - sum(n for t, n in state.history if t > now - window.window)

    target = target_batch_requests(settings, state, remaining)
    left = ready if budget is None else min(ready, budget)
    sizes: list[int] = []
    open_batches = len(in_flight)
    while left > 0 and len(sizes) < slots:
        fit = min(left, target, _whole(free_tokens / per_tokens), _whole(window_free / per_tokens),
                  _whole(free_requests))
        if fit < 1:
            if not open_batches and not sizes:
                sizes.append(1)   # one request alone: sent, or failed as too large for any batch
            break
        if fit < min(left, target) and fit < 0.25 * target and open_batches:
            break   # a fragment: better wait for a batch to finish and send a full one
        fit = int(fit)
        sizes.append(fit)
        left -= fit
        open_batches += 1
        free_tokens -= fit * per_tokens
        window_free -= fit * per_tokens
        free_requests -= fit
    if not sizes:
        return Decision([], "limits full")
    return Decision(sizes, "fill")


def _whole(value: float) -> float:
    return value if math.isinf(value) else math.floor(value)


def enqueued_capacity(settings: Any, state: State, *, refusals: bool = True) -> float | None:
    """Estimated tokens the batches in flight may hold: the limit x the safety ratio, x the factor
    refusals lowered it by (``refusals=False``: without that factor)."""
    if not settings.enqueued_token_limit:
        return None
    return settings.enqueued_token_limit * safety_ratio(settings, state) * (state.limit_factor if refusals else 1.0)


def safety_ratio(settings: Any, state: State) -> float:
    """The share of the enqueued limit to aim at: ``1 / (upper error + MIN_MARGIN)``, where the
    upper error is the ``ERROR_QUANTILE`` of billed over corrected estimated tokens per batch;
    before ``MIN_ERROR_SAMPLES`` batches are billed, the configured ``safety_ratio`` (default
    ``PRIOR_SAFETY_RATIO``). A configured ``safety_ratio`` caps the learned one."""
    cap = getattr(settings, "safety_ratio", None)
    upper = state.calibration.upper_error(ERROR_QUANTILE, MIN_ERROR_SAMPLES)
    if upper is None:
        return cap if cap is not None else PRIOR_SAFETY_RATIO
    learned = min(1.0 / (1.0 + MIN_MARGIN), max(MIN_SAFETY_RATIO, 1.0 / (upper + MIN_MARGIN)))
    return min(cap, learned) if cap is not None else learned


def target_batch_requests(settings: Any, state: State, remaining: int) -> int:
    """Requests per batch: the provider's limits and a share of the enqueued limit; with
    ``split_tail``, the last round spread over ``batches_in_flight`` batches."""
    per_tokens = max(1.0, state.tokens_per_request or 1.0)
    per_bytes = max(1.0, state.bytes_per_request or 1.0)
    target = min(settings.max_requests_per_batch, math.floor(settings.max_bytes_per_batch * 0.98 / per_bytes))
    capacity = enqueued_capacity(settings, state)
    if capacity is not None:
        target = min(target, math.floor(capacity / settings.batches_in_flight / per_tokens))
    if settings.split_tail:
        target = min(target, max(settings.min_requests_per_batch, math.ceil(remaining / settings.batches_in_flight)))
    return max(1, max(target, settings.min_requests_per_batch))


def budget_requests(settings: Any, state: State, spent: float, in_flight: list[InFlight],
                    cost_per_request: float | None = None) -> int | None:
    """Requests the budget still allows, by the estimates (None without a budget or a cost)."""
    if settings.budget is None:
        return None
    per_cost = cost_per_request if cost_per_request is not None else state.cost_per_request
    if per_cost is None or per_cost <= 0:
        return None
    room = settings.budget.max_usd - spent - sum(b.cost for b in in_flight)
    return max(0, math.floor(room / per_cost))
