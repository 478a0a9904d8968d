"""``bmsreboot watch REQUEST_ID``: live progress of a request until it ends."""

from __future__ import annotations

import sys
from typing import Any

import click

from worker.cli.follow import EXIT_WAIT_TIMEOUT, exit_code, follow, summary


def eta_seconds(status: dict[str, Any], action_per_minute: int, learned: float | None) -> float:
    """Time left, from the action budget and the project's learned job duration: the batches
    not yet sent go one budget interval apart, then the last one's job runs."""
    pending = sum(1 for b in status["batches"] if b["status"] == "pending")
    in_flight = sum(1 for b in status["batches"] if b["status"] in ("submitting", "submitted"))
    job = learned or 0.0
    if not pending and not in_flight:
        return 0.0
    return pending * 60.0 / action_per_minute + job


@click.command()
@click.argument("request_id")
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between reads."
)
@click.option(
    "--timeout", type=float, default=0.0, show_default=True, help="Give up after (0: never)."
)
def watch(request_id: str, interval: float, timeout: float) -> None:
    """Follow a request live until it ends: batches and servers by state, API calls,
    throttling and the time left. Exit codes as `submit --wait` (0 every server succeeded,
    1 some did not, 2 rejected, 3 gave up waiting)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from worker.cli.reboots import _load_status, _print_status, _request_id
    from worker.pipeline.control import learned_for
    from worker.settings import get_settings

    _request_id(request_id)
    settings = get_settings()
    first = _load_status(request_id)
    learned = learned_for(first["project_id"], settings) if first else None
    console = Console(width=None if sys.stdout.isatty() else 200)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    ) as progress:
        batches = progress.add_task("batches", total=None, detail="")
        servers = progress.add_task("servers", total=None, detail="")

        def show(status: dict[str, Any] | None) -> None:
            if status is None:
                progress.update(batches, detail="not recorded yet: is a worker running?")
                return
            counts = summary(status)
            states = status["servers"]
            eta = eta_seconds(status, settings.action_rate_limit, learned)
            progress.update(
                batches,
                total=counts["batches_total"],
                completed=counts["batches_done"],
                detail=(
                    f"{counts['batches_in_flight']} in flight, {counts['posts']} POSTs, "
                    f"{counts['gets']} GETs, {counts['throttled_batches']} throttled; "
                    f"about {eta:.0f} s left"
                ),
            )
            progress.update(
                servers,
                total=counts["servers_total"],
                completed=counts["servers_done"],
                detail=", ".join(
                    f"{states[k]} {k}"
                    for k in ("succeeded", "failed", "unknown", "cancelled")
                    if states[k]
                ),
            )

        try:
            final = follow(
                lambda: _load_status(request_id),
                timeout=timeout or None,
                interval=interval,
                on_status=show,
            )
        except TimeoutError:
            click.echo(f"gave up waiting for request {request_id}", err=True)
            sys.exit(EXIT_WAIT_TIMEOUT)
    _print_status(final)
    sys.exit(exit_code(final))
