"""``bmsreboot db ...``: schema management of the audit database.

Every command works on the configured database (``BMSREBOOT_DATABASE_URL``, else the embedded
SQLite file under ``BMSREBOOT_DATA_DIR``) unless ``--url`` names another. A URL that is not
one, a database that does not exist or cannot be reached, a revision Alembic does not know: one
line each (``worker.cli.errors.database_errors``).
"""

from __future__ import annotations

import re
from typing import Any

import click

from worker.cli.errors import OneLineGroup, database_errors
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


def _known_revision(revision: str) -> None:
    """Refuse a revision the shipped migrations do not have before touching the database
    (relative ones, ``-1``, are resolved by Alembic against the database)."""
    from alembic.script import ScriptDirectory

    if revision == "base" or re.fullmatch(r"[-+]\d+", revision) or "@" in revision:
        return
    script = ScriptDirectory.from_config(db_session.alembic_config("sqlite://"))
    with database_errors("sqlite://"):
        script.get_revision(revision)


@click.group(cls=OneLineGroup)
def db() -> None:
    """Audit database schema management."""


@db.command()
@_url_option
def upgrade(url: str | None) -> None:
    """Bring the database to the newest schema; print the revision it is at."""
    target = _resolve(url)
    with database_errors(target, "--url" if url else "BMSREBOOT_DATABASE_URL"):
        db_session.upgrade_database(target)
        click.echo(db_session.current_revision(target))


@db.command()
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Yes: drop what newer revisions added, with its data.")
@_url_option
def downgrade(revision: str, yes: bool, url: str | None) -> None:
    """Take the database back to REVISION (``base``: drop every table).

    Every downgrade drops tables or columns, and the audit records in them: it needs --yes.
    """
    _known_revision(revision)
    if not yes:
        what = (
            "drops every audit table and every record in it"
            if revision == "base"
            else f"drops the tables and columns added after {revision}, with their data"
        )
        raise click.UsageError(f"db downgrade {revision} {what}: add --yes to do it")
    target = _resolve(url)
    with database_errors(target, "--url" if url else "BMSREBOOT_DATABASE_URL"):
        db_session.downgrade_database(target, revision)
        click.echo(db_session.current_revision(target) or "base")


@db.command()
@_url_option
def current(url: str | None) -> None:
    """Print the revision the database is at (``None`` if never migrated) and the head."""
    target = _resolve(url)
    with database_errors(target, "--url" if url else "BMSREBOOT_DATABASE_URL"):
        at = db_session.current_revision(target)
    click.echo(f"current: {at}")
    click.echo(f"head: {db_session.head_revision()}")


@db.command()
@_url_option
def check(url: str | None) -> None:
    """Exit non-zero if the database is not at head or its schema differs from the models."""
    target = _resolve(url)
    with database_errors(target, "--url" if url else "BMSREBOOT_DATABASE_URL"):
        at, head = db_session.current_revision(target), db_session.head_revision()
        diffs = db_session.schema_diff(target)
    problems = [f"database is at {at}, head is {head}"] if at != head else []
    problems += [_describe(diff) for diff in diffs]
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        raise SystemExit(1)
    click.echo(f"ok: at {head}, schema matches the models")
