"""Engines, sessions and the one-transaction unit of work; schema upgrades.

PostgreSQL runs at READ COMMITTED with ``pool_pre_ping``. SQLite (the embedded default) runs in
WAL mode with foreign keys on and a 30 s busy timeout, and every transaction starts with
``BEGIN IMMEDIATE``: SQLite has one writer at a time, and taking the write lock up front makes a
second worker *wait* for the first (then see its committed state) instead of failing with
"database is locked" when its read snapshot turns out stale at its first write. That is what makes
the compare-and-set transitions in ``worker.db.transitions`` behave the same on both engines.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_S = 30

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _normalize(url: str | URL) -> URL:
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        # psycopg 3 is the driver we ship; a bare postgresql:// would ask for psycopg2.
        u = u.set(drivername="postgresql+psycopg")
    return u


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine configured for the audit database (see the module docstring)."""
    u = _normalize(url)
    if u.get_backend_name() == "sqlite":
        database = u.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        engine = create_engine(u, connect_args=connect_args, **kwargs)
        _configure_sqlite(engine)
        return engine
    if u.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("isolation_level", "READ COMMITTED")
    return create_engine(u, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event (below) issue BEGIN instead of the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: the configured audit database)."""
    if url is None:
        from worker.settings import get_settings

        url = get_settings().effective_database_url
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects returned from a unit of work stay readable after it.
    return sessionmaker(bind=engine, expire_on_commit=False)


def is_postgresql(session: Session) -> bool:
    """Whether the session's database is PostgreSQL: where a few writes take one set-based
    statement (``unnest``) instead of one a row."""
    return session.get_bind().dialect.name == "postgresql"


#: The after-commit hooks of the unit of work open in this context (thread), innermost last.
_open_units: ContextVar[tuple[list[Callable[[], object]], ...]] = ContextVar(
    "bmsreboot_open_units", default=()
)


@contextmanager
def unit_of_work(engine: Engine | None = None) -> Iterator[Session]:
    """One transaction: commit when the block ends normally, roll back when it raises.

    What is handed to :func:`after_commit` inside the block runs once the transaction has
    committed, in order, and never if it rolled back: a follow-up message must never name a
    row its receiver cannot read yet (pypi/warehouse's after-commit hook on its tasks)."""
    session = session_factory(engine or get_engine())()
    hooks: list[Callable[[], object]] = []
    token = _open_units.set((*_open_units.get(), hooks))
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        _open_units.reset(token)
        session.close()
    for hook in hooks:
        hook()


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """A part of the open unit of work that can fail alone: its changes roll back to the
    savepoint when the block raises (and the error goes on), and what it handed to
    :func:`after_commit` runs only if it succeeded and the whole unit then commits."""
    hooks: list[Callable[[], object]] = []
    token = _open_units.set((*_open_units.get(), hooks))
    try:
        with session.begin_nested():
            yield
    finally:
        _open_units.reset(token)
    for hook in hooks:
        after_commit(hook)


def after_commit(hook: Callable[[], object]) -> None:
    """Run ``hook`` once the innermost open unit of work has committed (now, if none is
    open): how the pipeline sends its follow-up messages (``worker.pipeline.runtime``)."""
    units = _open_units.get()
    if units:
        units[-1].append(hook)
    else:
        hook()


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` for the shipped ``migrations`` package, bound to ``url``."""
    from alembic.config import Config

    import migrations

    # __path__, not importlib.resources: an editable install made before migrations/ had an
    # __init__.py maps it as a namespace package, which resources.files() refuses.
    script_location = next(iter(migrations.__path__))
    config = Config()
    config.set_main_option("script_location", script_location)
    config.attributes["url"] = url
    return config


def upgrade_database(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (Alembic ``upgrade head``)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def current_revision(url: str) -> str | None:
    """The schema revision the database at ``url`` is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def downgrade_database(url: str, revision: str) -> None:
    """Take the database at ``url`` back to ``revision`` (``base`` empties it)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def schema_diff(url: str) -> list[Any]:
    """Differences between the models and the schema of the database at ``url`` (empty: none).

    Alembic's autogenerate comparison: tables, columns, types, nullability, indexes, unique and
    foreign-key constraints. (CHECK constraints are not compared by Alembic.)
    """
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from worker.db.models import Base

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest schema revision shipped with this code."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def database_is_current(url: str) -> bool:
    """True when the database at ``url`` is at the newest shipped revision."""
    return current_revision(url) == head_revision()
