"""Run the packaged Alembic migrations from code: ``upgrade(db)`` on every start.

Users never see an ``alembic.ini``: the script location is the
``modelyard.store:migrations`` package resource. Several processes may start
at once (uvicorn workers, replicas sharing PostgreSQL), so the upgrade runs
inside one transaction that first takes a cross-process lock — a PostgreSQL
advisory transaction lock, or SQLite's write lock via ``BEGIN IMMEDIATE`` — and
only then reads the current version; the loser of the race finds the schema at
head and does nothing.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from modelyard.store.database import Database

SCRIPT_LOCATION = "modelyard.store:migrations"
_PG_LOCK_KEY = 0x6D6F64656C79  # "modely": any constant shared by all modelyard processes


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring ``db``'s schema to ``revision``; safe to call on every start, from many processes."""
    config = alembic_config()
    with db.write_connection_engine().begin() as conn:
        if db.backend == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
