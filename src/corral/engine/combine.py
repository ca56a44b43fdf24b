"""Putting runs together: ``runs merge`` (a union of runs in one ledger) and ``ingest`` (runs of another
ledger, or of a results folder, into this one).

Both work by item identity (the stable hash of an item's parameters): one task per (stage, item
identity) in the target, written once; doing it again finds everything present and adds nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from corral.errors import ConfigsDiffer, CorralError
from corral.engine import registry
from corral.ledger import Ledger, dumps, loads
from corral.ledger import registry_queries as queries
from corral.spec.identity import KeyKind, UnclassifiedKey, kind_of
from corral.states import ACTIVE, FAILURES, TERMINAL, RunStatus, TaskState

ONCE = "(all)"  # the identity of a once-per-run task (item_idx -1)
_TASK_FIELDS = ("state", "attempts", "result", "error_class", "error_message", "started_at", "finished_at", "host",
                "tokens_in", "tokens_out", "cost", "backend", "queued_at", "ready_at")


@dataclass
class SourceRun:
    """A run read into memory: its row, its items by identity, its tasks by (stage, identity)."""

    row: dict[str, Any]
    items: dict[str, tuple[str, str]] = field(default_factory=dict)      # item_id -> (key, canonical params)
    tasks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    origin: str = ""


@dataclass
class Outcome:
    target: str
    created: bool = False
    items_added: int = 0
    tasks_added: int = 0
    tasks_updated: int = 0
    unchanged: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, int] = field(default_factory=dict)
    #: runs merged with --force: the config keys whose values differed between them
    config_differs: list[str] = field(default_factory=list)
    #: items of the run with a task still to finish (``corral run`` runs them)
    runnable_items: int = 0
    #: ``merge --dedupe-by KEY``: the key, the items left out as duplicates, the items without the key
    dedupe_by: str | None = None
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    without_key: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = {"run": self.target, "created": self.created, "items_added": self.items_added,
               "tasks_added": self.tasks_added, "tasks_updated": self.tasks_updated, "unchanged": self.unchanged,
               "conflicts": self.conflicts, "chosen_from": self.chosen, "runnable_items": self.runnable_items}
        if self.config_differs:
            out["config_differs"] = self.config_differs
        if self.dedupe_by:
            out.update(dedupe_by=self.dedupe_by, duplicates_dropped=len(self.duplicates),
                       duplicates=self.duplicates, without_key=self.without_key)
        return out


def read_run(ledger: Ledger, run_id: str, origin: str = "") -> SourceRun:
    with ledger.read() as conn:
        row = queries.run_row(conn, run_id)
        if row is None:
            raise CorralError(f"no run {run_id!r} in {ledger.display_url}")
        source = SourceRun(row=row, origin=origin or ledger.display_url)
        by_idx: dict[int, str] = {}
        for idx, item_id, key, params in queries.run_items(conn, run_id):
            by_idx[idx] = item_id
            source.items[item_id] = (key, params)
        for task in queries.run_tasks(conn, run_id, _TASK_FIELDS):
            identity = ONCE if task["item_idx"] < 0 else by_idx.get(task["item_idx"])
            if identity is None:
                continue
            task["source_run"] = run_id
            source.tasks[(task["stage"], identity)] = task
    return source


def _result_value(task: dict[str, Any]) -> Any:
    return loads(task["result"]) if task.get("result") else None


def same_outcome(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["state"] == b["state"] and _result_value(a) == _result_value(b)


def choose(sources: list[SourceRun], prefer: str | None) -> dict[tuple[str, str], dict[str, Any]]:
    """One task per (stage, identity): a done task over any other state; among done ones, the
    preferred run's, else the newest (latest finish); among unfinished ones, the most advanced."""
    rank = {TaskState.DONE: 3, TaskState.FAILED: 2, TaskState.BUDGET: 2, TaskState.CANCELLED: 1}
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for source in sources:
        for key, task in source.tasks.items():
            old = chosen.get(key)
            if old is None:
                chosen[key] = task
                continue
            new_rank, old_rank = rank.get(task["state"], 0), rank.get(old["state"], 0)
            if new_rank != old_rank:
                if new_rank > old_rank:
                    chosen[key] = task
                continue
            if prefer and prefer != "newest":
                if task["source_run"] == prefer and old["source_run"] != prefer:
                    chosen[key] = task
                continue
            if (task.get("finished_at") or 0) > (old.get("finished_at") or 0):
                chosen[key] = task
    return chosen


