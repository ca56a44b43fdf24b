"""Load a campaign file: compose config groups, apply ``key=value`` overrides, validate.

Composition and overrides use Hydra's compose API, so the override grammar is Hydra's
(``key=value``, ``+key=value``, ``~key``, ``group=option``, ``+group=option``).
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

    @property
    def root(self) -> Path:
        return self.path.parent

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
    if defaults is not None or overrides:
        config = _compose_with_hydra(file, overrides)
    else:
        config = _resolve_plain(file, raw)
    return validate_config(config, file, overrides)


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
        raise SpecError(_omegaconf_message(exc), file=str(file), key=_omegaconf_key(exc)) from None


def _compose_with_hydra(file: Path, overrides: list[str]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if file.suffix != ".yaml":
        raise SpecError("composition and overrides need a file ending in .yaml (Hydra finds only those)",
                        file=str(file), expected=f"rename it to {file.stem}.yaml")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(file.parent), version_base=None, job_name="corral"):
            cfg = compose(config_name=file.stem, overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except HydraException as exc:
        message = _one_line(str(exc)) or type(exc).__name__
        cause = exc.__cause__
        if cause is not None and _one_line(str(cause)) and _one_line(str(cause)) not in message:
            message += f": {_one_line(str(cause))}"
        raise SpecError(f"cannot apply overrides {overrides}: {message}", file=str(file),
                        expected="Hydra overrides: key=value (existing key), +key=value (new key), "
                                 "~key (remove), group=option") from None
    except OmegaConfBaseException as exc:
        raise SpecError(_omegaconf_message(exc), file=str(file), key=_omegaconf_key(exc)) from None
    finally:
        GlobalHydra.instance().clear()


def _one_line(text: str) -> str:
    """Hydra's and OmegaConf's messages span lines (the reason, then full_key/object_type
    details); keep the reason lines, joined."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("full_key:", "object_type", "reference_type"))]
    return " ".join(keep)


def _omegaconf_message(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot resolve an interpolation: {first}"


def _omegaconf_key(exc: Exception) -> str | None:
    return getattr(exc, "full_key", None) or None


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
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
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
    name = loc[-1]
    fields = {(f.alias or n): f for n, f in parent.model_fields.items()}
    info = fields.get(name)
    if info is None:
        return None
    doc = _FIELD_HINTS.get(str(name))
    if doc:
        return doc
    return _type_name(info.annotation)


def _type_name(annotation) -> str:
    text = str(annotation).replace("typing.", "")
    for long, short in (("<class '", ""), ("'>", ""), ("NoneType", "null")):
        text = text.replace(long, short)
    return text


_FIELD_HINTS = {
    "name": "a campaign name such as 'eval-policies'",
    "items": "a mapping with grid, zip, list and/or from",
    "stages": "a mapping of stage name to {run: ... | call: ...}",
    "timeout": "a duration such as 90, '30s', '10m', '2h'",
    "every": "a duration such as '10m'",
    "backoff": "a duration such as '30s'",
    "mem": "a size such as '4G' or '512M'",
    "per": "item | all | batch",
    "run": "a command as a list of arguments or a string",
    "call": "a callable reference 'package.module:function'",
    "needs": "a stage name or a list of stage names",
    "gpus": "'auto', 'none' or a list of GPU ids such as [0, 1]",
}
