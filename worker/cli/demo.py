"""``bmsreboot demo``: the whole pipeline on one machine, against the built-in simulator.

It starts the simulator (rate limits on, as documented for the real API) with an inventory of
twice as many servers as asked for, half of them tagged ``env=prod``; a real Celery worker
process; sends one request for the ``env=prod`` servers (a selector, resolved from the server
list) the way another application would; follows it in the audit database (each batch's
servers are read from the inventory before its POST) and finally proves from the simulator's
own counters that exactly those servers were rebooted, none twice.
With nothing configured it runs on the embedded defaults (SQLite audit database and broker in
``<data dir>/demo``); with ``BMSREBOOT_BROKER_URL``/``BMSREBOOT_DATABASE_URL`` set it uses them.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import click

from worker.cli.errors import safe_url
from worker.cli.localworker import WorkerDidNotStart, start_worker, stop_worker
from worker.simulator.config import DEFAULT_AK, DEFAULT_PROJECT_ID, DEFAULT_SK, SimulatorConfig
from worker.simulator.inventory import server_id

#: The servers the demo reboots: every one tagged env=prod (half of the simulator's).
SELECTOR = {"tags": ["env=prod"]}
#: Clocks for a demo that ends in a minute: the simulator's jobs take a few seconds.
#: Seconds a demo server takes to come back after its job (a real one takes minutes).
DEMO_BOOT_SECONDS = 3.0
DEMO_ENV = {
    "BMSREBOOT_POLL_FIRST_DELAY": "1",
    "BMSREBOOT_POLL_MAX_INTERVAL": "3",
    # The demo's servers boot in a few seconds (DEMO_BOOT_SECONDS), not minutes.
    "BMSREBOOT_VERIFY_FIRST_DELAY": "2",
    "BMSREBOOT_VERIFY_MAX_INTERVAL": "2",
    "BMSREBOOT_SUBMIT_RETRY_BASE": "1",
    "BMSREBOOT_SUBMIT_RETRY_MAX": "10",
}


def _line(status: dict[str, Any]) -> str:
    counts = status["servers"]
    batches: dict[str, int] = {}
    for b in status["batches"]:
        batches[b["status"]] = batches.get(b["status"], 0) + 1
    return (
        f"{status['status']:>16}  batches "
        + ", ".join(f"{n} {s}" for s, n in sorted(batches.items()))
        + f"  | servers {counts['succeeded']} succeeded, {counts['failed']} failed, "
        f"{counts['unknown']} unknown, {counts['verifying']} verifying, "
        f"{counts['pending']} pending"
    )


def demo_simulator_config(
    fail_fraction: float,
    *,
    inventory_servers: int = 0,
    inventory: str | None = None,
    boot_seconds: float = 0.0,
) -> SimulatorConfig:
    """The demo's simulator: jobs of a few seconds, rate limits on. ``inventory_servers`` (N
    generated servers per project) or ``inventory`` (a JSON-lines file) gives it servers; without
    either it takes any server id, as the demo's random ids need."""
    return SimulatorConfig(
        job_duration=4.0,
        job_jitter=2.0,
        fail_fraction=fail_fraction,
        servers=inventory_servers,
        inventory=inventory,
        boot_seconds=boot_seconds,
    )


