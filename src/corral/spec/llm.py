"""Settings of the LLM batch backends (``type: openai_batch``, ``anthropic_batch`` and ``gemini_batch``).

Everything the scheduler needs to keep a provider's limits full without passing them, the price
table overrides and the money cap. Documented in docs/backends/llm-batch.md.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from corral.spec.durations import parse_duration, parse_size
from corral.spec.llm_profiles import PROFILES, profile_named
from corral.spec.models import Strict


_WINDOW = re.compile(r"^[1-9][0-9]*[hd]$")


def _duration(value: Any) -> Any:
    return None if value is None else parse_duration(value)


def _size(value: Any) -> Any:
    return None if value is None else parse_size(value)


class Price(Strict):
    """USD per million tokens at the provider's standard rate; ``batch_discount`` is taken off."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    batch_discount: float = Field(default=0.5, ge=0, lt=1)


class Budget(Strict):
    """Stop submitting before the run's spending (billed plus projected for what is in flight) would
    pass ``max_usd``."""

    max_usd: float = Field(gt=0)


class TokenWindow(Strict):
    """At most ``tokens`` estimated input tokens submitted in any rolling ``window``."""

    tokens: int = Field(gt=0)
    window: float = 86400.0

    _check_window = field_validator("window", mode="before")(_duration)


class HedgeMode(str, Enum):
    OFF = "off"
    BACKUP = "backup"
    FLEX = "flex"


class Hedge(Strict):
    """Backup batches for the tail: once all of a stage's work is in flight, a batch unfinished
    past ``after`` x the median turnaround gets a second batch with its unanswered requests
    (``backup``), the first answer of each request is recorded and the slower batch cancelled;
    the estimated cost of backups stays under ``max_extra_cost`` x the stage's projected cost.
    ``flex`` (OpenAI only): the unanswered requests go as synchronous requests with
    ``service_tier: "flex"`` (billed at the Batch price), ``flex_concurrency`` at a time, each
    waiting up to ``flex_timeout``; the first answer of each request is recorded.
    ``off``: such a batch is cancelled and its unfinished requests sent again (``straggler_after``)."""

    mode: HedgeMode = HedgeMode.BACKUP
    after: float = Field(default=1.5, ge=1.0)
    max_extra_cost: float = Field(default=0.05, ge=0, le=1)
    flex_concurrency: int = Field(default=192, ge=1, le=1000)
    flex_timeout: float = 900.0

    _check_timeout = field_validator("flex_timeout", mode="before")(_duration)


