"""Broken and hostile input, class by class: each variant exits 2 with a message naming the file and
the key, writes no ledger, and never shows a traceback; runs that could not end now end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import assert_no_ledger, corral_cli, query_ledger, write_campaign

VALID_TAIL = "stages:\n  s:\n    run: [\"true\"]\n"


def check_refused(folder: Path, *args: str, expect: str, seconds: float = 60) -> str:
    started = time.monotonic()
    proc = corral_cli(folder, *(args or ("check",)), timeout=seconds)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output and "internal error" not in output, output
    assert expect in output, output
    assert time.monotonic() - started < seconds
    assert_no_ledger(folder)
    return output


ALIAS_BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
                     for p, a in zip([None, *"abcdefgh"], "abcdefghi"))

CAMPAIGN_FILES = {
    "duplicate key": (b"name: t\nname: u\nitems: {list: [{x: 1}]}\n" + VALID_TAIL.encode(),
                      "the key 'name' is given twice"),
    "non-UTF-8 bytes": (b"name: t\xff\xfe\nitems: {list: [{x: 1}]}\n" + VALID_TAIL.encode(), "is not UTF-8 text"),
    "deep nesting": (("name: t\nitems: {list: [{x: 1}]}\nparams: {p: " + "[" * 3000 + "]" * 3000 + "}\n"
                      + VALID_TAIL).encode(), "nested too deeply"),
    "alias bomb": (("name: t\nitems: {list: [{x: 1}]}\n" + ALIAS_BOMB + "params: {p: *i}\n" + VALID_TAIL).encode(),
                   "expands to more than"),
    "defaults a string": (("defaults: abc\nname: t\nitems: {list: [{x: 1}]}\n" + VALID_TAIL).encode(),
                          "defaults: is a list"),
    "defaults a number": (("defaults: 5\nname: t\nitems: {list: [{x: 1}]}\n" + VALID_TAIL).encode(),
                          "defaults: is a list"),
    "backend type a mapping": (("name: t\nitems: {list: [{x: 1}]}\nbackends: {x: {type: {a: 1}}}\n" + VALID_TAIL)
                               .encode(), "backends.x.type"),
    "backend type a list": (("name: t\nitems: {list: [{x: 1}]}\nbackends: {x: {type: [1]}}\n" + VALID_TAIL)
                            .encode(), "backends.x.type"),
}


@pytest.mark.parametrize("variant", list(CAMPAIGN_FILES))
def test_a_campaign_file_that_cannot_be_read_as_written_is_refused_naming_it(tmp_path: Path, variant: str):
    body, expect = CAMPAIGN_FILES[variant]
    (tmp_path / "corral.yaml").write_bytes(body)
    output = check_refused(tmp_path, expect=expect, seconds=30)
    assert "corral.yaml" in output


ITEM_SOURCES = {
    "key format spec that does not fit": ("items: {grid: {x: [1]}, key: '{x:%Y}'}", "items.key"),
    "range step of zero": ("items: {grid: {x: {range: [0, 10, 0]}}}", "step must not be 0"),
    "range of 10^12": ("items: {grid: {x: {range: [0, 1000000000000]}}}", "1,000,000,000,000 items"),
    "range of 10^30": ("items: {grid: {x: {range: [0, 1000000000000000000000000000000]}}}", "a run holds at most 10,000,000"),
    "grid of 10^12": ("items: {grid: {a: {range: [0, 1000]}, b: {range: [0, 1000]}, c: {range: [0, 1000]}, "
                      "d: {range: [0, 1000]}}}", "a: 1,000 x b: 1,000"),
    "over-long file name": ("items: {from: '" + "a" * 300 + ".jsonl'}", "File name too long"),
    "home of no such user": ("items: {from: '~nouser_corral/x.jsonl'}", "home folder"),
    "CSV field of 200 KB": ("items: {from: big.csv}", "cannot read big.csv"),
    "CSV row with extra columns": ("items: {from: extra.csv}", "more fields than the header"),
    "deeply nested JSON": ("items: {from: deep.json}", "nested too deeply"),
    "non-UTF-8 item file": ("items: {from: latin.jsonl}", "cannot read latin.jsonl"),
    "very long where": ("items: {from: {path: rows.jsonl, where: '" + "(" * 5000 + "x" + ")" * 5000 + " == 1'}}",
                        "items.from.where"),
}


def write_item_files(folder: Path) -> None:
    (folder / "big.csv").write_text("x,y\n1," + "z" * 200_000 + "\n")
    (folder / "extra.csv").write_text("x,y\n1,2,3\n")
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "latin.jsonl").write_bytes(b'{"x": "caf\xe9"}\n')
    (folder / "rows.jsonl").write_text("".join(json.dumps({"x": i}) + "\n" for i in range(3)))


@pytest.mark.parametrize("variant", list(ITEM_SOURCES))
def test_an_item_source_that_cannot_be_expanded_is_refused_quickly(tmp_path: Path, variant: str):
    items, expect = ITEM_SOURCES[variant]
    write_item_files(tmp_path)
    write_campaign(tmp_path, f"name: t\n{items}\n{VALID_TAIL}")
    check_refused(tmp_path, expect=expect, seconds=30)
    check_refused(tmp_path, "run", "-q", expect=expect, seconds=30)


ZERO_ITEMS = {
    "an empty list": ("items: {list: []}", "items.list is empty"),
    "an empty JSONL file": ("items: {from: empty.jsonl}", "has no rows"),
    "a range [5, 0]": ("items: {grid: {x: {range: [5, 0]}}}", "items.grid.x has no values"),
    "a where matching nothing": ("items: {from: {path: rows.jsonl, where: 'x > 100'}}", "matched none of the 3 rows"),
}


@pytest.mark.parametrize("variant", list(ZERO_ITEMS))
@pytest.mark.usefixtures("campaign_ledger")
def test_a_campaign_of_no_items_with_a_merge_is_refused_instead_of_waiting_forever(tmp_path: Path, variant: str):
    items, expect = ZERO_ITEMS[variant]
    (tmp_path / "empty.jsonl").write_text("")
    write_item_files(tmp_path)
    write_campaign(tmp_path, f"""
        name: t
        {items}
        stages:
          s: {{run: ["true"]}}
          merge: {{needs: s, per: all, run: ["true"]}}
        """)
    check_refused(tmp_path, expect=expect, seconds=30)
    check_refused(tmp_path, "run", "-q", expect=expect, seconds=30)


@pytest.mark.usefixtures("campaign_ledger")
def test_a_shard_of_no_items_is_refused_instead_of_waiting_forever(tmp_path: Path):
    from corral.spec.items import item_identity, shard_of

    ids = [item_identity({"x": x}) for x in (1, 2)]
    empty = next(i for i in range(8) if all(shard_of(item_id, 8) != i for item_id in ids))
    write_campaign(tmp_path, """
        name: t
        items: {grid: {x: [1, 2]}}
        stages:
          s: {run: ["true"]}
          merge: {needs: s, per: all, run: ["true"]}
        """)
    check_refused(tmp_path, "check", "--shard", f"{empty}/8", expect="holds none of the campaign's 2 items")
    check_refused(tmp_path, "run", "-q", "--shard", f"{empty}/8", expect="holds none of the campaign's 2 items")


@pytest.mark.usefixtures("campaign_ledger")
def test_a_submission_that_fails_outright_ends_the_run(tmp_path: Path):
    write_campaign(tmp_path, """
        name: t
        items: {grid: {x: [1, 2, 3]}}
        stages:
          s: {call: "m:f"}
          merge: {needs: s, per: all, run: ["true"]}
        backends:
          local: {python: /nonexistent/python, workers: 2, gpus: none}
        """)
    (tmp_path / "m.py").write_text("def f(item):\n    return {}\n")
    started = time.monotonic()
    proc = corral_cli(tmp_path, "run", "-q", timeout=90)
    assert time.monotonic() - started < 60, "corral run did not return after its tasks failed"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    states = dict(query_ledger(tmp_path, "SELECT stage || ':' || state, count(*) FROM tasks GROUP BY 1"))
    assert states == {"s:failed": 3, "merge:cancelled": 1}
    (status,) = query_ledger(tmp_path, "SELECT status FROM runs")[0]
    assert status == "finished_with_failures"
    errors = query_ledger(tmp_path, "SELECT DISTINCT error_message FROM tasks WHERE stage = 's'")
    assert len(errors) == 1 and "/nonexistent/python" in errors[0][0]


ACCEPTED_THEN_FAILING = {
    "a batch size of 10^30": ("stages: {s: {run: ['true']}, b: {needs: s, per: batch, size: 1000000000000000000000000000000, "
                              "run: ['true']}}", "stages.b.size"),
    "workers of 10^30": ("stages: {s: {run: ['true']}}\nbackends: {local: {workers: 1000000000000000000000000000000}}",
                         "backends.local.workers"),
    "a timeout of 0": ("stages: {s: {run: ['true'], timeout: 0}}", "stages.s.timeout"),
    "a timeout of 1e308": ("stages: {s: {run: ['true'], timeout: 1e308}}", "stages.s.timeout"),
    "a timeout of nan": ("stages: {s: {run: ['true'], timeout: .nan}}", "stages.s.timeout"),
    "mem of -5": ("stages: {s: {run: ['true'], resources: {mem: -5}}}", "stages.s.resources.mem"),
    "GPU -1": ("stages: {s: {run: ['true']}}\nbackends: {local: {gpus: [-1]}}", "backends.local.gpus"),
    "a run_id template naming no field": ("run_id: '{nope}'\nstages: {s: {run: ['true']}}", "run_id"),
    "a run id of 300 characters": ("run_id: '" + "r" * 300 + "_{timestamp}'\nstages: {s: {run: ['true']}}",
                                   "characters long"),
}


def test_a_campaign_name_too_long_for_a_folder_name_is_refused_at_check(tmp_path: Path):
    write_campaign(tmp_path, "name: " + "n" * 300 + "\nitems: {list: [{x: 1}]}\n" + VALID_TAIL)
    check_refused(tmp_path, expect="at most 100 characters")


@pytest.mark.parametrize("variant", list(ACCEPTED_THEN_FAILING))
def test_values_that_would_fail_every_task_are_refused_at_check(tmp_path: Path, variant: str):
    body, expect = ACCEPTED_THEN_FAILING[variant]
    write_campaign(tmp_path, f"name: t\nitems: {{list: [{{x: 1}}]}}\n{body}\n")
    check_refused(tmp_path, expect=expect)


OVERRIDES = {
    "@items=0": "names a package",
    "k" * 3000 + "=1": "3,000 characters long",
    "~items.grid.x.0": "names a list element",
    "+=/etc/passwd": "has no key",
    "=1": "has no key",
}


@pytest.mark.parametrize("override", list(OVERRIDES), ids=lambda o: o[:20])
def test_an_override_corral_cannot_apply_is_refused(tmp_path: Path, override: str):
    write_campaign(tmp_path, "name: t\nitems: {grid: {x: [1, 2]}}\n" + VALID_TAIL)
    check_refused(tmp_path, "check", override, expect=OVERRIDES[override])


@pytest.mark.usefixtures("campaign_ledger")
def test_options_naming_nothing_that_exists_are_refused(tmp_path: Path):
    write_campaign(tmp_path, "name: t\nitems: {grid: {x: [1, 2]}}\n" + VALID_TAIL)
    corral_cli(tmp_path, "run", "-q", check=0)
    for args, expect in [
        (("logs", "t99999999999999999999"), "no task 't99999999999999999999'"),
        (("export", "--state", "nope"), "no task state 'nope'"),
        (("retry", "--error-class", "nope"), "no error class 'nope'"),
        (("init", "corral.yaml"), "corral.yaml is a file"),
        (("tick", "--lease", "nan"), "--lease must be"),
    ]:
        proc = corral_cli(tmp_path, *args)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2 and expect in output and "Traceback" not in output, (args, output)


DAMAGE = {
    "a dropped table": ("DROP TABLE events", "table(s) events are missing"),
    "malformed results": ("UPDATE tasks SET result = '{bad'", "not valid JSON"),
    "malformed params": ("UPDATE items SET params = '{bad'", "not valid JSON"),
    "malformed config": ("UPDATE runs SET config = '{bad'", "not valid JSON"),
}


def test_the_tables_a_damaged_ledger_is_checked_for_are_the_schemas():
    from corral.ledger import schema
    from corral.ledger.location import TABLES

    assert set(TABLES) == set(schema.metadata.tables)


@pytest.mark.parametrize("variant", list(DAMAGE))
def test_a_logically_damaged_ledger_is_reported_not_crashed_on(tmp_path: Path, variant: str):
    # Damaged by hand through SQLite; a PostgreSQL ledger's rows take the same path in the ledger layer.
    import sqlite3

    sql, expect = DAMAGE[variant]
    write_campaign(tmp_path, "name: t\nitems: {grid: {x: [1, 2]}}\nstages:\n  s: {call: 'm:f'}\n")
    (tmp_path / "m.py").write_text("def f(item, ctx=None):\n    return {'score': item['x']}\n")
    corral_cli(tmp_path, "run", "-q", check=0)
    with sqlite3.connect(tmp_path / ".corral" / "ledger.db") as conn:
        conn.execute(sql)
    outputs = []
    for args in (("export",), ("report",), ("run", "-q"), ("status",)):
        proc = corral_cli(tmp_path, *args)
        output = proc.stdout + proc.stderr
        assert proc.returncode in (0, 2), (args, output)
        assert "Traceback" not in output and "internal error" not in output, (args, output)
        outputs.append(output)
    assert any(expect in o for o in outputs), outputs


def _mount(*args: str) -> None:
    import subprocess

    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"needs root with mount rights for a read-only or full disk: {proc.stderr.strip()}")


def _umount(path: Path) -> None:
    import subprocess

    subprocess.run(["umount", str(path)], capture_output=True)


def test_a_read_only_ledger_is_read_and_writes_are_refused_saying_why(tmp_path: Path):
    # A real read-only bind mount: as root, file modes do not stop writes.
    write_campaign(tmp_path, "name: t\nitems: {grid: {x: [1, 2]}}\nstages:\n  s: {call: 'm:f'}\n")
    (tmp_path / "m.py").write_text("def f(item, ctx=None):\n    return {'score': item['x']}\n")
    corral_cli(tmp_path, "run", "-q", check=0)
    folder = tmp_path / ".corral"
    _mount("--bind", str(folder), str(folder))
    try:
        _mount("-o", "remount,ro,bind", str(folder))
        for args in (("status",), ("export",), ("report",), ("runs",), ("logs", "t1")):
            proc = corral_cli(tmp_path, *args)
            assert proc.returncode == 0, (args, proc.stdout + proc.stderr)
        assert '"score": 2' in corral_cli(tmp_path, "export", check=0).stdout
        for args in (("run", "-q"), ("tick",), ("retry",), ("cancel",)):
            proc = corral_cli(tmp_path, *args)
            output = proc.stdout + proc.stderr
            assert proc.returncode == 2 and "is read-only" in output and "Traceback" not in output, (args, output)
    finally:
        _umount(folder)


def test_a_full_ledger_disk_says_what_ran_out_and_where(tmp_path: Path):
    write_campaign(tmp_path, "name: t\nitems: {grid: {x: {range: [0, 3000]}}}\n" + VALID_TAIL)
    folder = tmp_path / ".corral"
    folder.mkdir()
    _mount("-t", "tmpfs", "-o", "size=400k", "tmpfs", str(folder))
    try:
        proc = corral_cli(tmp_path, "run", "-q")
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2, output
        assert "disk is full" in output and str(folder) in output and "Traceback" not in output
    finally:
        _umount(folder)
