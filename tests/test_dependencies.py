"""Dependencies between stages of different kinds, and cancelling one stage."""

from __future__ import annotations

import pytest

import textwrap
from pathlib import Path

import corral

pytestmark = pytest.mark.usefixtures("campaign_ledger")


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


def test_retry_after_cancel_waits_for_needs_again(tmp_path):
    path = _write(tmp_path, """\
        first:
          call: tasks:slow
        second:
          needs: first
          call: tasks:work
        """)
    campaign = corral.open(str(path))
    run, _ = campaign.start()
    engine = run.engine()
    engine.cancel()
    engine.retry(include_cancelled=True)
    counts = run.counts()
    assert counts["first"]["pending"] == 6
    assert counts["second"]["waiting"] == 6 and counts["second"]["pending"] == 0
    engine.cancel()
    engine.close()


def test_retrying_a_failed_once_per_run_stage_reopens_its_dependents(tmp_path):
    (tmp_path / "flag").write_text("fail")
    path = _write(tmp_path, """\
        setup:
          per: all
          call: setup:prepare
        work:
          needs: setup
          call: tasks:work
        """)
    (tmp_path / "setup.py").write_text(
        "from pathlib import Path\n"
        "def prepare(ctx):\n"
        "    if (ctx.root / 'flag').read_text() == 'fail':\n"
        "        raise RuntimeError('not yet')\n"
        "    return {}\n")
    run, _ = corral.open(str(path)).start()
    run.run()
    assert run.counts()["work"]["cancelled"] == 6
    (tmp_path / "flag").write_text("ok")
    engine = run.engine()
    assert engine.retry() == 1
    engine.close()
    assert run.counts()["work"]["waiting"] == 6
    run.run()
    assert run.counts()["work"]["done"] == 6 and run.refresh()["status"] == "finished"


def test_a_running_controller_notices_a_cancel_from_elsewhere(tmp_path):
    import threading
    import time

    path = _write(tmp_path, """\
        first:
          call: tasks:slow
        """)
    run, _ = corral.open(str(path)).start()
    result = {}
    thread = threading.Thread(target=lambda: result.update(report=run.run(max_interval=0.5)))
    thread.start()
    time.sleep(2)
    other = corral.open(str(path)).run(run.id).engine()
    other.cancel()
    other.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert result["report"].status == "cancelled"
