"""Load a campaign file: compose config groups, apply ``key=value`` overrides, validate.

Composition and overrides use Hydra's compose API (spec/compose.py), so the override grammar is
Hydra's (``key=value``, ``+key=value``, ``~key``, ``group=option``, ``+group=option``).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from corral.errors import SpecError
from corral.spec import models
from corral.spec.backend_types import BACKEND_SETTINGS, BACKEND_TYPES
from corral.spec.compose import Composed, compose, omegaconf_error
from corral.spec.hints import expected_for
from corral.spec.models import Campaign
from corral.spec.overrides import check_overrides
from corral.spec.yamlfile import read_yaml


@dataclass
class LoadedCampaign:
    """A validated campaign with where it came from."""

    path: Path
    spec: Campaign
    config: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    backends: dict[str, BaseModel] = field(default_factory=dict)
    #: the files it was composed from, when it has config groups or overrides
    composed: Composed | None = field(default=None, repr=False, compare=False)

    @property
    def root(self) -> Path:
        return self.path.parent

    def blame(self, exc: SpecError) -> SpecError:
        """``exc`` naming the file that holds its key (a config-group file, or the campaign file)."""
        return self.composed.blame(exc) if self.composed is not None else exc

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)

    def stage_order(self) -> list[str]:
        return topological_order(self.spec.stages)


def config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_campaign(path: str | Path, overrides: list[str] | None = None) -> LoadedCampaign:
    overrides = list(overrides or [])
    try:
        file = Path(path).expanduser()
        if file.is_dir():
            file = file / "corral.yaml"
        exists = file.exists()
    except (OSError, RuntimeError, ValueError) as exc:
        raise SpecError(f"cannot read the campaign file: {exc}", file=str(path)[:200],
                        expected="the path of a YAML campaign file") from None
    if not exists:
        raise SpecError("no such campaign file", file=str(path),
                        expected="a YAML campaign file (create one with `corral init`)")
    file = file.resolve()
    raw = _read_yaml(file)
    defaults = raw.get("defaults")
    if defaults is not None and not (isinstance(defaults, list) and all(map(_is_defaults_entry, defaults))):
        raise SpecError(f"is a list of config groups, got {defaults!r:.200}", file=str(file), key="defaults",
                        expected="a list such as [_self_, {experiment: baseline}]")
    check_overrides(overrides, file)
    if defaults is None and not overrides:
        return validate_config(_resolve_plain(file, raw), file, overrides)
    composed = compose(file, overrides)
    try:
        loaded = validate_config(composed.config, file, overrides)
    except SpecError as exc:
        raise composed.blame(exc) from None
    loaded.composed = composed
    return loaded


def _is_defaults_entry(entry: Any) -> bool:
    """Hydra's entries: a name (``_self_``) or one ``group: option`` (option a name, a list of names or null)."""
    if isinstance(entry, str):
        return True
    if not (isinstance(entry, dict) and len(entry) == 1):
        return False
    (group, option), = entry.items()
    return isinstance(group, str) and (option is None or isinstance(option, str)
                                       or (isinstance(option, list) and all(isinstance(o, str) for o in option)))


