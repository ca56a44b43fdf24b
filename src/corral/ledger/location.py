"""Where a ledger is and which schema version this corral writes: what can be known without
SQLAlchemy (``corral report`` on a SQLite ledger reads it with the standard library alone)."""

from __future__ import annotations

import os
from pathlib import Path

SCHEMA_VERSION = 2


def default_url(root: Path, workdir: str = ".corral", configured: str | None = None) -> str:
    """The ledger URL: ``CORRAL_LEDGER``, then the campaign's ``ledger:``, then ``.corral/ledger.db``."""
    chosen = os.environ.get("CORRAL_LEDGER") or configured
    if chosen:
        if "://" in chosen:
            return normalise_url(chosen)
        path = Path(chosen).expanduser()
        return f"sqlite:///{(root / path) if not path.is_absolute() else path}"
    return f"sqlite:///{root / workdir / 'ledger.db'}"


def normalise_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def campaign_ledger_url(root: Path, workdir: str, configured: str | None, explicit: str | None = None) -> str:
    """An explicit ledger (``--ledger``, the API): a URL, or a SQLite file path relative to here;
    else ``default_url``."""
    if explicit:
        return normalise_url(explicit) if "://" in explicit else f"sqlite:///{Path(explicit).expanduser().resolve()}"
    return default_url(root, workdir, configured)


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url.split("sqlite:///", 1)[1])
    return None
