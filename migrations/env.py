"""Alembic environment: the database URL comes from the caller or the settings, never from here.

``worker.db.session.alembic_config(url)`` puts the URL in ``config.attributes["url"]``; a caller
may instead pass an open ``connection``. Without either, the configured audit database is used.
SQLite runs in batch mode (``render_as_batch``) so ALTERs become table copies.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from worker.db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    from worker.settings import get_settings

    return get_settings().effective_database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several workers may upgrade at start-up at once: one at a time. A migration must
            # not queue behind live traffic for long either.
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('bmsreboot-alembic'))"))
            connection.execute(text("SET LOCAL lock_timeout = '10s'"))
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from worker.db.session import make_engine

    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
