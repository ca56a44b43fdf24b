"""What a report can group by: item parameters, config values of the runs, result fields, the stage
and the run; and which of them a ``--by`` list names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Sequence

from corral.errors import CorralError
from corral.ledger.values import loads


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}{key}."))
        if not value and prefix:
            out[prefix[:-1]] = {}
    elif prefix:
        out[prefix[:-1]] = value
    return out


@dataclass
class Dimension:
    name: str
    kind: str  # param | config | stage | run | result
    source: str  # the param name, the config key, or the result field

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "source": self.source}


def discover_result_kinds(queries: ModuleType, conn, run_ids: list[str], stage: str | None,
                 limit: int = 500) -> dict[str, str]:
    """Result field name -> 'bool' | 'numeric' | 'other', from a sample of finished results."""
    kinds: dict[str, set] = {}
    for run_id in run_ids:
        for raw in queries.result_sample(conn, run_id, stage, limit):
            try:
                value = json.loads(raw)
            except (TypeError, ValueError):
                continue
            if not isinstance(value, dict):
                continue
            for name, item in value.items():
                kind = "bool" if isinstance(item, bool) else "numeric" if isinstance(item, (int, float)) else (
                    "null" if item is None else "other")
                kinds.setdefault(name, set()).add(kind)
    out = {}
    for name, found in kinds.items():
        found.discard("null")
        out[name] = found.pop() if len(found) == 1 else ("other" if found else "null")
    return out


def discover_param_names(queries: ModuleType, conn, run_rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in run_rows:
        selection = loads(row.get("selection") or "{}") or {}
        for name in selection.get("param_order") or []:
            if name not in names:
                names.append(name)
        # Item sources without a fixed order (lists, files): look at the first items.
        for raw in queries.item_params_sample(conn, row["id"], 200):
            for name in loads(raw or "{}"):
                if name not in names:
                    names.append(name)
    return names


def resolve_dimensions(by: Sequence[str], param_names: list[str], configs: dict[str, dict[str, Any]],
                       result_kinds: dict[str, str]) -> list[Dimension]:
    config_keys: list[str] = []
    for flat in configs.values():
        for key in flat:
            if key not in config_keys:
                config_keys.append(key)
    dims = []
    for name in by:
        name = name.strip()
        if not name:
            continue
        if name in param_names:
            dims.append(Dimension(name, "param", name))
        elif name in ("stage", "run"):
            dims.append(Dimension(name, name, name))
        elif name in config_keys:
            dims.append(Dimension(name, "config", name))
        elif name.startswith("param.") and name[6:] in param_names:
            dims.append(Dimension(name, "param", name[6:]))
        elif name.startswith("result.") and name[7:] in result_kinds:
            dims.append(Dimension(name, "result", name[7:]))
        else:
            suffix = [k for k in config_keys if k.endswith("." + name) and k.startswith("params.")] or \
                     [k for k in config_keys if k.endswith("." + name)]
            if len(suffix) == 1:
                dims.append(Dimension(name, "config", suffix[0]))
                continue
            shown = [k for k in config_keys if not k.startswith(("stages.", "backends.", "items."))]
            raise CorralError(
                f"cannot group by {name!r}: it is not an item parameter, a config value of the run, a result "
                f"field or 'stage'.\n  valid: item parameters: {', '.join(param_names) or '(none)'}; "
                f"config values: {', '.join(shown[:40]) or '(none)'}; "
                f"result fields: {', '.join('result.' + r for r in result_kinds) or '(none)'}; stage; run"
                + (f"\n  ambiguous config keys: {', '.join(suffix)}" if len(suffix) > 1 else ""))
    if len({d.name for d in dims}) != len(dims):
        raise CorralError(f"--by names a dimension twice: {', '.join(d.name for d in dims)}")
    return dims


def default_stage(run_rows: list[dict[str, Any]], counts: dict[str, int]) -> str | None:
    """The first per-item stage of the newest run's config that has tasks (e.g. ``episode``)."""
    config = loads(run_rows[0].get("config") or "{}") or {}
    stages = config.get("stages") or {}
    for name, spec in stages.items():
        per = (spec or {}).get("per", "item") if isinstance(spec, dict) else "item"
        if per == "item" and counts.get(name):
            return name
    return max(counts, key=counts.get) if counts else None
