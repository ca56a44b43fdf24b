"""Records (item parameters + result fields + metadata) and writing them as JSON, JSONL, CSV or Parquet."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import IO, Any, Iterable

from corral.errors import CorralError
from corral.ledger import loads
from corral.outfiles import writing

FORMATS = ("json", "jsonl", "csv", "parquet")

_META = frozenset(("run_id", "stage", "item_key", "item_id", "task_id", "state", "attempts", "error_class",
                   "error_message", "started_at", "finished_at", "duration_s", "host", "tokens_in", "tokens_out",
                   "cost", "result"))


def make_record(run_id: str, row: tuple, order: list[str]) -> dict[str, Any]:
    """One record from a row of ``corral.ledger.reads.record_rows``."""
    from corral.ledger.store import task_key

    (stage, state, attempts, result, error_class, error_message, started, finished, host, tin, tout, cost,
     tid, key, item_id, params) = row
    record: dict[str, Any] = {"run_id": run_id, "stage": stage, "item_key": key or "all", "item_id": item_id or "all",
                              "task_id": task_key(tid)}
    values = loads(params) if params else {}
    # Parameters are stored canonically (sorted); give them back in the campaign file's order.
    # A parameter or result field named like a metadata column gets a prefix instead of being lost.
    for name in [n for n in order if n in values] + [n for n in values if n not in order]:
        record[f"param.{name}" if name in _META else name] = values[name]
    value = loads(result) if result else None
    if isinstance(value, dict):
        for name, field in value.items():
            record[f"result.{name}" if name in record or name in _META else name] = field
    elif value is not None:
        record["result"] = value
    record.update(state=state, attempts=attempts, error_class=error_class, error_message=error_message,
                  started_at=started, finished_at=finished,
                  duration_s=(finished - started) if started and finished else None, host=host)
    if tin is not None or tout is not None or cost is not None:
        record.update(tokens_in=tin, tokens_out=tout, cost=cost)
    return record


def check_format(fmt: str, path: Any) -> None:
    """Bad input before anything is read: an unknown format, Parquet to no file or without pyarrow."""
    if fmt not in FORMATS:
        raise CorralError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        if path is None or not isinstance(path, (str, Path)):
            raise CorralError("--format parquet writes a file: add -o FILE.parquet")
        from corral.api.frames import _need

        _need("pyarrow", "parquet")


def write_records(records: Iterable[dict[str, Any]], fmt: str, handle: IO[str]) -> int:
    """Records as ``json``, ``jsonl`` or ``csv`` text to ``handle``; returns how many."""
    count = 0
    if fmt == "jsonl":
        for record in records:
            handle.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
            count += 1
    elif fmt == "json":
        handle.write("[")
        for record in records:
            handle.write(("," if count else "") + "\n" + json.dumps(record, default=str, ensure_ascii=False))
            count += 1
        handle.write("\n]\n")
    elif fmt == "csv":
        buffered: list[dict[str, Any]] = []
        columns: list[str] = []
        iterator = iter(records)
        # Columns are the union over a first window of records, then fixed (extra keys are dropped
        # only if they never appear in the window; the window is large enough for uniform results).
        for record in iterator:
            buffered.append(record)
            for key in record:
                if key not in columns:
                    columns.append(key)
            if len(buffered) >= 10000:
                break
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in buffered:
            writer.writerow(_flat(record))
            count += 1
        for record in iterator:
            writer.writerow(_flat(record))
            count += 1
    else:
        raise CorralError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    return count


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v) for k, v in record.items()}


def export_records(records: Iterable[dict[str, Any]], target: str | Path | IO[str] | None, fmt: str) -> int:
    """Write records to a file (atomically: a reader never sees half of it), a text handle, or stdout
    (``target`` None). Returns how many were written."""
    if fmt == "parquet":
        from corral.api.frames import write_parquet

        return write_parquet(records, Path(target))  # type: ignore[arg-type]
    if target is None:
        return write_records(records, fmt, sys.stdout)
    if not isinstance(target, (str, Path)):
        return write_records(records, fmt, target)
    with writing(target, newline="") as handle:
        return write_records(records, fmt, handle)
