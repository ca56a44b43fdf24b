"""Records as columns: a pandas DataFrame or a Parquet file (pandas and pyarrow are optional extras)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from corral.errors import CorralError
from corral.outfiles import replacing

#: Present in every table, even when no record of the run has tokens or a cost.
METADATA = ("run_id", "stage", "item_key", "item_id", "task_id", "state", "attempts", "error_class", "error_message",
            "started_at", "finished_at", "duration_s", "host", "tokens_in", "tokens_out", "cost")


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CorralError(f"this needs {module}: pip install 'corral[{extra}]'") from None


def columns_of(records: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        for key in record:
            names.setdefault(key, None)
    meta = [m for m in METADATA if m in names or m in ("tokens_in", "tokens_out", "cost")]
    params = [n for n in names if n not in METADATA]
    return meta[:5] + params + meta[5:]


def _column(values: list[Any]) -> list[Any]:
    """Nested values become JSON text; a column of mixed kinds (numbers and text) becomes text."""
    kinds = {type(v) for v in values if v is not None}
    if kinds & {dict, list}:
        return [None if v is None else json.dumps(v, default=str) for v in values]
    if len(kinds - {int, float}) and len(kinds) > 1 and kinds != {bool}:
        return [None if v is None else str(v) for v in values]
    return values


def arrow_table(records: Iterable[dict[str, Any]]):
    pa = _need("pyarrow", "parquet")
    rows = list(records)
    columns = columns_of(rows)
    data = {name: _column([r.get(name) for r in rows]) for name in columns}
    types = {"tokens_in": pa.int64(), "tokens_out": pa.int64(), "cost": pa.float64(), "attempts": pa.int64(),
             "started_at": pa.float64(), "finished_at": pa.float64(), "duration_s": pa.float64(),
             "error_class": pa.string(), "error_message": pa.string(), "host": pa.string()}
    return pa.table({name: pa.array(values, type=types.get(name) if all(v is None for v in values) else None)
                     for name, values in data.items()})


def write_parquet(records: Iterable[dict[str, Any]], path: Path) -> int:
    pq = _need("pyarrow.parquet", "parquet")
    table = arrow_table(records)
    with replacing(path) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows


def dataframe(records: Iterable[dict[str, Any]]):
    pd = _need("pandas", "pandas")
    rows = list(records)
    columns = columns_of(rows)
    return pd.DataFrame({name: _column([r.get(name) for r in rows]) for name in columns}, columns=columns)
