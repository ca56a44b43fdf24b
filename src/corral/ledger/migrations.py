"""Schema versions. Version 1 creates everything; later versions append a function here."""

from __future__ import annotations

from typing import Callable

from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection, Engine

from corral.errors import LedgerError
from corral.ledger import schema
from corral.ledger.location import TABLES


def _v2_controllers(conn: Connection) -> None:
    """Submissions name the controller that polls them; controllers hold leases."""
    columns = {c["name"] for c in inspect(conn).get_columns("submissions")}
    if "controller" not in columns:
        conn.exec_driver_sql("ALTER TABLE submissions ADD COLUMN controller TEXT")
    schema.controllers.create(conn, checkfirst=True)


def _v3_text_columns(conn: Connection) -> None:
    """Every string column is unbounded text: PostgreSQL refused a run's end as
    ``finished_with_failures`` in a 16-character column. SQLite never enforced a width."""
    if conn.dialect.name != "postgresql":
        return
    rows = conn.exec_driver_sql(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND data_type = 'character varying' AND table_name IN "
        "('corral_meta', 'runs', 'items', 'tasks', 'submissions', 'controllers', 'events')").all()
    for table, column in rows:
        conn.exec_driver_sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE TEXT')


def _v4_learned(conn: Connection) -> None:
    """What the engine and the backends learn is kept per run, so `corral tick` from cron decides
    as a long-lived `corral run` does."""
    schema.learned.create(conn, checkfirst=True)


def _v5_attempt_base(conn: Connection) -> None:
    """`corral retry` continues a task's attempt numbers; the retries it allows count from the retry."""
    columns = {c["name"] for c in inspect(conn).get_columns("tasks")}
    if "attempt_base" not in columns:
        conn.exec_driver_sql("ALTER TABLE tasks ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0")


# Version 1 creates the current tables, so on a new ledger the later steps find nothing to do.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: lambda conn: schema.metadata.create_all(conn),
    2: _v2_controllers,
    3: _v3_text_columns,
    4: _v4_learned,
    5: _v5_attempt_base,
}


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("corral_meta"):
        return 0
    value = conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 0


def migrate(engine: Engine, *, create: bool = True) -> int:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7243581190)")
        version = current_version(conn)
        if version > schema.SCHEMA_VERSION:
            raise LedgerError(f"this ledger has schema version {version}, newer than this corral "
                              f"understands ({schema.SCHEMA_VERSION}); upgrade corral")
        if version == schema.SCHEMA_VERSION:
            _check_tables(conn)
            return version
        if version == 0 and not create:
            raise LedgerError("the database holds no corral ledger")
        for target in range(version + 1, schema.SCHEMA_VERSION + 1):
            MIGRATIONS[target](conn)
        conn.execute(schema.meta.delete().where(schema.meta.c.key == "schema_version"))
        conn.execute(schema.meta.insert(), [{"key": "schema_version", "value": str(schema.SCHEMA_VERSION)}])
        return schema.SCHEMA_VERSION


def _check_tables(conn: Connection) -> None:
    """A ledger of the current version missing a table was damaged by hand: say so at once, not at
    the first query that needs the table."""
    present = set(inspect(conn).get_table_names())
    missing = sorted(set(TABLES) - present)
    if missing:
        raise LedgerError(f"the ledger is damaged: its table(s) {', '.join(missing)} are missing; restore it "
                          "from a backup, or start a new one with --ledger")
