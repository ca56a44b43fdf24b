"""A ledger URL corral cannot open is refused with exit 2 before anything is written, naming the URL,
where it was given (``--ledger``, ``CORRAL_LEDGER`` or the campaign's ``ledger:``) and the valid forms."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import corral_cli, write_campaign, write_module

VALID = "expected: a SQLite file (a path, or sqlite:///ABSOLUTE/PATH) or a PostgreSQL database"

CAMPAIGN = {"name": "urls", "items": {"grid": {"x": [1, 2]}}, "stages": {"work": {"call": "m:f"}},
            "backends": {"local": {"workers": 1, "gpus": "none"}}}


def _folder(tmp_path: Path, ledger: str | None = None) -> Path:
    folder = tmp_path / "camp"
    write_module(folder, "m", "def f(item, ctx):\n    return {'x': item['x']}\n")
    write_campaign(folder, {**CAMPAIGN, **({"ledger": ledger} if ledger is not None else {})})
    return folder


def _server_without_database() -> str:
    url = os.environ.get("CORRAL_TEST_PG_URL", "postgresql+psycopg://corral@127.0.0.1:55432/corral_test")
    return url.rsplit("/", 1)[0]


BAD_URLS = {
    "sqlite://": "names no SQLite file",
    "sqlite:///": "names no SQLite file",
    "http://example.org/ledger": "uses 'http'",
    "foo://bar": "uses 'foo'",
    "://": "is not a URL",
    "mysql://user@db.example.org/corral": "uses 'mysql'",
    "postgresql://user@db.example.org": "names no database",
    "postgresql://user@db.example.org/": "names no database",
    "postgresql+asyncpg://user@db.example.org/corral": "driver 'asyncpg'",
}


def _assert_refused(proc, url_shown: str, says: str, where: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and VALID in proc.stderr and where in proc.stderr, proc.stderr
    assert url_shown in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "postgres extra" not in proc.stderr
    assert "pip install" not in proc.stderr


@pytest.mark.parametrize("url", list(BAD_URLS))
def test_an_unusable_ledger_url_is_refused_wherever_it_is_given(tmp_path: Path, url: str):
    says = BAD_URLS[url]
    shown = url.split("://")[0]
    folder = _folder(tmp_path)
    _assert_refused(corral_cli(folder, "run", "-q", "--ledger", url), shown, says, "--ledger")
    _assert_refused(corral_cli(folder, "check", env={"CORRAL_LEDGER": url}), shown, says, "CORRAL_LEDGER")
    folder = _folder(tmp_path, ledger=url)
    _assert_refused(corral_cli(folder, "status"), shown, says, "corral.yaml: ledger")
    assert not (folder / ".corral").exists()


@pytest.mark.postgres
def test_a_postgres_server_without_a_database_is_refused(tmp_path: Path):
    url = _server_without_database()
    folder = _folder(tmp_path)
    _assert_refused(corral_cli(folder, "run", "-q", "--ledger", url), "postgresql", "names no database", "--ledger")
    _assert_refused(corral_cli(folder, "run", "-q", "--ledger", url + "/"), "postgresql", "names no database",
                    "--ledger")
    assert not (folder / ".corral").exists()


def test_a_ledger_path_that_is_a_device_a_folder_or_in_proc_is_refused(tmp_path: Path):
    folder = _folder(tmp_path)
    (tmp_path / "a-folder").mkdir()
    cases = {str(tmp_path / "a-folder"): "is a folder", "/proc/corral-ledger.db": "inside the system folder /proc",
             f"sqlite:///{tmp_path / 'camp' / 'm.py' / 'ledger.db'}": "which is a regular file"}
    if os.geteuid() == 0:
        device = tmp_path / "null"
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        cases[str(device)] = "is a device"
    before = sorted(os.listdir(tmp_path))
    for ledger, says in cases.items():
        for command in (["check"], ["run", "-q"]):
            _assert_refused(corral_cli(folder, *command, "--ledger", ledger), "sqlite:///", says, "--ledger")
        with_key = _folder(tmp_path, ledger=ledger)
        _assert_refused(corral_cli(with_key, "run", "-q"), "sqlite:///", says, "corral.yaml: ledger")
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(tmp_path / "a-folder") == []
    assert not (folder / ".corral").exists()
    if os.geteuid() == 0:
        assert stat.S_ISCHR(os.stat(tmp_path / "null").st_mode)
