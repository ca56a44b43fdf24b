"""``corral ingest``: runs of another machine's ledger file, or of a ``results:`` folder, into this ledger.

A run keeps its identity (id, creation time, config hash) across ledgers, so ingesting the same
file again finds its runs and adds only what is new. Two different finished results for one item
are a conflict: listed, never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral.engine.combine import ONCE, Outcome, SourceRun, absorb, add_event, read_run
from corral.errors import CorralError
from corral.ledger import Ledger, dumps, loads, registry_queries
from corral.states import RunStatus, TaskState

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
        source.tasks[(meta["stage"], identity)] = {
            "id": meta.get("task_id"), "source_run": meta["run_id"], "state": TaskState.DONE.value,
            "result": dumps(record.get("result")), "info": None,
            **{k: meta.get(k) for k in ("attempts", "started_at", "finished_at", "host", "tokens_in", "tokens_out",
                                        "cost", "backend")},
            "error_class": None, "error_message": None, "queued_at": None, "ready_at": None}
    return list(sources.values())


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
