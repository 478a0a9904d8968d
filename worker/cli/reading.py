"""Read commands for operators: recent requests (``bmsreboot list``), and every reboot of one
server or the events of one request (``bmsreboot history``). They read the audit database
only, and print JSON with ``--json``; an error is one line, never a traceback. Times are
ISO 8601 with their zone (UTC)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.cli.errors import audit_database_errors
from worker.cli.params import PROJECT_ID, REQUEST_OR_SERVER_ID, limit_option
from worker.db.models import SERVER_COUNT_COLUMNS, Batch, Event, RebootRequest
from worker.db.states import EventEntity, RequestStatus

__all__ = [
    "audit_database_errors",
    "event_lines",
    "history",
    "list_requests",
    "recent_requests",
    "request_events",
]


def _read(fn: Any) -> Any:
    from worker.db.session import get_engine, unit_of_work
    from worker.settings import get_settings

    url = get_settings().effective_database_url
    with audit_database_errors(url), unit_of_work(get_engine(url)) as session:
        return fn(session)


def when(iso: str | None) -> str:
    """An ISO 8601 time to the second, with its zone: ``2026-11-28T03:00:00+00:00``."""
    if iso is None:
        return "-"
    return dt.datetime.fromisoformat(iso).isoformat(timespec="seconds")


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
        raise click.BadParameter(
            f"not a time or a duration (2h, 1d): {value!r}", param_hint="'--since'"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def request_events(
    session: Session, request_id: uuid.UUID, *, servers: bool = False, limit: int = 50
) -> list[dict[str, Any]]:
    """A request's events, newest first: every state change of the request and its batches
    (and, with ``servers``, of each server), who made it, and its detail (a cancel's reason,
    an operator's decision). One query on the (request_id, at) index."""
    query = (
        select(Event, Batch.index)
        .outerjoin(Batch, Batch.id == Event.batch_id)
        .where(Event.request_id == request_id)
        .order_by(Event.at.desc(), Event.id.desc())
        .limit(limit)
    )
    if not servers:
        query = query.where(Event.entity != EventEntity.SERVER)
    return [
        {
            "at": event.at.isoformat(),
            "entity": event.entity.value,
            "batch_index": index,
            "server_id": event.server_id,
            "from_state": event.from_state,
            "to_state": event.to_state,
            "actor": event.actor,
            "detail": event.detail,
        }
        for event, index in session.execute(query)
    ]


def _detail(detail: dict[str, Any] | None) -> str:
    if not detail:
        return ""
    return ", ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True)}"
        for k, v in detail.items()
    )


def event_lines(events: list[dict[str, Any]]) -> Iterator[str]:
    """One line an event: when, what (the request, a batch, a server), the change, who, why."""
    for e in events:
        what = e["entity"]
        if e["entity"] == "batch":
            what = f"batch {e['batch_index']}"
        elif e["entity"] == "server":
            what = f"server {e['server_id']} (batch {e['batch_index']})"
        change = f"{e['from_state'] or '-'} -> {e['to_state']}"
        detail = _detail(e["detail"])
        yield f"{when(e['at'])}  {what:<9} {change:<24} by {e['actor']}" + (
            f"  {detail}" if detail else ""
        )


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
            **{state.value: getattr(r, column) for state, column in SERVER_COUNT_COLUMNS.items()},
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
@click.option("--project", type=PROJECT_ID, help="Only this project id (32 hex).")
@click.option("--source", help="Only this source (an application, schedule:<name>, cli:<user>).")
@click.option("--since", help="Only requests since a time (ISO 8601) or for a duration (2h, 1d).")
@limit_option()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_requests(
    status: str | None,
    project: str | None,
    source: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recent reboot requests, newest first (created: when intake recorded it)."""
    moment = _since(since)
    rows = _read(
        lambda session: recent_requests(
            session,
            status=status,
            project=project,
            source=source,
            since=moment,
            limit=limit,
        )
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no requests")
        return
    click.echo(f"{'REQUEST':<36}  {'STATUS':<16} {'CREATED':<25}  {'SOURCE':<24} SERVERS")
    for r in rows:
        click.echo(
            f"{r['request_id']}  {r['status']:<16} {when(r['created_at']):<25}  "
            f"{r['source']:<24} {r['servers']}: {r['succeeded']} succeeded, {r['failed']} "
            f"failed, {r['unknown']} unknown, {r['cancelled']} cancelled"
            + (f", {r['unhealthy']} unhealthy" if r["unhealthy"] else "")
            + (f", {r['skipped']} skipped" if r["skipped"] else "")
        )


@click.command()
@click.argument("id_", metavar="REQUEST_ID|SERVER_ID", type=REQUEST_OR_SERVER_ID)
@limit_option()
@click.option("--servers", is_flag=True, help="With a request id: each server's events too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history(id_: uuid.UUID, limit: int, servers: bool, as_json: bool) -> None:
    """The history of a request or of a server, newest first.

    A request id: the request's events (every state change of the request and its batches,
    who made it and why: a cancel's reason, an operator's decision). A server id: every reboot
    of that server (when, which request, who asked, the outcome, the job)."""
    from worker.db.status import server_history

    def read(session: Session) -> tuple[str, list[dict[str, Any]]]:
        if session.scalar(select(RebootRequest.id).where(RebootRequest.id == id_)) is not None:
            return "request", request_events(session, id_, servers=servers, limit=limit)
        return "server", server_history(session, str(id_), limit)

    kind, rows = _read(read)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if kind == "request":
        click.echo(f"request {id_}: events, newest first")
        for line in event_lines(rows):
            click.echo(f"  {line}")
        return
    if not rows:
        click.echo(f"no request {id_} and no reboot of server {id_} in the audit database")
        return
    click.echo(f"server {id_}: reboots, newest first")
    for r in rows:
        outcome = r["status"] + (
            f" ({r['error_code']}: {r['fail_reason']})" if r["error_code"] else ""
        )
        click.echo(
            f"  {when(r['requested_at'])}  request {r['request_id']}  by {r['source']}  "
            f"batch {r['batch_index']} job {r['job_id'] or '-'}  {outcome}"
        )
