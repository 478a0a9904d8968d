"""``bmsreboot fleet [check]``: the accounts, regions and projects this deployment serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _file_or_setting(path: str | None) -> Path | None:
    from worker.settings import get_settings

    if path:
        return Path(path)
    return get_settings().fleet_file


def _show(data: dict[str, Any]) -> None:
    accounts = data["accounts"]
    if data["file"] is None:
        click.echo("no fleet file (BMSREBOOT_FLEET_FILE): the settings describe one account")
        account = accounts[0]
        click.echo(f"account {account['name']}: {account['credentials']}")
        projects = account["projects"]
        click.echo(
            "  projects: any the credentials reach"
            if projects is None
            else f"  projects (BMSREBOOT_ALLOWED_PROJECTS): {', '.join(projects)}"
        )
    else:
        count = sum(len(a["projects"]) for a in accounts)
        click.echo(
            f"fleet file {data['file']}: {len(accounts)} accounts, {count} projects in "
            f"{len(data['regions'])} regions"
        )
        for account in accounts:
            click.echo(f"account {account['name']}: {account['credentials']}")
            for project in account["projects"]:
                click.echo(f"  project {project['id']}  {project['region']}")
    for name, region in data["regions"].items():
        overridden = region.get("overridden")
        note = f"  (from the file: {', '.join(overridden)})" if overridden else ""
        click.echo(
            f"region {name}: bms {region['bms']}, iam {region['iam']}, sts {region['sts']}{note}"
        )


def _fleet_command() -> Any:
    @click.group(invoke_without_command=True)
    @click.option("--file", "path", help="The fleet file (default BMSREBOOT_FLEET_FILE).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def fleet(ctx: click.Context, path: str | None, as_json: bool) -> None:
        """Show the accounts, regions and projects this deployment serves: each project's
        region and endpoints, and where each account's credential comes from (never the
        secret). Without a fleet file, the one account the settings describe."""
        if ctx.invoked_subcommand is not None:
            return
        from worker.fleet import FleetError, load_fleet, settings_account
        from worker.settings import get_settings

        settings = get_settings()
        source = _file_or_setting(path)
        if source is None:
            data = settings_account(settings)
        else:
            try:
                loaded = load_fleet(source, settings)
            except FleetError as error:
                for line in error.lines():
                    click.echo(line, err=True)
                raise click.ClickException(
                    f"the fleet file {source} cannot be used: bmsreboot fleet check {source}"
                ) from None
            data = loaded.describe()
            loaded.close()
        if as_json:
            click.echo(json.dumps(data))
        else:
            _show(data)

    @fleet.command()
    @click.argument("path", required=False)
    def check(path: str | None) -> None:
        """Check a fleet file (default BMSREBOOT_FLEET_FILE): one line per problem with its
        line number, exit 1 if there is any. Credentials are built as a worker would (the
        variables and files they name must exist here), without any network call."""
        from worker.fleet import FleetError, load_fleet
        from worker.settings import get_settings

        source = _file_or_setting(path)
        if source is None:
            raise click.ClickException("no fleet file: give FILE or set BMSREBOOT_FLEET_FILE")
        try:
            loaded = load_fleet(source, get_settings())
        except FleetError as error:
            if len(error.problems) == 1 and error.problems[0].line is None:
                # The file itself (missing, unreadable, not text): one line.
                click.echo(error.lines()[0], err=True)
                raise SystemExit(1) from None
            for line in error.lines():
                click.echo(line, err=True)
            count = len(error.problems)
            click.echo(f"{source}: {count} problem{'s' if count > 1 else ''}")
            raise SystemExit(1) from None
        click.echo(
            f"{source}: {len(loaded.accounts)} accounts, {len(loaded.projects)} projects in "
            f"{len(loaded.regions)} regions, no problems"
        )
        loaded.close()

    return fleet


fleet_cli = _fleet_command()
