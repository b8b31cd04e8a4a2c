"""Engine, pragmas, schema versioning and the library config stored in `meta`.

Writers use `BEGIN IMMEDIATE` so that concurrent read-then-write transactions
queue on the lock instead of failing with "database is locked" at upgrade time
(docs/platform-notes.md measured 1,869 of 3,000 failing with deferred BEGIN).
Readers that must never write (status, dry-run) open the file `mode=ro`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, delete, event, select, text
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from objlib_daemon.errors import CONFIG, ObjlibError
from objlib_daemon.private import private_dir
from objlib_daemon.state.models import (
    JOURNAL_KEEP_DAYS,
    JOURNAL_MAX_ROWS,
    Base,
    EnrichmentRecord,
    EnrichmentSpend,
    JournalEntry,
    Meta,
)

SCHEMA_VERSION = 5
# SQLite's names for a damaged file (a page of garbage, a truncated file).
CORRUPT_ERRORS = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})


class StateError(ObjlibError):
    """The state database cannot be used as it is (corrupt, foreign, too new, absent)."""

    exit_code = CONFIG


# What to do about a database that is lost, corrupt or not ours: the documents
# are safe in the store, and their identity metadata lets a fresh database
# adopt them instead of uploading everything again (docs/operations.md).
REBUILD = (
    "run `objlibd init --rebuild` to set it aside and rebuild the state from the library "
    "and the store (documents are adopted, not uploaded again)"
)


def damaged(exc: BaseException, path: Path | str = "") -> StateError | None:
    """The StateError for an SQLite error (raw or wrapped by SQLAlchemy) that says the
    database is damaged, else None: for any code that reads past the opening pages."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlite_errorname", "") in CORRUPT_ERRORS:
        return corrupt(path or "", orig)
    return None


def corrupt(path: Path | str, exc: BaseException) -> StateError:
    """The error to raise when SQLite finds `path` damaged (at open or in any later read)."""
    return StateError(f"the state database {path} is damaged ({exc}): {REBUILD}")


def set_aside(path: Path) -> Path | None:
    """Rename a database (and its WAL and shared-memory files) to `<name>.broken-<time>`,
    so a damaged one stays inspectable while a fresh one is built. Returns the new name."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.broken-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    return target


class DiskFull(ObjlibError):
    """The state database cannot be written: its disk is full."""


def _migrate_1(conn: Connection) -> None:
    Base.metadata.create_all(conn)


def _migrate_2(conn: Connection) -> None:
    """intents.ended_at and the files.upload_sha256 index (version 1 had neither)."""
    columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(intents)")}
    if "ended_at" not in columns:
        conn.exec_driver_sql("ALTER TABLE intents ADD COLUMN ended_at FLOAT")
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_files_upload_sha256 ON files (upload_sha256)"
    )


def _migrate_3(conn: Connection) -> None:
    """Queue lanes (fresh before bulk) and the intents' indexing stage."""
    have = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(pending_changes)")}
    if "lane" not in have:
        conn.exec_driver_sql("ALTER TABLE pending_changes ADD COLUMN lane INTEGER DEFAULT 1")
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_pending_ready")
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_pending_lane ON pending_changes "
        "(state, lane, next_attempt_at, first_seen)"
    )
    have = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(intents)")}
    for column, kind in (
        ("operation", "VARCHAR"),
        ("document", "VARCHAR"),
        ("display_name", "VARCHAR"),
        ("size", "INTEGER"),
        ("mtime_ns", "INTEGER"),
        ("version", "VARCHAR"),
        ("gen", "INTEGER"),
        ("retried", "INTEGER DEFAULT 0"),
    ):
        if column not in have:
            conn.exec_driver_sql(f"ALTER TABLE intents ADD COLUMN {column} {kind}")


def _migrate_4(conn: Connection) -> None:
    """The enrichment cache, its spend ledger and the files' enrichment index (issue 13)."""
    Base.metadata.create_all(conn, tables=[EnrichmentRecord.__table__, EnrichmentSpend.__table__])
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_files_enrichment ON files (enrichment_version, state)"
    )


def _migrate_5(conn: Connection) -> None:
    """A waiting queue row is stored as "queued", no longer as "pending" (the word
    of the file state for a file with no document yet)."""
    conn.exec_driver_sql("UPDATE pending_changes SET state = 'queued' WHERE state = 'pending'")


# Index i migrates from version i to i+1. Append, never edit, once released.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _migrate_1,
    _migrate_2,
    _migrate_3,
    _migrate_4,
    _migrate_5,
]
assert len(MIGRATIONS) == SCHEMA_VERSION


def _pragmas(dbapi_conn: sqlite3.Connection, _record: Any, *, readonly: bool) -> None:
    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=10000")
    if not readonly:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _engine(path: Path, *, readonly: bool, deferred: bool = False) -> Engine:
    if readonly:
        url = f"sqlite:///file:{path}?mode=ro&uri=true"
    else:
        url = f"sqlite:///{path}"
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
    event.listen(engine, "connect", lambda c, r: _pragmas(c, r, readonly=readonly))
    begin = "BEGIN" if readonly or deferred else "BEGIN IMMEDIATE"
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
    return engine


