"""What a run's identity is made of: every key of the campaign schema, classified on purpose.

- DEFINING keys say what the work is (the item sources' shape, stage bodies, request templates,
  models, parse functions, dependencies, outputs, verification). Changing one makes another run;
  continuing an existing run with it is refused with the diff unless forced.
- STEERING keys only say how the work is driven (limits, intervals, budgets, polling, sizing of
  submissions, retries, timeouts, resources, report sections). They may change between ticks: the
  change is recorded and the run continues.
- MEMBERSHIP keys say which items there are (the values of a grid, the rows of a list or zip, the
  filter of an item file). A change adds the new items to the run being continued.

A run's identity hash is the defining part of its configuration, its item selection (``--limit``,
``--shard``) and the names of its item parameters.
"""

from __future__ import annotations

import enum
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


class KeyKind(str, enum.Enum):
    DEFINING = "defining"
    STEERING = "steering"
    MEMBERSHIP = "membership"

    def __str__(self) -> str:
        return self.value


D, S, M = KeyKind.DEFINING, KeyKind.STEERING, KeyKind.MEMBERSHIP

#: ``*`` stands for any name (a stage, a backend, a report, a grid axis). A key whose pattern is
#: not here takes the kind of its nearest classified parent: free-form sections (``params``,
#: ``request``, ``env``, an item list) are classified whole.
KEY_KINDS: dict[str, KeyKind] = {
    # the campaign
    "name": D,                   # runs are found by the campaign's name
    "description": S,
    "ledger": S,
    "workdir": D,                # the run's files (logs, results of workers) live under it
    "run_id": S,                 # names new runs only
    "results": S,                # where result files are written, for tasks recorded from now on
    "params": D,
    # items: the shape of each item (where it comes from, its key) defines; which items, not
    "items.from.path": D,
    "items.from.format": D,
    "items.from.where": M,
    "items.key": D,
    "items.grid": M,
    "items.zip": M,
    "items.list": M,
    "sweep.params": M,           # the swept values: grid axes
    # stages
    "stages.*.run": D,
    "stages.*.call": D,
    "stages.*.request": D,
    "stages.*.parse": D,
    "stages.*.per": D,
    "stages.*.needs": D,
    "stages.*.skip_if": D,
    "stages.*.verify": D,
    "stages.*.verify.run": D,
    "stages.*.outputs": D,
    "stages.*.env": D,
    "stages.*.backend": D,       # in-flight submissions are polled through the backend that sent them
    "stages.*.size": S,
    "stages.*.every": S,
    "stages.*.retries.max": S,
    "stages.*.retries.backoff": S,
    "stages.*.retries.backoff_factor": S,
    "stages.*.retries.max_backoff": S,
    "stages.*.retries.on": S,
    "stages.*.retries.mem": S,
    "stages.*.retries.time": S,
    "stages.*.timeout": S,
    "stages.*.secrets": S,       # names only; the values never reach the ledger
    "stages.*.description": S,
    **{f"stages.*.resources.{name}": S for name in (
        "cpus", "gpus", "mem", "time", "partition", "account", "qos", "gres", "constraint", "exclude",
        "nodes", "sbatch", "setup")},
    # backends (the settings of every type)
    "backends.*.type": D,
    "backends.*.model": D,       # the LLM backends' default model for requests that name none
    "backends.*.endpoint": D,    # the shape of the requests sent
    "backends.*.profile": D,     # which provider serves the requests (its base URL, key and limits)
    "backends.*.batch_discount": S,
    "backends.*.completion_window": S,
    **{f"backends.*.{name}": S for name in (
        # local
        "workers", "gpus", "workers_per_gpu", "tasks_per_worker", "max_tasks_per_worker", "python",
        # slurm
        "partition", "account", "qos", "time", "mem", "gres", "constraint", "exclude", "nodes", "sbatch",
        "setup", "launcher", "tasks_per_job", "pilot", "pilot_wait", "max_running", "max_jobs",
        "max_tasks_per_submission", "signal", "env", "dependencies", "exclude_failed_nodes",
        "poll_interval", "max_poll_interval", "missing_grace",
        # LLM batch APIs
        "base_url", "api_key_env", "max_retries", "timeout", "enqueued_token_limit", "safety_ratio",
        "batches_in_flight", "max_requests_per_batch", "max_bytes_per_batch", "min_requests_per_batch",
        "max_concurrent_batches", "max_batches_per_hour", "straggler_after", "split_tail",
        "token_limit_backoff", "tokenizer", "expected_output_tokens", "expected_turnaround",
        "queue_request_limit")},
    "backends.*.race.*.partition": S,
    "backends.*.race.*.account": S,
    "backends.*.race.*.qos": S,
    "backends.*.race.*.gres": S,
    "backends.*.race.*.constraint": S,
    "backends.*.token_window.tokens": S,
    "backends.*.hedge.mode": S,
    "backends.*.hedge.after": S,
    "backends.*.hedge.max_extra_cost": S,
    "backends.*.hedge.flex_concurrency": S,
    "backends.*.hedge.flex_timeout": S,
    "backends.*.token_window.window": S,
    "backends.*.prices.*.input": S,
    "backends.*.prices.*.output": S,
    "backends.*.prices.*.cached_input": S,
    "backends.*.prices.*.batch_discount": S,
    "backends.*.budget.max_usd": S,
    # named reports
    **{f"report.*.{name}": S for name in ("by", "metric", "stage", "runs", "compare", "formats", "output", "plot", "top",
                                          "baseline", "caption", "columns", "label", "lower_is_better", "pair_on",
                                          "paired_by", "paired_test")},
}

