"""One aggregated table from the ledger: counts, success rates and numeric summaries per group.

Groups are formed by any dimensions: item parameters (``setting``), config values of the run
(``params.seed``, or ``policy`` for ``params.policy``), ``stage``, ``run`` and result fields
(``result.NAME``). The heavy part (a pass over every task and its result JSON) is one GROUP BY
query in the database (SQLite ``json_extract``, PostgreSQL ``jsonb``) that returns sufficient
statistics per (run, group); Python merges them across runs and derives rates and intervals. Other
databases, and ``engine="python"``, read the rows and do the same in Python.

The ledger writes the SQL (``corral.ledger.report_queries``, or ``corral.ledger.sqlite_reader`` for
a SQLite ledger read with the standard library); this module describes the table it wants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from corral.errors import CorralError
from corral.ledger.report_source import CellQuery, dialect_name, report_queries
from corral.report.dimensions import (Dimension, default_stage, discover_param_names, discover_result_kinds,
                                      flatten, resolve_dimensions)
from corral.report.labels import run_labels
from corral.report.ranking import best_and_worst
from corral.report.selection import leave_out_merged_sources
from corral.report.stats import Stats
from corral.states import CORRAL_RESULT_FIELDS, DEFAULT_METRIC, IN_FLIGHT, TaskState
from corral.ledger.values import loads

#: Dimensions the database groups by; config and run dimensions are placed per run afterwards.
SQL_KINDS = ("param", "stage", "result")


@dataclass
class Report:
    """The one aggregated table every format is rendered from."""

    dims: list[Dimension]
    stage: str | None
    metric: str | None
    metric_kind: str | None  # "bool" (success rate) or "numeric" (mean) or None
    numeric: list[str]
    runs: list[dict[str, Any]]
    compare: bool  # several runs shown as columns
    rows: list[dict[str, Any]]  # {"key": [values], "cells": {run_id or "all": metrics}}
    total: dict[str, Any]  # {run_id or "all": metrics}
    best: dict[str, Any] | None
    worst: dict[str, Any] | None
    engine: str = "sql"
    #: how the metric was chosen: "asked" (--metric), "success", "first boolean field", or None
    metric_chosen: str | None = None
    #: runs asked for but left out, each counted through the merged run that holds it
    excluded_runs: list[dict[str, str]] = field(default_factory=list)
    #: --top N: the N best and N worst groups (per run when runs are compared)
    top: dict[str, Any] | None = None
    #: --columns DIM: the position in ``dims`` of the dimension whose values are columns
    pivot: int | None = None
    #: metrics (result fields) where lower is better: the best group is the lowest
    lower_is_better: tuple[str, ...] = ()
    #: LaTeX: a table environment with this caption and label
    caption: str | None = None
    label: str | None = None

    @property
    def columns_keys(self) -> list[str]:
        return [r["id"] for r in self.runs] if self.compare else ["all"]

    def headline(self, metrics: dict[str, Any]) -> tuple[float | None, float | None, float | None, int]:
        """(value, lo, hi, n) of the report's metric in one cell."""
        if self.metric_kind == "bool":
            s = metrics["success"]
            return s["rate"], s["lo"], s["hi"], s["n"]
        if self.metric_kind == "numeric":
            s = metrics["numeric"][self.metric]
            return s["mean"], s["lo"], s["hi"], s["n"]
        return None, None, None, 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "corral.report", "version": 1,
            "stage": self.stage, "by": [d.name for d in self.dims], "dimensions": [d.as_dict() for d in self.dims],
            "metric": self.metric, "metric_kind": self.metric_kind, "metric_chosen": self.metric_chosen,
            "numeric_fields": self.numeric,
            "interval": {"success": "Wilson score, 95%", "numeric": "mean +- 1.96*std/sqrt(n)"},
            "runs": self.runs, "compare_runs": self.compare, "excluded_runs": self.excluded_runs,
            "groups": [{"key": dict(zip([d.name for d in self.dims], row["key"])),
                        **({"runs": row["cells"]} if self.compare else row["cells"]["all"])}
                       for row in self.rows],
            "total": self.total if self.compare else self.total["all"],
            "best": self.best, "worst": self.worst, "top": self.top,
            "columns": self.dims[self.pivot].name if self.pivot is not None else None,
            "lower_is_better": list(self.lower_is_better),
        }


