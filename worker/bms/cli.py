"""``bmsreboot api ...``: read-only direct calls to the BMS API, for operators."""

from __future__ import annotations

import click


@click.group()
def api() -> None:
    """Direct, read-only calls to the BMS API (debugging aid)."""
