"""Compose a campaign file with its config groups and ``key=value`` overrides, through Hydra.

Hydra does the composing; this module speaks for it. Its advice fits Hydra's own command line
(``--multirun``, ``+group=...`` for a misspelt group, its search path), not corral's, so overrides are
checked first in corral's terms: a comma list on a grid axis (``items.grid.lr=1e-3,1e-4``) is that
axis's values, another sweep says how corral writes one, a misspelt group or option is named with
the group's options. Errors are blamed on the file that holds the key: a group file's invalid YAML,
a group file whose keys land under its group's name, and any error at a key a group file set.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from corral.errors import SpecError
from corral.spec.models import Campaign

#: the keys of a campaign at the top level, and Hydra's defaults list
_TOP_LEVEL_KEYS = tuple(f.alias or n for n, f in Campaign.model_fields.items()) + ("defaults",)
_GRID_AXIS = re.compile(r"^items\.(grid|zip)\.[^.]+$")
OVERRIDE_FORMS = ("key=value (existing key), +key=value (new key), ~key (remove), group=option, "
                  "+group=option (add a group)")


@dataclass
class Source:
    """One file of a composition, in composition order (later ones win)."""

    path: Path
    #: where its keys land: "" for the top level, else a dotted key (a group file without `@package _global_`)
    package: str
    group: str | None = None


@dataclass
class Composed:
    config: dict[str, Any]
    file: Path
    sources: list[Source] = field(default_factory=list)
    #: keys set on the command line
    override_keys: list[str] = field(default_factory=list)

    def file_for(self, key: str | None) -> Path:
        """The file that gave ``key`` its value: the last source holding the longest part of it
        (the campaign file for keys set by overrides or set nowhere)."""
        if not key:
            return self.file
        parts = key.split(".")
        if any(parts[:len(k.split("."))] == k.split(".") for k in self.override_keys):
            return self.file
        contents = [(source, _contents(source)) for source in self.sources]
        for length in range(len(parts), 0, -1):
            holders = [source for source, data in contents if _holds(data, parts[:length])]
            if holders:
                return holders[-1].path
        return self.file

    def blame(self, exc: SpecError) -> SpecError:
        """``exc`` with the file that holds its key."""
        if exc.file != str(self.file) or not exc.key:
            return exc
        holder = self.file_for(exc.key)
        if holder == self.file:
            return exc
        return SpecError(exc.detail, file=str(holder), key=exc.key, expected=exc.expected, suggestion=exc.suggestion)


def _contents(source: Source) -> Any:
    try:
        data = yaml.safe_load(source.path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    for part in reversed(source.package.split(".") if source.package else []):
        data = {part: data}
    return data


def _holds(data: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(data, dict):
            return False
        # YAML 1.1 reads a bare `on:` key as True
        keys = {({True: "on", False: "off"}.get(k, k) if isinstance(k, bool) else str(k)): v for k, v in data.items()}
        if part not in keys:
            return False
        data = keys[part]
    return True


def compose(file: Path, overrides: list[str]) -> Composed:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if file.suffix != ".yaml":
        raise SpecError("composition and overrides need a file ending in .yaml (Hydra finds only those)",
                        file=str(file), expected=f"rename it to {file.stem}.yaml")
    groups = ConfigGroups(file.parent)
    _check_defaults(file, groups)
    hydra_overrides, override_keys = _check_overrides(file, overrides, groups)
    GlobalHydra.instance().clear()
    try:
        with warnings.catch_warnings():
            # Hydra warns about a defaults list without _self_ (the file then wins, as documented).
            warnings.filterwarnings("ignore", module=r"hydra(\.|$)")
            with initialize_config_dir(config_dir=str(file.parent), version_base=None, job_name="corral"):
                cfg = hydra_compose(config_name=file.stem, overrides=hydra_overrides)
                sources = _sources(file, hydra_overrides)
    except HydraException as exc:
        raise _yaml_error(exc) or _hydra_error(exc, file, overrides) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) or SpecError(f"is not valid YAML: {_one_line(str(exc))}", file=str(file)) from None
    except OmegaConfBaseException as exc:
        raise omegaconf_error(exc, file) from None
    finally:
        GlobalHydra.instance().clear()
    composed = Composed(config={}, file=file, sources=sources, override_keys=override_keys)
    try:
        composed.config = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise composed.blame(omegaconf_error(exc, file)) from None
    _check_packages(composed)
    return composed


class ConfigGroups(Mapping[str, list[str]]):
    """Config groups beside the campaign file: a folder holding .yaml files -> its options (their
    paths inside it, without .yaml). A folder is read only when asked about, so that a folder of
    results beside the campaign costs nothing."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._options: dict[str, list[str]] = {}

    def _options_of(self, name: str) -> list[str]:
        if name not in self._options:
            sub = self.folder / name
            found = []
            if not name.startswith((".", "_")) and "/" not in name and sub.is_dir():
                found = sorted(p.relative_to(sub).with_suffix("").as_posix() for p in sub.rglob("*.yaml"))
            self._options[name] = found
        return self._options[name]

    def __getitem__(self, name: str) -> list[str]:
        options = self._options_of(name)
        if not options:
            raise KeyError(name)
        return options

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._options_of(name))

    def __iter__(self) -> Iterator[str]:
        subs = sorted(p.name for p in self.folder.iterdir() if p.is_dir()) if self.folder.is_dir() else []
        return iter([name for name in subs if name in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _sources(file: Path, overrides: list[str]) -> list[Source]:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    loader = GlobalHydra.instance().config_loader()
    defaults = loader.compute_defaults_list(config_name=file.stem, overrides=overrides, run_mode=RunMode.RUN)
    sources = []
    for entry in defaults.defaults:
        if entry.primary:
            sources.append(Source(file, ""))
            continue
        path = file.parent / f"{entry.config_path}.yaml"
        if entry.config_path and not entry.config_path.startswith("hydra/") and path.is_file():
            sources.append(Source(path, entry.package or "", group=entry.config_path.rsplit("/", 1)[0]))
    return sources


def _check_packages(composed: Composed) -> None:
    for source in composed.sources:
        head = source.package.split(".")[0] if source.package else ""
        if head and head not in _TOP_LEVEL_KEYS and head in composed.config:
            raise SpecError(
                f"its keys land under '{head}:' (the group's name), which is not a campaign key",
                file=str(source.path), key=head,
                expected=f"`# @package _global_` as the file's first line, to merge its keys into the campaign "
                         f"(or choose it as `- {source.group}@_global_: {source.path.stem}` in the defaults list)")


def _check_overrides(file: Path, overrides: list[str], groups: ConfigGroups) -> tuple[list[str], list[str]]:
    """Overrides for Hydra (comma lists on grid axes become lists) and the keys they set; refuses
    sweeps and misspelt groups in corral's words."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    defaults_groups = _groups_in_defaults(file)
    result, keys = [], []
    for text in overrides:
        try:
            parsed = parser.parse_override(text)
        except HydraException:
            result.append(text)  # Hydra's own message when it composes
            continue
        key = parsed.key_or_group
        head = key.split(".")[0].split("/")[0]
        keys.append(key)
        if parsed.is_sweep_override():
            text = _sweep_as_grid(text, parsed, key, groups, file)
        if "." not in key and "/" not in key and not parsed.is_delete():
            _check_group(file, text, parsed, key, groups, defaults_groups)
        elif head not in _TOP_LEVEL_KEYS and head not in groups:
            close = _closest(head, groups)
            if close:
                raise SpecError(f"no config group {head!r}", file=str(file), key=head,
                                expected=f"options of {close}: {', '.join(groups[close])}",
                                suggestion=f"{close}=...")
        result.append(text)
    return result, keys


def _sweep_values(parsed) -> list[str] | None:
    """The values of a choice sweep, or None where Hydra cannot list them (a sweep inside a sweep)."""
    try:
        return [str(v) for v in parsed.sweep_string_iterator()]
    except Exception:  # noqa: BLE001 - OmegaConf's ValidationError and others: the message goes without them
        return None


def _sweep_as_grid(text: str, parsed, key: str, groups: ConfigGroups, file: Path) -> str:
    from hydra.core.override_parser.types import ValueType

    value_text = text.split("=", 1)[1].strip()
    prefix = text.split("=", 1)[0]
    if _GRID_AXIS.match(key) and parsed.value_type in (ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP):
        if parsed.value_type == ValueType.CHOICE_SWEEP:
            value_text = value_text[value_text.index("(") + 1:value_text.rindex(")")]
        return f"{prefix}=[{value_text}]"
    values = _sweep_values(parsed) if parsed.value_type in (
        ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP) else None
    if key in groups:
        runs = " and ".join(f"`corral run {prefix}={v}`" for v in values) if values else \
            f"`corral run {prefix}=OPTION` once per option"
        raise SpecError(f"{text!r} sweeps over config-group options; a run has one configuration",
                        file=str(file), key=key, expected=f"one option per run: {runs}")
    axis = key.split(".")[-1]
    listed = ", ".join(values) if values else "..."
    if _GRID_AXIS.match(key):
        raise SpecError(f"{text!r} is a Hydra sweep; a grid axis takes a list of values", file=str(file), key=key,
                        expected=f"{prefix}=[{listed}] or, for a range of integers, "
                                 f"'{prefix}={{range: [START, STOP]}}'")
    raise SpecError(
        f"{text!r} is a Hydra sweep (a comma list); corral has no multirun: a sweep is a grid of items",
        file=str(file), key=key,
        expected=f"a grid axis, +items.grid.{axis}=[{listed}], used in the stage as {{{axis}}}; or a list value, "
                 f"{prefix}=[{listed}]; or a string with commas, quoted: {prefix}='{value_text}'")


def _check_group(file: Path, text: str, parsed, key: str, groups: ConfigGroups,
                 defaults_groups: set[str]) -> None:
    value = text.split("=", 1)[1].strip() if "=" in text else ""
    if key in groups:
        options = groups[key]
        if value and value not in options and value not in ("null",):
            raise SpecError(f"config group {key!r} has no option {value!r}", file=str(file), key=key,
                            expected="one of " + ", ".join(options) + f" (the files in {file.parent / key})",
                            suggestion=_suggest(key, value, options, parsed))
        if not parsed.is_add() and not parsed.is_force_add() and key not in defaults_groups:
            raise SpecError(f"config group {key!r} is not in the defaults list", file=str(file), key=key,
                            expected=f"+{key}={value or 'OPTION'} to add it (options: {', '.join(options)}), "
                                     f"or list it under defaults:")
        return
    if key in _TOP_LEVEL_KEYS:
        return
    close = _closest(key, groups)
    if close:
        option = _closest(value, groups[close]) or value
        raise SpecError(f"no config group {key!r}", file=str(file), key=key,
                        expected=f"options of {close}: {', '.join(groups[close])}",
                        suggestion=f"{'+' if parsed.is_add() else ''}{close}={option}")


def _suggest(key: str, value: str, options: list[str], parsed) -> str | None:
    close = _closest(value, options)
    return f"{'+' if parsed.is_add() else ''}{key}={close}" if close else None


def _defaults_entries(file: Path) -> list[tuple[str, Any, bool]]:
    """(group, option, optional) of each group entry in the file's defaults list."""
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    found = []
    for entry in (raw.get("defaults") or []) if isinstance(raw, dict) else []:
        if isinstance(entry, dict):
            for name, option in entry.items():
                name = str(name).removeprefix("override ").strip()
                optional = name.startswith("optional ")
                found.append((name.removeprefix("optional ").strip().split("@")[0], option, optional))
    return found


def _groups_in_defaults(file: Path) -> set[str]:
    return {group for group, _option, _optional in _defaults_entries(file)}


def _check_defaults(file: Path, groups: ConfigGroups) -> None:
    for group, option, optional in _defaults_entries(file):
        if "/" in group or option is None or isinstance(option, (list, dict)):
            continue
        if group not in groups:
            close = _closest(group, groups)
            if close:
                raise SpecError(f"no config group {group!r}", file=str(file), key="defaults",
                                expected=f"options of {close}: {', '.join(groups[close])}",
                                suggestion=f"{close}: {_closest(str(option), groups[close]) or option}")
        elif str(option) not in groups[group] and not optional:
            close = _closest(str(option), groups[group])
            raise SpecError(f"config group {group!r} has no option {str(option)!r}", file=str(file),
                            key="defaults",
                            expected="one of " + ", ".join(groups[group]) + f" (the files in {file.parent / group})",
                            suggestion=f"{group}: {close}" if close else None)


def _closest(word: str, options) -> str | None:
    found = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return found[0] if found else None


def _yaml_error(exc: BaseException) -> SpecError | None:
    """A YAML error anywhere in ``exc``'s chain, as bad input of the file it is in."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, yaml.MarkedYAMLError):
            mark = seen.problem_mark or seen.context_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            name = mark.name if mark is not None else None
            return SpecError(f"is not valid YAML{where}: {seen.problem or seen.context}", file=name)
        seen = seen.__cause__ or seen.__context__
    return None


def _hydra_error(exc: Exception, file: Path, overrides: list[str]) -> SpecError:
    message = _one_line(str(exc)) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and _one_line(str(cause)) and _one_line(str(cause)) not in message:
        message += f": {_one_line(str(cause))}"
    # "In 'preset/smoke': ..." names the group file where composing failed.
    found = re.match(r"In '([^']+)': (.*)", message)
    if found and (file.parent / f"{found.group(1)}.yaml").is_file() and found.group(1) != file.stem:
        merge = "Cannot merge" in found.group(2)
        return SpecError(f"cannot {'merge this file into the campaign' if merge else 'compose'}: {found.group(2)}",
                         file=str(file.parent / f"{found.group(1)}.yaml"),
                         expected="a mapping where the campaign has a mapping, a list where it has a list"
                         if merge else None)
    if not overrides:
        return SpecError(f"cannot compose the file with its defaults list: {message}", file=str(file))
    return SpecError(f"cannot apply overrides {overrides}: {message}", file=str(file), expected=OVERRIDE_FORMS)


_HYDRA_NOISE = re.compile(r"\s*(Config search path:.*$|\S*[^.]*--multirun[^.]*\.?)", re.DOTALL)


def _one_line(text: str) -> str:
    """Hydra's and OmegaConf's messages span lines (the reason, then full_key/object_type details,
    Hydra's search path); keep the reason lines, joined."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("full_key:", "object_type", "reference_type"))]
    return _HYDRA_NOISE.sub("", " ".join(keep)).strip()


_MISSING = re.compile(r"Missing mandatory value: (\S+)")


def omegaconf_error(exc: Exception, file: Path) -> SpecError:
    """OmegaConf's error as bad input: a mandatory value (``???``) left unset names its own key and
    how to give it; any other names the key whose interpolation failed."""
    text = str(exc).strip()
    missing = _MISSING.search(text)
    if missing:
        key = missing.group(1).rstrip(".")
        return SpecError("is mandatory (??? in the file) and has no value", file=str(file), key=key,
                         expected=f"a value, on the command line ({key}=VALUE) or in the file")
    first = text.splitlines()[0] if text else type(exc).__name__
    return SpecError(f"cannot resolve an interpolation: {first}", file=str(file),
                     key=getattr(exc, "full_key", None) or None)
