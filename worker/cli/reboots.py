"""``bmsreboot submit`` and ``bmsreboot status``: the operator's side of the pipeline.

Exit codes of ``submit``: 0 accepted (with ``--wait``: every server succeeded), 1 the request
ended with servers not succeeded, 2 invalid input (recorded as rejected), 3 gave up waiting,
4 no worker recorded the request within ``--timeout``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, TextIO

import click

from worker.bms.client import POWER_TYPES
from worker.cli.errors import audit_database_errors, broker_errors, database_errors, ensure_data_dir
from worker.cli.follow import (
    EXIT_INVALID,
    EXIT_NOT_RECORDED,
    EXIT_WAIT_TIMEOUT,
    NotRecorded,
    exit_code,
)
from worker.cli.params import REQUEST_ID, limit_option
from worker.cli.show import load_status, print_status

#: `submit --wait` gives up after this many seconds unless told otherwise.
WAIT_TIMEOUT = 3600.0
#: How long `submit` waits for a worker to record what it sent before it says none did.
NOTICE_WAIT = 5.0
#: Seconds the CLI waits for Redis to accept a connection or answer: kombu's Redis transport
#: waits forever by default, and a broker that does not answer must be an error, not a hang.
BROKER_SOCKET_TIMEOUT = 5.0


def read_ids(stream: TextIO) -> bytes | list[str]:
    """One id per line; blank lines and ``#`` comments are skipped.

    The ids come back packed (``worker.ids``) when every one is a UUID, so that a file of a
    million ids never becomes a million strings; else as a list, so that the request is
    rejected naming the ids that are not UUIDs."""
    from worker import ids

    packed = bytearray()
    bad: list[str] = []
    for line in stream:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        value = ids.parse(text)
        if value is None:
            bad.append(text)
        else:
            packed += value
    if bad:
        return ids.unpack(bytes(packed)) + bad
    return bytes(packed)


def _celery_app(settings: Any) -> Any:
    """The Celery app a command sends with: the data dir of the embedded defaults created if
    need be, and a Redis that does not answer an error within seconds (a publish is retried
    once; Celery's default is 3 times, kombu's socket timeouts are none)."""
    from worker.celery import ImproperlyConfigured, make_celery_app
    from worker.settings import is_redis_url

    ensure_data_dir(settings)
    try:
        app = make_celery_app(settings)
    except ImproperlyConfigured as error:
        raise click.ClickException(str(error)) from None
    if is_redis_url(settings.effective_broker_url):
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "socket_connect_timeout": BROKER_SOCKET_TIMEOUT,
            "socket_timeout": BROKER_SOCKET_TIMEOUT,
        }
    app.conf.task_publish_retry_policy = {
        "max_retries": 1,
        "interval_start": 0.5,
        "interval_step": 0.5,
        "interval_max": 1,
    }
    return app


@click.command()
@click.option("--project-id", required=True, help="Huawei Cloud project id (32 hex).")
@click.option(
    "--region",
    help="The project's region (cn-north-4), checked against the fleet file: a project in "
    "another region is rejected.",
)
@click.option("--ids-file", type=click.File("r"), help="One server id per line; - for stdin.")
@click.argument("ids", nargs=-1)
@click.option(
    "--type",
    "reboot_type",
    default="HARD",
    show_default=True,
    metavar="HARD|SOFT",
    type=click.Choice(POWER_TYPES, case_sensitive=False),
    help="How to reboot (the API documents SOFT as ineffective on BMS).",
)
@click.option("--idempotency-key", help="The same key never reboots twice.")
@click.option("--batch-size", type=int, help="Servers per API call (at most 1000).")
@click.option("--source", help="Who asks (default cli:<user>).")
@click.option("--notify-task", help="Celery task to receive the final status dict.")
@click.option("--notify-queue", help="Queue of that task (default: celery).")
@click.option(
    "--notify-url",
    metavar="URL",
    help="An http(s) URL that gets this request's webhooks (besides BMSREBOOT_WEBHOOK_URL).",
)
@click.option("--max-in-flight", type=int, help="At most N batches submitted at once.")
@click.option("--canary-size", type=int, help="Batch 0 holds N servers; all must succeed first.")
@click.option(
    "--failure-threshold",
    type=float,
    metavar="PCT",
    help="Halt when more than PCT percent of the servers fail or are unknown.",
)
@click.option(
    "--not-after",
    metavar="TIME|DURATION",
    help="No batch is released after this (2026-11-28T03:00:00Z, or 2h from now).",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Instead of ids: servers with this tag (key=value, or key); repeat for every one.",
)
@click.option("--name", help="Instead of ids: servers whose name holds this.")
@click.option("--enterprise-project-id", help="Instead of ids: servers of this enterprise project.")
@click.option(
    "--no-preflight",
    is_flag=True,
    help="Send each batch without reading its servers' state first (default: read it).",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Count a reboot when its job succeeds, without seeing the server back (default: see it).",
)
@click.option(
    "--no-silence",
    is_flag=True,
    help="No Alertmanager silence of the servers while they reboot (default: one per batch "
    "when BMSREBOOT_ALERTMANAGER_URL is set).",
)
@click.option(
    "--health-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="A rebooted server not back within this is unhealthy (default 1200).",
)
@click.option("--tcp-check", type=int, metavar="PORT", help="Once back, connect to this port.")
@click.option(
    "--http-check",
    metavar="URL",
    help="Once back, GET this URL; 2xx is healthy ({ip}, {id}, {name} are filled in).",
)
@click.option(
    "--soak",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="After each batch is verified, wait this long before the next is sent.",
)
@click.option(
    "--gate-query",
    metavar="PROMQL",
    help="Before each wave: hold the next batches while this returns any series, or "
    "Prometheus cannot say (default: BMSREBOOT_GATE_QUERY, with BMSREBOOT_PROMETHEUS_URL).",
)
@click.option(
    "--gate-exclude",
    metavar="REGEX",
    help="Series whose alertname fully matches this do not hold (alerts the reboots cause).",
)
@click.option(
    "--gate-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Halt the request once its gate has been closed this long (default 3600).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; record and send nothing.")
@click.option("--wait", is_flag=True, help="Follow the request to its end.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=WAIT_TIMEOUT,
    show_default=True,
    help="With --wait: the command ends within this many seconds (0: never).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def submit(
    project_id: str,
    region: str | None,
    ids_file: TextIO | None,
    ids: tuple[str, ...],
    reboot_type: str,
    idempotency_key: str | None,
    batch_size: int | None,
    source: str | None,
    notify_task: str | None,
    notify_queue: str | None,
    notify_url: str | None,
    max_in_flight: int | None,
    canary_size: int | None,
    failure_threshold: float | None,
    not_after: str | None,
    tags: tuple[str, ...],
    name: str | None,
    enterprise_project_id: str | None,
    no_preflight: bool,
    no_verify: bool,
    no_silence: bool,
    health_timeout: float | None,
    tcp_check: int | None,
    http_check: str | None,
    soak: float | None,
    gate_query: str | None,
    gate_exclude: str | None,
    gate_timeout: float | None,
    dry_run: bool,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Submit a reboot request for server IDS (or --ids-file), or for the servers a selector
    names (--tag, --name, --enterprise-project-id: resolved from the server list when a worker
    records the request).

    A worker must be running to record and carry out the request (`celery -A worker worker
    -B`); --wait shows its progress as `watch` does. A rebooted server counts once it is seen
    back (--no-verify: once its job succeeds). Exit codes: 0 sent (with --wait: every server
    succeeded); 1 with --wait, some server did not succeed (failed, unknown, unhealthy,
    cancelled, or the request was halted); 2 the request is invalid (recorded as rejected);
    3 gave up waiting (--timeout); 4 no worker recorded the request within --timeout.
    """
    from worker.pipeline.producer import build_payload, send_payload
    from worker.pipeline.producer import checked as checked_payload
    from worker.settings import get_settings

    started = time.monotonic()
    selector = {
        k: v
        for k, v in (
            ("tags", list(tags)),
            ("name", name),
            ("enterprise_project_id", enterprise_project_id),
        )
        if v
    }
    given = [bool(ids), bool(ids_file), bool(selector)]
    if sum(given) != 1:
        raise click.UsageError(
            "give server ids as arguments, with --ids-file, or by a selector (--tag, --name, "
            "--enterprise-project-id): one of them"
        )
    if tcp_check is not None and http_check is not None:
        raise click.UsageError("give --tcp-check or --http-check, not both")
    health_check: dict[str, Any] | None = None
    if tcp_check is not None:
        health_check = {"tcp_port": tcp_check}
    elif http_check is not None:
        health_check = {"http_url": http_check}
    server_ids: list[str] | bytes | None = None
    if ids or ids_file:
        server_ids = list(ids) if ids else read_ids(ids_file)  # type: ignore[arg-type]
    settings = get_settings()
    payload = build_payload(
        project_id,
        server_ids,
        selector=selector or None,
        preflight=False if no_preflight else None,
        verify=False if no_verify else None,
        silence=False if no_silence else None,
        health_timeout=health_timeout,
        health_check=health_check,
        soak_seconds=soak,
        gate_query=gate_query,
        gate_exclude=gate_exclude,
        gate_timeout=gate_timeout,
        type=reboot_type.upper(),
        idempotency_key=idempotency_key,
        source=source or f"cli:{getpass.getuser()}",
        batch_size=batch_size,
        notify_task=notify_task,
        notify_queue=notify_queue,
        notify_url=notify_url,
        max_in_flight=max_in_flight,
        canary_size=canary_size,
        failure_threshold=failure_threshold,
        not_after=_absolute(not_after),
        region=region,
    )
    checked = checked_payload(payload, settings)
    if dry_run:
        _print_plan(checked, settings, as_json)
        sys.exit(0 if checked.valid else EXIT_INVALID)
    if not checked.valid:
        click.echo("The request is invalid and will be recorded as rejected:", err=True)
        for reason in checked.reasons:
            click.echo(f"  - {reason}", err=True)
    for warning in checked.warnings:
        click.echo(f"warning: {warning}", err=True)

    app = _celery_app(settings)
    if settings.embedded_database and wait:
        # Embedded default: make sure the audit database exists before following the request
        # (a worker started later would create it too).
        from worker.db.session import upgrade_database

        with database_errors(settings.effective_database_url, "BMSREBOOT_DATA_DIR"):
            upgrade_database(settings.effective_database_url)
    with broker_errors(settings):
        send_payload(app, payload)
    app.close()
    request_id = payload["request_id"]
    if not checked.valid:
        _emit({"request_id": request_id, "status": "rejected", "reasons": checked.reasons}, as_json)
        sys.exit(EXIT_INVALID)
    conflict = _conflict(checked)
    if conflict is not None:
        # The worker records the refusal too (under conflict.refused); nothing is rebooted.
        click.echo(f"Error: {conflict.reason}", err=True)
        _emit(
            {
                "request_id": str(conflict.refused),
                "status": "rejected",
                "conflicts_with": str(conflict.existing),
                "reasons": [conflict.reason],
            },
            as_json,
        )
        sys.exit(EXIT_INVALID)
    if not wait:
        recorded = _recorded_within(request_id, NOTICE_WAIT)
        if recorded is None:
            _emit({"request_id": request_id, "status": "sent"}, as_json)
            click.echo(
                f"warning: no worker has recorded request {request_id} within "
                f"{NOTICE_WAIT:.0f} s; is one running? Start one with: celery -A worker worker -B",
                err=True,
            )
            return
        _emit({"request_id": request_id, "status": recorded["status"]}, as_json)
        return
    from worker.cli.watch import follow_request

    if not as_json:
        click.echo(f"request {request_id} sent; waiting for it to finish...", err=True)
    left = max(0.0, timeout - (time.monotonic() - started)) if timeout else None
    try:
        final = follow_request(uuid.UUID(request_id), timeout=left, to_stderr=True)
    except NotRecorded:
        click.echo(
            f"Error: no worker has recorded request {request_id} within {timeout:.0f} s "
            "(--timeout); is one running? Start one with: celery -A worker worker -B "
            "(the request waits in the broker until one does)",
            err=True,
        )
        sys.exit(EXIT_NOT_RECORDED)
    except TimeoutError:
        click.echo(
            f"Error: gave up waiting for request {request_id} after {timeout:.0f} s "
            f"(--timeout); it goes on: bmsreboot watch {request_id}",
            err=True,
        )
        sys.exit(EXIT_WAIT_TIMEOUT)
    if as_json:
        click.echo(json.dumps(final, indent=2))
    else:
        print_status(final)
    sys.exit(exit_code(final))