def _sql_cells(queries, conn, run_ids: list[str], stage: str | None, dims: list[Dimension],
               metric: str | None, metric_kind: str | None, numeric: list[str]) -> dict[tuple, Stats]:
    """(run_id, dim values...) -> Stats, counted by the database (one query, and one for error classes)."""
    query = CellQuery(run_ids=tuple(run_ids), stage=stage,
                      groups=tuple((d.kind, d.source) for d in dims if d.kind in SQL_KINDS),
                      bool_field=metric if metric_kind == "bool" else None, numeric_fields=tuple(numeric))
    cells: dict[tuple, Stats] = {}
    for row in queries.cell_rows(conn, query):
        stats = Stats(expected=row.expected, done=row.done, failed=row.failed, running=row.running,
                      cancelled=row.cancelled, budget=row.budget, bool_n=row.bool_n, bool_k=row.bool_k)
        for name, (n, total, total_sq) in zip(numeric, row.numeric):
            stats.numeric[name] = [n, total, total_sq]
        # PostgreSQL groups a JSON null apart from a missing field; both are one group here.
        cells.setdefault(_key(row.key), Stats()).add(stats)
    for row in queries.error_rows(conn, query):
        key = _key(row.key)
        if key in cells:
            cells[key].errors[row.error_class or "unknown"] += row.count
    return cells


def _key(values: tuple) -> tuple:
    return (values[0],) + tuple(_norm(v) for v in values[1:])


def _python_cells(queries, conn, run_ids: list[str], stage: str | None, dims: list[Dimension], metric: str | None,
                  metric_kind: str | None, numeric: list[str]) -> dict[tuple, Stats]:
    """The same cells as ``_sql_cells``, reading every row (for other databases, and to check the SQL)."""
    sql_dims = [d for d in dims if d.kind in SQL_KINDS]
    cells: dict[tuple, Stats] = {}
    for run_id in run_ids:
        for stage_name, state, raw_result, error_class, raw_params in queries.task_rows(conn, run_id, stage):
            item = loads(raw_params) if raw_params else {}
            result = loads(raw_result) if raw_result else None
            if not isinstance(result, dict):
                result = {}
            key_values: list[Any] = [run_id]
            for dim in sql_dims:
                if dim.kind == "stage":
                    key_values.append(stage_name)
                elif dim.kind == "param":
                    key_values.append(_norm(item.get(dim.source)))
                else:
                    key_values.append(_norm(result.get(dim.source)))
            key = tuple(key_values)
            stats = cells.get(key)
            if stats is None:
                stats = cells[key] = Stats()
                for name in numeric:
                    stats.numeric[name] = [0, 0.0, 0.0]
            stats.expected += 1
            if state == TaskState.DONE:
                stats.done += 1
                if metric_kind == "bool" and isinstance(result.get(metric), bool):
                    stats.bool_n += 1
                    stats.bool_k += int(result[metric])
                for name in numeric:
                    value = result.get(name)
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        acc = stats.numeric[name]
                        acc[0] += 1
                        acc[1] += value
                        acc[2] += value * value
            elif state == TaskState.FAILED:
                stats.failed += 1
                stats.errors[error_class or "unknown"] += 1
            elif state in IN_FLIGHT:
                stats.running += 1
            elif state == TaskState.CANCELLED:
                stats.cancelled += 1
            elif state == TaskState.BUDGET:
                stats.budget += 1
    return cells


