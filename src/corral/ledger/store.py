"""The ledger: one SQLAlchemy engine, its schema version, its locks, and the queries every layer needs."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import random
import threading
import time
from pathlib import Path
from urllib.parse import quote
from typing import Any, Iterable, Iterator, Sequence

from sqlalchemy import create_engine, event, func, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from corral.errors import LedgerError
from corral.ledger import schema
from corral.ledger.location import VALID_LEDGERS, default_url, normalise_url, url_problem  # noqa: F401
from corral.ledger.migrations import migrate
from corral.ledger.values import dumps, loads  # noqa: F401 - part of this module
from corral.states import OPEN_SUBMISSIONS, RunStatus, TaskState

INSERT_CHUNK = 20_000


class Ledger:
    """A handle on one ledger database."""

    def __init__(self, url: str, *, create: bool = True):
        self.url = normalise_url(url)
        problem = url_problem(self.url)
        if problem:
            raise LedgerError(f"the ledger {self.display_url} {problem}\n  expected: {VALID_LEDGERS}")
        self.is_sqlite = self.url.startswith("sqlite")
        self.path: Path | None = None
        if self.is_sqlite:
            self.path = Path(self.url.split("sqlite:///", 1)[1]) if ":memory:" not in self.url else None
            if self.path is not None:
                if not create and not self.path.exists():
                    raise LedgerError(f"no ledger at {self.path} (nothing has run here yet)")
                self.path.parent.mkdir(parents=True, exist_ok=True)
        # A ledger on a read-only disk (or in a folder this user cannot write) can still be read.
        self.read_only = self.path is not None and self.path.exists() and not (
            os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK))
        self.engine = self._make_engine()
        for attempt in range(20):
            try:
                migrate(self.engine, create=create)
                break
            except OperationalError as exc:
                # Two processes creating one SQLite file at once: switching it to WAL can meet a
                # lock SQLite reports at once instead of waiting (it would deadlock). Try again.
                if not (self.is_sqlite and "locked" in str(exc.orig) and attempt < 19):
                    raise LedgerError(f"cannot open the ledger {self.display_url}: {exc.orig}") from None
                time.sleep(0.05 + random.random() * 0.1)
            except SQLAlchemyError as exc:
                raise LedgerError(f"cannot open the ledger {self.display_url}: {exc}") from None

    @property
    def display_url(self) -> str:
        if "@" in self.url:
            scheme, rest = self.url.split("://", 1)
            return f"{scheme}://***@{rest.split('@', 1)[1]}"
        return self.url

    def _make_engine(self) -> Engine:
        if self.is_sqlite and self.read_only:
            # immutable: SQLite needs neither a lock nor the -shm file it could not create
            engine = create_engine(f"sqlite:///file:{quote(str(self.path))}?mode=ro&immutable=1&uri=true",
                                   connect_args={"check_same_thread": False})

            @event.listens_for(engine, "connect")
            def _connect_read_only(dbapi_connection, _record):
                dbapi_connection.isolation_level = None

            @event.listens_for(engine, "begin")
            def _begin_read_only(conn):
                conn.exec_driver_sql("BEGIN")

            return engine
        if self.is_sqlite:
            engine = create_engine(self.url, connect_args={"timeout": 120, "check_same_thread": False})

            @event.listens_for(engine, "connect")
            def _connect(dbapi_connection, _record):
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA page_size=16384")  # takes effect only when the file is new
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA busy_timeout=120000")
                cursor.execute("PRAGMA cache_size=-65536")
                cursor.close()

            @event.listens_for(engine, "begin")
            def _begin(conn):
                mode = "BEGIN" if conn.get_execution_options().get("corral_read") else "BEGIN IMMEDIATE"
                conn.exec_driver_sql(mode)

            return engine
        try:
            return create_engine(self.url, pool_pre_ping=True, pool_size=4, max_overflow=4)
        except ModuleNotFoundError as exc:
            raise LedgerError(f"the ledger {self.display_url} needs the driver {exc.name!r}: "
                              "pip install 'corral[postgres]'") from None

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions and locks -------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        if self.read_only:
            raise LedgerError(f"the ledger {self.path} is read-only (its file or folder cannot be written): "
                              "status, export, report and logs read it; run, tick, retry and cancel need "
                              "it writable")
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            problem = str(exc.orig)
            if "full" in problem or "readonly" in problem or "disk I/O" in problem:
                where = self.path.parent if self.path is not None else self.display_url
                raise LedgerError(f"cannot write the ledger {self.display_url}: {problem} (on {where}); "
                                  "what it recorded before is kept: free space or make it writable, then "
                                  "run again") from None
            raise

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction that sees one snapshot of the ledger, as SQLite's always does: on
        PostgreSQL each statement of a READ COMMITTED transaction could see another controller's
        commit that the statement before it did not (a run's tasks before a cancel, its status after)."""
        options: dict[str, Any] = {"corral_read": True}
        if not self.is_sqlite:
            options["isolation_level"] = "REPEATABLE READ"
        with self.engine.connect().execution_options(**options) as conn:
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def tick_lock(self, run_id: str, *, wait: bool = False) -> Iterator[bool]:
        """Hold the lock that lets one controller at a time plan a run. Yields whether it was taken.

        SQLite: an ``flock`` on a file beside the database (released by the OS if the holder dies).
        PostgreSQL: a session advisory lock on a dedicated connection (released when it closes).
        """
        if self.is_sqlite:
            if self.path is None:
                yield True
                return
            if self.read_only:
                with self.write():  # says why nothing can be planned
                    pass
            run_hash = hashlib.sha256(run_id.encode()).hexdigest()[:12]
            lock_path = self.path.with_name(f"{self.path.name}.{run_hash}.lock")
            handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole block
            try:
                flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
                try:
                    fcntl.flock(handle.fileno(), flags)
                except BlockingIOError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            finally:
                handle.close()
            return
        key = int.from_bytes(hashlib.sha256(f"corral:{run_id}".encode()).digest()[:8], "big", signed=True)
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if wait:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                got = True
            else:
                got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    # -- runs ---------------------------------------------------------------------

    def insert_run(self, conn: Connection, row: dict[str, Any]) -> None:
        conn.execute(schema.runs.insert(), [row])

    def insert_items_and_tasks(self, conn: Connection, run_id: str, items: Iterable[Any],
                               stages: Sequence[tuple[str, str, bool, str]], now: float) -> int:
        """Insert items and one task per (item, per-item stage) plus one per ``per: all`` stage.

        ``stages`` lists (name, per, has_needs, backend). Returns the number of items.
        """
        item_stages = [(s, TaskState.WAITING if needs else TaskState.PENDING, None if needs else now, b)
                       for s, per, needs, b in stages if per != "all"]
        # Bulk rows go straight to the driver's executemany (the SQL layer's per-row work would
        # dominate the time to create a run of a million items), and are built in a second
        # thread while the driver writes the previous chunk (SQLite releases the GIL while it works).
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        item_sql = f"INSERT INTO items (run_id, idx, item_id, key, params) VALUES ({', '.join([mark] * 5)})"
        task_sql = ("INSERT INTO tasks (run_id, stage, item_idx, state, attempts, ready_at, backend) "
                    f"VALUES ({', '.join([mark] * 7)})")
        chunks: queue.Queue = queue.Queue(maxsize=3)

        def produce() -> None:
            try:
                item_rows: list[tuple] = []
                task_rows: list[tuple] = []
                for item in items:
                    index = item.index
                    item_rows.append((run_id, index, item.item_id, item.key, item.canonical or dumps(item.params)))
                    for stage, state, ready_at, backend in item_stages:
                        task_rows.append((run_id, stage, index, state, 0, ready_at, backend))
                    if len(item_rows) >= INSERT_CHUNK:
                        chunks.put((item_rows, task_rows))
                        item_rows, task_rows = [], []
                chunks.put((item_rows, task_rows))
                chunks.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
                chunks.put(exc)

        producer = threading.Thread(target=produce, name="corral-items", daemon=True)
        producer.start()
        cursor = conn.connection.dbapi_connection.cursor()
        count = 0
        try:
            while True:
                chunk = chunks.get()
                if chunk is None:
                    break
                if isinstance(chunk, BaseException):
                    raise chunk
                item_rows, task_rows = chunk
                if item_rows:
                    cursor.executemany(item_sql, item_rows)
                    count += len(item_rows)
                if task_rows:
                    cursor.executemany(task_sql, task_rows)
        finally:
            cursor.close()
            while producer.is_alive():
                try:
                    chunks.get(timeout=0.1)
                except queue.Empty:
                    pass
            producer.join()
        for stage, per, has_needs, backend in stages:
            if per == "all":
                conn.execute(schema.tasks.insert(), [{
                    "run_id": run_id, "stage": stage, "item_idx": -1, "attempts": 0, "backend": backend,
                    "state": TaskState.WAITING if has_needs else TaskState.PENDING, "ready_at": None if has_needs else now}])
        return count

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self.read() as conn:
            row = conn.execute(select(schema.runs).where(schema.runs.c.id == run_id)).mappings().first()
        return dict(row) if row else None

    def find_runs(self, name: str | None = None, prefix: str | None = None) -> list[dict[str, Any]]:
        query = select(schema.runs).order_by(schema.runs.c.created_at.desc())
        if name is not None:
            query = query.where(schema.runs.c.name == name)
        if prefix is not None:
            # Compared as text, not with LIKE: "_" and "%" are characters of an id, not wildcards, and
            # case counts on SQLite as on PostgreSQL.
            query = query.where(func.substr(schema.runs.c.id, 1, len(prefix)) == prefix)
        with self.read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def run_id_exists(self, conn: Connection, run_id: str) -> bool:
        return conn.execute(select(schema.runs.c.id).where(schema.runs.c.id == run_id)).first() is not None

    def set_run_status(self, conn: Connection, run_id: str, status: str, now: float, *,
                       only_if: tuple[str, float] | None = None) -> bool:
        """Set a run's status; with ``only_if`` (a ``run_stamp``), only if the row has not changed
        since that stamp was read. Returns whether it was set."""
        values: dict[str, Any] = {"status": status, "updated_at": now}
        values["finished_at"] = None if status == RunStatus.ACTIVE else now
        runs = schema.runs
        query = update(runs).where(runs.c.id == run_id)
        if only_if is not None:
            query = query.where(runs.c.status == only_if[0], runs.c.updated_at == only_if[1])
        return conn.execute(query.values(**values)).rowcount > 0

    def run_stamp(self, conn: Connection, run_id: str) -> tuple[str, float] | None:
        """A run's status and when its row last changed: what a controller compares between ticks."""
        row = conn.execute(select(schema.runs.c.status, schema.runs.c.updated_at)
                           .where(schema.runs.c.id == run_id)).first()
        return (row[0], row[1]) if row else None

    # -- counts ---------------------------------------------------------------------

    def counts(self, run_id: str, conn: Connection | None = None) -> dict[str, dict[str, int]]:
        """Tasks per stage and state, from the (run_id, stage, state) index."""
        t = schema.tasks
        query = (select(t.c.stage, t.c.state, func.count()).where(t.c.run_id == run_id)
                 .group_by(t.c.stage, t.c.state))
        out: dict[str, dict[str, int]] = {}
        if conn is None:
            with self.read() as own:
                rows = own.execute(query).all()
        else:
            rows = conn.execute(query).all()
        for stage, state, n in rows:
            out.setdefault(stage, {})[state] = n
        return out

    def any_in_states(self, conn: Connection, run_id: str, stages: Sequence[str],
                      states: Sequence[str]) -> bool:
        t = schema.tasks
        for stage in stages:
            hit = conn.execute(select(t.c.id).where(t.c.run_id == run_id, t.c.stage == stage,
                                                    t.c.state.in_(list(states))).limit(1)).first()
            if hit:
                return True
        return False

    def count_states(self, conn: Connection, run_id: str, stage: str, states: Sequence[str],
                     cap: int = 1_000_000) -> int:
        t = schema.tasks
        inner = select(t.c.id).where(t.c.run_id == run_id, t.c.stage == stage, t.c.state.in_(states)).limit(cap)
        return conn.execute(select(func.count()).select_from(inner.subquery())).scalar_one()

    def count_ready(self, conn: Connection, run_id: str, stage: str, now: float) -> int:
        t = schema.tasks
        inner = select(t.c.id).where(
            t.c.run_id == run_id, t.c.stage == stage, t.c.state == TaskState.PENDING,
            (t.c.not_before.is_(None)) | (t.c.not_before <= now)).limit(1_000_000)
        return conn.execute(select(func.count()).select_from(inner.subquery())).scalar_one()

    def ready_tasks(self, conn: Connection, run_id: str, stage: str, now: float, limit: int, *,
                    claim: bool = False) -> list[dict[str, Any]]:
        """Pending tasks of a stage whose backoff has ended, oldest first, with their items. With
        ``claim``, the rows stay locked until ``conn`` commits and other controllers of a shared
        ledger skip them (PostgreSQL's FOR UPDATE SKIP LOCKED; SQLite has one writer at a time)."""
        t, i = schema.tasks, schema.items
        ready = (t.c.run_id == run_id, t.c.stage == stage, t.c.state == TaskState.PENDING.value,
                 (t.c.not_before.is_(None)) | (t.c.not_before <= now))
        query = (select(t.c.id, t.c.item_idx, t.c.attempts, t.c.ready_at, t.c.error_class, i.c.item_id, i.c.key,
                        i.c.params)
                 .select_from(t.outerjoin(i, (i.c.run_id == t.c.run_id) & (i.c.idx == t.c.item_idx))))
        if claim:
            # The rows are locked by a query of tasks alone: locking through the join to items let
            # PostgreSQL choose plans that took seconds per call once the ledger held other runs.
            ids = [r[0] for r in conn.execute(select(t.c.id).where(*ready).order_by(t.c.id).limit(limit)
                                              .with_for_update(skip_locked=True))]
            if not ids:
                return []
            query = query.where(t.c.id.in_(ids))
        else:
            query = query.where(*ready).limit(limit)
        return [dict(r) for r in conn.execute(query.order_by(t.c.id)).mappings()]

    def oldest_ready_at(self, conn: Connection, run_id: str, stage: str) -> float | None:
        t = schema.tasks
        return conn.execute(select(func.min(t.c.ready_at)).where(
            t.c.run_id == run_id, t.c.stage == stage, t.c.state == TaskState.PENDING)).scalar()

    def next_not_before(self, conn: Connection, run_id: str, now: float) -> float | None:
        t = schema.tasks
        return conn.execute(select(func.min(t.c.not_before)).where(
            t.c.run_id == run_id, t.c.state == TaskState.PENDING, t.c.not_before > now)).scalar()

    # -- submissions ----------------------------------------------------------------

    def open_submissions(self, conn: Connection, run_id: str) -> list[dict[str, Any]]:
        s = schema.submissions
        query = (select(s).where(s.c.run_id == run_id, s.c.state.in_([str(x) for x in OPEN_SUBMISSIONS]))
                 .order_by(s.c.id))
        return [dict(r) for r in conn.execute(query).mappings()]

    def submission_task_rows(self, conn: Connection, submission_id: int) -> list[dict[str, Any]]:
        t, i = schema.tasks, schema.items
        query = (select(t.c.id, t.c.stage, t.c.item_idx, t.c.attempts, t.c.state, i.c.item_id, i.c.key, i.c.params)
                 .select_from(t.outerjoin(i, (i.c.run_id == t.c.run_id) & (i.c.idx == t.c.item_idx)))
                 .where(t.c.submission_id == submission_id).order_by(t.c.id))
        return [dict(r) for r in conn.execute(query).mappings()]

    def insert_submission(self, conn: Connection, row: dict[str, Any]) -> int:
        result = conn.execute(schema.submissions.insert().returning(schema.submissions.c.id), [row])
        return int(result.scalar_one())

    def update_submission(self, conn: Connection, submission_id: int, **values: Any) -> None:
        if "info" in values and not isinstance(values["info"], (str, type(None))):
            values["info"] = dumps(values["info"])
        s = schema.submissions
        conn.execute(update(s).where(s.c.id == submission_id).values(**values))

    # -- events -----------------------------------------------------------------------

    _EVENT_KEYS = ("at", "run_id", "kind", "stage", "task_id", "submission_id", "from_state", "to_state",
                   "count", "message")

    def add_events(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Append to the event log (executemany needs every row to carry every column)."""
        sql = f"INSERT INTO events ({', '.join(self._EVENT_KEYS)}) VALUES ({', '.join('?' * len(self._EVENT_KEYS))})"
        executemany(conn, sql, [tuple(row.get(k) for k in self._EVENT_KEYS) for row in rows])

    # -- misc ---------------------------------------------------------------------------

    def scalar(self, query) -> Any:
        with self.read() as conn:
            return conn.execute(query).scalar()


def executemany(conn: Connection, sql: str, rows: Sequence[tuple]) -> None:
    """Run one statement, written with ``?`` placeholders, for many rows through the driver itself,
    inside ``conn``'s transaction: the hot paths of a tick record thousands of rows at a time."""
    if not rows:
        return
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.executemany(sql, rows)
    finally:
        cursor.close()


def task_key(task_id: int) -> str:
    """The name of a task outside the ledger (file names, custom_id): valid for every backend."""
    return f"t{task_id}"


def parse_task_key(text_: str) -> int | None:
    """The task id of ``t123`` or ``123``; None for text that names no task (ids fit 63 bits)."""
    digits = text_[1:] if text_.startswith("t") else text_
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        return None
    return int(digits)


__all__ = ["Ledger", "TaskState", "default_url", "dumps", "loads", "task_key", "parse_task_key"]
