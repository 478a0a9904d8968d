"""The ``bmsreboot`` command line (also ``python -m worker``).

Each area keeps its commands beside its code; this module only assembles them.
"""

from __future__ import annotations

import click

from worker import __version__
from worker.bms.cli import api
from worker.db.cli import db
from worker.deadletter import dead_letters
from worker.metrics import metrics_cli
from worker.pipeline.cli import cancel, resolve_unknown, status, submit
from worker.pipeline.demo import demo
from worker.pipeline.reading import history, list_requests
from worker.schedules import schedules_cli
from worker.simulator.cli import simulator


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bmsreboot")
def cli() -> None:
    """Reboot Huawei Cloud bare-metal servers at fleet scale, with an audit trail."""


for command in (
    api,
    db,
    simulator,
    submit,
    status,
    list_requests,
    history,
    cancel,
    resolve_unknown,
    schedules_cli,
    demo,
    dead_letters,
    metrics_cli,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="bmsreboot")