def _read_yaml(file: Path) -> dict[str, Any]:
    data = read_yaml(file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError("must be a mapping of keys at the top level", file=str(file),
                        expected="name:, items:, stages:, ...")
    return data


def _resolve_plain(file: Path, raw: dict[str, Any]) -> dict[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        # OmegaConf's own YAML reading, as Hydra composes, so that values such as 1e-3 have the same
        # type with and without overrides (and the item identities stay the same).
        return OmegaConf.to_container(OmegaConf.load(file), resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise omegaconf_error(exc, file) from None


def _yaml11_keys(value: Any) -> Any:
    """YAML 1.1 reads bare `on:`/`off:` keys as booleans; give them back their names."""
    if isinstance(value, dict):
        return {({True: "on", False: "off"}.get(k, k) if isinstance(k, bool) else k): _yaml11_keys(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml11_keys(v) for v in value]
    return value


def validate_config(config: dict[str, Any], file: Path, overrides: list[str]) -> LoadedCampaign:
    config = _yaml11_keys(config)
    try:
        spec = Campaign.model_validate(config)
    except ValidationError as exc:
        raise _spec_error(exc, file, Campaign, config) from None
    backends: dict[str, BaseModel] = {}
    for name, settings in spec.backends.items():
        settings = dict(settings or {})
        kind = settings.get("type", name)
        entry = BACKEND_TYPES.get(kind) if isinstance(kind, str) else None
        if entry is None:
            raise SpecError(f"unknown backend type {kind!r}", file=str(file), key=f"backends.{name}.type",
                            expected=" | ".join(sorted(BACKEND_TYPES)),
                            suggestion=_closest(str(kind), BACKEND_TYPES))
        settings["type"] = kind
        try:
            backends[name] = BACKEND_SETTINGS.validate_python(settings)
        except ValidationError as exc:
            raise _spec_error(exc, file, entry.settings, settings, prefix=f"backends.{name}", tag=kind) from None
    if "local" not in backends:
        backends["local"] = models.LocalBackend()
    _check_stages(spec, backends, file)
    return LoadedCampaign(path=file, spec=spec, config=config, overrides=overrides, backends=backends)


def _check_stages(spec: Campaign, backends: dict[str, BaseModel], file: Path) -> None:
    for name, stage in spec.stages.items():
        for need in stage.needs:
            if need not in spec.stages:
                raise SpecError(f"needs unknown stage {need!r}", file=str(file), key=f"stages.{name}.needs",
                                expected="one of " + ", ".join(spec.stages),
                                suggestion=_closest(need, spec.stages))
            if need == name:
                raise SpecError("a stage cannot need itself", file=str(file), key=f"stages.{name}.needs")
        _check_need_entries(name, stage, file)
        if stage.backend not in backends:
            raise SpecError(f"unknown backend {stage.backend!r}", file=str(file), key=f"stages.{name}.backend",
                            expected="one of " + ", ".join(sorted(backends)) + " (declare it under backends:)",
                            suggestion=_closest(stage.backend, backends))
        if stage.retries.on:
            for cls in stage.retries.on:
                if cls not in models.ERROR_CLASSES and not cls[:1].isupper():
                    raise SpecError(f"unknown error class {cls!r}", file=str(file), key=f"stages.{name}.retries.on",
                                    expected=", ".join(models.ERROR_CLASSES) + ", or an exception class name",
                                    suggestion=_closest(cls, models.ERROR_CLASSES))
    try:
        topological_order(spec.stages)
    except ValueError as exc:
        raise SpecError(str(exc), file=str(file), key="stages") from None


def _check_need_entries(name: str, stage: models.Stage, file: Path) -> None:
    for index, need in enumerate(stage.needs):
        entry = stage._need_entries.get(need)
        if entry is None:
            continue
        key = f"stages.{name}.needs.{index}"
        for extra in sorted(set(entry) - {"stage", "allow"}):
            raise SpecError(f"unknown key {extra!r}", file=str(file), key=f"{key}.{extra}",
                            expected="stage, allow", suggestion=_closest(str(extra), ["stage", "allow"]))
        allow = entry.get("allow")
        values = allow if isinstance(allow, list) else [allow]
        for value in values:
            if value not in models.NEED_ALLOWS:
                raise SpecError(f"{value!r} is not an end a need can allow", file=str(file), key=f"{key}.allow",
                                expected=" | ".join(models.NEED_ALLOWS) + " (or a list of them): the needed tasks "
                                         "may end so and this stage still runs",
                                suggestion=_closest(str(value), models.NEED_ALLOWS))


def topological_order(stages: dict[str, Any]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join(path[path.index(name):] + [name])
            raise ValueError(f"stages form a cycle through needs: {cycle}")
        state[name] = 1
        for need in stages[name].needs:
            visit(need, path + [name])
        state[name] = 2
        order.append(name)

    for name in stages:
        visit(name, [])
    return order


def _closest(word: str, options) -> str | None:
    found = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.5)
    return found[0] if found else None


_TYPE_TAG = re.compile(r"^(literal\[|list\[|dict\[|function-|tagged-union\[|union\[)")


def _clean_loc(loc: tuple) -> tuple:
    """pydantic puts the member of a union it tried into the location; drop those tags."""
    return tuple(p for p in loc if not (isinstance(p, str) and _TYPE_TAG.search(p)))


def _spec_error(exc: ValidationError, file: Path, model: type[BaseModel], data: Any,
                prefix: str = "", tag: str | None = None) -> SpecError:
    """``tag``: the discriminator value a tagged union put first in every location."""
    errors = [dict(e, loc=_clean_loc(e["loc"][1:] if tag is not None and e["loc"][:1] == (tag,) else e["loc"]))
              for e in exc.errors()]
    # An unknown key usually explains a missing one (a typo): report it first.
    errors.sort(key=lambda e: {"extra_forbidden": 0, "missing": 2}.get(e["type"], 1))
    err = errors[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(([prefix] if prefix else []) + loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        options = _fields_at(model, err["loc"][:-1])
        return SpecError(f"unknown key {loc[-1]!r}", file=str(file), key=key,
                         expected="one of " + ", ".join(sorted(options)) if options else None,
                         suggestion=_closest(loc[-1], options))
    if kind == "missing":
        return SpecError("missing required key", file=str(file), key=key,
                         expected=_describe_field(model, err["loc"]))
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    got = err.get("input")
    got_text = "" if isinstance(got, dict) or repr(got) in message else f" (got {got!r})"
    return SpecError(f"{message}{got_text}", file=str(file), key=key or None,
                     expected=_describe_field(model, err["loc"]))


def _flatten(annotation):
    import typing

    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return [a for arg in args for a in _flatten(arg)]
    return [annotation]


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    # dict-valued fields (stages.<name>) have the name in loc; walk skipping it.
    target = _walk_with_dict_keys(model, loc)
    if target is None:
        return []
    return [f.alias or n for n, f in target.model_fields.items()]


def _walk_with_dict_keys(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    import typing

    current: Any = model
    i = 0
    parts = list(loc)
    while i < len(parts):
        part = parts[i]
        if isinstance(part, int):
            i += 1
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        fields = {(f.alias or n): f for n, f in current.model_fields.items()}
        if part not in fields:
            return None
        annotation = fields[part].annotation
        nxt = None
        skip_key = False
        for candidate in _flatten(annotation):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                nxt = candidate
                break
            if typing.get_origin(candidate) is dict:
                args = typing.get_args(candidate)
                if args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
                    nxt, skip_key = args[-1], True
                    break
        current = nxt
        i += 2 if skip_key else 1
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _describe_field(model: type[BaseModel], loc: tuple) -> str | None:
    parent = _walk_with_dict_keys(model, tuple(loc[:-1]))
    if parent is None or not loc:
        return None
    return expected_for(parent, str(loc[-1]))
