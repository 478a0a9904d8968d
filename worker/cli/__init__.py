"""The ``bmsreboot`` command line (also ``python -m worker``).

Every command lives in this package (one module per area; the plain functions they call live
with their concern: ``worker.pipeline``, ``worker.db``, ...); this module assembles them.
"""

from __future__ import annotations

import click

from worker import __version__
from worker.cli.api import api
from worker.cli.db import db
from worker.cli.deadletters import dead_letters
from worker.cli.demo import demo
from worker.cli.errors import OneLineGroup
from worker.cli.fleet import fleet_cli
from worker.cli.metrics import metrics_cli
from worker.cli.reading import history, list_requests
from worker.cli.reboots import cancel, resolve_unknown, status, submit
from worker.cli.schedules import schedules_cli
from worker.cli.simulator import simulator
from worker.cli.watch import watch
from worker.cli.webhooks import webhooks_cli


@click.command()
def schema() -> None:
    """Print the JSON Schema of the intake message (for producers in any language)."""
    import json

    from worker.pipeline.message import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bmsreboot")
def cli() -> None:
    """Reboot Huawei Cloud bare-metal servers at fleet scale, with an audit trail.

    Every error is one line on stderr with a non-zero exit code (2: a usage error)."""


for command in (
    api,
    db,
    simulator,
    submit,
    status,
    watch,
    list_requests,
    history,
    cancel,
    resolve_unknown,
    schedules_cli,
    fleet_cli,
    schema,
    demo,
    dead_letters,
    metrics_cli,
    webhooks_cli,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="bmsreboot")