def _conflict(checked: Any) -> Any:
    """The recorded request whose id or key this one reuses with another payload, if any
    (None also when the audit database cannot be read: the worker still refuses it)."""
    from sqlalchemy.exc import SQLAlchemyError

    from worker.db.session import get_engine, unit_of_work
    from worker.pipeline.intake import conflict_of
    from worker.settings import get_settings

    try:
        with unit_of_work(get_engine(get_settings().effective_database_url)) as session:
            return conflict_of(session, checked)
    except SQLAlchemyError:
        return None


def _recorded_within(request_id: str, seconds: float) -> dict[str, Any] | None:
    """The request's status once a worker has recorded it, or None after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            status = load_status(request_id)
        except click.ClickException:
            status = None
        if status is not None or time.monotonic() >= deadline:
            return status
        time.sleep(0.2)


def _absolute(not_after: str | None) -> str | None:
    """A duration (2h) becomes a time now, so the request carries when it was meant."""
    from datetime import UTC, datetime

    from worker.pipeline.validation import parse_duration

    if not_after is None:
        return None
    duration = parse_duration(not_after)
    if duration is None or duration.total_seconds() <= 0:
        return not_after  # validation says what is wrong with it
    return (datetime.now(UTC) + duration).isoformat()


def _print_plan(checked: Any, settings: Any, as_json: bool) -> None:
    from worker.pipeline.control import learned_boot_for, learned_for, plan

    if checked.valid and checked.selector is not None:
        checked = _resolve_for_plan(checked, settings)
    learned = learned_for(checked.project_id, settings) if checked.valid else None
    boot = learned_boot_for(checked.project_id, settings) if checked.valid else None
    data = plan(checked, settings, learned=learned, boot=boot)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"dry run: nothing recorded, nothing sent (request {data['request_id']})")
    if not checked.valid:
        click.echo("the request is invalid:")
        for reason in checked.reasons:
            click.echo(f"  - {reason}")
        return
    click.echo(
        f"{data['servers']} servers in {data['batch_count']} batches"
        + (
            f" ({data['duplicates_removed']} duplicates removed)"
            if data["duplicates_removed"]
            else ""
        )
    )
    if data["canary"]:
        click.echo(f"canary: batch 0 of {data['canary']['size']} servers, all must succeed")
    policy = ", ".join(
        f"{k} {v}" for k, v in data["policy"].items() if v is not None and k != "gate"
    )
    click.echo(f"policy: {policy}")
    if gate := data["policy"]["gate"]:
        excluding = f" (alertnames {gate['exclude']} left out)" if gate["exclude"] else ""
        click.echo(
            f"gate: {gate['query']}{excluding}; halts after {gate['timeout']:g} s closed",
        )
    estimate = data["estimate"]
    boot_text = (
        f" + {estimate['boot_s']:.0f} s for servers to come back ({estimate['boot_from']})"
        if estimate["boot_s"] is not None
        else ""
    )
    click.echo(
        f"estimate: POSTs over {estimate['submission_span_s']} s at "
        f"{estimate['action_budget_per_minute']}/min"
        + (
            f"; about {estimate['total_s']} s in all (jobs of {estimate['job_duration_s']:.1f} s"
            f" learned from the project's recent jobs{boot_text} per wave)"
            if estimate["total_s"] is not None
            else "; job duration unknown (no history for this project)"
        )
    )
    if estimate["batches_cut_off"]:
        click.echo(f"warning: {estimate['batches_cut_off']} batches would come after not_after")


def _resolve_for_plan(checked: Any, settings: Any) -> Any:
    """A dry run shows what a selector names now: the list is read with this machine's
    credentials, through the project's list budget (as a worker would at intake)."""
    from worker.bms.client import BmsClient
    from worker.bms.errors import ConfigurationError
    from worker.db.session import get_engine
    from worker.fleet import Fleet, load_fleet
    from worker.pipeline.intake import resolve_selector
    from worker.pipeline.inventory import InventoryUnavailable
    from worker.pipeline.runtime import RecordingDispatcher, Runtime
    from worker.pipeline.tasking import _budget

    client: BmsClient | None = None
    fleet: Fleet | None = None
    try:
        if settings.fleet_file is not None:
            fleet = load_fleet(settings.fleet_file, settings)
            fleet.client_for(checked.project_id)  # its credentials, before any budget slot
        else:
            client = BmsClient.from_settings(settings)
    except ConfigurationError as error:
        if fleet is not None:
            fleet.close()
        raise click.ClickException(f"the selector cannot be resolved here: {error}") from None

    def the_client() -> BmsClient:
        assert client is not None
        return client

    rt = Runtime(
        settings=settings,
        engine=get_engine(settings.effective_database_url),
        client=the_client,
        dispatcher=RecordingDispatcher(),
        actor="cli:dry-run",
        budget=_budget(),
        fleet=fleet,
    )
    try:
        return resolve_selector(checked, rt)
    except InventoryUnavailable as error:
        raise click.ClickException(f"the server list could not be read: {error}") from None
    finally:
        if client is not None:
            client.close()
        if fleet is not None:
            fleet.close()