def run_demo(
    servers: int,
    fail_fraction: float,
    timeout: float,
    *,
    simulator_config: SimulatorConfig | None = None,
) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from worker.celery import make_celery_app
    from worker.cli.follow import follow, summary
    from worker.cli.show import print_status
    from worker.db.session import get_engine, unit_of_work, upgrade_database
    from worker.db.status import request_status
    from worker.pipeline.producer import build_payload, send_payload
    from worker.settings import Settings
    from worker.simulator.server import SimulatorServer

    base = Settings()
    data_dir = base.data_dir / "demo"
    data_dir.mkdir(parents=True, exist_ok=True)
    # Generated servers alternate env=prod and env=staging: twice as many as asked for, and
    # the selector names exactly the asked-for half (worker.simulator.inventory).
    sim_config = simulator_config or demo_simulator_config(
        fail_fraction, inventory_servers=2 * servers, boot_seconds=DEMO_BOOT_SECONDS
    )
    with SimulatorServer(sim_config) as simulator:
        click.echo(
            f"simulator: {simulator.base_url} (rate limits on: 50/min action, 2000/min jobs)"
        )
        env = dict(os.environ)
        env.update(DEMO_ENV)
        env.update(
            {
                "BMSREBOOT_DATA_DIR": str(data_dir),
                "BMSREBOOT_BMS_ENDPOINT": simulator.base_url,
                "HUAWEICLOUD_SDK_AK": DEFAULT_AK,
                "HUAWEICLOUD_SDK_SK": DEFAULT_SK,
            }
        )
        settings = Settings(
            data_dir=data_dir, broker_url=base.broker_url, database_url=base.database_url
        )
        upgrade_database(settings.effective_database_url)
        click.echo(f"audit database: {safe_url(settings.effective_database_url)}")
        click.echo(f"broker: {safe_url(settings.effective_broker_url)}")
        log_path = data_dir / "worker.log"
        click.echo(f"starting a worker (log: {log_path}) ...")
        try:
            worker = start_worker(env, log_path, f"demo-{uuid.uuid4().hex[:6]}")
        except WorkerDidNotStart:
            raise click.ClickException(f"the worker did not start; its log: {log_path}") from None
        try:
            payload = build_payload(DEFAULT_PROJECT_ID, selector=SELECTOR, source="bmsreboot demo")
            app = make_celery_app(settings)
            send_payload(app, payload)
            request_id = payload["request_id"]
            click.echo(
                f"request {request_id}: the servers tagged {SELECTOR['tags'][0]} "
                f"({servers} of the simulator's {2 * servers}), sent to the intake queue"
            )
            if fail_fraction:
                click.echo(
                    f"the simulator fails about {fail_fraction:.0%} of the reboots on purpose "
                    "(BMS.0036, as a real server powering off would): those servers will end "
                    "`failed`, as expected; --fail-fraction 0 turns this off"
                )
            engine = get_engine(settings.effective_database_url)
            last = ""

            def load() -> dict[str, Any] | None:
                with unit_of_work(engine) as session:
                    return request_status(session, uuid.UUID(request_id))

            console = Console()
            # A terminal gets live bars; a log or a pipe gets a line per change.
            bars = Progress(
                TextColumn("{task.description:>8}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                console=console,
                disable=not console.is_terminal,
            )
            batches_bar = bars.add_task("batches", total=None, detail="")
            servers_bar = bars.add_task("servers", total=None, detail="")

            def show(current: dict[str, Any] | None) -> None:
                nonlocal last
                if current is None:
                    return
                counts = summary(current)
                states = current["servers"]
                bars.update(
                    batches_bar,
                    total=counts["batches_total"],
                    completed=counts["batches_done"],
                    detail=f"{counts['batches_in_flight']} in flight",
                )
                bars.update(
                    servers_bar,
                    total=counts["servers_total"],
                    completed=counts["servers_done"],
                    detail=f"{states['succeeded']} succeeded, {states['failed']} failed, "
                    f"{states['unknown']} unknown, {states['verifying']} coming back",
                )
                line = _line(current)
                if not console.is_terminal and line != last:
                    click.echo(line)
                    last = line

            try:
                with bars:
                    status = follow(load, timeout=timeout, interval=0.5, on_status=show)
            except TimeoutError:
                raise click.ClickException(
                    f"the request did not finish in {timeout:.0f} s"
                ) from None
            click.echo("")
            print_status(status)
            import requests

            stats = requests.get(f"{simulator.base_url}/_simulator/stats", timeout=30).json()
            reboots: dict[str, int] = stats["reboots"]
            twice = [s for s, n in reboots.items() if n > 1]
            injected = status["servers"]["failed"]
            click.echo(
                f"\nsimulator: {len(reboots)} servers rebooted, {len(twice)} more than once"
                + (f"; {injected} failed as injected (expected)" if injected else "")
            )
            command = shutil.which("bmsreboot") or str(Path(sys.argv[0]).resolve())
            click.echo(
                f"see: BMSREBOOT_DATA_DIR={data_dir} {command} status {request_id} --servers"
            )
            app.close()
            wanted = {server_id(DEFAULT_PROJECT_ID, i) for i in range(1, 2 * servers + 1, 2)}
            return 0 if not twice and set(reboots) <= wanted and len(reboots) == servers else 1
        finally:
            stop_worker(worker)


@click.command()
@click.option(
    "--servers",
    type=click.IntRange(min=1),
    default=2500,
    show_default=True,
    help="How many servers to reboot.",
)
@click.option(
    "--fail-fraction",
    type=click.FloatRange(0, 1),
    default=0.02,
    show_default=True,
    help="Share of servers whose reboot the simulator fails (0 to 1).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds to wait.",
)
def demo(servers: int, fail_fraction: float, timeout: float) -> None:
    """Run the whole pipeline against the built-in simulator."""
    sys.exit(run_demo(servers, fail_fraction, timeout))
