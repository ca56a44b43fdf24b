"""What a valid value looks like, per key of the campaign file: the ``expected:`` line of an error.

Keys are (model, field): the same field name means different things in different places (a stage's
``resources.gpus`` is a count, a local backend's ``gpus`` is ``auto``, ``none`` or a list of ids).
A field without an entry is described by its type, in words.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

from corral.spec.durations import DURATION_FORMS
from corral.spec.llm_profiles import PROFILES

DURATION = f"a duration: {DURATION_FORMS}"
OPTIONAL_DURATION = f"{DURATION}; or null for none"
SIZE = "a size: bytes (1024) or a number with K, M, G or T (512M, 4G; powers of 1024)"
FACTOR = "a factor such as 'x2' or 1.5"

_BY_KEY: dict[tuple[str, str], str] = {
    ("Campaign", "name"): "a campaign name such as 'eval-policies'",
    ("Campaign", "items"): "a mapping with grid, zip, list and/or from",
    ("Campaign", "stages"): "a mapping of stage name to {run: ... | call: ... | request: ...}",
    ("Campaign", "run_id"): "a template such as '{name}_{timestamp}'",
    ("Campaign", "results"): "a path template such as 'results/{policy}/episode_{repeat}.json'",
    ("Stage", "timeout"): OPTIONAL_DURATION,
    ("Stage", "every"): DURATION,
    ("Stage", "per"): "item | all | batch",
    ("Stage", "size"): "a whole number of items per batch, at least 1",
    ("Stage", "run"): "a command as a list of arguments or a string",
    ("Stage", "call"): "a callable reference 'package.module:function'",
    ("Stage", "parse"): "a callable reference 'package.module:function'",
    ("Stage", "needs"): "a stage name or a list of stage names",
    ("Stage", "backend"): "the name of a backend under backends:",
    ("Stage", "skip_if"): "a command, or a callable reference 'package.module:function'",
    ("Stage", "verify"): "a command, or a callable reference 'package.module:function'",
    ("Stage", "outputs"): "a path template or a list of them",
    ("Stage", "env"): "a mapping of variable name to value",
    ("Stage", "secrets"): "a name of an environment variable or a list of them",
    ("Retries", "max"): "a whole number of retries after the first attempt, 0 or more",
    ("Retries", "backoff"): DURATION,
    ("Retries", "max_backoff"): DURATION,
    ("Retries", "backoff_factor"): "a number, at least 1",
    ("Retries", "on"): "a list of error classes such as [timeout, oom]",
    ("Retries", "mem"): FACTOR,
    ("Retries", "time"): FACTOR,
    ("Resources", "cpus"): "a whole number of CPUs per task, at least 1",
    ("Resources", "gpus"): "a whole number of GPUs per task, 0 for none (unset: one per worker where the "
                           "backend has GPUs)",
    ("Resources", "mem"): SIZE,
    ("Resources", "time"): f"the job's time limit, {DURATION}",
    ("LocalBackend", "gpus"): "'auto', 'none' or a list of GPU ids such as [0, 1]",
    ("LocalBackend", "workers"): "a whole number of worker processes, at least 1",
    ("LocalBackend", "workers_per_gpu"): "a whole number of workers per GPU, at least 1",
    ("SlurmBackend", "time"): f"the job's time limit, {DURATION}",
    ("SlurmBackend", "mem"): SIZE,
    ("SlurmBackend", "poll_interval"): DURATION,
    ("SlurmBackend", "max_poll_interval"): DURATION,
    ("SlurmBackend", "missing_grace"): DURATION,
    ("SlurmBackend", "pilot_wait"): DURATION,
    ("SlurmBackend", "signal"): "an sbatch --signal value such as 'B:USR1@90'",
    ("LlmBatchSettings", "timeout"): DURATION,
    ("LlmBatchSettings", "poll_interval"): DURATION,
    ("LlmBatchSettings", "token_limit_backoff"): DURATION,
    ("LlmBatchSettings", "expected_turnaround"): DURATION,
    ("LlmBatchSettings", "max_bytes_per_batch"): SIZE,
    ("TokenWindow", "window"): DURATION,
    ("OpenAIBatchSettings", "completion_window"): "a window such as '24h' or '7d' that the provider accepts",
    ("OpenAIBatchSettings", "profile"):
        "one of " + ", ".join(sorted(PROFILES)) + " (docs/backends/openai-compatible.md)",
}


def expected_for(model: type[BaseModel], field: str) -> str | None:
    """The text for ``field`` of ``model`` (or of a model it inherits from); None for no such field."""
    info = {(f.alias or n): f for n, f in model.model_fields.items()}.get(field)
    if info is None:
        return None
    for cls in model.__mro__:
        text = _BY_KEY.get((cls.__name__, field))
        if text:
            return text
    return describe_type(info.annotation)


_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
          dict: "a mapping", list: "a list"}


def describe_type(annotation: Any) -> str:
    """A type in words: ``int | None`` -> "a whole number, or null"."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in args
        words = [describe_type(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(words))
        return f"{text}, or null" if optional else text
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, typing.List):
        if not args or (isinstance(args[0], type) and issubclass(args[0], BaseModel)):
            return "a list of mappings" if args else "a list"
        return f"a list of {_plural(describe_type(args[0]))}"
    if origin in (dict, typing.Dict):
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping of " + ", ".join(f.alias or n for n, f in annotation.model_fields.items())
    return _WORDS.get(annotation, str(annotation).replace("typing.", ""))


def _plural(text: str) -> str:
    for article in ("a ", "an "):
        if text.startswith(article):
            return text[len(article):] + "s"
    return text
