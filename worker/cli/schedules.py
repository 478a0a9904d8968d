"""``bmsreboot schedules [check]``: the scheduled reboots and their last ticks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from worker.fleet import served_by
from worker.schedules import ScheduleFileError, load, load_entries


def _file_or_setting(path: str | None) -> Path:
    import click

    from worker.settings import get_settings

    if path:
        return Path(path)
    configured = get_settings().schedule_file
    if configured is None:
        raise click.ClickException("no schedule file: give FILE or set BMSREBOOT_SCHEDULE_FILE")
    return configured


def _last_ticks(names: list[str], per_entry: int) -> dict[str, list[dict[str, Any]]]:
    """The latest ticks of each entry with their requests' statuses (empty if the audit
    database cannot be read)."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from worker.db.models import RebootRequest, ScheduleTick
    from worker.db.session import get_engine, unit_of_work
    from worker.settings import get_settings

    out: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        with unit_of_work(get_engine(get_settings().effective_database_url)) as session:
            for name in names:
                rows = session.execute(
                    select(ScheduleTick, RebootRequest.status)
                    .outerjoin(RebootRequest, RebootRequest.id == ScheduleTick.request_id)
                    .where(ScheduleTick.name == name)
                    .order_by(ScheduleTick.tick_at.desc())
                    .limit(per_entry)
                ).all()
                out[name] = [
                    {
                        "tick": tick.tick_at.isoformat(),
                        "status": tick.status,
                        "request_id": str(tick.request_id) if tick.request_id else None,
                        "request_status": str(status) if status else None,
                        "detail": tick.detail,
                    }
                    for tick, status in rows
                ]
    except SQLAlchemyError:
        pass
    return out


def _outcome(tick: dict[str, Any]) -> str:
    """What a recorded tick did: its request and the request's status, or why it did not
    fire."""
    if tick["status"] == "fired" and tick["request_id"]:
        return f"request {tick['request_id']}  {tick['request_status'] or 'not recorded yet'}"
    request = f"request {tick['request_id']}  " if tick["request_id"] else ""
    return f"{request}{tick['status']}: {tick['detail'] or 'no reason recorded'}"


def _schedules_command() -> Any:
    import json

    import click

    @click.group(invoke_without_command=True)
    @click.option("--file", "path", help="The schedule file (default BMSREBOOT_SCHEDULE_FILE).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def schedules(ctx: click.Context, path: str | None, as_json: bool) -> None:
        """List the scheduled reboots: next ticks (local time and UTC) and the requests their
        last ticks created."""
        if ctx.invoked_subcommand is not None:
            return
        from worker.settings import get_settings

        source = _file_or_setting(path)
        scope, unread = served_by(get_settings())
        try:
            entries, problems = load_entries(source, get_settings().schedule_ids_dir, scope)
        except ScheduleFileError as exc:
            raise click.ClickException(str(exc)) from None
        if unread:
            problems.append(f"fleet file: {unread}")
        now = dt.datetime.now(dt.UTC)
        last = _last_ticks([e.name for e in entries], 3)
        rows: list[dict[str, Any]] = [
            {
                "name": e.name,
                "cron": e.cron,
                "timezone": e.timezone,
                "enabled": e.enabled,
                "concurrency": e.concurrency,
                "project_id": e.project_id,
                "servers": (
                    len(e.servers)
                    if e.servers is not None
                    else {"selector": e.selector}
                    if e.selector is not None
                    else str(e.servers_file)
                ),
                "window": e.window.total_seconds() if e.window else None,
                # A disabled entry has no next tick: it fires none.
                "next_ticks": [
                    {"local": t.isoformat(), "utc": t.astimezone(dt.UTC).isoformat()}
                    for t in (e.next_ticks(now) if e.enabled else [])
                ],
                "last_ticks": last[e.name],
            }
            for e in entries
        ]
        if as_json:
            click.echo(json.dumps({"file": str(source), "schedules": rows, "problems": problems}))
            return
        for row in rows:
            state = "enabled" if row["enabled"] else "disabled: no tick fires"
            click.echo(
                f"{row['name']}  ({state})  cron {row['cron']!r} {row['timezone']}"
                f"  concurrency {row['concurrency']}"
            )
            for tick in row["next_ticks"]:
                click.echo(f"  next  {tick['local']}  ({tick['utc']} UTC)")
            for tick in row["last_ticks"]:
                click.echo(f"  last  {tick['tick']}  {_outcome(tick)}")
        for problem in problems:
            click.echo(f"problem: {problem}", err=True)

    @schedules.command()
    @click.argument("path", required=False)
    def check(path: str | None) -> None:
        """Check a schedule file: one line per problem; exit 1 if there is any."""
        from worker.settings import get_settings

        source = _file_or_setting(path)
        scope, unread = served_by(get_settings())
        entries, problems = load(source, get_settings().schedule_ids_dir, scope)
        if unread:
            problems.append(f"fleet file: {unread}")
        for problem in problems:
            click.echo(problem, err=True)
        click.echo(f"{source}: {len(entries)} valid entries, {len(problems)} problems")
        if problems:
            raise SystemExit(1)

    return schedules


schedules_cli = _schedules_command()
