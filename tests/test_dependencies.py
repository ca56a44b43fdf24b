"""Dependencies between stages of different kinds, and cancelling one stage."""

from __future__ import annotations

import textwrap
from pathlib import Path

import corral


def _write(folder: Path, stages: str) -> Path:
    (folder / "tasks.py").write_text(textwrap.dedent("""\
        import time

        def prepare(ctx):
            return {"prepared": True}

        def work(item, ctx):
            return {"x": item["x"] * 2}

        def slow(item, ctx):
            time.sleep(30)
            return {}
        """))
    path = folder / "corral.yaml"
    path.write_text("name: deps\nitems:\n  grid:\n    x: {range: 6}\nstages:\n" + textwrap.indent(
        textwrap.dedent(stages), "  ") + "backends:\n  local: {workers: 2}\n")
    return path


def test_item_stage_after_a_once_per_run_stage(tmp_path):
    path = _write(tmp_path, """\
        setup:
          per: all
          call: tasks:prepare
        work:
          needs: setup
          call: tasks:work
        """)
    run, _ = corral.open(str(path)).start()
    report = run.run()
    assert report.finished and run.refresh()["status"] == "finished"
    records = list(run.records(stage="work"))
    assert sorted(r["result.x"] for r in records) == [0, 2, 4, 6, 8, 10]
    setup = next(iter(run.records(stage="setup")))
    assert all(r["started_at"] >= setup["finished_at"] for r in records)


def test_cancelling_a_stage_cancels_what_waits_on_it(tmp_path):
    path = _write(tmp_path, """\
        first:
          call: tasks:slow
        second:
          needs: first
          call: tasks:work
        """)
    campaign = corral.open(str(path))
    run, _ = campaign.start()
    run.tick()
    engine = run.engine()
    engine.cancel(stage="first")
    engine.close()
    counts = run.counts()
    assert counts["first"]["cancelled"] == 6
    assert counts["second"]["cancelled"] == 6
    report = run.tick()
    assert report.finished and report.status == "finished_with_failures"


def test_a_parameter_named_like_a_metadata_column_is_kept(tmp_path):
    path = tmp_path / "corral.yaml"
    (tmp_path / "tasks.py").write_text("def f(item, ctx):\n    return {'state': 'ok', 'host': 1}\n")
    path.write_text("name: clash\nitems:\n  list: [{state: CA, host: h1}]\nstages:\n  a:\n    call: tasks:f\n")
    run, _ = corral.open(str(path)).start()
    run.run()
    record = next(iter(run.records()))
    assert record["param.state"] == "CA" and record["param.host"] == "h1"
    assert record["result.state"] == "ok" and record["result.host"] == 1
    assert record["state"] == "done"


def test_no_submission_stays_open_after_a_run_finishes(tmp_path):
    path = _write(tmp_path, """\
        work:
          call: tasks:work
        """)
    run, _ = corral.open(str(path)).start()
    run.run()
    assert run.status()["submissions_open"] == 0