def absorb(ledger: Ledger, target_id: str, sources: list[SourceRun], chosen: dict[tuple[str, str], dict[str, Any]],
           mode: str, now: float, create_row: dict[str, Any] | None = None) -> Outcome:
    """Write ``chosen`` tasks into the run ``target_id`` (created from ``create_row`` when given).

    ``mode`` "replace" (merge): a task that differs from the chosen one takes its state and result.
    ``mode`` "keep" (ingest): an unfinished task takes a finished one; two different finished ones are
    a conflict, listed and left as they are.
    """
    items = {}
    for source in sources:
        items.update({k: v for k, v in source.items.items() if k not in items})
    outcome = Outcome(target=target_id)
    with ledger.write() as conn:
        if create_row is not None:
            ledger.insert_run(conn, create_row)
            outcome.created = True
        existing_items = queries.run_item_ids(conn, target_id)
        next_idx = (max(existing_items.values()) + 1) if existing_items else 0
        existing_tasks: dict[tuple[str, str], dict[str, Any]] = {}
        by_idx = {v: k for k, v in existing_items.items()}
        for task in queries.run_tasks(conn, target_id, ("state", "result")):
            identity = ONCE if task["item_idx"] < 0 else by_idx.get(task["item_idx"])
            if identity is not None:
                existing_tasks[(task["stage"], identity)] = task
        new_items, new_tasks, updates = [], [], []
        for (stage, identity), task in sorted(chosen.items(), key=lambda kv: (kv[0][1] != ONCE, kv[0])):
            if identity == ONCE:
                idx = -1
            elif identity in existing_items:
                idx = existing_items[identity]
            else:
                key, params = items[identity]
                idx = existing_items[identity] = next_idx
                next_idx += 1
                new_items.append({"run_id": target_id, "idx": idx, "item_id": identity, "key": key, "params": params})
            have = existing_tasks.get((stage, identity))
            values = _task_values(task)
            if have is None:
                new_tasks.append({"run_id": target_id, "stage": stage, "item_idx": idx, **values})
                outcome.chosen[task["source_run"]] = outcome.chosen.get(task["source_run"], 0) + 1
                continue
            if same_outcome(have, task):
                outcome.unchanged += 1
                continue
            if mode == "keep" and have["state"] in TERMINAL and task["state"] not in TERMINAL:
                outcome.unchanged += 1
                continue
            if mode == "keep" and have["state"] == TaskState.DONE and task["state"] == TaskState.DONE:
                outcome.conflicts.append({"stage": stage, "item_id": identity,
                                          "item_key": items.get(identity, ("",))[0],
                                          "here": _result_value(have), "there": _result_value(task),
                                          "from": task["source_run"]})
                continue
            if mode == "keep" and have["state"] == TaskState.DONE:
                outcome.unchanged += 1
                continue
            updates.append((have["id"], values))
            outcome.chosen[task["source_run"]] = outcome.chosen.get(task["source_run"], 0) + 1
        queries.insert_items(conn, new_items)
        queries.insert_tasks(conn, new_tasks)
        queries.replace_tasks(conn, updates)
        queries.update_run(conn, target_id, item_count=queries.count_items(conn, target_id), updated_at=now)
        outcome.items_added, outcome.tasks_added, outcome.tasks_updated = len(new_items), len(new_tasks), len(updates)
        status = run_status(conn, target_id)
        ledger.set_run_status(conn, target_id, status, now)
    return outcome


def _task_values(task: dict[str, Any]) -> dict[str, Any]:
    values = {name: task.get(name) for name in _TASK_FIELDS}
    if values["state"] not in TERMINAL:
        # Unfinished elsewhere: runs again here when the run is continued.
        again = TaskState.WAITING if values["state"] == TaskState.WAITING else TaskState.PENDING
        values.update(state=again.value, started_at=None, finished_at=None)
    values["attempts"] = values["attempts"] or 0
    info = loads(task.get("info")) or {}
    info["from_task"] = [task["source_run"], task["id"]]
    values["info"] = dumps(info)
    return values


def run_status(conn, run_id: str) -> RunStatus:
    states = queries.task_states(conn, run_id)
    if states & set(ACTIVE):
        return RunStatus.ACTIVE
    if TaskState.BUDGET in states:
        return RunStatus.BUDGET_REACHED
    return RunStatus.FINISHED_WITH_FAILURES if states & set(FAILURES) else RunStatus.FINISHED


def add_event(ledger: Ledger, run_id: str, kind: str, now: float, message: Any, count: int | None = None) -> None:
    with ledger.write() as conn:
        ledger.add_events(conn, [{"at": now, "run_id": run_id, "kind": kind, "count": count,
                                  "message": message if isinstance(message, str) else dumps(message)}])


