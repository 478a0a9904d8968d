"""Read commands for operators: recent requests (``bmsreboot list``) and every reboot of one
server (``bmsreboot history``). Both read the audit database only, and print JSON with
``--json``; an error is one line, never a traceback."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db.models import RebootRequest
from worker.db.states import RequestStatus


def _engine() -> Any:
    from worker.db.session import get_engine
    from worker.settings import get_settings

    return get_engine(get_settings().effective_database_url)


@contextlib.contextmanager
def audit_database_errors() -> Iterator[None]:
    """An audit database that cannot be read is one line for the operator, never a traceback
    (every command that reads it)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        raise click.ClickException(
            f"cannot read the audit database ({type(exc).__name__}); "
            "is it reachable and upgraded (`bmsreboot db upgrade`)?"
        ) from None


def _read(fn: Any) -> Any:
    from worker.db.session import unit_of_work

    with audit_database_errors(), unit_of_work(_engine()) as session:
        return fn(session)


def _since(value: str | None) -> dt.datetime | None:
    from worker.pipeline.validation import parse_duration

    if value is None:
        return None
    duration = parse_duration(value)
    if duration is not None:
        return dt.datetime.now(dt.UTC) - duration
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not a time or a duration (2h, 1d): {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def recent_requests(
    session: Session,
    *,
    status: str | None = None,
    project: str | None = None,
    source: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Requests newest first, filtered (one query on the ``created_at`` index)."""
    query = select(RebootRequest).order_by(RebootRequest.created_at.desc()).limit(limit)
    if status is not None:
        query = query.where(RebootRequest.status == RequestStatus(status))
    if project is not None:
        query = query.where(RebootRequest.project_id == project)
    if source is not None:
        query = query.where(RebootRequest.source == source)
    if since is not None:
        query = query.where(RebootRequest.created_at >= since)
    return [
        {
            "request_id": str(r.id),
            "status": r.status.value,
            "project_id": r.project_id,
            "source": r.source,
            "servers": r.servers_total,
            "succeeded": r.servers_succeeded,
            "failed": r.servers_failed,
            "unknown": r.servers_unknown,
            "cancelled": r.servers_cancelled,
            "created_at": r.created_at.isoformat(),
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            "reason": r.reason,
        }
        for r in session.scalars(query)
    ]


@click.command("list")
@click.option(
    "--status", type=click.Choice([s.value for s in RequestStatus]), help="Only this status."
)
@click.option("--project", help="Only this project id.")
@click.option("--source", help="Only this source (an application, schedule:<name>, cli:<user>).")
@click.option("--since", help="Only requests since a time (ISO 8601) or for a duration (2h, 1d).")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_requests(
    status: str | None,
    project: str | None,
    source: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recent reboot requests, newest first."""
    rows = _read(
        lambda session: recent_requests(
            session,
            status=status,
            project=project,
            source=source,
            since=_since(since),
            limit=limit,
        )
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no requests")
        return
    for r in rows:
        click.echo(
            f"{r['request_id']}  {r['status']:<16} {r['created_at'][:19]}  {r['source']:<24} "
            f"{r['servers']} servers: {r['succeeded']} succeeded, {r['failed']} failed, "
            f"{r['unknown']} unknown, {r['cancelled']} cancelled"
        )


@click.command()
@click.argument("server_id")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history(server_id: str, limit: int, as_json: bool) -> None:
    """Every reboot of one server: when, which request, who asked, the outcome, the job."""
    from worker.db.status import server_history

    rows = _read(lambda session: server_history(session, server_id.strip().lower(), limit))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no reboot of {server_id} in the audit database")
        return
    for r in rows:
        outcome = r["status"] + (
            f" ({r['error_code']}: {r['fail_reason']})" if r["error_code"] else ""
        )
        click.echo(
            f"{r['requested_at'][:19]}  request {r['request_id']}  by {r['source']}  "
            f"batch {r['batch_index']} job {r['job_id'] or '-'}  {outcome}"
        )
