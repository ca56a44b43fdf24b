"""The run registry: tags, notes, filters over config values, one run's record, config diffs."""

from __future__ import annotations

import difflib
import json
from typing import Any, Iterable, Sequence

from corral.errors import CorralError
from corral.ledger import Ledger, dumps, loads, registry_queries
from corral.states import RunStatus

#: Run columns a filter can name directly.
RUN_FIELDS = ("id", "name", "status", "host", "code_revision", "config_hash", "campaign")
#: ``status=done`` reads as "finished, with or without failures".
_ENDED = (RunStatus.FINISHED.value, RunStatus.FINISHED_WITH_FAILURES.value)
STATUS_ALIASES = {"done": _ENDED, RunStatus.FINISHED.value: _ENDED}


def run_tags(row: dict[str, Any]) -> dict[str, str]:
    value = loads(row.get("tags")) if row.get("tags") else {}
    if isinstance(value, list):  # ledgers written before tags had values: bare labels
        return {str(v): "" for v in value}
    return {str(k): str(v) for k, v in (value or {}).items()}


def run_notes(row: dict[str, Any]) -> list[dict[str, Any]]:
    text = row.get("notes")
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return [{"at": None, "text": text}]
    return value if isinstance(value, list) else [{"at": None, "text": str(value)}]


def parse_tags(values: Iterable[str], what: str = "--tag") -> dict[str, str]:
    tags: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CorralError(f"{what} {value!r} is not key=value (e.g. {what} model=gpt-4o)")
        tags[key] = val.strip()
    return tags


def add_tags(ledger: Ledger, run_id: str, tags: dict[str, str], now: float,
             remove: Sequence[str] = ()) -> dict[str, str]:
    with ledger.write() as conn:
        row = registry_queries.run_row(conn, run_id)
        if row is None:
            raise CorralError(f"no run {run_id!r}")
        current = run_tags(row)
        current.update(tags)
        for key in remove:
            current.pop(key, None)
        registry_queries.update_run(conn, run_id, tags=dumps(current))
        ledger.add_events(conn, [{"at": now, "run_id": run_id, "kind": "tag",
                                  "message": ", ".join(f"{k}={v}" for k, v in tags.items())
                                  + "".join(f", -{k}" for k in remove)}])
    return current


def add_note(ledger: Ledger, run_id: str, text: str, now: float) -> list[dict[str, Any]]:
    if not text.strip():
        raise CorralError("a note needs some text")
    with ledger.write() as conn:
        row = registry_queries.run_row(conn, run_id)
        if row is None:
            raise CorralError(f"no run {run_id!r}")
        notes = run_notes(row) + [{"at": now, "text": text}]
        registry_queries.update_run(conn, run_id, notes=dumps(notes))
        ledger.add_events(conn, [{"at": now, "run_id": run_id, "kind": "note", "message": text}])
    return notes


# -- filters ---------------------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = value
    return out


def as_text(value: Any) -> str:
    """A config value as a filter compares it (booleans and null as YAML writes them)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


class Where:
    """One ``--where`` condition: ``key=value`` or ``key!=value`` (a value may list ``a|b``)."""

    def __init__(self, text: str):
        if "!=" in text:
            key, value = text.split("!=", 1)
            self.negate = True
        elif "=" in text:
            key, value = text.split("=", 1)
            self.negate = False
        else:
            raise CorralError(f"--where {text!r} is not key=value (e.g. --where model=gpt-4o --where status=done)")
        self.key, self.values = key.strip(), [v.strip() for v in value.split("|")]
        if not self.key:
            raise CorralError(f"--where {text!r} has no key")

    def lookup(self, row: dict[str, Any], config: dict[str, Any], tags: dict[str, str]) -> tuple[bool, Any]:
        """(found, value): run fields, then tags, then config paths, then ``params.KEY``."""
        key = self.key
        if key in RUN_FIELDS:
            return True, row.get(key)
        for prefix in ("tag.", "tags."):
            if key.startswith(prefix):
                name = key[len(prefix):]
                return (name in tags), tags.get(name)
        if key in tags:
            return True, tags[key]
        flat = flatten(config)
        for path in (key, f"params.{key}"):
            if path in flat:
                return True, flat[path]
            node: Any = config
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                return True, node
        return False, None

    def matches(self, row: dict[str, Any], config: dict[str, Any], tags: dict[str, str]) -> bool:
        found, value = self.lookup(row, config, tags)
        wanted: list[str] = []
        for v in self.values:
            wanted.extend(STATUS_ALIASES.get(v, (v,)) if self.key == "status" else (v,))
        hit = found and as_text(value) in wanted
        return hit != self.negate


def filter_runs(rows: list[dict[str, Any]], where: Sequence[str]) -> list[dict[str, Any]]:
    conditions = [Where(w) for w in where]
    if not conditions:
        return rows
    out = []
    for row in rows:
        config = loads(row.get("config")) or {}
        tags = run_tags(row)
        if all(c.matches(row, config, tags) for c in conditions):
            out.append(row)
    return out


# -- one run -----------------------------------------------------------------------------------


def run_record(ledger: Ledger, row: dict[str, Any]) -> dict[str, Any]:
    """Everything the registry knows about one run."""
    counts = ledger.counts(row["id"])
    totals: dict[str, int] = {}
    for states in counts.values():
        for state, n in states.items():
            totals[state] = totals.get(state, 0) + n
    selection = loads(row.get("selection")) or {}
    return {
        "id": row["id"], "name": row["name"], "status": row["status"], "campaign": row["campaign"],
        "created_at": row["created_at"], "updated_at": row["updated_at"], "finished_at": row["finished_at"],
        "config_hash": row["config_hash"], "code_revision": row["code_revision"], "host": row["host"],
        "versions": loads(row.get("versions")) or {}, "tags": run_tags(row), "notes": run_notes(row),
        "items": row["item_count"], "selection": {k: v for k, v in selection.items() if k != "param_order"},
        "counts": counts, "totals": totals, "config": loads(row.get("config")) or {},
    }


def config_diff(old: dict[str, Any], new: dict[str, Any], old_label: str = "a", new_label: str = "b") -> str:
    """A unified diff of two configs, one ``dotted.key: value`` line each (empty when equal)."""
    a = [f"{k}: {as_text(v)}" for k, v in sorted(flatten(old).items())]
    b = [f"{k}: {as_text(v)}" for k, v in sorted(flatten(new).items())]
    return "\n".join(difflib.unified_diff(a, b, old_label, new_label, lineterm="", n=0))


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The differing keys: ``[{key, a, b}]`` (a missing side is ``None`` with ``present`` false)."""
    fa, fb = flatten(old), flatten(new)
    out = []
    for key in sorted(set(fa) | set(fb)):
        if key not in fb or key not in fa or as_text(fa[key]) != as_text(fb[key]):
            out.append({"key": key, "a": fa.get(key), "b": fb.get(key), "in_a": key in fa, "in_b": key in fb})
    return out
