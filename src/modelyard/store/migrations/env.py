"""Alembic environment for modelyard's schema.

modelyard runs its migrations itself (:func:`modelyard.store.migrate.upgrade`),
handing Alembic an open connection in ``config.attributes["connection"]`` whose
transaction already holds the cross-process lock; a plain ``sqlalchemy.url``
is accepted too so ``alembic`` on the command line still works for developers.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from modelyard.store.tables import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        engine = create_engine(str(config.get_main_option("sqlalchemy.url")))
        with engine.begin() as conn:
            _run(conn)
        engine.dispose()