class LlmBatchSettings(Strict):
    """What both batch backends share."""

    model: str | None = None
    base_url: str | None = None
    api_key_env: str = ""
    # The SDK's own HTTP behaviour: retries with backoff on 408/409/429/5xx and connection errors.
    max_retries: int = Field(default=5, ge=0)
    timeout: float = 600.0
    # Scheduling
    enqueued_token_limit: int | None = Field(default=None, gt=0)
    # None: learned from the billed tokens; a value is the ratio until then, and a cap after.
    safety_ratio: float | None = Field(default=None, gt=0, le=1)
    batches_in_flight: int = Field(default=8, ge=1)
    max_requests_per_batch: int = Field(default=50_000, ge=1)
    max_bytes_per_batch: int = 200 * 1000 * 1000
    min_requests_per_batch: int = Field(default=1, ge=1)
    max_concurrent_batches: int | None = Field(default=None, ge=1)
    max_batches_per_hour: int | None = Field(default=None, ge=1)
    token_window: TokenWindow | None = None
    pilot: int = Field(default=20, ge=0)
    straggler_after: float | None = Field(default=2.0, ge=1.2)
    split_tail: bool = False
    hedge: Hedge = Field(default_factory=Hedge)
    poll_interval: float = 30.0
    token_limit_backoff: float = 60.0
    # Estimation, cost and projection
    tokenizer: Literal["auto", "tiktoken", "estimate"] = "auto"
    expected_output_tokens: int | None = Field(default=None, ge=0)
    expected_turnaround: float = 3600.0
    prices: dict[str, Price] = Field(default_factory=dict)
    budget: Budget | None = None

    _check_durations = field_validator("timeout", "poll_interval", "token_limit_backoff", "expected_turnaround",
                                       mode="before")(_duration)
    _check_bytes = field_validator("max_bytes_per_batch", mode="before")(_size)

    @field_validator("max_bytes_per_batch")
    @classmethod
    def _positive_bytes(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be a positive size like '200MB'")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> LlmBatchSettings:
        if self.min_requests_per_batch > self.max_requests_per_batch:
            raise ValueError("min_requests_per_batch is larger than max_requests_per_batch")
        kind = getattr(self, "type", "")
        if self.hedge.mode == HedgeMode.FLEX and kind != "openai_batch":
            raise ValueError(f"hedge.mode 'flex' (synchronous requests with service_tier 'flex') is OpenAI's; "
                             f"{kind} takes hedge.mode 'backup' or 'off'")
        return self


class OpenAIBatchSettings(LlmBatchSettings):
    """The OpenAI Batch API, or a provider that takes its format (``profile:``): a JSONL file uploaded,
    one batch per file."""

    type: Literal["openai_batch"] = "openai_batch"
    api_key_env: str = "OPENAI_API_KEY"
    endpoint: Literal["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions"] = \
        "/v1/chat/completions"
    max_requests_per_batch: int = Field(default=50_000, ge=1, le=50_000)
    max_bytes_per_batch: int = 200 * 1000 * 1000
    # A provider that takes this format (corral.spec.llm_profiles): its defaults under what is set here.
    profile: str | None = None
    # The share of the standard price taken off for batches, for prices that do not give their own.
    batch_discount: float | None = Field(default=None, ge=0, lt=1)
    # Sent as the batch's completion_window; OpenAI takes only 24h, some providers longer ones.
    completion_window: str = "24h"

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """Fill what is not set (absent or null) from the profile; an unknown name is left to the
        field's own check, which names the valid profiles."""
        if not isinstance(data, dict) or not isinstance(data.get("profile"), str) or data["profile"] not in PROFILES:
            return data
        defaults = PROFILES[data["profile"]].settings()
        return {**data, **{key: value for key, value in defaults.items() if data.get(key) is None}}

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value is not None:
            profile_named(value)
        return value

    @model_validator(mode="after")
    def _served_endpoint(self) -> OpenAIBatchSettings:
        profile = PROFILES[self.profile or "openai"]
        if self.endpoint not in profile.endpoints:
            raise ValueError(f"endpoint {self.endpoint!r} is not served by {profile.provider}'s Batch API "
                             f"(profile {profile.name!r} takes {', '.join(profile.endpoints)})")
        if self.hedge.mode == HedgeMode.FLEX and (profile.name != "openai" or self.endpoint not in FLEX_ENDPOINTS):
            raise ValueError(f"hedge.mode 'flex' sends synchronous requests with service_tier 'flex' at the Batch "
                             f"price: OpenAI's {' and '.join(FLEX_ENDPOINTS)} only (this backend: profile "
                             f"{profile.name!r}, endpoint {self.endpoint!r}); use hedge.mode 'backup' or 'off'")
        return self

    @field_validator("completion_window")
    @classmethod
    def _accepted_window(cls, value: str, info: ValidationInfo) -> str:
        profile = PROFILES.get(info.data.get("profile") or "openai")
        if profile is None:   # an unknown profile, already refused
            return value
        seconds = parse_duration(value) if _WINDOW.match(value) else -1.0
        low, high = profile.completion_window_range
        if not low <= seconds <= high:
            raise ValueError(f"{value!r} is not accepted by {profile.provider} (profile {profile.name!r} takes "
                             f"{profile.windows()})")
        return value


class AnthropicBatchSettings(LlmBatchSettings):
    """Anthropic Message Batches: requests sent inline, results streamed as JSONL."""

    type: Literal["anthropic_batch"] = "anthropic_batch"
    api_key_env: str = "ANTHROPIC_API_KEY"
    max_requests_per_batch: int = Field(default=100_000, ge=1, le=100_000)
    max_bytes_per_batch: int = 256 * 1000 * 1000
    # The provider's queue limit counts requests of unfinished batches, not tokens.
    queue_request_limit: int | None = Field(default=None, gt=0)


class GeminiBatchSettings(LlmBatchSettings):
    """The Gemini Batch API (Gemini Developer API): a JSONL file uploaded through the Files API, one
    job per file, results in a generated file; a job not done in 48 h expires with nothing returned."""

    type: Literal["gemini_batch"] = "gemini_batch"
    api_key_env: str = "GEMINI_API_KEY"
    max_requests_per_batch: int = Field(default=50_000, ge=1)
    max_bytes_per_batch: int = 2 * 1000 * 1000 * 1000


#: the OpenAI endpoints that take ``service_tier: "flex"``
FLEX_ENDPOINTS = ("/v1/chat/completions", "/v1/responses")

LLM_BACKEND_TYPES = ("openai_batch", "anthropic_batch", "gemini_batch")
