"""Which of the runs asked for a report counts: a merged run stands for the runs merged into it."""

from __future__ import annotations

import json
from typing import Any


def merged_from(row: dict[str, Any]) -> list[str]:
    """The ids of the runs merged into this run (empty for a run that is no merge)."""
    try:
        selection = json.loads(row.get("selection") or "{}") or {}
    except (TypeError, ValueError):
        return []
    return list(selection.get("merged_from") or []) if isinstance(selection, dict) else []


def leave_out_merged_sources(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(the rows to count, ``[{id, merged_into}]`` of those left out): a run merged into another run
    of ``rows`` (directly, or through a merge of merges) is counted once, through that run."""
    by_id = {row["id"]: row for row in rows}
    merged_into: dict[str, str] = {}
    for row in rows:
        pending, seen = list(merged_from(row)), set()
        while pending:
            source = pending.pop()
            if source in seen or source == row["id"]:
                continue
            seen.add(source)
            if source in by_id:
                merged_into.setdefault(source, row["id"])
                pending.extend(merged_from(by_id[source]))
    # A merge of merges: the outermost run that is itself counted.
    kept = [row for row in rows if row["id"] not in merged_into]
    excluded = []
    for row in rows:
        target = merged_into.get(row["id"])
        if target is None:
            continue
        hops = {row["id"]}
        while target in merged_into and target not in hops:
            hops.add(target)
            target = merged_into[target]
        excluded.append({"id": row["id"], "merged_into": target})
    return kept, excluded
