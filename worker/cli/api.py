"""``bmsreboot api ...``: read-only direct calls to the BMS API, for operators.

Endpoint and credentials come from the environment (:class:`~worker.settings.Settings`), exactly
as the workers read them, so ``bmsreboot api job`` checks what a worker would see.
"""

from __future__ import annotations

import json

import click

from worker.bms.client import BmsClient
from worker.bms.errors import BmsError
from worker.cli.errors import OneLineGroup
from worker.cli.params import JOB_ID, PROJECT_ID
from worker.fleet import FleetError, load_fleet
from worker.settings import Settings


@click.group(cls=OneLineGroup)
def api() -> None:
    """Direct, read-only calls to the BMS API (debugging aid)."""


@api.command()
@click.argument("project_id", type=PROJECT_ID)
@click.argument("job_id", type=JOB_ID)
def job(project_id: str, job_id: str) -> None:
    """Print a job (GET /v1/PROJECT_ID/jobs/JOB_ID) as the API's JSON."""
    settings = Settings()
    try:
        if settings.fleet_file is not None:
            # The project's own account and region, as a worker would reach it.
            fleet = load_fleet(settings.fleet_file, settings)
            try:
                raw = fleet.client_for(project_id).get_job_raw(project_id, job_id)
            finally:
                fleet.close()
        else:
            with BmsClient.from_settings(settings) as client:
                raw = client.get_job_raw(project_id, job_id)
    except FleetError as error:
        raise click.ClickException(f"{error}: see `bmsreboot fleet check {error.path}`") from None
    except BmsError as error:
        fields = {
            "status": error.status,
            "code": error.code,
            "message": error.message,
            "request_id": error.request_id,
        }
        details = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        click.echo(f"{type(error).__name__}: {details}", err=True)
        raise SystemExit(1) from None
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    click.echo(json.dumps(raw, indent=2, ensure_ascii=False))
