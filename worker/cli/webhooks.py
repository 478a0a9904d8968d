"""``bmsreboot webhooks``: the outbox of webhook and chat deliveries, newest first.

One line per delivery after a header: when the event happened, its type, the request, the
destination (its credentials masked), the status, the attempts, and when it was delivered or
is next due, then the last error. Times are ISO 8601 with their zone (UTC). ``--json`` prints
the same as a list of objects. Reads the audit database only; an error is one line."""

from __future__ import annotations

import json
import uuid
from typing import Any

import click

from worker.cli.errors import audit_database_errors
from worker.cli.params import REQUEST_ID, limit_option
from worker.cli.reading import when


def _when(row: dict[str, Any]) -> str:
    if row["status"] == "delivered":
        return when(row["delivered_at"])
    if row["status"] == "pending":
        return "next " + when(row["next_attempt_at"])
    return when(row["last_attempt_at"])


@click.command("webhooks")
@click.option("--failed", is_flag=True, help="Only deliveries given up on (failed).")
@click.option("--request", "request_id", type=REQUEST_ID, help="Only this request's (a UUID).")
@limit_option()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def webhooks_cli(failed: bool, request_id: uuid.UUID | None, limit: int, as_json: bool) -> None:
    """List webhook and chat deliveries, newest first: event, request, destination
    (credentials masked), status, attempts, last error."""
    from worker.db.session import get_engine, unit_of_work
    from worker.settings import get_settings
    from worker.webhooks.outbox import recent

    url = get_settings().effective_database_url
    with audit_database_errors(url), unit_of_work(get_engine(url)) as session:
        rows = recent(session, failed=failed, request_id=request_id, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no deliveries")
        return
    click.echo(
        f"{'ID':>6}  {'EVENT AT':<25}  {'TYPE':<26} {'REQUEST':<36}  {'STATUS':<9} "
        f"{'ATTEMPTS':>8}  {'DELIVERED / NEXT / LAST':<30} DESTINATION  LAST ERROR"
    )
    for r in rows:
        error = r["last_error"] or "-"
        click.echo(
            f"{r['id']:>6}  {when(r['created_at']):<25}  {r['type']:<26} {r['request_id']}  "
            f"{r['status']:<9} {r['attempts']:>8}  {_when(r):<30} {r['destination']}  {error}"
        )