def _empty(path: Path) -> bool:
    """A zero-byte file with no WAL beside it: created, never written (or truncated).

    SQLite would take it for a new database; every command but `init` must not.
    """
    try:
        if path.stat().st_size:
            return False
    except FileNotFoundError:
        return False
    wal = path.with_name(path.name + "-wal")
    return not (wal.exists() and wal.stat().st_size)


class Database:
    """The state database of one library. Thread-safe: one session per transaction."""

    def __init__(self, path: Path, *, readonly: bool = False, create: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if not create and _empty(path):
            raise StateError(f"the state database {path} is empty: {REBUILD}")
        if not path.exists():
            if not create:
                raise StateError(
                    f"no state database at {path}: run `objlibd init --library PATH` first"
                )
            private_dir(path.parent)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.engine = _engine(path, readonly=readonly)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads in WAL mode need no lock: a deferred BEGIN sees a snapshot and
        # never waits for a writer (the applier's looks, from every worker).
        self._reader = _engine(path, readonly=readonly, deferred=True)
        self._reads = sessionmaker(self._reader, expire_on_commit=False)
        # Writers of this process queue here, not in SQLite's busy handler,
        # which sleeps in steps (up to 100 ms) while the lock is held: with
        # several applier threads that cost 25 % of a first sync's time.
        self._write_lock = threading.RLock()
        try:
            self._check_schema()
        except (DatabaseError, OperationalError) as exc:
            self.engine.dispose()
            self._reader.dispose()
            raise corrupt(path, exc.orig) from None

    def _check_schema(self) -> None:
        with self.engine.connect() as conn:
            tables = {
                r[0]
                for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
            }
        if not tables:
            version = 0
        elif "meta" not in tables:
            raise StateError(
                f"{self.path} is an SQLite file but not an objlibd database; "
                "point [paths] state_dir elsewhere"
            )
        else:
            with self.engine.connect() as conn:
                raw = conn.execute(select(Meta.value).where(Meta.key == "schema_version"))
                version = int(raw.scalar() or 0)
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} has schema {version}, newer than this objlibd understands "
                f"({SCHEMA_VERSION}): upgrade objlibd"
            )
        if version < SCHEMA_VERSION:
            if self.readonly:
                raise StateError(
                    f"{self.path} has schema {version}, expected {SCHEMA_VERSION}: "
                    "run any writing command (e.g. `objlibd sync`) to migrate it"
                )
            with self.engine.begin() as conn:
                for step in MIGRATIONS[version:]:
                    step(conn)
                conn.execute(
                    text("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', :v)"),
                    {"v": str(SCHEMA_VERSION)},
                )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction (BEGIN IMMEDIATE for writers), committed on success.

        A full disk is said in words: the transaction is rolled back, and the
        caller's retry (the queue, the debouncer) resumes once there is room.
        """
        try:
            with self._write_lock, self._sessions() as session, session.begin():
                yield session
        except (DatabaseError, sqlite3.DatabaseError) as exc:  # raw: the driver's own reads
            orig = getattr(exc, "orig", None) or exc
            if getattr(orig, "sqlite_errorname", "") == "SQLITE_FULL":
                raise DiskFull(
                    f"the disk holding {self.path} is full: free some space there; nothing "
                    "is lost (changes wait in the queue or are found by the next scan)"
                ) from None
            self._raise_if_damaged(exc)
            raise

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only snapshot transaction that never waits for a writer."""
        try:
            with self._reads() as session, session.begin():
                yield session
        except (DatabaseError, sqlite3.DatabaseError) as exc:
            self._raise_if_damaged(exc)
            raise

    def _raise_if_damaged(self, exc: BaseException) -> None:
        """Damage found past the pages opening the database read: say the recovery."""
        state_error = damaged(exc, self.path)
        if state_error is not None:
            raise state_error from None

    def get_meta(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(Meta.value).where(Meta.key == key)).scalar()

    def all_meta(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return dict(conn.execute(select(Meta.key, Meta.value)).all())

    def set_meta(self, session: Session, **values: str | None) -> None:
        for key, value in values.items():
            if value is None:
                session.query(Meta).filter(Meta.key == key).delete()
            else:
                session.merge(Meta(key=key, value=value))

    def trim_journal(
        self, *, keep_days: float = JOURNAL_KEEP_DAYS, max_rows: int = JOURNAL_MAX_ROWS
    ) -> int:
        """Drop journal rows older than `keep_days`, then the oldest beyond
        `max_rows`; returns rows dropped (the journal is history, not state)."""
        with self.session() as s:
            dropped = s.execute(
                delete(JournalEntry).where(JournalEntry.at < time.time() - keep_days * 86400)
            ).rowcount or 0
            newest_dropped = s.execute(
                select(JournalEntry.id).order_by(JournalEntry.id.desc()).offset(max_rows).limit(1)
            ).scalar()
            if newest_dropped is not None:
                dropped += s.execute(
                    delete(JournalEntry).where(JournalEntry.id <= newest_dropped)
                ).rowcount or 0
        return dropped

    def record_sync_result(self, summary: dict[str, Any]) -> None:
        with self.session() as s:
            self.set_meta(s, last_sync_at=str(time.time()), last_sync_result=json.dumps(summary))

    def close(self) -> None:
        self.engine.dispose()
        self._reader.dispose()
