"""``bmsreboot db ...``: schema management of the audit database."""

from __future__ import annotations

import click


@click.group()
def db() -> None:
    """Audit database schema management."""
