"""The simulator's settings: turnaround distribution, provider limits, fault rates, answers.

Every field has a default, so ``SimConfig()`` is a working API. ``SimConfig.from_dict`` (and
``from_yaml``) accept the same fields, with ``turnaround``, ``limits`` and ``faults`` as optional
sections for readability; unknown keys are refused with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import SpecError

MB = 1024 * 1024
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}")


@dataclass
class Phase:
    """One phase of a batch: ``median_s * exp(sigma * Z) + per_request_s * requests`` seconds, Z ~ N(0, 1).

    The first term is a lognormal (the queue wait, independent of size); the second makes larger
    batches take proportionally longer.
    """

    median_s: float
    sigma: float = 0.0
    per_request_s: float = 0.0

    def draw(self, z: float, requests: int) -> float:
        return self.median_s * math.exp(self.sigma * z) + self.per_request_s * requests

    def mean(self, requests: int) -> float:
        return self.median_s * math.exp(self.sigma ** 2 / 2) + self.per_request_s * requests


@dataclass
class Turnaround:
    """Per-batch durations. Defaults: validating median 2 min; in progress median 20 min with a heavy
    tail (sigma 1: mean 33 min, 1 batch in 100 over 3.4 h) plus 0.1 s per request; finalizing median
    1 min plus 0.01 s per request; cancelling median 1 min, never more than 10 min."""

    validating: Phase = field(default_factory=lambda: Phase(120.0, 0.5))
    in_progress: Phase = field(default_factory=lambda: Phase(1200.0, 1.0, 0.1))
    finalizing: Phase = field(default_factory=lambda: Phase(60.0, 0.5, 0.01))
    cancelling: Phase = field(default_factory=lambda: Phase(60.0, 0.5))

    def mean(self, requests: int) -> float:
        """Mean time from creation to the end of a batch of this size (no expiry, no faults)."""
        return sum(p.mean(requests) for p in (self.validating, self.in_progress, self.finalizing))

    @classmethod
    def named(cls, name: str) -> Turnaround:
        """One of ``TURNAROUND_MODELS``: ``default``, or ``heavy`` (in progress with sigma 1.5:
        median still 20 min, mean 62 min, 1 batch in 10 over 2.3 h, 1 in 100 over 10.9 h)."""
        if name == "default":
            return cls()
        if name == "heavy":
            return cls(in_progress=Phase(1200.0, 1.5, 0.1))
        raise ValueError(f"unknown turnaround model {name!r}; models: {', '.join(TURNAROUND_MODELS)}")


#: named turnaround distributions (``turnaround: heavy``)
TURNAROUND_MODELS = ("default", "heavy")


FAULTS = ("http_5xx", "http_429", "timeout", "validation", "expire", "all_failed", "request_error",
          "malformed_lines", "missing_lines", "flex_unavailable_rate")

#: models that take ``service_tier: "flex"`` (and their dated snapshots, e.g. ``o3-2025-04-16``): o3 and
#: o4-mini, for which flex opened, and the gpt-5 family as read from OpenAI's pricing page (it changes)
FLEX_MODELS = ("o3", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5.1", "gpt-5.4", "gpt-5.5", "gpt-5.6")


@dataclass
class SimConfig:
    seed: int = 0
    turnaround: Turnaround = field(default_factory=Turnaround)
    expiry_s: float = 24 * 3600.0

    # OpenAI: input tokens of all unfinished batches of one model may not pass this (per model
    # overrides in enqueued_token_limits). Over it, a batch fails with token_limit_exceeded; this share
    # of such creations is refused at once with HTTP 400 instead.
    enqueued_token_limit: int = 40_000_000
    enqueued_token_limits: dict[str, int] = field(default_factory=dict)
    token_limit_create_error_rate: float = 0.2
    openai_max_requests: int = 50_000
    openai_max_file_bytes: int = 200 * MB
    # Anthropic: per batch, and requests of unfinished batches (HTTP 429 past it).
    anthropic_max_requests: int = 100_000
    anthropic_max_bytes: int = 256 * MB
    anthropic_queue_limit: int = 500_000
    # Both: batches created in any rolling hour (HTTP 429 past it); 0 = no limit.
    batch_creations_per_hour: int = 2000

    # Fault rates (0..1). HTTP faults apply per API call; validation, expire and all_failed per batch;
    # request_error, malformed_lines and missing_lines per request line.
    http_5xx: float = 0.0
    http_429: float = 0.0
    timeout: float = 0.0
    validation: float = 0.0
    expire: float = 0.0
    all_failed: float = 0.0
    request_error: float = 0.0
    malformed_lines: float = 0.0
    missing_lines: float = 0.0
    timeout_delay_s: float = 5.0      # real seconds a "timeout" response is held back (after the effect)
    retry_after_s: float = 1.0        # sent as retry-after(-ms) with 429s and 5xx

    # Flex processing (synchronous requests with service_tier "flex"): an answer is due
    # flex_latency_median_s * exp(flex_latency_sigma * Z) + flex_seconds_per_output_token * output tokens
    # after its arrival, in the shared clock's time. This share is refused at once with 429 Resource
    # Unavailable (not billed); past flex_max_concurrent waiting at once, 429 rate_limit_exceeded.
    flex_latency_median_s: float = 45.0
    flex_latency_sigma: float = 0.8
    flex_seconds_per_output_token: float = 0.01
    flex_unavailable_rate: float = 0.05
    flex_max_concurrent: int = 200
    flex_models: tuple[str, ...] = FLEX_MODELS

    # Answers: a JSON template (strings may use {custom_id} and {index}); otherwise shaped by the
    # request's JSON schema; otherwise a short text.
    answer_template: Any = None
    # Bill this many output tokens per answer instead of counting the answer (benchmarks).
    output_tokens: int | None = None
    # Keep uploaded input files so GET /v1/files/{id}/content returns them (off saves memory).
    keep_input_content: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.turnaround, Turnaround):
            self.turnaround = _turnaround(self.turnaround, None)
        if isinstance(self.flex_models, list):
            self.flex_models = tuple(self.flex_models)

    def flex_supported(self, model: str) -> bool:
        """Whether ``model`` takes service_tier "flex": one of ``flex_models`` or a dated snapshot of one."""
        return model in self.flex_models or any(
            _SNAPSHOT.fullmatch(model[len(name):]) for name in self.flex_models if model.startswith(name))

    def token_limit(self, model: str) -> int:
        return int(self.enqueued_token_limits.get(model, self.enqueued_token_limit))

    def fault_rates(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in FAULTS}

    def set_faults(self, **rates: float) -> None:
        for name, rate in rates.items():
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}; faults: {', '.join(FAULTS)}")
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"fault rate {name}={rate} is not between 0 and 1")
            setattr(self, name, float(rate))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, file: str | None = None) -> SimConfig:
        data = dict(data or {})
        flat: dict[str, Any] = {}
        for section in ("limits", "faults"):
            part = data.pop(section, None) or {}
            if not isinstance(part, dict):
                raise SpecError(f"{section} must be a mapping", file=file, key=section)
            flat.update(part)
        flat.update(data)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in flat.items():
            if key not in names:
                close = difflib.get_close_matches(key, sorted(names), n=1)
                raise SpecError(f"unknown simulator setting {key!r}", file=file, key=key,
                                expected=", ".join(sorted(names)), suggestion=close[0] if close else None)
            kwargs[key] = _turnaround(value, file) if key == "turnaround" else value
        config = cls(**kwargs)
        config._validate(file)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimConfig:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise SpecError(f"cannot read the simulator settings: {exc.strerror}", file=str(path)) from None
        except yaml.YAMLError as exc:
            raise SpecError(f"not valid YAML: {exc}", file=str(path)) from None
        if not isinstance(data, dict):
            raise SpecError("the simulator settings must be a mapping", file=str(path))
        return cls.from_dict(data, file=str(path))

    def _validate(self, file: str | None) -> None:
        for name in FAULTS + ("token_limit_create_error_rate",):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise SpecError(f"{name} is {value!r}", file=file, key=name, expected="a rate between 0 and 1")
        for name in ("enqueued_token_limit", "openai_max_requests", "openai_max_file_bytes",
                     "anthropic_max_requests", "anthropic_max_bytes", "anthropic_queue_limit", "expiry_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise SpecError(f"{name} is {value!r}", file=file, key=name, expected="a positive number")
        if not isinstance(self.enqueued_token_limits, dict):
            raise SpecError("enqueued_token_limits must map model names to token counts", file=file,
                            key="enqueued_token_limits")
        for name in ("flex_latency_median_s", "flex_latency_sigma", "flex_seconds_per_output_token"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise SpecError(f"{name} is {value!r}", file=file, key=name, expected="a number, 0 or more")
        if isinstance(self.flex_max_concurrent, bool) or not isinstance(self.flex_max_concurrent, int) \
                or self.flex_max_concurrent < 1:
            raise SpecError(f"flex_max_concurrent is {self.flex_max_concurrent!r}", file=file,
                            key="flex_max_concurrent", expected="a whole number of requests, 1 or more")
        if not isinstance(self.flex_models, tuple) or not all(isinstance(m, str) and m for m in self.flex_models):
            raise SpecError(f"flex_models is {self.flex_models!r}", file=file, key="flex_models",
                            expected="a list of model names (an empty list: no model takes flex)")
        if self.output_tokens is not None and (not isinstance(self.output_tokens, int) or self.output_tokens < 0):
            raise SpecError(f"output_tokens is {self.output_tokens!r}", file=file, key="output_tokens",
                            expected="a whole number of tokens, or null")


def _turnaround(value: Any, file: str | None) -> Turnaround:
    """A Turnaround from a model's name, or a mapping of phases (each replacing that phase of the
    model named by its optional ``model`` key, ``default`` if none)."""
    if isinstance(value, Turnaround):
        return value
    if isinstance(value, str):
        value = {"model": value}
    if not isinstance(value, dict):
        raise SpecError("turnaround must be a model's name or a mapping of phases", file=file, key="turnaround",
                        expected=", ".join(TURNAROUND_MODELS))
    value = dict(value)
    model = value.pop("model", "default")
    if model not in TURNAROUND_MODELS:
        close = difflib.get_close_matches(str(model), TURNAROUND_MODELS, n=1)
        raise SpecError(f"unknown turnaround model {model!r}", file=file, key="turnaround.model",
                        expected=", ".join(TURNAROUND_MODELS), suggestion=close[0] if close else None)
    phases: dict[str, Phase] = {}
    valid = [f.name for f in dataclasses.fields(Turnaround)]
    for name, spec in value.items():
        if name not in valid:
            raise SpecError(f"unknown phase {name!r}", file=file, key=f"turnaround.{name}",
                            expected="model, " + ", ".join(valid))
        if isinstance(spec, Phase):
            phases[name] = spec
            continue
        if not isinstance(spec, dict) or "median_s" not in spec:
            raise SpecError("a phase needs median_s (and optionally sigma, per_request_s)", file=file,
                            key=f"turnaround.{name}")
        unknown = set(spec) - {"median_s", "sigma", "per_request_s"}
        if unknown:
            raise SpecError(f"unknown keys {sorted(unknown)}", file=file, key=f"turnaround.{name}",
                            expected="median_s, sigma, per_request_s")
        phase = Phase(float(spec["median_s"]), float(spec.get("sigma", 0.0)), float(spec.get("per_request_s", 0.0)))
        if phase.median_s < 0 or phase.sigma < 0 or phase.per_request_s < 0:
            raise SpecError("durations and sigma must not be negative", file=file, key=f"turnaround.{name}")
        phases[name] = phase
    return dataclasses.replace(Turnaround.named(model), **phases)