def _emit(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(f"request {data['request_id']}: {data['status']}")


@click.command()
@click.argument("request_id", type=REQUEST_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the status dict as JSON.")
@click.option("--servers", is_flag=True, help="Include per-server results.")
@click.option(
    "--events",
    "with_events",
    is_flag=True,
    help="Include the request's and its batches' events: who cancelled or resolved what, why.",
)
@limit_option()
def status(
    request_id: uuid.UUID, as_json: bool, servers: bool, with_events: bool, limit: int
) -> None:
    """Show a reboot request's status from the audit database (--limit: events shown with
    --events, newest first; `history REQUEST_ID --servers` adds each server's events)."""
    data = load_status(request_id, servers=servers, events=limit if with_events else 0)
    if data is None:
        raise click.ClickException(f"no request {request_id} in the audit database")
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        print_status(data)


def _cli_runtime(actor: str) -> Any:
    """A runtime for a command that changes state: the configured database and broker."""
    from worker.db.session import get_engine
    from worker.pipeline.runtime import Runtime
    from worker.pipeline.tasking import CeleryDispatcher, _budget
    from worker.settings import get_settings

    settings = get_settings()
    app = _celery_app(settings)

    def no_client() -> Any:
        raise RuntimeError("this command makes no API call")

    return Runtime(
        settings=settings,
        engine=get_engine(settings.effective_database_url),
        client=no_client,
        dispatcher=CeleryDispatcher(app, callback_expires=settings.callback_expires),
        actor=actor,
        budget=_budget(),
        # The projects' regions and endpoints (the budgets' keys), no credentials: no API call.
        fleet=_fleet_without_credentials(settings),
    )


def _fleet_without_credentials(settings: Any) -> Any:
    from worker.fleet import FleetError, read_scope

    try:
        return read_scope(settings)
    except FleetError as error:
        raise click.ClickException(f"{error}: see `bmsreboot fleet check {error.path}`") from None


@contextlib.contextmanager
def _changing(settings: Any) -> Iterator[None]:
    """Around a command that changes state: the audit database and the broker, one line each
    when they fail."""
    with audit_database_errors(settings.effective_database_url), broker_errors(settings):
        yield


def _actor(actor: str | None) -> str:
    return actor or f"cli:{getpass.getuser()}"


@click.command()
@click.argument("request_id", type=REQUEST_ID)
@click.option("--reason", help="Why (recorded with who asked).")
@click.option("--actor", help="Who asks (default cli:<user>).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cancel(request_id: uuid.UUID, reason: str | None, actor: str | None, as_json: bool) -> None:
    """Cancel a request: pending batches are cancelled, submitted ones followed to their end.
    Idempotent: a finished request says so and nothing changes."""
    from worker.pipeline.control import cancel as cancel_request
    from worker.settings import get_settings

    with _changing(get_settings()):
        result = cancel_request(
            request_id, _cli_runtime(_actor(actor)), reason=reason, actor=_actor(actor)
        )
    if result["status"] is None:
        raise click.ClickException(result["message"])
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"request {request_id}: {result['message']}")


@click.command("resolve-unknown")
@click.argument("request_id", type=REQUEST_ID)
@click.option("--batch", "batch_index", type=int, help="Only this batch (its index).")
@click.option(
    "--as",
    "decision",
    required=True,
    type=click.Choice(["succeeded", "failed", "resubmit"]),
    help="What you found, or send the batch again (the only way it is ever resent).",
)
@click.option("--reason", required=True, help="What you checked (recorded).")
@click.option("--actor", help="Who decides (default cli:<user>).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def resolve_unknown(
    request_id: uuid.UUID,
    batch_index: int | None,
    decision: str,
    reason: str,
    actor: str | None,
    as_json: bool,
) -> None:
    """Record what happened to a request's unknown (or timed out) batches."""
    from worker.pipeline.control import NothingToResolve, resolve
    from worker.settings import get_settings

    try:
        with _changing(get_settings()):
            result = resolve(
                request_id,
                _cli_runtime(_actor(actor)),
                decision=decision,
                reason=reason,
                actor=_actor(actor),
                batch_index=batch_index,
            )
    except NothingToResolve as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"request {request_id}: batches {result['batches']} recorded as {decision}; "
            f"request {result['status']}"
        )
