"""``bmsreboot simulator``: run the local BMS API simulator in the foreground.

Every ``SimulatorConfig`` field is an option (``fail_servers`` -> ``--fail-servers``; repeat it
or separate values with commas; ``credentials``/``iam_users``/``projects`` take ``KEY=VALUE``;
rate limits take a number or ``none``; ``--servers N`` or ``--inventory FILE`` gives it servers).
The first line on stdout is exactly
``bmsreboot simulator listening on http://HOST:PORT`` so a parent process can read the base URL.
With ``--verbose`` one line per request goes to stderr: method, path, status, time; never
headers or bodies, which carry signatures, tokens and passwords.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from worker.cli.errors import port_errors
from worker.simulator.config import (
    DEFAULT_AK,
    DEFAULT_PROJECT_ID,
    DEFAULT_SK,
    FIELD_NAMES,
    SimulatorConfig,
    patched,
    to_json,
)
from worker.simulator.server import SimulatorServer

#: Knobs that hold several values: the option repeats.
_MULTIPLE = frozenset(
    {
        "fail_servers",
        "unknown_servers",
        "stuck_servers",
        "credentials",
        "iam_users",
        "projects",
        "no_return_servers",
        "denied_permissions",
        "agencies",
    }
)
#: Every rate limit, for --no-rate-limit.
_RATE_LIMITS = ("action_rate_limit", "job_rate_limit", "list_rate_limit", "server_rate_limit")
_HELP = {
    "job_duration": "Seconds from job creation to its end (INIT for the first tenth).",
    "job_jitter": "Up to this many extra seconds per job (fixed per job id).",
    "fail_fraction": "Share of servers that fail, chosen by sha256 of the server id.",
    "fail_servers": "Server ids whose sub-job always fails.",
    "fail_code": "Error code of failed sub-jobs (BMS.0035/0036/0037/0038/0039).",
    "unknown_servers": "Server ids answered with 400 BMS.0040.",
    "stuck_servers": "Server ids whose jobs never finish.",
    "action_rate_limit": "Power actions per minute per project, or 'none'.",
    "job_rate_limit": "Job polls per minute per project, or 'none'.",
    "list_rate_limit": "Server list calls per minute per project, or 'none'.",
    "server_rate_limit": "One-server detail calls per minute per project, or 'none'.",
    "rate_limit_scale": "Multiplier of every rate limit.",
    "retry_after": "Seconds sent as Retry-After with a 429, or 'none' for no header.",
    "fault_5xx": "Probability of a 500 (nothing accepted) on actions and polls.",
    "drop_after_accept": "Probability that an accepted action gets no answer.",
    "latency": "Seconds added to every API answer.",
    "seed": "Seed of the random source (job ids, random faults), or 'none'.",
    "credentials": "Accepted AK=SK pairs (replace the default).",
    "iam_users": "Accepted DOMAIN/USER=PASSWORD logins (replace the default).",
    "projects": "Known NAME=ID projects for token scopes by name.",
    "token_ttl": "Seconds an IAM token stays valid.",
    "job_ttl": "Seconds a finished job stays visible before it is purged (404).",
    "ak_lockout_failures": "Consecutive signature failures before an AK is locked, or 'none'.",
    "ak_lockout_seconds": "Seconds an AK stays locked.",
    "servers": "Generate N servers in every project (bms-00001...; tags env, role, rack; "
    "three enterprise projects). 0: no inventory, any id is taken.",
    "inventory": "A JSON-lines file of servers (id, name, tags, enterprise_project_id, locked, "
    "status, host_status, ...); excludes --servers.",
    "boot_seconds": "Seconds a rebooted server stays HARD_REBOOT after its job ends, before "
    "it is ACTIVE again.",
    "no_return_fraction": "Share of rebooted servers that end ERROR instead (by sha256).",
    "no_return_servers": "Server ids that end ERROR after a reboot.",
    "denied_permissions": "IAM permissions the caller lacks, refused with 403: "
    "bms:servers:list, bms:servers:get.",
    "metadata_credential_ttl": "Seconds a metadata-service credential stays valid.",
    "metadata_agency": "on: the host has an agency; off: the metadata service answers 401.",
    "agency_credential_ttl": "Seconds an assumed agency's credential stays valid, or 'none' "
    "for the request's duration_seconds.",
    "agencies": "Agency URNs STS knows (none given: any).",
    "security_token": "on: a temporary AK needs its X-Security-Token, signed and unexpired; "
    "off: a missing or unsigned one is let through.",
    "sts_secret": "Seals temporary credentials; simulators sharing it accept each other's.",
}
assert set(_HELP) == set(FIELD_NAMES), "every knob needs a CLI option"
#: What each knob takes, for --help (every option is parsed by the knob's own converter).
_METAVAR = {
    "job_duration": "SECONDS",
    "job_jitter": "SECONDS",
    "fail_fraction": "FRACTION",
    "fail_servers": "ID",
    "fail_code": "CODE",
    "unknown_servers": "ID",
    "stuck_servers": "ID",
    "action_rate_limit": "N|none",
    "job_rate_limit": "N|none",
    "list_rate_limit": "N|none",
    "server_rate_limit": "N|none",
    "rate_limit_scale": "FACTOR",
    "retry_after": "SECONDS|none",
    "fault_5xx": "PROBABILITY",
    "drop_after_accept": "PROBABILITY",
    "latency": "SECONDS",
    "seed": "N|none",
    "credentials": "AK=SK",
    "iam_users": "DOMAIN/USER=PASSWORD",
    "projects": "NAME=ID",
    "token_ttl": "SECONDS",
    "job_ttl": "SECONDS",
    "ak_lockout_failures": "N|none",
    "ak_lockout_seconds": "SECONDS",
    "servers": "N",
    "inventory": "FILE",
    "boot_seconds": "SECONDS",
    "no_return_fraction": "FRACTION",
    "no_return_servers": "ID",
    "denied_permissions": "PERMISSION",
    "metadata_credential_ttl": "SECONDS",
    "metadata_agency": "on|off",
    "agency_credential_ttl": "SECONDS|none",
    "agencies": "URN",
    "security_token": "on|off",
    "sts_secret": "TEXT",
}
assert set(_METAVAR) == set(FIELD_NAMES)


def _default(name: str) -> str:
    """The knob's default as --help shows it (secrets masked, sets and maps as lists)."""
    value = to_json(SimulatorConfig())[name]
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "(none)"
    return str(value)


