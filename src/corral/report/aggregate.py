"""One aggregated table from the ledger: counts, success rates and numeric summaries per group.

Groups are formed by any dimensions: item parameters (``setting``), config values of the run
(``params.seed``, or ``policy`` for ``params.policy``), ``stage``, ``run`` and result fields
(``result.NAME``). The heavy part (a pass over every task and its result JSON) is one GROUP BY
query in the database (SQLite ``json_extract``, PostgreSQL ``jsonb``) that returns sufficient
statistics per (run, group); Python merges them across runs and derives rates and intervals. Other
databases, and ``engine="python"``, read the rows and do the same in Python.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from corral.errors import CorralError

Z95 = 1.959963984540054

# -- statistics ----------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion k/n (None when n == 0)."""
    if n <= 0:
        return None
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def mean_std_ci(n: int, total: float, total_sq: float, z: float = Z95) -> dict[str, Any]:
    """Mean, sample std (ddof=1) and the normal-approximation interval mean +- z*std/sqrt(n)."""
    if n <= 0:
        return {"n": 0, "mean": None, "std": None, "ci": None, "lo": None, "hi": None}
    mean = total / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci": None, "lo": None, "hi": None}
    var = max(0.0, (total_sq - n * mean * mean) / (n - 1))
    std = math.sqrt(var)
    half = z * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci": half, "lo": mean - half, "hi": mean + half}


def summarize_values(values: Iterable[float]) -> dict[str, Any]:
    values = [float(v) for v in values]
    return mean_std_ci(len(values), sum(values), sum(v * v for v in values))


@dataclass
class Stats:
    """Sufficient statistics of one cell (a group in one run, or merged over runs): they add up."""

    expected: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0
    cancelled: int = 0
    bool_n: int = 0
    bool_k: int = 0
    numeric: dict[str, list[float]] = field(default_factory=dict)  # name -> [n, sum, sum of squares]
    errors: Counter = field(default_factory=Counter)

    def add(self, other: "Stats") -> None:
        self.expected += other.expected
        self.done += other.done
        self.failed += other.failed
        self.running += other.running
        self.cancelled += other.cancelled
        self.bool_n += other.bool_n
        self.bool_k += other.bool_k
        for name, (n, s, ss) in other.numeric.items():
            mine = self.numeric.setdefault(name, [0, 0.0, 0.0])
            mine[0] += n
            mine[1] += s
            mine[2] += ss
        self.errors.update(other.errors)

    def metrics(self, metric: str | None, numeric: Sequence[str]) -> dict[str, Any]:
        finished = self.done + self.failed + self.cancelled
        out: dict[str, Any] = {
            "expected": self.expected, "done": self.done, "failed": self.failed, "running": self.running,
            "cancelled": self.cancelled, "progress": finished / self.expected if self.expected else None,
        }
        if metric is not None:
            interval = wilson(self.bool_k, self.bool_n)
            out["success"] = {"n": self.bool_n, "k": self.bool_k,
                              "rate": self.bool_k / self.bool_n if self.bool_n else None,
                              "lo": interval[0] if interval else None, "hi": interval[1] if interval else None}
        out["numeric"] = {name: mean_std_ci(*self.numeric.get(name, [0, 0.0, 0.0])) for name in numeric}
        out["errors"] = dict(self.errors.most_common())
        return out


# -- dimensions ----------------------------------------------------------------------------


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


# -- the report ----------------------------------------------------------------------------


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
            "metric": self.metric, "metric_kind": self.metric_kind, "numeric_fields": self.numeric,
            "interval": {"success": "Wilson score, 95%", "numeric": "mean +- 1.96*std/sqrt(n)"},
            "runs": self.runs, "compare_runs": self.compare,
            "groups": [{"key": dict(zip([d.name for d in self.dims], row["key"])),
                        **({"runs": row["cells"]} if self.compare else row["cells"]["all"])}
                       for row in self.rows],
            "total": self.total if self.compare else self.total["all"],
            "best": self.best, "worst": self.worst,
        }


