"""The typed schema of a campaign file. Every model forbids unknown keys so typos are caught."""

from __future__ import annotations

import re
import shlex
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PrivateAttr, field_validator, model_validator

from corral.refs import CALLABLE_RE, single_callable
from corral.spec.durations import parse_duration, parse_size
from corral.spec.reports import NamedReport, check_report_names

#: what one run can hold: writing the ledger rows of ten million items takes minutes; more, hours
MAX_ITEMS = 10_000_000
#: a year: longer timeouts, intervals and backoffs are mistakes (and 1e308 s overflows clocks)
MAX_DURATION = 366 * 86400.0
#: worker processes of one local backend
MAX_WORKERS = 4096

STAGE_NAME_RE = re.compile(r"^[A-Za-z_][\w-]*$")
ERROR_CLASSES = (
    "exception", "exit_code", "signal", "timeout", "oom", "preempted", "node_fail", "worker_lost",
    "verify", "template", "submit", "rate_limit", "token_limit", "expired", "invalid_request", "parse",
    "upstream", "server_error", "budget", "gone",
)
#: what ``needs: [{stage: NAME, allow: ...}]`` may allow: needed tasks that ended so
NEED_ALLOWS = ("failed", "cancelled")
#: retried only when ``retries.on`` names them: the same request would fail the same way again
NOT_RETRIED_BY_DEFAULT = ("invalid_request", "budget", "template")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    return parse_duration(value)


