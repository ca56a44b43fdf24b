"""The best and the worst groups of a report by its metric (per run when runs are compared)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.report.aggregate import Report


def _scored(report: "Report", column: str) -> list[dict[str, Any]]:
    names = [d.name for d in report.dims]
    out = []
    for row in report.rows:
        value, lo, hi, n = report.headline(row["cells"][column])
        if value is not None and n > 0:
            out.append({"key": dict(zip(names, row["key"])), "value": value, "lo": lo, "hi": hi, "n": n})
    return out


def best_and_worst(report: "Report", top: int | None = None) -> tuple[Any, Any, Any]:
    """(best, worst, top): the group with the highest and the lowest value of the metric, and with
    ``top`` the ``top`` highest and lowest (``{"n", "best": [...], "worst": [...]}``). Ties go to
    the group with more tasks. Per run column when runs are compared."""
    if report.metric_kind is None or not report.dims:
        return None, None, ({"n": top, "best": [], "worst": []} if top else None)
    best: dict[str, Any] = {}
    worst: dict[str, Any] = {}
    ranked: dict[str, dict[str, Any]] = {}
    for column in report.columns_keys:
        scored = _scored(report, column)
        if not scored:
            continue
        high = sorted(scored, key=lambda s: (-s["value"], -s["n"]))
        low = sorted(scored, key=lambda s: (s["value"], -s["n"]))
        if report.metric in report.lower_is_better:
            high, low = low, high
        best[column], worst[column] = high[0], low[0]
        if top:
            ranked[column] = {"n": top, "best": high[:top], "worst": low[:top]}
    if not report.compare:
        empty = {"n": top, "best": [], "worst": []}
        return best.get("all"), worst.get("all"), (ranked.get("all", empty) if top else None)
    return best or None, worst or None, (ranked if top else None)