def _norm(value: Any) -> Any:
    """Group values as plain JSON scalars (SQLite gives JSON objects back as text, booleans as 0/1)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, bool):
        return int(value)
    return value


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)):
        return (0, value, "")
    return (1, 0, str(value))


def aggregate(ledger, run_rows: list[dict[str, Any]], by: Sequence[str] = (), metric: str | None = None,
              stage: str | None = None, engine: str = "auto", compare: bool | None = None,
              top: int | None = None, leave_out_merged: bool | None = None, columns: str | None = None,
              lower_is_better: Sequence[str] = ()) -> Report:
    """The report table of ``run_rows`` (rows of the runs table, newest first or in the order wanted).

    ``engine``: ``auto`` (SQL on SQLite and PostgreSQL, else Python), ``sql`` or ``python``.
    ``compare``: runs as columns (default: when there are several runs and no config/run dimension,
    nor an item parameter that is also a config value of the runs).
    ``top``: also list the ``top`` best and worst groups.
    ``leave_out_merged``: leave out the runs merged into another run of ``run_rows`` (default: when
    the runs are pooled); they are listed in ``excluded_runs``.
    ``columns``: a dimension whose values become the columns (the runs are pooled); grouped by it too.
    ``lower_is_better``: result fields where the lowest value is the best.
    """
    if not run_rows:
        raise CorralError("no runs to report on")
    run_ids = [r["id"] for r in run_rows]
    if len(set(run_ids)) != len(run_ids):
        raise CorralError("the same run is named twice")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise CorralError(f"--top {top!r} is not a whole number of groups of at least 1 (e.g. --top 5)")
    configs = {r["id"]: flatten(loads(r.get("config") or "{}") or {}) for r in run_rows}
    dialect = dialect_name(ledger)
    queries = report_queries(ledger)
    with ledger.read() as conn:
        stage_counts = queries.stage_counts(conn, run_ids)
        by = [b.strip() for b in by if b and b.strip()]
        pivot_name = columns.strip() if columns is not None else None
        if pivot_name is not None:
            if compare:
                raise CorralError(f"--columns {pivot_name} puts {pivot_name}'s values in the columns: it cannot "
                                  "also put the runs there (--compare); leave out one of them")
            compare = False
            if pivot_name not in by:
                by.append(pivot_name)
        if stage is not None and stage not in stage_counts:
            raise CorralError(f"no stage {stage!r} in the runs reported on; stages: "
                              f"{', '.join(stage_counts) or '(none)'}")
        if stage is None and "stage" not in by:
            stage = default_stage(run_rows, stage_counts)
        result_kinds = discover_result_kinds(queries, conn, run_ids, stage)
        param_names = discover_param_names(queries, conn, run_rows)
        dims = resolve_dimensions(by, param_names, configs, result_kinds)
        bools = [n for n, k in result_kinds.items() if k == "bool"]
        numeric = [n for n, k in result_kinds.items() if k == "numeric"]
        metric, metric_chosen = _choose_metric(metric, bools)
        if metric is not None and metric not in result_kinds:
            raise CorralError(f"--metric {metric!r} is not a result field of stage {stage!r}; result fields: "
                              f"{', '.join(f'{n} ({k})' for n, k in result_kinds.items()) or '(none)'}")
        metric_kind = None
        if metric is not None:
            metric_kind = result_kinds[metric] if result_kinds[metric] in ("bool", "numeric") else None
            if metric_kind is None:
                raise CorralError(f"--metric {metric!r} is neither boolean nor numeric")
        asked_compare = compare
        if compare is None:
            compare = len(run_ids) > 1 and not any(
                d.kind in ("config", "run") or (d.kind == "param" and _also_config(d.source, configs)) for d in dims)
        excluded: list[dict[str, str]] = []
        if leave_out_merged if leave_out_merged is not None else not compare:
            run_rows, excluded = leave_out_merged_sources(run_rows)
            run_ids = [r["id"] for r in run_rows]
            if asked_compare is None and len(run_ids) < 2:
                compare = False
        if engine == "auto":
            engine = "sql" if dialect in ("sqlite", "postgresql") else "python"
        if engine == "sql":
            cells = _sql_cells(queries, conn, run_ids, stage, dims, metric, metric_kind, numeric)
        else:
            cells = _python_cells(queries, conn, run_ids, stage, dims, metric, metric_kind, numeric)

    # Place the per-run values of config/run dimensions into each cell's key, in --by order.
    sql_positions = [d for d in dims if d.kind in SQL_KINDS]
    groups: dict[tuple, dict[str, Stats]] = {}
    for key, stats in cells.items():
        run_id, sql_values = key[0], dict(zip([d.name for d in sql_positions], key[1:]))
        values = []
        for dim in dims:
            if dim.kind == "config":
                values.append(_norm(configs[run_id].get(dim.source)))
            elif dim.kind == "run":
                values.append(run_id)
            else:
                values.append(sql_values[dim.name])
        column = run_id if compare else "all"
        target = groups.setdefault(tuple(values), {}).setdefault(column, Stats())
        target.add(stats)
    columns = run_ids if compare else ["all"]
    rows = []
    totals = {c: Stats() for c in columns}
    for key in sorted(groups, key=lambda k: tuple(_sort_key(v) for v in k)):
        cell_metrics = {}
        for column in columns:
            stats = groups[key].get(column, Stats())
            totals[column].add(stats)
            cell_metrics[column] = stats.metrics(metric, numeric)
        rows.append({"key": list(key), "cells": cell_metrics,
                     "stats": {c: groups[key].get(c, Stats()) for c in columns}})
    total = {c: totals[c].metrics(metric, numeric) for c in columns}

    configs = {i: configs[i] for i in run_ids}
    labels = run_labels(run_rows, configs)
    runs_out = []
    for row in run_rows:
        runs_out.append({
            "id": row["id"], "label": labels[row["id"]], "name": row["name"], "status": row["status"],
            "created_at": row["created_at"], "config_hash": row["config_hash"],
            "code_revision": row.get("code_revision"), "items": row["item_count"],
            "config": {d.source: configs[row["id"]].get(d.source) for d in dims if d.kind == "config"},
            "differs": {k: configs[row["id"]].get(k) for k in _differing(configs) if k != "name"},
        })
    report = Report(dims=dims, stage=stage, metric=metric, metric_kind=metric_kind, numeric=numeric,
                    runs=runs_out, compare=compare, rows=rows, total=total, best=None, worst=None, engine=engine,
                    metric_chosen=metric_chosen, excluded_runs=excluded,
                    pivot=by.index(pivot_name) if pivot_name is not None else None,
                    lower_is_better=tuple(lower_is_better))
    unknown = [name for name in lower_is_better if name not in result_kinds]
    if unknown:
        raise CorralError(f"--lower-is-better {', '.join(unknown)}: not a result field of stage {stage!r}; result "
                          f"fields: {', '.join(result_kinds) or '(none)'}")
    report.best, report.worst, report.top = best_and_worst(report, top)
    return report


def _choose_metric(asked: str | None, bools: list[str]) -> tuple[str | None, str | None]:
    """(metric, how it was chosen): the one asked for; else ``success``; else the first boolean
    result field that corral did not add itself (never a skipped task's marker)."""
    if asked is not None:
        return asked, "asked"
    if DEFAULT_METRIC in bools:
        return DEFAULT_METRIC, DEFAULT_METRIC
    own = [name for name in bools if name not in CORRAL_RESULT_FIELDS]
    return (own[0], "first boolean field") if own else (None, None)


def _also_config(param: str, configs: dict[str, dict[str, Any]]) -> bool:
    """Whether an item parameter's name is also a config value of the runs (``policy`` and
    ``params.policy``): grouped by the parameter, runs are pooled, not shown as columns."""
    return any(param in flat or f"params.{param}" in flat for flat in configs.values())


def _differing(configs: dict[str, dict[str, Any]]) -> list[str]:
    if len(configs) < 2:
        return []
    keys = sorted({k for c in configs.values() for k in c})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs.values()}) > 1]


def progress_over_time(ledger, run_ids: list[str], stage: str | None = None) -> dict[str, list[tuple[float, int]]]:
    """Per run: (time, cumulative tasks done) from the events table (tasks.finished_at when it has none)."""
    out: dict[str, list[tuple[float, int]]] = {}
    queries = report_queries(ledger)
    with ledger.read() as conn:
        for run_id in run_ids:
            points = queries.done_events(conn, run_id, stage)
            if not points:
                points = [(at, 1) for at in queries.done_times(conn, run_id, stage)]
            series, total = [], 0
            for at, count in points:
                total += count
                series.append((at, total))
            out[run_id] = series
    return out
