"""``bmsreboot db ...``: schema management of the audit database.

Every command works on the configured database (``BMSREBOOT_DATABASE_URL``, else the embedded
SQLite file under ``BMSREBOOT_DATA_DIR``) unless ``--url`` names another.
"""

from __future__ import annotations

from typing import Any

import click

from worker.db import session as db_session

_url_option = click.option(
    "--url",
    default=None,
    help="Database URL (default: the configured audit database).",
)


def _resolve(url: str | None) -> str:
    if url:
        return url
    from worker.settings import get_settings

    return get_settings().effective_database_url


def _describe(diff: Any) -> str:
    """One line per autogenerate difference: ``add_table reboot_requests``, ``modify_type ...``."""
    if isinstance(diff, list):  # column modifications come grouped
        return "; ".join(_describe(d) for d in diff)
    if isinstance(diff, tuple) and diff and isinstance(diff[0], str):
        names = [str(getattr(part, "name", part)) for part in diff[1:4] if part is not None]
        return " ".join([diff[0], *names])
    return repr(diff)


@click.group()
def db() -> None:
    """Audit database schema management."""


@db.command()
@_url_option
def upgrade(url: str | None) -> None:
    """Bring the database to the newest schema; print the revision it is at."""
    target = _resolve(url)
    db_session.upgrade_database(target)
    click.echo(db_session.current_revision(target))


@db.command()
@click.argument("revision")
@_url_option
def downgrade(revision: str, url: str | None) -> None:
    """Take the database back to REVISION (``base``: drop every table)."""
    target = _resolve(url)
    db_session.downgrade_database(target, revision)
    click.echo(db_session.current_revision(target) or "base")


@db.command()
@_url_option
def current(url: str | None) -> None:
    """Print the revision the database is at (``None`` if never migrated) and the head."""
    target = _resolve(url)
    click.echo(f"current: {db_session.current_revision(target)}")
    click.echo(f"head: {db_session.head_revision()}")


@db.command()
@_url_option
def check(url: str | None) -> None:
    """Exit non-zero if the database is not at head or its schema differs from the models."""
    target = _resolve(url)
    at, head = db_session.current_revision(target), db_session.head_revision()
    problems = [f"database is at {at}, head is {head}"] if at != head else []
    problems += [_describe(diff) for diff in db_session.schema_diff(target)]
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        raise SystemExit(1)
    click.echo(f"ok: at {head}, schema matches the models")
