"""The store on real SQLite and PostgreSQL: migrations, timestamps, multi-process writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from modelyard.store import Base, Database, ServiceRow, upgrade, utcnow
from modelyard.store.migrate import current_revision, head_revision

TABLES = {"services", "models", "endpoints", "blobs", "tokens", "replicas"}


def test_migrations_create_every_table_and_run_twice(database_url: str) -> None:
    db = Database(database_url)
    try:
        upgrade(db)
        upgrade(db)  # a second start finds the schema at head and does nothing
        assert current_revision(db) == head_revision() is not None
        assert set(inspect(db.engine).get_table_names()) >= TABLES
    finally:
        db.dispose()


def test_tables_and_migrations_agree(database_url: str) -> None:
    """Autogenerate finds nothing to change: tables.py and versions/ describe one schema."""
    db = Database(database_url)
    try:
        upgrade(db)
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
    finally:
        db.dispose()


def _upgrade_together(url: str, workers: int = 4) -> list[BaseException]:
    """``workers`` threads open ``url`` and upgrade it at the same moment; what each raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def start() -> None:
        db = Database(url)
        try:
            barrier.wait()
            upgrade(db)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=start) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_upgrades_from_many_threads(database_url: str) -> None:
    """Workers starting together on a fresh database must not trip over each other."""
    assert _upgrade_together(database_url) == []
    db = Database(database_url)
    assert current_revision(db) == head_revision()
    db.dispose()


def test_first_connections_to_a_fresh_sqlite_file_race_without_locking_errors(tmp_path: Path) -> None:
    """Switching a new file to WAL raced: one of several openers got "database is locked" at once.

    The race is narrow, so it is run on many fresh files (it failed about one
    round in twelve before the switch learned to wait).
    """
    errors = [e for i in range(40) for e in _upgrade_together(f"sqlite:///{tmp_path / f'db{i}.sqlite'}")]
    assert errors == []


def test_timestamps_come_back_timezone_aware_utc(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db)
    local = datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    with db.write() as session:
        session.add(ServiceRow(name="a", description="", revision=1, created_at=local))
    with db.read() as session:
        row = session.scalar(select(ServiceRow).where(ServiceRow.name == "a"))
        assert row is not None
        assert row.created_at.tzinfo is not None
        assert row.created_at.utcoffset() == timedelta(0)
        assert row.created_at == local
        assert abs(utcnow() - row.created_at) > timedelta(days=1)
    db.dispose()


def test_naive_timestamps_are_refused(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db)
    with pytest.raises(Exception, match="naive"), db.write() as session:
        session.add(ServiceRow(name="b", description="", revision=1, created_at=datetime(2024, 1, 1)))
        session.flush()
    db.dispose()


def test_write_rolls_back_on_error(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db)
    with pytest.raises(RuntimeError), db.write() as session:
        session.add(ServiceRow(name="gone", description="", revision=1, created_at=utcnow()))
        session.flush()
        raise RuntimeError("boom")
    with db.read() as session:
        assert session.scalar(select(ServiceRow).where(ServiceRow.name == "gone")) is None
    db.dispose()


def test_sqlite_uses_wal_and_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()


WORKER = textwrap.dedent(
    """
    import sys
    from sqlalchemy import select
    from modelyard.store import Database, ServiceRow, upgrade
    db = Database(sys.argv[1])
    upgrade(db)
    for _ in range(int(sys.argv[2])):
        # read-then-write: the pattern that fails with "database is locked" on SQLite
        # unless write transactions take the lock at BEGIN
        with db.write() as session:
            row = session.scalar(select(ServiceRow).where(ServiceRow.name == "counter").with_for_update())
            row.revision = row.revision + 1
    db.dispose()
    """
)


def test_several_processes_write_without_losing_updates(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db)
    with db.write() as session:
        session.add(ServiceRow(name="counter", description="", revision=0, created_at=utcnow()))
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, database_url, "25"], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with db.read() as session:
        assert session.scalar(select(ServiceRow.revision).where(ServiceRow.name == "counter")) == 75
    db.dispose()


@pytest.mark.postgres
def test_urls_people_paste_work(tmp_path: Path, pg_database_url: str) -> None:
    bare = pg_database_url.replace("postgresql+psycopg://", "postgresql://")
    db = Database(bare)
    assert db.url == pg_database_url and db.backend == "postgresql"
    upgrade(db)
    db.dispose()
    nested = Database(f"sqlite:///{tmp_path / 'a' / 'b' / 'x.db'}")  # missing folders are created
    upgrade(nested)
    assert (tmp_path / "a" / "b" / "x.db").exists()
    nested.dispose()
