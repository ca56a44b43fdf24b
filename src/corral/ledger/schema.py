"""The ledger's tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Times are seconds since the epoch (floats); JSON columns hold text written by the ledger itself.
Every string is unbounded text (schema 3): a state, a status, an error class or an id never has to
fit a width chosen in advance, and PostgreSQL stores text and varchar alike.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, Table, Text, text

from corral.ledger.location import SCHEMA_VERSION  # noqa: F401 - the version is known without SQLAlchemy

metadata = MetaData()

# A surrogate key that is a real autoincrementing BIGINT on PostgreSQL and ROWID on SQLite.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

meta = Table(
    "corral_meta", metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

runs = Table(
    "runs", metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("campaign", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("status", Text, nullable=False),
    Column("config", Text, nullable=False),
    Column("config_hash", Text, nullable=False),
    Column("selection", Text, nullable=False),
    Column("code_revision", Text),
    Column("host", Text),
    Column("versions", Text),
    Column("tags", Text),
    Column("notes", Text),
    Column("item_count", Integer, nullable=False),
    Index("ix_runs_name", "name", "created_at"),
)

items = Table(
    "items", metadata,
    Column("run_id", Text, primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("item_id", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("params", Text, nullable=False),
    sqlite_with_rowid=False,
    # Identities are unique within a run by construction (checked when items are expanded); an
    # index on the random hash would cost a third of the time to create a run of a million items.
)

tasks = Table(
    "tasks", metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("run_id", Text, nullable=False),
    Column("stage", Text, nullable=False),
    Column("item_idx", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    # ``attempts`` when `corral retry` last sent the task back: its retries count from there
    Column("attempt_base", Integer, nullable=False, default=0, server_default=text("0")),
    Column("ready_at", Float),
    Column("not_before", Float),
    Column("submission_id", BigInteger),
    Column("backend", Text),
    Column("queued_at", Float),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("result", Text),
    Column("error_class", Text),
    Column("error_message", Text),
    Column("host", Text),
    Column("tokens_in", BigInteger),
    Column("tokens_out", BigInteger),
    Column("cost", Float),
    Column("info", Text),
    # One index serves status counts (run, stage, state) and the dependency lookups by item
    # (run, stage, state IN ..., item): a second index per task would slow run creation by a third.
    Index("ix_tasks_state", "run_id", "stage", "state", "item_idx"),
    Index("ix_tasks_submission", "submission_id", sqlite_where=text("submission_id IS NOT NULL"),
          postgresql_where=text("submission_id IS NOT NULL")),
)

submissions = Table(
    "submissions", metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("run_id", Text, nullable=False),
    Column("stage", Text, nullable=False),
    Column("backend", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False, unique=True),
    Column("remote_id", Text),
    Column("state", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("submitted_at", Float),
    Column("finished_at", Float),
    Column("task_count", Integer, nullable=False),
    Column("info", Text),
    # The controller that polls it (schema 2); NULL: any controller (ledgers from before).
    Column("controller", Text),
    Index("ix_submissions_state", "run_id", "state"),
)

# Controllers sharing a ledger (schema 2): one row each, its lease renewed every tick.
controllers = Table(
    "controllers", metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text),
    Column("pid", Integer),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

events = Table(
    "events", metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("stage", Text),
    Column("task_id", BigInteger),
    Column("submission_id", BigInteger),
    Column("from_state", Text),
    Column("to_state", Text),
    Column("count", Integer),
    Column("message", Text),
    Index("ix_events_run", "run_id", "at"),
)

# What the engine and the backends learned in a run (schema 4): task durations, a cluster's job
# limit, failed nodes, whether a pilot went out. One JSON value per key; ``scope`` is
# ``stage:<name>`` or ``backend:<name>``.
learned = Table(
    "learned", metadata,
    Column("run_id", Text, primary_key=True),
    Column("scope", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)
