"""``bmsreboot watch REQUEST_ID``: live progress of a request until it ends; ``submit --wait``
shows the same (:func:`follow_request`).

On a terminal the progress is two live bars; elsewhere (a pipe, a log) one line each time the
request's state or counts change, flushed at once.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import click

from worker.cli.follow import (
    EXIT_NOT_RECORDED,
    EXIT_WAIT_TIMEOUT,
    NotRecorded,
    exit_code,
    follow,
    summary,
)
from worker.cli.params import REQUEST_ID
from worker.cli.show import ENDED, gate_line

#: How long ``watch`` waits for a worker to record the request when no --timeout is given.
RECORD_WAIT = 30.0
#: After this many seconds without a record, say that no worker has recorded it yet.
NOTICE_WAIT = 5.0
START_A_WORKER = "Start one with: celery -A worker worker -B"


def eta_seconds(status: dict[str, Any], action_per_minute: int, learned: float | None) -> float:
    """Time left, from the action budget and the project's learned job duration: the batches
    not yet sent go one budget interval apart, then the last one's job runs."""
    pending = sum(1 for b in status["batches"] if b["status"] == "pending")
    in_flight = sum(1 for b in status["batches"] if b["status"] in ("submitting", "submitted"))
    job = learned or 0.0
    if not pending and not in_flight:
        return 0.0
    return pending * 60.0 / action_per_minute + job


def progress_line(status: dict[str, Any]) -> str:
    """The request's state and counts in one line (what a pipe or a log gets at each change)."""
    counts = summary(status)
    states = status["servers"]
    outcomes = ", ".join(f"{states[k]} {k}" for k in ENDED if states[k])
    return (
        f"{status['status']}: batches {counts['batches_done']}/{counts['batches_total']} done, "
        f"{counts['batches_in_flight']} in flight; servers {counts['servers_done']}/"
        f"{counts['servers_total']} done" + (f" ({outcomes})" if outcomes else "") + "; "
        f"{counts['posts']} POSTs, {counts['gets']} GETs, "
        f"{counts['throttled_batches']} throttled"
        + (f"; {held}" if (held := gate_line(status)) else "")
    )


def _change(status: dict[str, Any]) -> tuple[Any, ...]:
    """What counts as a change: the state, batches by state, servers by state (not the API
    calls, which grow with every poll)."""
    return (
        status["status"],
        tuple(b["status"] for b in status["batches"]),
        tuple(sorted(status["servers"].items())),
        (status.get("gate") or {}).get("closed_since"),
    )


def follow_request(
    request_id: uuid.UUID,
    *,
    timeout: float | None,
    interval: float = 1.0,
    record_timeout: float | None = None,
    to_stderr: bool = False,
) -> dict[str, Any]:
    """Follow a request to its end in the audit database, showing its progress on stdout (or
    stderr); return its final status. Raises :class:`NotRecorded` or TimeoutError as
    :func:`worker.cli.follow.follow` does."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from worker.cli.show import load_status
    from worker.pipeline.control import learned_for
    from worker.settings import get_settings

    settings = get_settings()
    stream = sys.stderr if to_stderr else sys.stdout
    console = Console(stderr=to_stderr, width=None if stream.isatty() else 200)
    live = console.is_terminal
    started = time.monotonic()
    learned: list[float | None] = []
    last: list[tuple[Any, ...]] = []
    noticed = False
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=False,
        disable=not live,
    ) as progress:
        batches = progress.add_task("batches", total=None, detail="")
        servers = progress.add_task("servers", total=None, detail="")

        def show(status: dict[str, Any] | None) -> None:
            nonlocal noticed
            if status is None:
                progress.update(batches, detail="not recorded yet: is a worker running?")
                if not noticed and time.monotonic() - started >= NOTICE_WAIT:
                    noticed = True
                    click.echo(
                        f"no worker has recorded request {request_id} within {NOTICE_WAIT:.0f} "
                        f"s; is one running? {START_A_WORKER} (still waiting)",
                        err=True,
                    )
                return
            if not learned:
                learned.append(learned_for(status["project_id"], settings))
            if not live:
                change = _change(status)
                if last != [change]:
                    last[:] = [change]
                    click.echo(progress_line(status), err=to_stderr)
                return
            counts = summary(status)
            states = status["servers"]
            eta = eta_seconds(status, settings.action_rate_limit, learned[0])
            progress.update(
                batches,
                total=counts["batches_total"],
                completed=counts["batches_done"],
                detail=(
                    f"{counts['batches_in_flight']} in flight, {counts['posts']} POSTs, "
                    f"{counts['gets']} GETs, {counts['throttled_batches']} throttled; "
                    f"about {eta:.0f} s left" + (f"; {held}" if (held := gate_line(status)) else "")
                ),
            )
            progress.update(
                servers,
                total=counts["servers_total"],
                completed=counts["servers_done"],
                detail=", ".join(f"{states[k]} {k}" for k in ENDED if states[k]),
            )

        return follow(
            lambda: load_status(request_id),
            timeout=timeout,
            interval=interval,
            on_status=show,
            record_timeout=record_timeout,
        )


@click.command()
@click.argument("request_id", type=REQUEST_ID)
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds between reads.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help=f"Give up after (0: never, but at most {RECORD_WAIT:.0f} s for the request to be "
    "recorded).",
)
def watch(request_id: uuid.UUID, interval: float, timeout: float) -> None:
    """Follow a request live until it ends: batches and servers by state, API calls,
    throttling and the time left (on a terminal; piped, one line per change). Exit codes as
    `submit --wait`: 0 every server succeeded, 1 some did not, 2 rejected, 3 gave up waiting
    (--timeout), 4 no worker recorded the request (within --timeout, or 30 s without one)."""
    from worker.cli.show import print_status

    record_wait = timeout or RECORD_WAIT
    try:
        final = follow_request(
            request_id, timeout=timeout or None, interval=interval, record_timeout=record_wait
        )
    except NotRecorded:
        click.echo(
            f"Error: no worker has recorded request {request_id} within {record_wait:.0f} s: "
            f"is the id right, and is a worker running? {START_A_WORKER}",
            err=True,
        )
        sys.exit(EXIT_NOT_RECORDED)
    except TimeoutError:
        click.echo(
            f"Error: gave up waiting for request {request_id} after {timeout:.0f} s "
            "(--timeout); it goes on",
            err=True,
        )
        sys.exit(EXIT_WAIT_TIMEOUT)
    print_status(final)
    sys.exit(exit_code(final))
