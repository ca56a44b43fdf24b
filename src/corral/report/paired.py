"""Paired comparisons: the values of one dimension (policies, methods) compared on the units they
share (the same task and seed), one row per (baseline, other, metric).

Booleans get McNemar's exact test, numbers the paired t-test (``corral.report.paired_stats``).
A unit is one combination of the pairing keys: by default every item parameter but the compared
one; the tasks of several runs (one per policy) pair up when their items share those keys.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Sequence

from corral.errors import CorralError
from corral.ledger.report_source import report_queries
from corral.ledger.values import loads
from corral.report.dimensions import (default_stage, discover_param_names, discover_result_kinds, flatten,
                                      resolve_dimensions)
from corral.report.paired_stats import mcnemar, paired_t, wilcoxon
from corral.report.selection import leave_out_merged_sources
from corral.states import CORRAL_RESULT_FIELDS, DEFAULT_METRIC, TaskState

COLUMNS = ("baseline", "other", "metric", "test", "n", "unpaired", "baseline_mean", "other_mean", "diff",
           "ci_low", "ci_high", "statistic", "p_value")


class NumericTest(str, Enum):
    """The paired test of numeric result fields (``--paired-test``)."""

    T = "t"
    WILCOXON = "wilcoxon"


def numeric_test(name: str | None) -> NumericTest:
    try:
        return NumericTest(name or NumericTest.T.value)
    except ValueError:
        raise CorralError(f"--paired-test {name!r} is not one of {', '.join(t.value for t in NumericTest)} "
                          "(the paired t-test, or Wilcoxon's signed-rank test)") from None


@dataclass
class PairedTable:
    """``corral report --paired-by DIM``: every other value of DIM against the baseline, per metric."""

    dimension: str
    pair_on: list[str]
    baseline: Any
    values: list[Any]
    stage: str | None
    runs: list[str]
    rows: list[dict[str, Any]]
    caption: str | None = None
    label: str | None = None
    numeric_test: NumericTest = NumericTest.T
    excluded_runs: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "corral.report.paired", "version": 1, "paired_by": self.dimension, "pair_on": self.pair_on,
                "baseline": self.baseline, "values": self.values, "stage": self.stage, "runs": self.runs,
                "excluded_runs": self.excluded_runs,
                "tests": {"bool": "McNemar exact (binomial on discordant pairs); diff: Wald 95% for paired "
                                  "proportions",
                          "numeric": "paired t-test; diff: t 95% interval" if self.numeric_test == NumericTest.T
                          else "Wilcoxon signed-rank; diff: Hodges-Lehmann estimate, 95% interval from the "
                               "Walsh averages"},
                "comparisons": self.rows}


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)):
        return (0, value, "")
    return (1, 0, str(value))


def _scalar(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def compare_paired(ledger, run_rows: list[dict[str, Any]], paired_by: str, pair_on: Sequence[str] = (),
                   baseline: Any = None, metric: str | None = None, stage: str | None = None,
                   test: str | None = None) -> PairedTable:
    """The paired comparisons of ``paired_by``'s values over the done tasks of ``run_rows``; numbers
    with ``test`` (``t``: the paired t-test, the default; ``wilcoxon``: the signed-rank test)."""
    chosen_test = numeric_test(test)
    if not run_rows:
        raise CorralError("no runs to report on")
    run_rows, excluded = leave_out_merged_sources(run_rows)
    run_ids = [r["id"] for r in run_rows]
    configs = {r["id"]: flatten(loads(r.get("config") or "{}") or {}) for r in run_rows}
    queries = report_queries(ledger)
    with ledger.read() as conn:
        stage_counts = queries.stage_counts(conn, run_ids)
        if stage is not None and stage not in stage_counts:
            raise CorralError(f"no stage {stage!r} in the runs reported on; stages: "
                              f"{', '.join(stage_counts) or '(none)'}")
        stage = stage or default_stage(run_rows, stage_counts)
        kinds = discover_result_kinds(queries, conn, run_ids, stage)
        params = discover_param_names(queries, conn, run_rows)
        [dim] = resolve_dimensions([paired_by], params, configs, kinds)
        if dim.kind not in ("param", "config"):
            raise CorralError(f"--paired-by {paired_by!r} must be an item parameter or a config value of the runs; "
                              f"item parameters: {', '.join(params) or '(none)'}")
        keys = [k.strip() for part in pair_on for k in part.split(",") if k.strip()]
        unknown = [k for k in keys if k not in params]
        if unknown:
            raise CorralError(f"--pair-on {', '.join(unknown)}: not an item parameter; item parameters: "
                              f"{', '.join(params) or '(none)'}")
        keys = keys or [p for p in params if not (dim.kind == "param" and p == dim.source)]
        if dim.kind == "param" and dim.source in keys:
            raise CorralError(f"--pair-on {dim.source!r} is the compared dimension itself")
        units: dict[tuple, dict[Any, dict[str, Any]]] = {}
        for run_id in run_ids:
            for _stage, state, raw_result, _error, raw_params in queries.task_rows(conn, run_id, stage):
                if state != TaskState.DONE:
                    continue
                item = loads(raw_params) if raw_params else {}
                result = loads(raw_result) if raw_result else {}
                value = _scalar(item.get(dim.source) if dim.kind == "param" else configs[run_id].get(dim.source))
                unit = tuple(_scalar(item.get(k)) for k in keys)
                seen = units.setdefault(unit, {})
                if value in seen:
                    raise CorralError(
                        f"--paired-by {paired_by}: two done tasks share {paired_by}={value} and "
                        f"{', '.join(f'{k}={v}' for k, v in zip(keys, unit)) or 'no pairing key'}; name the keys "
                        f"that tell them apart with --pair-on (item parameters: {', '.join(params)})")
                seen[value] = result if isinstance(result, dict) else {}
    values = sorted({v for unit in units.values() for v in unit}, key=_sort_key)
    if len(values) < 2:
        raise CorralError(f"--paired-by {paired_by}: needs two values to compare, found "
                          f"{', '.join(map(str, values)) or 'none'} among the done tasks")
    if baseline is None:
        baseline = values[0]
    else:
        match = [v for v in values if str(v) == str(baseline)]
        if not match:
            raise CorralError(f"--baseline {baseline!r} is not a value of {paired_by}; values: "
                              f"{', '.join(map(str, values))}")
        baseline = match[0]
    bools = [n for n, k in kinds.items() if k == "bool" and n not in CORRAL_RESULT_FIELDS]
    numeric = [n for n, k in kinds.items() if k == "numeric"]
    if metric is not None and kinds.get(metric) not in ("bool", "numeric"):
        raise CorralError(f"--metric {metric!r} is not a boolean or numeric result field of stage {stage!r}; "
                          f"result fields: {', '.join(f'{n} ({k})' for n, k in kinds.items()) or '(none)'}")
    if metric is not None:
        metrics = [metric]
    else:
        metrics = ([DEFAULT_METRIC] if DEFAULT_METRIC in bools else bools[:1]) + numeric
    rows = []
    for other in values:
        if other == baseline:
            continue
        for name in metrics:
            wanted = bool if kinds[name] == "bool" else float
            pairs, unpaired = [], 0
            for unit in units.values():
                if baseline not in unit and other not in unit:
                    continue
                a, b = (_typed(unit.get(baseline, {}).get(name), wanted), _typed(unit.get(other, {}).get(name), wanted))
                if a is None or b is None:
                    unpaired += 1
                else:
                    pairs.append((a, b))
            xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
            if wanted is bool:
                stats = mcnemar(xs, ys)
            else:
                stats = paired_t(xs, ys) if chosen_test == NumericTest.T else wilcoxon(xs, ys)
            stats.pop("discordant", None)
            rows.append({"baseline": baseline, "other": other, "metric": name, "unpaired": unpaired, **stats})
    return PairedTable(dimension=paired_by, pair_on=keys, baseline=baseline, values=values, stage=stage,
                       runs=run_ids, rows=[{c: row.get(c) for c in COLUMNS} for row in rows], excluded_runs=excluded,
                       numeric_test=chosen_test)


def _typed(value: Any, wanted: type) -> Any:
    if wanted is bool:
        return value if isinstance(value, bool) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def title(table: PairedTable) -> str:
    return (f"corral report: {', '.join(table.runs)} (stage {table.stage or 'all'}, {table.dimension} paired on "
            f"{', '.join(table.pair_on) or 'nothing'}, baseline {table.baseline})")


def render_paired(table: PairedTable, fmt: str) -> str:
    """``fmt`` (table, json, md, csv, latex, html): CSV and JSON unformatted, the others as text cells."""
    from corral.report.latex import latex_float
    from corral.report.render import csv_value
    from corral.report.tables import render_rows

    if fmt == "json":
        return json.dumps(table.to_dict(), indent=2, default=str, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in table.rows:
            writer.writerow([csv_value(row[c]) for c in COLUMNS])
        return buffer.getvalue()
    text = render_rows(table.rows, list(COLUMNS), fmt, title=title(table) if fmt != "latex" else None)
    if fmt == "latex":
        return latex_float(text, table.caption, label=table.label, comment=title(table))
    return text

