"""Where a ledger is and which schema version this corral writes: what can be known without
SQLAlchemy (``corral report`` on a SQLite ledger reads it with the standard library alone)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from corral.paths import file_problem

SCHEMA_VERSION = 5
#: the tables of a ledger at this version (ledger/schema.py defines them; readers without SQLAlchemy check these)
TABLES = ("controllers", "corral_meta", "events", "items", "learned", "runs", "submissions", "tasks")

#: the ledgers corral can keep, as a message lists them
VALID_LEDGERS = ("a SQLite file (a path, or sqlite:///ABSOLUTE/PATH) or a PostgreSQL database "
                 "(postgresql://USER@HOST[:PORT]/DATABASE)")
POSTGRES_DRIVERS = ("", "psycopg", "psycopg2")


def default_url(root: Path, workdir: str = ".corral", configured: str | None = None) -> str:
    """The ledger URL: ``CORRAL_LEDGER``, then the campaign's ``ledger:``, then ``.corral/ledger.db``."""
    chosen = os.environ.get("CORRAL_LEDGER") or configured
    if chosen:
        if "://" in chosen:
            return normalise_url(chosen)
        path = _expanded(chosen)
        return f"sqlite:///{(root / path) if not path.is_absolute() else path}"
    return f"sqlite:///{root / workdir / 'ledger.db'}"


def _expanded(path: str) -> Path:
    try:
        return Path(path).expanduser()
    except RuntimeError:  # ~user of no such user
        from corral.errors import LedgerError

        raise LedgerError(f"the ledger {path!r} starts with {path.split('/', 1)[0]!r}, which names no user of "
                          f"this machine; give a file path or a URL") from None


def normalise_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def campaign_ledger_url(root: Path, workdir: str, configured: str | None, explicit: str | None = None) -> str:
    """An explicit ledger (``--ledger``, the API): a URL, or a SQLite file path relative to here;
    else ``default_url``."""
    for given in (explicit, configured):
        if given and "\x00" in given:
            from corral.errors import LedgerError

            raise LedgerError(f"the ledger {given!r} holds a NUL character; give a file path or a URL without one")
    if explicit:
        return normalise_url(explicit) if "://" in explicit else f"sqlite:///{_expanded(explicit).resolve()}"
    return default_url(root, workdir, configured)


def driver_module(url: str) -> str | None:
    """The module a ledger URL's driver is imported from, where it is not in the standard library."""
    scheme = url.split("://", 1)[0]
    if scheme.startswith("postgresql"):
        return {"postgresql": "psycopg2", "postgresql+psycopg2": "psycopg2"}.get(scheme, "psycopg")
    return None


def url_source(configured: str | None, explicit: str | None) -> str:
    """Where the ledger URL of a campaign comes from, as a user would name it."""
    if explicit:
        return "--ledger"
    if os.environ.get("CORRAL_LEDGER"):
        return "CORRAL_LEDGER"
    return "ledger" if configured else "the default ledger"


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url.split("sqlite:///", 1)[1])
    return None


def url_problem(url: str) -> str | None:
    """Why ``url`` (after ``normalise_url``) cannot be a ledger, or None. Nothing is opened."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        return "is not a URL"
    kind, _, driver = scheme.partition("+")
    if kind == "sqlite":
        if driver:
            return f"names the SQLite driver {driver!r}; corral uses the standard library's"
        if rest == "/:memory:":
            return None
        if not rest.startswith("/") or not rest.strip("/"):
            return "names no SQLite file"
        problem = file_problem(Path(rest[1:]))
        return f"names a SQLite file that {problem}" if problem else None
    if kind in ("postgresql", "postgres"):
        if driver not in POSTGRES_DRIVERS:
            return f"names the PostgreSQL driver {driver!r}; corral works with psycopg (3) or psycopg2"
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            return f"cannot be read: {exc}"
        if not parts.path.strip("/"):
            return "names no database (postgresql://USER@HOST/DATABASE)"
        return None
    return f"uses {scheme!r}, which is not a database corral can keep a ledger in"
