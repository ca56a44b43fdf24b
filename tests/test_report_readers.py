"""The report's ledger queries: SQL (SQLAlchemy Core on SQLite and PostgreSQL, and the standard
library's sqlite3 reader) against the same table computed in Python, on results with every kind of
awkward value (missing fields, nulls, objects as group values, failures with several error classes,
cancelled dependents, two stages)."""

from __future__ import annotations

import inspect
import json

import pytest

from conftest import rounded, write_campaign, write_module

from corral.ledger import report_queries, sqlite_reader
from corral.ledger.report_source import QUERIES, CellQuery
from corral.report import aggregate, progress_over_time

pytestmark = pytest.mark.usefixtures("campaign_ledger")

MODULE = """
def episode(item, ctx):
    n = item["repeat"]
    if item["setting"] == "b" and n == 3:
        raise ValueError("b3")
    if item["setting"] == "c" and n in (1, 5):
        raise KeyError("c")
    result = {"ok": n % 3 != 0, "level": n % 2, "tag": {"k": item["setting"]}, "score": n * 0.1 + 1 / 3}
    if n == 2:
        result["note"] = "n/a"
    elif n == 4:
        result["score"] = None
    elif n == 6:
        del result["score"]
    if n == 7:
        result["ok"] = None
    return result


def check(item, ctx):
    return {"steps": item["repeat"] * 7 + 0.25}
"""

CAMPAIGN = """
name: readers
params:
  policy: p
items:
  grid:
    setting: [a, b, c]
    repeat: {range: [0, 9]}
stages:
  episode:
    call: m:episode
  check:
    call: m:check
    needs: [episode]
backends:
  local:
    workers: 2
    gpus: none
"""

GROUPINGS = (["setting"], ["setting", "result.level"], ["result.tag"], ["stage"], ["stage", "setting"], [],
             ["result.ok"], ["params.policy", "setting"])


@pytest.fixture(scope="module")
def finished_run(module_ledger, tmp_path_factory):
    import corral

    folder = tmp_path_factory.mktemp("readers")
    write_module(folder, "m", MODULE)
    path = write_campaign(folder, CAMPAIGN)
    campaign = corral.open(str(path))
    try:
        run, _ = campaign.start()
        run.run(max_interval=0.2)
        return folder, run.id
    finally:
        campaign.close()


def _same(a, b) -> bool:
    return json.dumps(rounded(a), sort_keys=True, default=str) == json.dumps(rounded(b), sort_keys=True, default=str)


def test_sql_matches_python_on_awkward_results(finished_run):
    import corral

    folder, run_id = finished_run
    campaign = corral.open(str(folder / "corral.yaml"))
    try:
        row = campaign.run(run_id).row
        for by in GROUPINGS:
            for metric in (None, "score"):
                fast = aggregate(campaign.ledger(), [row], by=by, metric=metric, engine="sql").to_dict()
                slow = aggregate(campaign.ledger(), [row], by=by, metric=metric, engine="python").to_dict()
                assert _same(fast, slow), (by, metric)
        table = aggregate(campaign.ledger(), [row], by=["setting"], engine="sql").to_dict()
        assert table["metric"] == "ok" and table["numeric_fields"] == ["level", "score"]
        by_setting = {g["key"]["setting"]: g for g in table["groups"]}
        assert by_setting["c"]["errors"] == {"KeyError": 2} and by_setting["b"]["errors"] == {"ValueError": 1}
        # A null or missing score is not counted, nor the null "ok" of repeat 7.
        assert by_setting["a"]["numeric"]["score"]["n"] == 7 and by_setting["a"]["success"]["n"] == 8
    finally:
        campaign.close()


@pytest.mark.sqlite_only
def test_standard_library_reader_matches_sqlalchemy(finished_run):
    import corral

    folder, run_id = finished_run
    campaign = corral.open(str(folder / "corral.yaml"))
    reader = sqlite_reader.SqliteReader.open(folder / ".corral" / "ledger.db")
    assert reader is not None
    try:
        ledger = campaign.ledger()
        row = campaign.run(run_id).row
        assert reader.run(run_id) == row and reader.newest_run("readers") == row
        for by in GROUPINGS:
            for stage in (None, "episode", "check"):
                if (stage is not None and "stage" in by) or (stage == "check" and any(b.startswith("result.") for b in by)):
                    continue
                light = aggregate(reader, [row], by=by, stage=stage).to_dict()
                full = aggregate(ledger, [row], by=by, stage=stage).to_dict()
                assert light == full, (by, stage)
        assert progress_over_time(reader, [run_id], "episode") == progress_over_time(ledger, [run_id], "episode")
        # The raw rows agree too, query by query.
        query = CellQuery(run_ids=(run_id,), stage="episode", groups=(("param", "setting"), ("result", "tag")),
                          bool_field="ok", numeric_fields=("level", "score"))
        with reader.read() as light_conn, ledger.read() as conn:
            assert sqlite_reader.cell_rows(light_conn, query) == report_queries.cell_rows(conn, query)
            assert sqlite_reader.error_rows(light_conn, query) == report_queries.error_rows(conn, query)
            assert sqlite_reader.stage_counts(light_conn, [run_id]) == report_queries.stage_counts(conn, [run_id])
            for name in ("task_rows", "done_events", "done_times"):
                assert list(getattr(sqlite_reader, name)(light_conn, run_id, None)) == \
                    list(getattr(report_queries, name)(conn, run_id, None)), name
    finally:
        reader.close()
        campaign.close()


@pytest.mark.sqlite_only
def test_query_modules_share_one_interface():
    for name in QUERIES:
        assert inspect.signature(getattr(sqlite_reader, name)).parameters.keys() == \
            inspect.signature(getattr(report_queries, name)).parameters.keys(), name
    with pytest.raises(ValueError, match="cannot group"):
        CellQuery(run_ids=("r",), stage=None, groups=(("config", "seed"),))
