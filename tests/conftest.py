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