def _execute(conn, sql: str, params: dict[str, Any]):
    """Rows of ``sql`` (``:name`` parameters) on a SQLAlchemy connection, or on a plain sqlite3
    connection (``corral report`` on a SQLite ledger does without SQLAlchemy)."""
    if isinstance(conn, sqlite3.Connection):
        return conn.execute(sql, params)
    from sqlalchemy import text

    return conn.execute(text(sql), params)


def _discover_results(conn, run_ids: list[str], stage: str | None, limit: int = 500) -> dict[str, str]:
    """Result field name -> 'bool' | 'numeric' | 'other', from a sample of finished results."""
    kinds: dict[str, set] = {}
    for run_id in run_ids:
        sql = "SELECT result FROM tasks WHERE run_id = :run AND state = 'done' AND result IS NOT NULL"
        params: dict[str, Any] = {"run": run_id, "limit": limit}
        if stage is not None:
            sql += " AND stage = :stage"
            params["stage"] = stage
        for (raw,) in _execute(conn, sql + " LIMIT :limit", params):
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


def _param_names(conn, run_rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in run_rows:
        selection = json.loads(row.get("selection") or "{}") or {}
        for name in selection.get("param_order") or []:
            if name not in names:
                names.append(name)
        # Item sources without a fixed order (lists, files): look at the first items.
        for (raw,) in _execute(conn, "SELECT params FROM items WHERE run_id = :run LIMIT 200", {"run": row["id"]}):
            for name in json.loads(raw or "{}"):
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
    config = json.loads(run_rows[0].get("config") or "{}") or {}
    stages = config.get("stages") or {}
    for name, spec in stages.items():
        per = (spec or {}).get("per", "item") if isinstance(spec, dict) else "item"
        if per == "item" and counts.get(name):
            return name
    return max(counts, key=counts.get) if counts else None


def _json_path(name: str) -> str:
    return '$."' + name.replace('"', '\\"') + '"'


def _sql_cells(conn, dialect: str, run_ids: list[str], stage: str | None, dims: list[Dimension],
               metric: str | None, metric_kind: str | None, numeric: list[str]) -> dict[tuple, Stats]:
    """(run_id, dim values...) -> Stats, in one GROUP BY query (and one for error classes)."""
    params: dict[str, Any] = {}
    inner: list[str] = ["t.run_id AS run_id", "t.state AS state", "t.error_class AS error_class"]
    group_cols: list[str] = []
    sql_dims = [d for d in dims if d.kind in ("param", "stage", "result")]
    pg = dialect == "postgresql"
    need_items = any(d.kind == "param" for d in sql_dims)
    for n, dim in enumerate(sql_dims):
        col = f"d{n}"
        if dim.kind == "stage":
            inner.append(f"t.stage AS {col}")
        elif dim.kind == "param":
            params[f"p{n}"] = dim.source if pg else _json_path(dim.source)
            inner.append(f"(i.params::jsonb -> :p{n}) AS {col}" if pg else f"json_extract(i.params, :p{n}) AS {col}")
        else:
            params[f"p{n}"] = dim.source if pg else _json_path(dim.source)
            inner.append(f"(t.result::jsonb -> :p{n}) AS {col}" if pg else f"json_extract(t.result, :p{n}) AS {col}")
        group_cols.append(col)
    fields = ([metric] if metric_kind == "bool" else []) + list(numeric)
    for n, name in enumerate(fields):
        params[f"f{n}"] = name if pg else _json_path(name)
        if pg:
            check = "boolean" if (n == 0 and metric_kind == "bool") else "number"
            cast = "::boolean::int" if check == "boolean" else "::float8"
            inner.append(f"CASE WHEN t.state = 'done' AND jsonb_typeof(t.result::jsonb -> :f{n}) = '{check}' "
                         f"THEN (t.result::jsonb ->> :f{n}){cast} END AS v{n}")
        else:
            inner.append(f"CASE WHEN t.state = 'done' AND t.result IS NOT NULL THEN json_extract(t.result, :f{n}) "
                         f"END AS v{n}")
    run_marks = ", ".join(f":r{n}" for n in range(len(run_ids)))
    params.update({f"r{n}": run_id for n, run_id in enumerate(run_ids)})
    where = f"t.run_id IN ({run_marks})"
    if stage is not None:
        where += " AND t.stage = :stage"
        params["stage"] = stage
    join = " LEFT JOIN items i ON i.run_id = t.run_id AND i.idx = t.item_idx" if need_items else ""
    sub = f"SELECT {', '.join(inner)} FROM tasks t{join} WHERE {where}"
    outer = ["run_id"] + group_cols + [
        "COUNT(*)", "SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END)",
        "SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END)",
        "SUM(CASE WHEN state IN ('queued', 'running') THEN 1 ELSE 0 END)",
        "SUM(CASE WHEN state = 'cancelled' THEN 1 ELSE 0 END)"]
    # Each value is extracted once per row (the CTE is materialized, so the references below do not
    # parse the JSON again). SQLite: json_extract gives true/false as 1/0; a number is counted only
    # when it is one (a text in a numeric field adds 0 to the sums and is not counted).
    for n, _ in enumerate(fields):
        if pg:
            outer += [f"COUNT(v{n})", f"SUM(v{n})", "0" if (n == 0 and metric_kind == "bool") else f"SUM(v{n} * v{n})"]
        elif n == 0 and metric_kind == "bool":
            outer += [f"SUM(typeof(v{n}) = 'integer')", f"SUM(v{n} = 1)", "0"]
        else:
            outer += [f"SUM(typeof(v{n}) IN ('integer', 'real'))", f"TOTAL(v{n})", f"TOTAL(v{n} * v{n})"]
    group = ", ".join(["run_id"] + group_cols)
    cells: dict[tuple, Stats] = {}
    query = f"WITH s AS MATERIALIZED ({sub}) SELECT {', '.join(outer)} FROM s GROUP BY {group}"
    for row in _execute(conn, query, params):
        row = tuple(row)
        key = (row[0],) + tuple(_norm(v) for v in row[1:1 + len(group_cols)])
        rest = row[1 + len(group_cols):]
        stats = Stats(expected=int(rest[0]), done=int(rest[1] or 0), failed=int(rest[2] or 0),
                      running=int(rest[3] or 0), cancelled=int(rest[4] or 0))
        values = rest[5:]
        for n, name in enumerate(fields):
            cnt, s, ss = values[3 * n:3 * n + 3]
            if n == 0 and metric_kind == "bool":
                stats.bool_n, stats.bool_k = int(cnt or 0), int(s or 0)
            else:
                stats.numeric[name] = [int(cnt or 0), float(s or 0.0), float(ss or 0.0)]
        cells[key] = stats
    failed = f"SELECT {', '.join(inner[:3 + len(group_cols)])} FROM tasks t{join} WHERE {where} AND t.state = 'failed'"
    error_sql = (f"SELECT run_id, {', '.join(group_cols) + ', ' if group_cols else ''}error_class, COUNT(*) "
                 f"FROM ({failed}) s GROUP BY {group}, error_class")
    for row in _execute(conn, error_sql, params):
        row = tuple(row)
        key = (row[0],) + tuple(_norm(v) for v in row[1:1 + len(group_cols)])
        if key in cells:
            cells[key].errors[row[-2] or "unknown"] += int(row[-1])
    return cells


def _python_cells(conn, run_ids: list[str], stage: str | None, dims: list[Dimension], metric: str | None,
                  metric_kind: str | None, numeric: list[str]) -> dict[tuple, Stats]:
    """The same cells as ``_sql_cells``, reading every row (for other databases, and to check the SQL)."""
    sql_dims = [d for d in dims if d.kind in ("param", "stage", "result")]
    cells: dict[tuple, Stats] = {}
    for run_id in run_ids:
        sql = ("SELECT t.stage, t.state, t.result, t.error_class, i.params FROM tasks t LEFT JOIN items i "
               "ON i.run_id = t.run_id AND i.idx = t.item_idx WHERE t.run_id = :run")
        params: dict[str, Any] = {"run": run_id}
        if stage is not None:
            sql += " AND t.stage = :stage"
            params["stage"] = stage
        for stage_name, state, raw_result, error_class, raw_params in _execute(conn, sql, params):
            item = json.loads(raw_params) if raw_params else {}
            result = json.loads(raw_result) if raw_result else None
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
            if state == "done":
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
            elif state == "failed":
                stats.failed += 1
                stats.errors[error_class or "unknown"] += 1
            elif state in ("queued", "running"):
                stats.running += 1
            elif state == "cancelled":
                stats.cancelled += 1
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


def _run_labels(runs: list[dict[str, Any]], configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A short label per run: the config values that tell the runs apart, else the run id."""
    if len(runs) < 2:
        return {r["id"]: r["id"] for r in runs}
    keys = sorted({k for c in configs.values() for k in c})
    differing = [k for k in keys if len({json.dumps(configs[r["id"]].get(k), sort_keys=True, default=str)
                                          for r in runs}) > 1]
    differing = [k for k in differing if k != "name"]
    if not differing or len(differing) > 3:
        return {r["id"]: r["id"] for r in runs}
    labels = {r["id"]: ",".join(f"{k.split('.')[-1]}={configs[r['id']].get(k)}" for k in differing) for r in runs}
    if len(set(labels.values())) != len(labels):
        return {r["id"]: r["id"] for r in runs}
    return labels


def aggregate(ledger, run_rows: list[dict[str, Any]], by: Sequence[str] = (), metric: str | None = None,
              stage: str | None = None, engine: str = "auto", compare: bool | None = None) -> Report:
    """The report table of ``run_rows`` (rows of the runs table, newest first or in the order wanted).

    ``engine``: ``auto`` (SQL on SQLite and PostgreSQL, else Python), ``sql`` or ``python``.
    ``compare``: runs as columns (default: when there are several runs and no config/run dimension).
    """
    if not run_rows:
        raise CorralError("no runs to report on")
    run_ids = [r["id"] for r in run_rows]
    if len(set(run_ids)) != len(run_ids):
        raise CorralError("the same run is named twice")
    configs = {r["id"]: flatten(json.loads(r.get("config") or "{}") or {}) for r in run_rows}
    dialect = getattr(ledger, "dialect_name", None) or ledger.engine.dialect.name
    with ledger.read() as conn:
        stage_counts: Counter = Counter()
        marks = ", ".join(f":r{n}" for n in range(len(run_ids)))
        for name, count in _execute(
                conn, f"SELECT stage, COUNT(*) FROM tasks WHERE run_id IN ({marks}) GROUP BY stage",
                {f"r{n}": r for n, r in enumerate(run_ids)}):
            stage_counts[name] += int(count)
        by = [b.strip() for b in by if b and b.strip()]
        if stage is not None and stage not in stage_counts:
            raise CorralError(f"no stage {stage!r} in the runs reported on; stages: "
                              f"{', '.join(stage_counts) or '(none)'}")
        if stage is None and "stage" not in by:
            stage = default_stage(run_rows, stage_counts)
        result_kinds = _discover_results(conn, run_ids, stage)
        param_names = _param_names(conn, run_rows)
        dims = resolve_dimensions(by, param_names, configs, result_kinds)
        bools = [n for n, k in result_kinds.items() if k == "bool"]
        numeric = [n for n, k in result_kinds.items() if k == "numeric"]
        if metric is None:
            metric = bools[0] if bools else None
        if metric is not None and metric not in result_kinds:
            raise CorralError(f"--metric {metric!r} is not a result field of stage {stage!r}; result fields: "
                              f"{', '.join(f'{n} ({k})' for n, k in result_kinds.items()) or '(none)'}")
        metric_kind = None
        if metric is not None:
            metric_kind = result_kinds[metric] if result_kinds[metric] in ("bool", "numeric") else None
            if metric_kind is None:
                raise CorralError(f"--metric {metric!r} is neither boolean nor numeric")
        if engine == "auto":
            engine = "sql" if dialect in ("sqlite", "postgresql") else "python"
        if engine == "sql":
            cells = _sql_cells(conn, dialect, run_ids, stage, dims, metric, metric_kind, numeric)
        else:
            cells = _python_cells(conn, run_ids, stage, dims, metric, metric_kind, numeric)

    if compare is None:
        compare = len(run_ids) > 1 and not any(d.kind in ("config", "run") for d in dims)
    # Place the per-run values of config/run dimensions into each cell's key, in --by order.
    sql_positions = [d for d in dims if d.kind in ("param", "stage", "result")]
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

    labels = _run_labels(run_rows, configs)
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
                    runs=runs_out, compare=compare, rows=rows, total=total, best=None, worst=None, engine=engine)
    report.best, report.worst = _best_worst(report)
    return report


def _differing(configs: dict[str, dict[str, Any]]) -> list[str]:
    if len(configs) < 2:
        return []
    keys = sorted({k for c in configs.values() for k in c})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs.values()}) > 1]


def _best_worst(report: Report) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The groups with the highest and lowest value of the metric (per run when runs are compared)."""
    if report.metric_kind is None or not report.dims:
        return None, None
    names = [d.name for d in report.dims]
    best: dict[str, Any] = {}
    worst: dict[str, Any] = {}
    for column in report.columns_keys:
        scored = []
        for row in report.rows:
            value, lo, hi, n = report.headline(row["cells"][column])
            if value is not None and n > 0:
                scored.append((value, n, row["key"], lo, hi))
        if not scored:
            continue
        hi_item = max(scored, key=lambda s: (s[0], s[1]))
        lo_item = min(scored, key=lambda s: (s[0], -s[1]))
        best[column] = {"key": dict(zip(names, hi_item[2])), "value": hi_item[0], "lo": hi_item[3],
                        "hi": hi_item[4], "n": hi_item[1]}
        worst[column] = {"key": dict(zip(names, lo_item[2])), "value": lo_item[0], "lo": lo_item[3],
                         "hi": lo_item[4], "n": lo_item[1]}
    if not best:
        return None, None
    if not report.compare:
        return best.get("all"), worst.get("all")
    return best, worst


def progress_over_time(ledger, run_ids: list[str], stage: str | None = None) -> dict[str, list[tuple[float, int]]]:
    """Per run: (time, cumulative tasks done) from the events table (tasks.finished_at when it has none)."""
    out: dict[str, list[tuple[float, int]]] = {}
    with ledger.read() as conn:
        for run_id in run_ids:
            sql = ("SELECT at, COALESCE(count, 1) FROM events WHERE run_id = :run AND to_state = 'done'"
                   + (" AND stage = :stage" if stage else "") + " ORDER BY at")
            params = {"run": run_id, "stage": stage}
            points = [(float(a), int(c)) for a, c in _execute(conn, sql, params)]
            if not points:
                sql = ("SELECT finished_at, 1 FROM tasks WHERE run_id = :run AND state = 'done' AND finished_at "
                       "IS NOT NULL" + (" AND stage = :stage" if stage else "") + " ORDER BY finished_at")
                points = [(float(a), 1) for a, _ in _execute(conn, sql, params)]
            series, total = [], 0
            for at, count in points:
                total += count
                series.append((at, total))
            out[run_id] = series
    return out
