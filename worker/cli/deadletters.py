"""``bmsreboot dead-letters``: the broker messages the worker could not read."""

from __future__ import annotations

import json

import click

from worker.cli.errors import audit_database_errors
from worker.cli.params import limit_option
from worker.deadletter import as_dict, recent


@click.command("dead-letters")
@limit_option()
@click.option("--raw", "with_raw", is_flag=True, help="With --json: each message's bytes, base64.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dead_letters(limit: int, with_raw: bool, as_json: bool) -> None:
    """List broker messages the worker could not read (moved aside, never lost), newest
    first."""
    from worker.db.session import get_engine
    from worker.settings import get_settings

    url = get_settings().effective_database_url
    with audit_database_errors(url):
        letters = recent(get_engine(url), limit)
    rows = [as_dict(letter, with_raw=with_raw) for letter in letters]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no dead letters")
        return
    for row in rows:
        click.echo(
            f"{row['id']:>6}  {row['received_at']}  queue {row['queue'] or '-'}  "
            f"task {row['task'] or '-'}  {row['size']} bytes\n"
            f"        error: {row['error']}\n        raw:   {row['excerpt']!r}"
        )
