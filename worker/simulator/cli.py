"""``bmsreboot simulator``: run the local BMS API simulator."""

from __future__ import annotations

import click


@click.command()
def simulator() -> None:
    """Run a wire-faithful local BMS API simulator."""
    raise click.ClickException("not built yet")
