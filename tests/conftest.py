"""Shared pytest fixtures.

PostgreSQL: `make test` starts a throwaway server (scripts/pg-test-server) and
exports CORRAL_TEST_PG_URL. Without it, PostgreSQL tests are skipped, or fail
when CI=true.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def pg_url() -> str:
    """SQLAlchemy URL of the test PostgreSQL server (database corral_test)."""
    url = os.environ.get("CORRAL_TEST_PG_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CORRAL_TEST_PG_URL is not set but CI=true: PostgreSQL tests must run in CI")
        pytest.skip("PostgreSQL tests need CORRAL_TEST_PG_URL; run `make test` to start a server")
    return url


@pytest.fixture
def pg_fresh_url(pg_url: str) -> Iterator[str]:
    """URL of a new, empty database on the test server; dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    name = f"corral_t_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            # template0: never connected to, so parallel creations don't clash.
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
        try:
            yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# -- helpers for writing campaigns and running the CLI -------------------------------------------------

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402


def write_campaign(folder: Path, config: dict[str, Any] | str, name: str = "corral.yaml") -> Path:
    """Write a campaign file (a dict is dumped as YAML, a string is dedented) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(config, str):
        path.write_text(textwrap.dedent(config).lstrip("\n"))
    else:
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_module(folder: Path, name: str, source: str) -> Path:
    """Write ``name.py`` (dedented) beside the campaign file; stale bytecode is removed."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source).lstrip("\n"))
    cache = folder / "__pycache__"
    if cache.exists():
        for pyc in cache.glob(f"{name}.*.pyc"):
            pyc.unlink()
    return path


def campaign_dict(stages: dict[str, Any], items: dict[str, Any] | None = None, name: str = "t",
                  workers: int = 2, **extra: Any) -> dict[str, Any]:
    """A small campaign: ``items`` defaults to a grid of x in 0..3."""
    config: dict[str, Any] = {"name": name, "items": items or {"grid": {"x": {"range": [0, 4]}}},
                              "stages": stages, "backends": {"local": {"workers": workers, "gpus": "none"}}}
    config.update(extra)
    return config


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_LEDGER"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def corral_cli(cwd: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None,
               check: int | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m corral ARGS`` in ``cwd``; ``check`` asserts the exit code."""
    proc = subprocess.run([sys.executable, "-m", "corral", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=cli_env(env))
    if check is not None:
        assert proc.returncode == check, (f"corral {' '.join(args)} exited {proc.returncode}, wanted {check}\n"
                                          f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def open_run(path: Path, run_id: str | None = None, **kwargs: Any):
    """(campaign, run) through the Python API; close the campaign when done."""
    import corral

    campaign = corral.open(str(path), **kwargs)
    return campaign, campaign.run(run_id)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_workers(folder: Path) -> list[int]:
    """PIDs of worker processes of campaigns under ``folder`` that still hold their submission lock."""
    import fcntl

    pids = []
    for info in folder.glob("**/.corral/runs/*/submissions/*/worker.json"):
        lock = info.with_name("lock")
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pids.append(int(json.loads(info.read_text())["pid"]))
            except (ValueError, KeyError, OSError):
                pass
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return pids


def wait_for_workers(folder: Path, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not live_workers(folder):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(autouse=True)
def _reap_workers(tmp_path: Path) -> Iterator[None]:
    """Workers outlive their controller by design; stop the ones a test left behind (by pid)."""
    yield
    pids = live_workers(tmp_path)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in live_workers(tmp_path) if _pid_alive(pid)]
            if pids:
                time.sleep(0.05)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request, tmp_path: Path) -> str:
    """A ledger URL: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger' / 'ledger.db'}"
    return request.getfixturevalue("pg_fresh_url")
