"""Engine and sessions for one database URL, without module-level state.

SQLite is the zero-setup default and must still work when several processes
(uvicorn workers, a CLI) share one file, so every connection turns on WAL
(readers never block the writer) and a busy timeout (writers queue instead of
failing), and write transactions start with ``BEGIN IMMEDIATE``: a deferred
transaction that reads first and writes later can otherwise hit "database is
locked" at once, because SQLite cannot upgrade its lock while another writer
holds one, and no timeout helps with that. Reads stay deferred so they never
wait for a writer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
_IMMEDIATE = "modelyard_sqlite_immediate"


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL, waiting out other connections doing the same.

    The switch needs an exclusive lock, and SQLite answers "database is locked"
    at once (without the busy handler) when another connection holds any lock
    on a file still in rollback mode: workers opening a fresh database together
    hit that. WAL is persistent, so only the first switch on a file can race;
    retry it with a short backoff for as long as the busy timeout allows.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            contended = "locked" in str(exc) or "busy" in str(exc)
            if not contended or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy (not the pysqlite driver) decide when transactions begin.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def normalize_url(url: str) -> str:
    """Accept the URLs people paste: ``postgres://`` and bare ``postgresql://`` mean psycopg 3.

    SQLAlchemy would otherwise pick psycopg2, which modelyard does not install.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Database:
    """An engine plus session factories; build one per process from a URL.

    :meth:`read` and :meth:`write` are the only ways the core opens sessions:
    ``write`` commits on success, rolls back on error and (on SQLite) takes the
    write lock up front.
    """

    def __init__(self, url: str, *, echo: bool = False, **engine_kwargs: Any) -> None:
        url = normalize_url(url)
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs.setdefault("connect_args", {}).setdefault("check_same_thread", False)
        else:
            engine_kwargs.setdefault("pool_pre_ping", True)
        self.engine: Engine = create_engine(url, echo=echo, **engine_kwargs)
        if self.is_sqlite:
            _install_sqlite_hooks(self.engine)
            self._write_engine: Engine = self.engine.execution_options(**{_IMMEDIATE: True})
        else:
            self._write_engine = self.engine
        self._reads = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(self._write_engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading; rolled back (nothing to keep) when done."""
        with self._reads() as session:
            try:
                yield session
            finally:
                session.rollback()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction: commit when the block ends normally, roll back on any error."""
        with self._writes() as session, session.begin():
            yield session

    def write_connection_engine(self) -> Engine:
        """The engine whose transactions take the SQLite write lock at BEGIN (migrations use it)."""
        return self._write_engine

    def dispose(self) -> None:
        self.engine.dispose()
