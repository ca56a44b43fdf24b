"""Shared pytest fixtures.

PostgreSQL: `make test` starts a throwaway server (scripts/pg-test-server) and
exports CORRAL_TEST_PG_URL. Without it, PostgreSQL tests are skipped, or fail
when CI=true.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

# A developer's own ledger must not leak into the tests; `campaign_ledger` sets it per test.
os.environ.pop("CORRAL_LEDGER", None)


@pytest.fixture(scope="session")
def cluster() -> str:
    """URL of the test SLURM cluster (``slurm://NODE``)."""
    url = os.environ.get("CORRAL_TEST_SLURM_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CORRAL_TEST_SLURM_URL is not set but CI=true: the SLURM tests must run in CI")
        pytest.skip("SLURM tests need a cluster: run `make test` (as root on Debian/Ubuntu it starts one with "
                    "scripts/slurm-local-cluster) or set CORRAL_TEST_SLURM_URL")
    return url


@pytest.fixture(scope="session")
def pg_url() -> str:
    """SQLAlchemy URL of the test PostgreSQL server (database corral_test)."""
    url = os.environ.get("CORRAL_TEST_PG_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CORRAL_TEST_PG_URL is not set but CI=true: PostgreSQL tests must run in CI")
        pytest.skip("PostgreSQL tests need CORRAL_TEST_PG_URL; run `make test` to start a server")
    return url


@contextlib.contextmanager
def fresh_database(pg_url: str) -> Iterator[str]:
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


@pytest.fixture
def pg_fresh_url(pg_url: str) -> Iterator[str]:
    """URL of a new, empty database on the test server; dropped afterwards."""
    with fresh_database(pg_url) as url:
        yield url


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
    env = dict(os.environ)
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


def pytest_generate_tests(metafunc) -> None:
    """``campaign_ledger`` (usually through ``pytestmark = pytest.mark.usefixtures(...)``) runs a test
    on both ledgers; ``@pytest.mark.sqlite_only`` keeps a test about the SQLite file to that one."""
    if "ledger_kind" not in metafunc.fixturenames:
        return
    kinds = [pytest.param("sqlite", id="sqlite")]
    if metafunc.definition.get_closest_marker("sqlite_only") is None:
        kinds.append(pytest.param("postgres", id="postgres", marks=pytest.mark.postgres))
    metafunc.parametrize("ledger_kind", kinds, indirect=True, scope="module")


@pytest.fixture(scope="module")
def ledger_kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def module_ledger(ledger_kind: str, request) -> Iterator[str]:
    """For a module-scoped campaign shared by several tests: one ledger for the module, "sqlite"
    (the file beside each campaign) or a PostgreSQL database's URL, in CORRAL_LEDGER meanwhile."""
    if ledger_kind == "sqlite":
        yield "sqlite"
        return
    with fresh_database(request.getfixturevalue("pg_url")) as url, pytest.MonkeyPatch.context() as patch:
        patch.setenv("CORRAL_LEDGER", url)
        yield url


@pytest.fixture
def campaign_ledger(ledger_kind: str, request, monkeypatch) -> str:
    """Every campaign of the test keeps its ledger in the default SQLite file beside it, or in one
    fresh PostgreSQL database (CORRAL_LEDGER, which the CLI and the API read); a test that uses a
    module-scoped campaign shares ``module_ledger``'s. Returns "sqlite" or the URL."""
    if ledger_kind == "sqlite":
        return "sqlite"
    if "module_ledger" in request.fixturenames:
        return request.getfixturevalue("module_ledger")
    url = request.getfixturevalue("pg_fresh_url")
    monkeypatch.setenv("CORRAL_LEDGER", url)
    return url


def assert_no_ledger(folder: Path) -> None:
    """Nothing was written: no SQLite file beside the campaign, and no run in a PostgreSQL ledger."""
    assert not (folder / ".corral" / "ledger.db").exists()
    url = os.environ.get("CORRAL_LEDGER")
    if url and url.startswith("postgresql"):
        from sqlalchemy import create_engine, inspect, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                if inspect(conn).has_table("runs"):
                    assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 0
        finally:
            engine.dispose()


def query_ledger(folder: Path, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """Rows of one SQL query (``:name`` parameters) on the ledger of the campaign in ``folder``,
    whichever ledger the test runs on."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    import yaml as _yaml

    configured = (_yaml.safe_load((folder / "corral.yaml").read_text()) or {}).get("ledger") \
        if (folder / "corral.yaml").exists() else None
    url = os.environ.get("CORRAL_LEDGER") or configured or f"sqlite:///{folder / '.corral' / 'ledger.db'}"
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params or {})]
    finally:
        engine.dispose()


def rounded(value):
    """Floats to 12 significant digits, inside dicts and lists: SQL and Python sum in different orders."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value
