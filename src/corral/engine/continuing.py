"""Continuing a run with the campaign as it is now.

What only steers the work (``corral.spec.identity``: limits, intervals, budgets, ...) may have
changed since the run's snapshot: the change is recorded (a note and a ``config`` event) and the
snapshot updated. What defines the work must be the same, unless forced (then the diff is recorded
as a ``force`` event). Items of the campaign that the run lacks (an item file gained rows, a grid a
value) are added to it; items of the run no longer in the campaign are kept and said.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from corral.engine.registry import config_diff, run_notes
from corral.engine.runs import Selection, run_config, run_identity, snapshot_hash
from corral.errors import CorralError
from corral.ledger import Ledger, dumps, loads, run_items
from corral.spec import ItemSource, LoadedCampaign
from corral.spec.identity import KeyKind, changes, defining_part, membership_fingerprint
from corral.states import RunStatus


@dataclass
class Continuation:
    """What continuing a run changed: its row after the change and lines to tell the user."""

    row: dict[str, Any]
    messages: list[str] = field(default_factory=list)
    added_items: int = 0
    missing_items: int = 0


def identity_diff(row: dict[str, Any], campaign: LoadedCampaign, param_names: list[str],
                  selection: Selection) -> str:
    """Why a run's identity differs from the campaign's: the diff of what defines the work."""
    diff = config_diff(defining_part(run_config(row)), defining_part(campaign.config), "run snapshot", "campaign now")
    if diff:
        return diff
    stored = loads(row["selection"]) or {}
    before = sorted(stored.get("param_order") or [])
    if before != sorted(param_names):
        return f"item parameters: {', '.join(before) or '(none)'} -> {', '.join(sorted(param_names))}"
    if [stored.get("limit"), stored.get("shard")] != [selection.limit, list(selection.shard or []) or None]:
        return ("(the same config; the item selection differs: --limit or --shard; with --force the run takes "
                "this selection, and the items it lacks are added)")
    return "(the same defining config)"


def continue_run(ledger: Ledger, campaign: LoadedCampaign, row: dict[str, Any], selection: Selection,
                 param_names: list[str], now: float, *, force: bool = False,
                 log: Callable[[str], None] | None = None) -> Continuation:
    """Bring ``row`` up to the campaign as it is now (see the module's text). Raises CorralError
    (with the diff) when what defines the work differs and ``force`` is not given."""
    wanted = snapshot_hash(campaign, selection, param_names)
    forced = None
    if run_identity(row) != wanted:
        forced = identity_diff(row, campaign, param_names, selection)
        if not force:
            raise CorralError(f"run {row['id']} was made from a different configuration; use the same file and "
                              "overrides, or --force to continue it anyway\n" + forced)
    fingerprint = membership_fingerprint(campaign.config, campaign.root)
    config = loads(dumps(campaign.config))  # as the ledger stores it
    items = None
    chosen = selection.as_dict()
    stored_selection = loads(row["selection"]) or {}
    reselected = forced is not None and {"limit": stored_selection.get("limit"),
                                         "shard": stored_selection.get("shard") or None} != chosen
    if stored_selection.get("members") != fingerprint or reselected:
        source = ItemSource(campaign.spec.items, campaign.root, campaign.path)
        items = list(source.items(limit=selection.limit, shard=selection.shard))
    out = Continuation(row=row)
    if forced is None and items is None and _unchanged(row, config, wanted, campaign, param_names):
        return out  # the common tick: nothing to write
    with ledger.write() as conn:
        current = run_items.lock_run_row(conn, row["id"]) or row
        stored = loads(current["selection"]) or {}
        events: list[dict[str, Any]] = []
        values: dict[str, Any] = {}
        lines = [_change_line(key, a, b) for key, a, b, kind in changes(run_config(current), config)
                 if kind is not KeyKind.DEFINING]
        selection_now = {**stored, "overrides": campaign.overrides, "param_order": param_names}
        if reselected:   # continued with --force under another --limit/--shard: the run takes it
            selection_now.update(chosen)
        if lines or forced or current["config_hash"] != wanted or selection_now != stored:
            values.update(config=dumps(campaign.config), config_hash=wanted)
        notes = run_notes(current)
        if lines:
            notes.append({"at": now, "text": "config changed:\n" + "\n".join(lines)})
            events += [{"at": now, "run_id": row["id"], "kind": "config", "message": f"config changed: {line}"}
                       for line in lines]
            out.messages += [f"config changed: {line}" for line in lines]
        if forced:
            notes.append({"at": now, "text": "continued with --force; config changes:\n" + forced})
            events.append({"at": now, "run_id": row["id"], "kind": "force", "message": forced})
        if items is not None and (stored.get("members") != fingerprint or reselected):
            added, missing, reopened = _add_items(conn, ledger, campaign, current, items, now)
            selection_now["members"] = fingerprint
            out.added_items, out.missing_items = added, missing
            if added:
                values["item_count"] = current["item_count"] + added
                events.append({"at": now, "run_id": row["id"], "kind": "items", "count": added,
                               "message": f"added {added} new items"
                               + (f"; {', '.join(reopened)} open again" if reopened else "")})
                out.messages.append(f"adding {added} new items to run {row['id']}"
                                    + (f" ({', '.join(reopened)} will run again)" if reopened else ""))
                if current["status"] != RunStatus.ACTIVE:
                    ledger.set_run_status(conn, row["id"], RunStatus.ACTIVE, now)
            if missing:
                events.append({"at": now, "run_id": row["id"], "kind": "items", "count": missing,
                               "message": f"{missing} items are no longer in the campaign; kept"})
                out.messages.append(f"{missing} items of run {row['id']} are no longer in the campaign; "
                                    "they stay in the run")
        if lines or forced:
            values["notes"] = dumps(notes)
        if selection_now != stored:
            values["selection"] = dumps(selection_now)
        if values:
            values["updated_at"] = now
            run_items.set_run_snapshot(conn, row["id"], **values)
        if events:
            ledger.add_events(conn, events)
        out.row = run_items.lock_run_row(conn, row["id"]) or current
    for message in out.messages:
        if log is not None:
            log(message)
    return out


def _unchanged(row: dict[str, Any], config: dict[str, Any], wanted: str, campaign: LoadedCampaign,
               param_names: list[str]) -> bool:
    stored = loads(row["selection"]) or {}
    return (row["config_hash"] == wanted and run_config(row) == config
            and stored.get("overrides") == campaign.overrides and stored.get("param_order") == param_names)


def membership_preview(ledger: Ledger, campaign: LoadedCampaign, row: dict[str, Any],
                       selection: Selection) -> tuple[int, int]:
    """(items of the campaign the run lacks, items of the run no longer in the campaign), without
    writing: what ``corral check`` says."""
    if (loads(row["selection"]) or {}).get("members") == membership_fingerprint(campaign.config, campaign.root):
        return 0, 0
    source = ItemSource(campaign.spec.items, campaign.root, campaign.path)
    wanted = {item.item_id for item in source.items(limit=selection.limit, shard=selection.shard)}
    with ledger.read() as conn:
        have = run_items.item_ids(conn, row["id"])
    return len(wanted - have.keys()), len(have.keys() - wanted)


def _add_items(conn, ledger: Ledger, campaign: LoadedCampaign, row: dict[str, Any], items: list,
               now: float) -> tuple[int, int, list[str]]:
    """Insert the items of ``items`` the run lacks, with a task for each per-item stage; done
    once-per-run stages that depend on items open again. Returns (added, missing, reopened)."""
    have = run_items.item_ids(conn, row["id"])
    wanted = {item.item_id for item in items}
    new = [item for item in items if item.item_id not in have]
    missing = sum(1 for item_id in have if item_id not in wanted)
    if not new:
        return 0, missing, []
    start = run_items.next_item_index(conn, row["id"])
    for offset, item in enumerate(new):
        item.index = start + offset
    stages = campaign.spec.stages
    order = campaign.stage_order()
    # Once-per-run stages that (through their needs) cover every item: they must cover the new ones.
    covering: set[str] = set()
    for name in order:
        spec = stages[name]
        if spec.per == "all" and any(stages[n].per != "all" or n in covering for n in spec.needs):
            covering.add(name)
    reopened = run_items.reopen_once_tasks(conn, row["id"], [n for n in order if n in covering], now)
    per_item = []
    for name in order:
        spec = stages[name]
        if spec.per == "all":
            continue
        waits = any(stages[n].per != "all" or n in covering or not _once_done(conn, row["id"], n)
                    for n in spec.needs)
        per_item.append((name, spec.per, waits, spec.backend))
    ledger.insert_items_and_tasks(conn, row["id"], new, per_item, now)
    return len(new), missing, reopened


def _once_done(conn, run_id: str, stage: str) -> bool:
    from corral.ledger.engine_queries import once_state
    from corral.states import TaskState

    return once_state(conn, run_id, stage) == TaskState.DONE


def _change_line(key: str, before: Any, after: Any) -> str:
    return f"{key}: {_short(before)} -> {_short(after)}"


def _short(value: Any, width: int = 60) -> str:
    if value is None:
        text = "(unset)"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text if len(text) <= width else text[:width - 3] + "..."
