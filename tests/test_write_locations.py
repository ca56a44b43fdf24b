"""Where corral will write is checked before it writes: a workdir that is a system folder or a file,
and a merged run named like a path, are refused with exit 2 and a message naming the key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import corral_cli, write_campaign, write_module

CAMPAIGN = {"name": "where", "items": {"grid": {"x": [1, 2]}}, "stages": {"work": {"call": "m:f"}},
            "backends": {"local": {"workers": 1, "gpus": "none"}}}


def _folder(tmp_path: Path, **extra) -> Path:
    folder = tmp_path / "camp"
    write_module(folder, "m", "def f(item, ctx):\n    return {'x': item['x']}\n")
    write_campaign(folder, {**CAMPAIGN, **extra})
    return folder


@pytest.mark.parametrize("workdir, says", [
    ("/", "is the system folder /"),
    ("/etc/corral", "is inside the system folder /etc"),
    ("/proc/corral", "is inside the system folder /proc"),
    ("/dev/shm/corral", "is inside the system folder /dev"),
    ("/tmp", "is the system folder /tmp"),
    ("m.py", "is a regular file"),
    ("m.py/state", "which is a regular file"),
])
def test_a_workdir_where_corral_must_not_write_is_refused(tmp_path: Path, workdir: str, says: str):
    folder = _folder(tmp_path, workdir=workdir)
    before = sorted(os.listdir(folder))
    for command in (["check"], ["run", "-q"], ["status"]):
        proc = corral_cli(folder, *command, check=2)
        assert "corral.yaml: workdir: the workdir" in proc.stderr and says in proc.stderr, proc.stderr
        assert "expected: a folder for corral's own files" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(folder)) == before
    for name in ("ledger.db", "runs", "corral.log"):
        assert not Path("/", name).exists()


def test_a_workdir_inside_the_campaign_folder_still_works(tmp_path: Path):
    folder = _folder(tmp_path, workdir="state/corral")
    corral_cli(folder, "run", "-q", check=0)
    assert (folder / "state" / "corral" / "ledger.db").exists()


@pytest.mark.usefixtures("campaign_ledger")
def test_runs_merge_into_a_name_that_is_not_a_run_id_is_refused(tmp_path: Path):
    folder = _folder(tmp_path)
    corral_cli(folder, "run", "-q", check=0)
    runs = json.loads(corral_cli(folder, "runs", "--json", check=0).stdout)
    for into in ["../../x", "/tmp/x", "a/b", ".hidden", "x" * 201, "new\nline"]:
        proc = corral_cli(folder, "runs", "merge", runs[0]["id"], "--into", into, check=2)
        assert "a run id is made of letters" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(corral_cli(folder, "runs", "--json", check=0).stdout) == runs
    assert not (tmp_path / "x").exists() and not (folder / ".corral" / "runs" / "a").exists()
    corral_cli(folder, "runs", "merge", runs[0]["id"], "--into", "merged-1", check=0)
    assert "merged-1" in [r["id"] for r in json.loads(corral_cli(folder, "runs", "--json", check=0).stdout)]


@pytest.mark.parametrize("key, value, says", [
    ("workdir", "a\x00b", "workdir: a path without NUL or control characters"),
    ("workdir", "state\nx", "workdir: a path without NUL or control characters"),
    ("workdir", "  ", "workdir: a path, not an empty string"),
    ("ledger", "~nouser-of-this-machine/x.db", "ledger: a path whose home folder exists"),
    ("ledger", "led\x00ger.db", "ledger: a path without NUL or control characters"),
])
def test_a_workdir_or_ledger_that_names_no_usable_path_is_refused(tmp_path: Path, key: str, value: str, says: str):
    folder = _folder(tmp_path, **{key: value})
    before = sorted(os.listdir(folder))
    for command in (["check"], ["check", "--json"], ["run", "-q"]):
        proc = corral_cli(folder, *command, check=2)
        assert says in proc.stderr and "corral.yaml" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert sorted(os.listdir(folder)) == before


@pytest.mark.parametrize("where", ["--ledger", "CORRAL_LEDGER"])
def test_a_ledger_given_with_an_unknown_home_folder_is_refused(tmp_path: Path, where: str):
    folder = _folder(tmp_path)
    given = "~nouser-of-this-machine/x.db"
    if where == "--ledger":
        proc = corral_cli(folder, "check", "--ledger", given, check=2)
    else:
        proc = corral_cli(folder, "check", check=2, env={"CORRAL_LEDGER": given})
    assert "names no user of this machine" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