def _knob_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for name in reversed(FIELD_NAMES):
        flag = "--" + name.replace("_", "-")
        repeat = " (repeat the option for several)" if name in _MULTIPLE else ""
        option = click.option(
            flag,
            name,
            multiple=name in _MULTIPLE,
            default=None,
            metavar=_METAVAR[name],
            help=f"{_HELP[name]}{repeat}  [default: {_default(name)}]",
        )
        command = option(command)
    return command


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=18080,
    show_default=True,
    help="Port (0-65535); 0 picks a free one.",
)
@click.option("--no-rate-limit", is_flag=True, help="Turn every rate limit off.")
@click.option("--verbose", is_flag=True, help="Log one line per request to stderr.")
@_knob_options
def simulator(host: str, port: int, no_rate_limit: bool, verbose: bool, **knobs: Any) -> None:
    """Run a wire-faithful local BMS API simulator (BMS actions, jobs, servers and IAM tokens)."""
    patch = {name: value for name, value in knobs.items() if value not in (None, ())}
    if no_rate_limit:
        patch.update(dict.fromkeys(_RATE_LIMITS))
    try:
        config = patched(SimulatorConfig(), patch)
        simulator = SimulatorServer(config, host, port, verbose=verbose)  # reads the inventory
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with port_errors(host, port):
        server = simulator.start()
    try:
        click.echo(f"bmsreboot simulator listening on {server.base_url}")
        ak = next(iter(config.credentials), DEFAULT_AK)
        click.echo(
            "point a worker at it (in the worker's shell):\n"
            f"  export BMSREBOOT_BMS_ENDPOINT={server.base_url}\n"
            f"  export HUAWEICLOUD_SDK_AK={ak}\n"
            f"  export HUAWEICLOUD_SDK_SK={config.credentials.get(ak, DEFAULT_SK)}\n"
            f"project id: {DEFAULT_PROJECT_ID} (these are the simulator's demo credentials)"
        )
        sys.stdout.flush()
        stop.wait()
    finally:
        server.stop()
