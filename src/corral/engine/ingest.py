"""``corral ingest``: runs of another machine's ledger file, or of a ``results:`` folder, into this ledger.

A run keeps its identity (id, creation time, config hash) across ledgers, so ingesting the same
file again finds its runs and adds only what is new. Two different finished results for one item
are a conflict: listed, never overwritten.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from corral.engine.combine import ONCE, Outcome, SourceRun, absorb, add_event, read_run, run_status
from corral.engine.runs import Selection, snapshot_hash
from corral.errors import CorralError
from corral.ledger import Ledger, dumps, loads, registry_queries
from corral.spec import ItemSource, LoadedCampaign
from corral.states import TERMINAL, RunStatus, TaskState

RUNS_FOLDER = Path(".corral") / "runs"  # beside the result files: one JSON file per run


def read_sources(path: Path) -> list[SourceRun]:
    """The runs a ledger file or a results folder holds; a path that holds none is refused."""
    try:
        path = path.expanduser()
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, RuntimeError, ValueError) as exc:
        raise CorralError(f"nothing to ingest at {str(path)[:200]!r}: {exc}") from None
    if not exists:
        raise CorralError(f"nothing to ingest at {path}: no such file or folder")
    return read_results_folder(path) if is_dir else read_ledger_file(path)


def ingest_sources(ledger: Ledger, sources: list[SourceRun], now: float,
                   campaign: LoadedCampaign | None = None) -> list[Outcome]:
    """Ingest runs read by ``read_sources``. A run of ``campaign`` (the same work and selection) gets
    every item of the campaign it lacks, to run later: a results folder holds only the items that ended."""
    outcomes = []
    for source in sources:
        outcome = ingest_run(ledger, source, now)
        if campaign is not None and _is_run_of(source.row, campaign):
            outcome.items_added += add_missing_items(ledger, campaign, outcome.target, source.row, now)
        with ledger.read() as conn:
            outcome.runnable_items = registry_queries.count_unfinished_items(conn, outcome.target)
        outcomes.append(outcome)
    return outcomes


def _selection(row: dict[str, Any]) -> Selection:
    chosen = loads(row.get("selection")) or {}
    shard = chosen.get("shard")
    return Selection(limit=chosen.get("limit"), shard=tuple(shard) if shard else None)


def _is_run_of(row: dict[str, Any], campaign: LoadedCampaign) -> bool:
    return row.get("name") == campaign.spec.name and row.get("config_hash") == snapshot_hash(campaign, _selection(row))


def add_missing_items(ledger: Ledger, campaign: LoadedCampaign, run_id: str, row: dict[str, Any], now: float) -> int:
    """Items of the campaign (in the run's selection) that the run lacks are added with a task per
    per-item stage, pending or waiting on their needs. Returns how many items."""
    spec = campaign.spec
    chosen = _selection(row)
    source = ItemSource(spec.items, campaign.root, campaign.path)
    # A ``per: all`` task is not added: with its needs all ended, nothing would ever release it.
    stages = [(name, spec.stages[name].per, bool(spec.stages[name].needs), spec.stages[name].backend)
              for name in campaign.stage_order() if spec.stages[name].per != "all"]
    with ledger.write() as conn:
        have = registry_queries.run_item_ids(conn, run_id)
        next_idx = max(have.values(), default=-1) + 1
        missing = []
        for item in source.items(limit=chosen.limit, shard=chosen.shard):
            if item.item_id not in have:
                missing.append(replace(item, index=next_idx + len(missing)))
        if not missing:
            return 0
        ledger.insert_items_and_tasks(conn, run_id, missing, stages, now)
        registry_queries.update_run(conn, run_id, item_count=registry_queries.count_items(conn, run_id),
                                    updated_at=now)
        ledger.set_run_status(conn, run_id, run_status(conn, run_id), now)
        ledger.add_events(conn, [{"at": now, "run_id": run_id, "kind": "ingest", "count": len(missing),
                                  "message": f"added {len(missing)} items of the campaign without a result"}])
    return len(missing)


def read_ledger_file(path: Path) -> list[SourceRun]:
    with open(path, "rb") as handle:
        if handle.read(16) != b"SQLite format 3\x00":
            raise CorralError(f"{path} is not a corral ledger (a SQLite file) or a results folder")
    other = Ledger(f"sqlite:///{path.resolve()}", create=False)
    try:
        with other.read() as conn:
            ids = registry_queries.run_ids_oldest_first(conn)
        return [read_run(other, run_id, origin=str(path)) for run_id in ids]
    finally:
        other.close()


def read_results_folder(folder: Path) -> list[SourceRun]:
    """Result files written by a ``results:`` template, with the run files beside them."""
    runs_dir = folder / RUNS_FOLDER
    sources: dict[str, SourceRun] = {}
    for run_file in sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else []:
        row = json.loads(run_file.read_bytes())
        sources[row["id"]] = SourceRun(row=row, origin=str(folder))
    if not sources:
        raise CorralError(f"{folder} holds no corral results (no {RUNS_FOLDER}/*.json run files)")
    skipped = 0
    for file in folder.rglob("*.json"):
        if runs_dir in file.parents:
            continue
        try:
            record = json.loads(file.read_bytes())
            meta = record["corral"]
            source = sources[meta["run_id"]]
        except (ValueError, KeyError, TypeError):
            skipped += 1
            continue
        identity = meta.get("item_id") or ONCE
        if identity != ONCE:
            params = json.dumps(record.get("params") or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            source.items[identity] = (meta.get("item_key") or identity, params)
        state, error = _ended_state(record)
        source.tasks[(meta["stage"], identity)] = {
            "id": meta.get("task_id"), "source_run": meta["run_id"], "state": state.value,
            "result": dumps(record.get("result")), "info": None,
            **{k: meta.get(k) for k in ("attempts", "started_at", "finished_at", "host", "tokens_in", "tokens_out",
                                        "cost", "backend")},
            "error_class": error.get("class"), "error_message": error.get("message"), "queued_at": None,
            "ready_at": None}
    return list(sources.values())


def _ended_state(record: dict[str, Any]) -> tuple[TaskState, dict[str, Any]]:
    """The state and error a result file records (files of older versions hold done tasks only)."""
    try:
        state = TaskState(record.get("state") or TaskState.DONE.value)
    except ValueError:
        state = TaskState.DONE if record.get("error") is None else TaskState.FAILED
    if state not in TERMINAL:
        state = TaskState.FAILED
    error = record.get("error") if isinstance(record.get("error"), dict) else {}
    return state, error


def _same_run(row: dict[str, Any], other: dict[str, Any]) -> bool:
    return row["config_hash"] == other["config_hash"] and abs(row["created_at"] - other["created_at"]) < 1e-3


def find_local(ledger: Ledger, row: dict[str, Any]) -> dict[str, Any] | None:
    """This ledger's copy of a run from elsewhere: the same id, or a run ingested from it."""
    local = ledger.get_run(row["id"])
    if local is not None and _same_run(local, row):
        return local
    with ledger.read() as conn:
        candidates = registry_queries.runs_with_config(conn, row["name"], row["config_hash"])
    for candidate in candidates:
        origin = (loads(candidate["selection"]) or {}).get("ingested_from") or {}
        if origin.get("id") == row["id"] and abs((origin.get("created_at") or 0) - row["created_at"]) < 1e-3:
            return candidate
    return None


def ingest_run(ledger: Ledger, source: SourceRun, now: float) -> Outcome:
    row = source.row
    local = find_local(ledger, row)
    create_row = None
    if local is None:
        target = row["id"]
        suffix = 2
        while ledger.get_run(target) is not None:
            target = f"{row['id']}_{suffix}"
            suffix += 1
        selection = loads(row.get("selection")) or {}
        # It holds only the items ingested: the next `corral run` compares them with the campaign's.
        selection.pop("members", None)
        selection["ingested_from"] = {"id": row["id"], "created_at": row["created_at"], "host": row.get("host"),
                                      "origin": source.origin}
        create_row = {k: row.get(k) for k in ("name", "campaign", "created_at", "config", "config_hash",
                                             "code_revision", "host", "versions", "tags", "notes")}
        create_row.update(id=target, updated_at=now, finished_at=None, status=RunStatus.ACTIVE.value, item_count=0,
                          selection=dumps(selection))
    else:
        target = local["id"]
    outcome = absorb(ledger, target, [source], source.tasks, "keep", now, create_row=create_row)
    if outcome.created or outcome.tasks_added or outcome.tasks_updated or outcome.conflicts:
        add_event(ledger, target, "ingest", now, {"from": row["id"], "origin": source.origin,
                                                 **{k: v for k, v in outcome.as_dict().items() if k != "conflicts"},
                                                 "conflicts": len(outcome.conflicts)},
                  count=outcome.tasks_added + outcome.tasks_updated)
    return outcome