def config_differences(configs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The config keys whose values differ between runs (``configs``: run id -> config):
    ``[{"key", "values": {run id: value, or None where absent}}]``, sorted by key. Every check of
    whether runs did the same work (``runs merge``) asks this one function."""
    flat = {run_id: registry.flatten(config or {}) for run_id, config in configs.items()}
    # Limits, intervals, budgets and report sections only steered the work: runs that differ in
    # those alone did the same work.
    keys = sorted({key for values in flat.values() for key in values if not _steering(key)})
    out = []
    for key in keys:
        texts = {registry.as_text(values[key]) if key in values else None for values in flat.values()}
        if len(texts) > 1:
            out.append({"key": key, "values": {run_id: values.get(key) for run_id, values in flat.items()}})
    return out


def _steering(key: str) -> bool:
    try:
        return kind_of(key) == KeyKind.STEERING
    except UnclassifiedKey:
        return False


def shared_config(configs: list[dict[str, Any]], differing: set[str]) -> dict[str, Any]:
    """The config without the ``differing`` dotted keys (what all the runs share), nested again."""
    out: dict[str, Any] = {}
    for key, value in registry.flatten(configs[0] or {}).items():
        if key in differing:
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _refuse_different_configs(differences: list[dict[str, Any]], run_ids: list[str]) -> None:
    shown = []
    for change in differences[:20]:
        values = ", ".join(f"{run_id}: {registry.as_text(v) if v is not None else '(absent)'}"
                           for run_id, v in change["values"].items())
        shown.append(f"  {change['key']}: {values}")
    more = f"\n  ... and {len(differences) - 20} more keys" if len(differences) > 20 else ""
    message = (f"runs {', '.join(run_ids)} have different configurations; merging them would mix different "
               f"work:\n" + "\n".join(shown) + more +
               "\n  add --force to merge them anyway (the merged run keeps the keys they share and lists the "
               "others in config_differs); `corral runs diff A B` shows a whole diff")
    raise ConfigsDiffer(differences, message)


def merged_row(sources: list[SourceRun], into: str, prefer: str | None, now: float,
               differing: Sequence[str] = ()) -> dict[str, Any]:
    base = next((s for s in sources if s.row["id"] == prefer), sources[0]).row
    selection = loads(base.get("selection")) or {}
    order: list[str] = []
    for source in sources:
        for name in (loads(source.row.get("selection")) or {}).get("param_order") or []:
            if name not in order:
                order.append(name)
    from corral.spec.loader import config_hash

    config, overrides = base["config"], selection.get("overrides", [])
    if differing:
        config = dumps(shared_config([loads(s.row.get("config")) or {} for s in sources], set(differing)))
        # Only the overrides every run had: the others made the configurations differ.
        every = [(loads(s.row.get("selection")) or {}).get("overrides") or [] for s in sources]
        overrides = [o for o in overrides if all(o in other for other in every)]
    return {**{k: base[k] for k in ("name", "campaign", "code_revision", "host", "versions")}, "config": config,
            "id": into, "created_at": now, "updated_at": now, "finished_at": None, "status": RunStatus.ACTIVE.value,
            "config_hash": "merge:" + config_hash({"into": into, "from": sorted(s.row["id"] for s in sources)})[:16],
            "selection": dumps({"limit": None, "shard": None, "merged_from": [s.row["id"] for s in sources],
                                "prefer": prefer or "newest", "overrides": overrides,
                                "param_order": order, **({"config_differs": list(differing)} if differing else {})}),
            "tags": dumps({}), "notes": None, "item_count": 0}


def merge_runs(ledger: Ledger, run_ids: Iterable[str], into: str, prefer: str | None, now: float,
               force: bool = False, dedupe_by: str | None = None) -> Outcome:
    """Merge runs into the run ``into`` (created, or a merged run extended). Runs whose configs
    differ are refused (``ConfigsDiffer``) unless ``force``; nothing is written then. With
    ``dedupe_by`` (see :func:`dedupe`), items whose content key repeats one already kept are left out."""
    run_ids = list(dict.fromkeys(run_ids))
    if len(run_ids) < 1:
        raise CorralError("name at least one run to merge")
    if into in run_ids:
        raise CorralError(f"--into {into!r} is one of the runs being merged; choose a new name")
    if prefer and prefer != "newest" and prefer not in run_ids:
        raise CorralError(f"--prefer {prefer!r} is not one of the merged runs ({', '.join(run_ids)}) or 'newest'")
    sources = [read_run(ledger, r) for r in run_ids]
    existing = ledger.get_run(into)
    if existing is not None and not (loads(existing.get("selection")) or {}).get("merged_from"):
        raise CorralError(f"run {into!r} exists and is not a merged run; choose another --into name")
    differences = config_differences({s.row["id"]: loads(s.row.get("config")) or {} for s in sources})
    if differences and not force:
        _refuse_different_configs(differences, run_ids)
    differing = [d["key"] for d in differences]
    create_row = None
    if existing is None:
        create_row = merged_row(sources, into, prefer, now, differing)
    chosen = choose(sources, prefer)
    kept_before = [read_run(ledger, into)] if existing is not None and dedupe_by else []
    duplicates, without_key = ([], 0) if not dedupe_by else dedupe(sources, chosen, dedupe_by, prefer, kept_before)
    outcome = absorb(ledger, into, sources, chosen, "replace", now, create_row=create_row)
    outcome.config_differs = differing
    if dedupe_by:
        outcome.dedupe_by, outcome.duplicates, outcome.without_key = dedupe_by, duplicates, without_key
    if existing is not None or dedupe_by:
        selection = loads((existing or ledger.get_run(into))["selection"]) or {}
        merged = list(dict.fromkeys((selection.get("merged_from") or []) + run_ids))
        updated = {**selection, "merged_from": merged, "prefer": prefer or "newest"}
        if dedupe_by:
            updated["dedupe_by"] = dedupe_by
        if differing:
            updated["config_differs"] = sorted(set(selection.get("config_differs") or []) | set(differing))
        with ledger.write() as conn:
            queries.update_run(conn, into, selection=dumps(updated))
    add_event(ledger, into, "merge", now, {"from": run_ids, "prefer": prefer or "newest", **outcome.as_dict()},
              count=outcome.tasks_added + outcome.tasks_updated)
    return outcome


# -- merge --dedupe-by -----------------------------------------------------------------------


def content_key_value(key: str, identity: str, items: dict[str, tuple[str, str]],
                      tasks: dict[tuple[str, str], dict[str, Any]], stages: Sequence[str]) -> tuple[bool, Any]:
    """(found, value) of the content ``key`` for one item: ``STAGE.FIELD`` reads that stage's result;
    a bare ``FIELD`` reads the item's parameter, else the first stage's result (in name order) that has it."""
    head, _, rest = key.partition(".")
    if rest and head in stages:
        places, field_path = [head], rest
    else:
        places, field_path = list(stages), key
        params = loads(items[identity][1]) if identity in items else None
        found, value = _dig(params, field_path)
        if found:
            return True, value
    for stage in places:
        task = tasks.get((stage, identity))
        if task is not None and task["state"] == TaskState.DONE:
            found, value = _dig(_result_value(task), field_path)
            if found:
                return True, value
    return False, None


def _dig(value: Any, path: str) -> tuple[bool, Any]:
    if isinstance(value, dict) and path in value:
        return True, value[path]
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def dedupe(sources: list[SourceRun], chosen: dict[tuple[str, str], dict[str, Any]], key: str,
           prefer: str | None, kept_before: Sequence[SourceRun] = ()) -> tuple[list[dict[str, Any]], int]:
    """Leave out of ``chosen`` (in place) every item whose content ``key`` equals that of an item kept
    before it: the merged run's own items first, then the preferred run's, then the runs in the order
    named, each in its item order. Items without the key are all kept. Returns (the items left out,
    as ``{item_id, item_key, run, same_as, value}``, the count of items without the key)."""
    stages = sorted({stage for stage, identity in chosen if identity != ONCE}
                    | {stage for s in kept_before for stage, _ in s.tasks})
    if prefer and prefer != "newest":
        sources = sorted(sources, key=lambda s: s.row["id"] != prefer)
    seen: dict[str, tuple[str, str]] = {}
    for before in kept_before:
        for identity in before.items:
            found, value = content_key_value(key, identity, before.items, before.tasks, stages)
            if found:
                seen.setdefault(registry.as_text(value), (before.row["id"], identity))
    items = {}
    for source in sources:
        items.update({k: v for k, v in source.items.items() if k not in items})
    order = list(dict.fromkeys(identity for source in sources for identity in source.items))
    owner = {identity: source.row["id"] for source in reversed(sources) for identity in source.items}
    dropped: list[dict[str, Any]] = []
    without, found_any = 0, bool(seen)
    for identity in order:
        found, value = content_key_value(key, identity, items, chosen, stages)
        if not found:
            without += 1
            continue
        found_any = True
        text = registry.as_text(value)
        if text in seen and seen[text][1] != identity:
            dropped.append({"item_id": identity, "item_key": items[identity][0], "run": owner[identity],
                            "same_as": seen[text][1], "value": value})
        else:
            seen.setdefault(text, (owner[identity], identity))
    if order and not found_any:
        fields = sorted({name for task in chosen.values() if isinstance(_result_value(task), dict)
                         for name in _result_value(task)})
        params = sorted({name for _, p in items.values() for name in (loads(p) or {})})
        raise CorralError(f"--dedupe-by {key!r}: no item of runs {', '.join(s.row['id'] for s in sources)} has "
                          f"it; use an item parameter ({', '.join(params) or 'none'}), a result field "
                          f"({', '.join(fields) or 'none'}) or STAGE.FIELD with a stage of {', '.join(stages)}")
    gone = {d["item_id"] for d in dropped}
    for task_key in [k for k in chosen if k[1] in gone]:
        del chosen[task_key]
    return dropped, without
