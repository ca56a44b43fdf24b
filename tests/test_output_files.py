"""``-o PATH`` and ``--plot PATH`` write regular files only: a device, a folder, a pipe or a missing
folder is refused with exit 2 and nothing is put in its place; a symbolic link is followed and a
file keeps its mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import corral_cli, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

CAMPAIGN = """
name: out
items:
  grid:
    setting: [a, b]
    repeat: {range: [0, 2]}
stages:
  episode:
    call: m:f
backends:
  local: {workers: 2, gpus: none}
"""

MODULE = """
def f(item, ctx):
    return {"success": item["repeat"] > 0, "score": item["repeat"] * 0.5}
"""

EXPECTED = "expected: a regular file"


@pytest.fixture(scope="module")
def finished(module_ledger, tmp_path_factory):
    folder = tmp_path_factory.mktemp("outfiles")
    write_module(folder, "m", MODULE)
    write_campaign(folder, CAMPAIGN)
    corral_cli(folder, "run", "-q", check=0)
    return folder


def _refused(folder: Path, *args: str, says: str) -> None:
    proc = corral_cli(folder, *args, check=2)
    assert says in proc.stderr and EXPECTED in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _listing(folder: Path) -> set[str]:
    return set(os.listdir(folder))


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_export_to_a_device_node_is_refused_and_the_device_stays(finished, tmp_path):
    device = tmp_path / "null"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    for command in (["export"], ["export", "-f", "csv"], ["status", "-f", "csv"], ["runs", "-f", "json"],
                    ["report", "-f", "md"], ["export", "-f", "parquet"]):
        _refused(finished, *command, "-o", str(device), says="is a character device")
        assert stat.S_ISCHR(os.stat(device).st_mode)
    _refused(finished, "report", "--plot", str(device), says="--plot")
    assert stat.S_ISCHR(os.stat(device).st_mode)
    assert _listing(tmp_path) == {"null"}


def test_folders_pipes_and_missing_folders_are_refused_with_nothing_written(finished, tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    before = _listing(tmp_path), _listing(finished)
    cases = {str(tmp_path / "folder"): "is a folder", str(tmp_path): "is a folder", "": "names a folder",
             ".": "names a folder", str(tmp_path / "pipe"): "is a named pipe",
             str(tmp_path / "missing" / "r.csv"): "does not exist",
             str(tmp_path / ("n" * 300 + ".csv")): "file name is too long",
             "/proc/r.csv": "cannot write in '/proc'"}
    for target, says in cases.items():
        _refused(finished, "export", "-f", "csv", "-o", target, says=says)
    _refused(finished, "status", "-f", "json", "-o", str(tmp_path / "folder"), says="is a folder")
    _refused(finished, "report", "-f", "md", "-o", str(tmp_path / "missing" / "r.md"), says="does not exist")
    _refused(finished, "report", "--plot", str(tmp_path / "missing" / "p.png"), says="does not exist")
    _refused(finished, "report", "--plot", str(tmp_path / "folder"), says="is a folder")
    assert (_listing(tmp_path), _listing(finished)) == before
    assert not (tmp_path / "missing").exists() and os.listdir(tmp_path / "folder") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
def test_an_unwritable_folder_is_refused(finished, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _refused(finished, "export", "-o", str(locked / "r.csv"), says="cannot be written")


def test_a_symlink_is_followed_and_the_file_keeps_its_mode(finished, tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    corral_cli(finished, "export", "-f", "csv", "-o", str(link), check=0)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text().startswith("run_id") and len(real.read_text().splitlines()) == 5
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    corral_cli(finished, "status", "-f", "csv", "-o", str(link), check=0)
    assert real.read_text().startswith("stage,") and stat.S_IMODE(real.stat().st_mode) == 0o640
    assert _listing(tmp_path) == {"real.csv", "link.csv"}


def test_a_new_output_file_gets_the_usual_mode_and_no_temporary_file_is_left(finished, tmp_path):
    for command, name in ((["export"], "r.jsonl"), (["report", "-f", "md"], "r.md"), (["runs", "-f", "csv"],
                                                                                    "runs.csv")):
        corral_cli(finished, *command, "-o", str(tmp_path / name), check=0)
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o666 & ~_umask(), (name, oct(mode))
    pytest.importorskip("matplotlib")
    corral_cli(finished, "report", "--plot", str(tmp_path / "p.png"), check=0)
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")
    assert _listing(tmp_path) == {"r.jsonl", "r.md", "runs.csv", "p.png"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