_PATTERNS = [(tuple(pattern.split(".")), kind) for pattern, kind in KEY_KINDS.items()]


class UnclassifiedKey(KeyError):
    """A key of the configuration that the table does not classify."""


def _split(path: str | Sequence[str]) -> tuple[str, ...]:
    return tuple(path.split(".")) if isinstance(path, str) else tuple(str(p) for p in path)


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    return len(pattern) == len(parts) and all(p == "*" or p == q for p, q in zip(pattern, parts))


def classified_as(path: str | Sequence[str]) -> str | None:
    """The table's pattern that classifies ``path`` (itself or its nearest parent), or None."""
    parts = _split(path)
    for length in range(len(parts), 0, -1):
        head = parts[:length]
        for pattern, _ in _PATTERNS:
            if _matches(pattern, head):
                return ".".join(pattern)
    return None


def kind_of(path: str | Sequence[str]) -> KeyKind:
    """The kind of a configuration key given as a dotted path (``stages.label.retries.max``) or a
    sequence of names. Raises UnclassifiedKey for a key the schema does not have."""
    pattern = classified_as(path)
    if pattern is None:
        raise UnclassifiedKey(".".join(_split(path)))
    return KEY_KINDS[pattern]


def _part(config: Any, kinds: set[KeyKind], path: tuple[str, ...]) -> Any:
    if not isinstance(config, Mapping):
        return config
    kept: dict[str, Any] = {}
    for key, value in config.items():
        here = path + (str(key),)
        pattern = classified_as(here)
        if pattern is not None:
            if KEY_KINDS[pattern] in kinds:
                kept[key] = value
            continue
        # A section (a stage, a backend) classified key by key below it; a key the schema does not
        # know (the loader refuses those) counts as defining, to err on the side of a new run.
        if isinstance(value, Mapping):
            inner = _part(value, kinds, here)
            if inner:
                kept[key] = inner
        elif KeyKind.DEFINING in kinds:
            kept[key] = value
    return kept


def defining_part(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration with only its defining keys: what a run's identity hashes."""
    return _part(config, {KeyKind.DEFINING}, ())


def steering_part(config: Mapping[str, Any]) -> dict[str, Any]:
    return _part(config, {KeyKind.STEERING}, ())


def membership_part(config: Mapping[str, Any]) -> dict[str, Any]:
    return _part(config, {KeyKind.MEMBERSHIP}, ())


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity_hash(config: Mapping[str, Any], selection: Mapping[str, Any], param_names: Iterable[str]) -> str:
    """A run's identity: the defining part of its configuration, which of the items it takes
    (``limit``, ``shard``) and the names of the items' parameters."""
    return _hash({"defining": defining_part(config), "selection": {"limit": selection.get("limit"),
                                                                   "shard": selection.get("shard")},
                  "params": sorted(set(param_names))})


def membership_fingerprint(config: Mapping[str, Any], root: Path) -> str:
    """What decides which items a campaign has: its membership keys and the bytes of its item file.
    Equal fingerprints mean the same items; a different one means they must be compared."""
    items = config.get("items") or {}
    source = items.get("from") if isinstance(items, Mapping) else None
    path = source.get("path") if isinstance(source, Mapping) else source
    digest = None
    if isinstance(path, str):
        file = Path(path).expanduser()
        file = file if file.is_absolute() else root / file
        try:
            sha = hashlib.sha256()
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
            digest = sha.hexdigest()
        except OSError:
            digest = None
    return _hash({"membership": membership_part(config), "file": digest})


def flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested configuration as {dotted key: value}; lists are values."""
    if isinstance(config, Mapping):
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: config} if prefix else {}


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[str, Any, Any, KeyKind]]:
    """(dotted key, value before, value after, kind) of every key that differs; a key missing on
    one side is None there."""
    old, new = flat(before), flat(after)
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key) or (key in old) != (key in new):
            try:
                kind = kind_of(key)
            except UnclassifiedKey:
                kind = KeyKind.DEFINING
            out.append((key, old.get(key), new.get(key), kind))
    return out