class Retries(Strict):
    """``retries: {max: 3, backoff: 30s, on: [timeout, oom]}``: ``max`` retries after the first attempt."""

    max: int = Field(default=0, ge=0, le=1000)
    backoff: float = Field(default=10.0, ge=0, le=MAX_DURATION)
    backoff_factor: float = Field(default=2.0, ge=1.0, le=1000.0)
    max_backoff: float = Field(default=3600.0, ge=0, le=MAX_DURATION)
    on: list[str] | None = None
    #: on a cluster, scale the memory / time limit by this factor for each retry that follows an
    #: out-of-memory failure / a timeout (``mem: x2``)
    mem: float | None = Field(default=None, gt=0)
    time: float | None = Field(default=None, gt=0)

    _check_backoff = field_validator("backoff", "max_backoff", mode="before")(_duration)

    @field_validator("mem", "time", mode="before")
    @classmethod
    def _factor(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower().removeprefix("x").removesuffix("x")
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"{value!r} is not a factor like 'x2' or 1.5") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean true.
        if isinstance(data, dict) and True in data:
            data = dict(data)
            data["on"] = data.pop(True)
        return data

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` after ``attempt`` failed attempts."""
        return min(self.max_backoff, self.backoff * self.backoff_factor ** max(0, attempt - 1))

    def retries_on(self, error_class: str | None) -> bool:
        """Whether a failure of this class is retried. ``exception`` stands for any Python exception
        (recorded under its class name, e.g. ``ValueError``)."""
        if self.on is None:
            return error_class not in NOT_RETRIED_BY_DEFAULT
        error_class = error_class or "exception"
        return error_class in self.on or ("exception" in self.on and error_class[:1].isupper())


class Resources(Strict):
    """What one task needs. ``gpus`` unset: one GPU per worker where the backend has GPUs, else none.

    The cluster fields (``time`` and below) override the backend's settings for this stage.
    """

    cpus: int = Field(default=1, ge=1)
    gpus: int | None = Field(default=None, ge=0)
    mem: int | None = Field(default=None, ge=1)
    time: float | None = Field(default=None, gt=0, le=MAX_DURATION)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    nodes: str | None = None
    sbatch: list[str] = Field(default_factory=list)
    setup: list[str] = Field(default_factory=list)

    _check_time = field_validator("time", mode="before")(_duration)

    @field_validator("mem", mode="before")
    @classmethod
    def _mem(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value)


class VerifyCommand(Strict):
    """``verify: bash verify.sh {output}`` (or ``verify: {run: ...}``): a command, templated as ``run``
    is, that must exit 0 for the task's output to count."""

    run: list[str]

    @field_validator("run", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return Stage._split_command(value)


class Stage(Strict):
    """One step of the campaign, applied per item, per batch of items, or once."""

    run: list[str] | None = None
    call: str | None = None
    request: dict[str, Any] | None = None   # an LLM request body; Jinja in its string values
    parse: str | None = None                # package.module:function turning a response into the result
    per: Literal["item", "all", "batch"] = "item"
    size: int | None = Field(default=None, ge=1, le=MAX_ITEMS)
    every: float | None = Field(default=None, ge=0, le=MAX_DURATION)
    needs: list[str] = Field(default_factory=list)
    backend: str = "local"
    retries: Retries = Field(default_factory=Retries)
    timeout: float | None = Field(default=None, gt=0, le=MAX_DURATION)
    resources: Resources = Field(default_factory=Resources)
    skip_if: list[str] | None = None
    verify: list[str] | VerifyCommand | None = None
    outputs: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list)
    description: str = ""

    #: per needed stage, the raw ``{stage: NAME, allow: ...}`` entry it was given as (checked by the loader)
    _need_entries: dict[str, dict[str, Any]] = PrivateAttr(default_factory=dict)

    _check_durations = field_validator("timeout", "every", mode="before")(_duration)

    @model_validator(mode="wrap")
    @classmethod
    def _needs_with_rules(cls, data: Any, handler: Any) -> "Stage":
        entries: dict[str, dict[str, Any]] = {}
        if isinstance(data, dict) and isinstance(data.get("needs"), (list, dict)):
            needs = data["needs"] if isinstance(data["needs"], list) else [data["needs"]]
            names = []
            for need in needs:
                if isinstance(need, dict):
                    if not isinstance(need.get("stage"), str):
                        raise ValueError("each need is a stage name or {stage: NAME, allow: failed}")
                    entries[need["stage"]] = need
                    need = need["stage"]
                names.append(need)
            data = {**data, "needs": names}
        stage = handler(data)
        stage._need_entries = entries
        return stage

    def allowed_ends(self, need: str) -> frozenset[str]:
        """The end states (besides done) of ``need``'s tasks that this stage runs after anyway."""
        allow = self._need_entries.get(need, {}).get("allow") or []
        return frozenset([allow] if isinstance(allow, str) else allow)

    @field_validator("run", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"cannot split the command like a shell would: {exc}") from exc
        if isinstance(value, list):
            return [str(part) for part in value]
        return value

    @field_validator("needs", "skip_if", "outputs", "secrets", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("verify", mode="before")
    @classmethod
    def _paths_function_or_command(cls, value: Any) -> Any:
        # One string of several shell words is a command; one word is a path or a function.
        if isinstance(value, str):
            words = cls._split_command(value)
            return {"run": words} if len(words) > 1 else [value]
        return value

    @field_validator("call", "parse")
    @classmethod
    def _callable(cls, value: str | None) -> str | None:
        if value is not None and not CALLABLE_RE.match(value):
            raise ValueError(f"{value!r} is not a callable reference like 'package.module:function'")
        return value

    @model_validator(mode="after")
    def _one_action(self) -> "Stage":
        if sum(action is not None for action in (self.run, self.call, self.request)) != 1:
            raise ValueError("a stage needs exactly one of 'run' (a command), 'call' (a Python function) or "
                             "'request' (an LLM request body)")
        if self.parse is not None and self.request is None:
            raise ValueError("'parse' only applies to a stage with a 'request'")
        if self.run is not None and not self.run:
            raise ValueError("'run' is an empty command")
        if self.per == "batch" and self.size is None and self.every is None:
            raise ValueError("a 'per: batch' stage needs 'size', 'every' or both")
        if self.per != "batch" and (self.size is not None or self.every is not None):
            raise ValueError("'size' and 'every' only apply to 'per: batch' stages")
        return self

    @property
    def skip_callable(self) -> str | None:
        return single_callable(self.skip_if)

    @property
    def verify_callable(self) -> str | None:
        return single_callable(self.verify) if isinstance(self.verify, list) else None

    @property
    def verify_paths(self) -> list[str]:
        return self.verify if isinstance(self.verify, list) and not self.verify_callable else []



class LocalBackend(Strict):
    """Worker processes on this machine, optionally pinned to GPUs."""

    type: Literal["local"] = "local"
    workers: int | None = Field(default=None, ge=1, le=MAX_WORKERS)
    gpus: Literal["auto", "none"] | list[NonNegativeInt] = "auto"
    workers_per_gpu: int = Field(default=1, ge=1, le=MAX_WORKERS)
    tasks_per_worker: int | None = Field(default=None, ge=1)
    max_tasks_per_worker: int = Field(default=2000, ge=1)
    python: str | None = None


class ItemsFrom(Strict):
    path: str
    where: str | None = None
    format: Literal["json", "jsonl", "csv"] | None = None


class Items(Strict):
    """Where the items come from. Present sources are combined as a product: from x list x zip x grid."""

    # Field names shadow builtins inside this class, so annotations use typing's aliases.
    grid: Optional[Dict[str, Any]] = None
    zip: Optional[Dict[str, List[Any]]] = None
    list: Optional[List[Dict[str, Any]]] = None
    from_: Optional[ItemsFrom] = Field(default=None, alias="from")
    key: Optional[str] = None
    #: grid axes that come from the campaign's ``sweep.params`` (errors about them name that key)
    _swept: set = PrivateAttr(default_factory=set)

    @field_validator("from_", mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _some_source(self) -> "Items":
        if self.grid is None and self.zip is None and self.list is None and self.from_ is None:
            raise ValueError("items need at least one source: grid, zip, list or from")
        return self


class Sweep(Strict):
    """Every combination of the values under ``params`` is one item: the axes of a grid."""

    params: Dict[str, Any]

    @field_validator("params")
    @classmethod
    def _some_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("a sweep needs at least one parameter, e.g. {lr: [1e-3, 1e-4], seed: [0, 1]}")
        return value


def _item_source_names(items: Items) -> dict[str, str]:
    """Parameter name -> the items key it comes from (the grid, zip and list; a file's rows are read later)."""
    names = {name: "items.grid" for name in items.grid or {}}
    names.update({name: "items.zip" for name in items.zip or {}})
    names.update({name: "items.list" for row in items.list or [] for name in row})
    return names


class Campaign(Strict):
    """A whole campaign file after composition and overrides."""

    name: str = Field(min_length=1, max_length=100)  # it names run folders: kept well under 255 bytes
    description: str = ""
    ledger: str | None = None
    workdir: str = ".corral"
    run_id: str = "{name}_{timestamp}"
    items: Items
    sweep: Sweep | None = None
    stages: dict[str, Stage]
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    results: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    report: dict[str, NamedReport] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9][\w.-]*$", value):
            raise ValueError("a name of letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    _check_reports = field_validator("report")(check_report_names)

    @model_validator(mode="before")
    @classmethod
    def _items_or_sweep(cls, data: Any) -> Any:
        if not (isinstance(data, dict) and data.get("sweep") is not None):
            return data
        items = data.get("items")
        if items is None:
            return {**data, "items": {"grid": {}}}  # a sweep alone gives the items
        if isinstance(items, dict) and not {"grid", "zip", "list", "from"} & set(items):
            return {**data, "items": {**items, "grid": {}}}  # items: {key: ...} names the swept items
        return data

    @field_validator("sweep")
    @classmethod
    def _sweep_apart_from_items(cls, value: Sweep | None, info) -> Sweep | None:
        items = info.data.get("items")
        if value is None or items is None:
            return value
        sources = _item_source_names(items)
        for name in value.params:
            if name in sources:
                raise ValueError(f"parameter {name!r} is swept here and also set by {sources[name]}; each "
                                 f"parameter comes from one place: remove it from {sources[name]}, or sweep "
                                 f"it there")
        return value

    @model_validator(mode="after")
    def _sweep_as_grid_axes(self) -> "Campaign":
        if self.sweep is not None:
            self.items.grid = {**(self.items.grid or {}), **self.sweep.params}
            self.items._swept = set(self.sweep.params)
        return self

    @field_validator("workdir", "ledger")
    @classmethod
    def _where_corral_writes(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("a path, not an empty string")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("a path without NUL or control characters")
        if value.startswith("~") and "://" not in value:
            from pathlib import Path

            try:
                Path(value).expanduser()
            except RuntimeError:  # ~user of no such user
                raise ValueError(f"a path whose home folder exists; {value.split('/', 1)[0]!r} names no user "
                                 f"of this machine") from None
        return value

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: dict[str, Stage]) -> dict[str, Stage]:
        if not value:
            raise ValueError("a campaign needs at least one stage")
        for name in value:
            if not STAGE_NAME_RE.match(name):
                raise ValueError(f"stage name {name!r} must be letters, digits, '_' or '-'")
        return value
