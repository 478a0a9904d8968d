"""``bmsreboot submit``, ``status`` and ``demo``: the producer side of the pipeline."""

from __future__ import annotations

import click


@click.command()
def submit() -> None:
    """Submit a reboot request."""
    raise click.ClickException("not built yet")


@click.command()
def status() -> None:
    """Show a reboot request's status."""
    raise click.ClickException("not built yet")


@click.command()
def demo() -> None:
    """Run the demo against the built-in simulator."""
    raise click.ClickException("not built yet")
