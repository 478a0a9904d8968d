"""Reading a request's status from the audit database and printing it for a person: what
``status``, ``watch``, ``submit --wait`` and the demo show."""

from __future__ import annotations

import sys
import uuid
from typing import Any

from worker.cli.errors import audit_database_errors
from worker.cli.params import parse_uuid

#: The server counts a person sees, in this order (the states of ``worker.db.states``).
COUNTS = (
    "total",
    "succeeded",
    "failed",
    "unknown",
    "unhealthy",
    "verifying",
    "pending",
    "cancelled",
    "skipped",
)
#: The counts of servers whose part has ended, as a progress line names them.
ENDED = ("succeeded", "failed", "unknown", "unhealthy", "cancelled", "skipped")


def request_id_of(value: str | uuid.UUID) -> uuid.UUID:
    return parse_uuid(value, "request id")


def load_status(
    request_id: str | uuid.UUID, *, servers: bool = False, events: int = 0
) -> dict[str, Any] | None:
    """The request's status (``events``: with its newest request and batch events)."""
    from worker.cli.reading import request_events
    from worker.db.session import get_engine, unit_of_work
    from worker.db.status import request_status
    from worker.settings import get_settings

    rid = request_id_of(request_id)
    url = get_settings().effective_database_url
    with audit_database_errors(url), unit_of_work(get_engine(url)) as session:
        status = request_status(session, rid, include_servers=servers)
        if status is not None and events:
            status["events"] = request_events(session, rid, limit=events)
        return status


def verification_line(status: dict[str, Any]) -> str:
    """What the request asked of verification, where it differs from the deployment's
    defaults (empty: nothing asked)."""
    parts = []
    if status.get("verify") is False:
        parts.append("off")
    if status.get("health_timeout") is not None:
        parts.append(f"health timeout {status['health_timeout']:g} s")
    check = status.get("health_check") or {}
    if "tcp_port" in check:
        parts.append(f"TCP check port {check['tcp_port']}")
    if "http_url" in check:
        parts.append(f"HTTP check {check['http_url']}")
    if status.get("soak_seconds"):
        parts.append(f"soak {status['soak_seconds']:g} s between batches")
    return "verification: " + ", ".join(parts) if parts else ""


def gate_line(status: dict[str, Any]) -> str:
    """While the request's alert gate holds it: since when, why, and its next check (empty:
    no gate, or open)."""
    gate = status.get("gate") or {}
    if not gate.get("closed_since") or status.get("status") not in ("accepted", "running"):
        return ""
    line = f"gate: closed since {gate['closed_since']}: {gate.get('reason') or '?'}"
    if gate.get("next_check_at"):
        line += f"; next check at {gate['next_check_at']}"
    if gate.get("timeout"):
        line += f"; halts after {gate['timeout']:g} s closed"
    return line


def silence_cell(batch: dict[str, Any]) -> str:
    """A batch's Alertmanager silence as the table shows it: why it has none (or why it was
    not extended or expired), else its id and end."""
    if batch.get("silence_error"):
        return str(batch["silence_error"])
    if batch.get("silence_id"):
        return f"{batch['silence_id']} until {batch['silence_ends_at']}"
    return ""


def print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    # Redirected output is not cut to 80 columns: ids and reasons stay on one line.
    console = Console(width=None if sys.stdout.isatty() else 200)
    counts = status["servers"]
    console.print(
        f"[bold]request {status['request_id']}[/bold]  status [bold]{status['status']}[/bold]"
        f"  project {status['project_id']}  type {status['type']}"
    )
    console.print("servers: " + ", ".join(f"{k} {counts[k]}" for k in COUNTS if k in counts))
    if status.get("rejection_reasons"):
        console.print("rejected:")
        for reason in status["rejection_reasons"]:
            console.print(f"  - {reason}")
    elif status.get("reason"):
        console.print(f"reason: {status['reason']}")
    if line := verification_line(status):
        console.print(line, markup=False, highlight=False)
    if line := gate_line(status):
        console.print(line, markup=False, highlight=False)
    if status.get("silence") is False:
        console.print("silences: off (the request opted out)")
    if status["batches"]:
        table = Table(
            "batch", "status", "job id", "size", "polls", "checks", "last error", "silence"
        )
        for b in status["batches"]:
            error = b.get("last_error") or {}
            why = " ".join(str(x) for x in (error.get("code"), error.get("message")) if x)
            table.add_row(
                str(b["index"]),
                b["status"],
                b["job_id"] or "-",
                str(b["size"]),
                str(b["polls"]),
                str(b.get("checks") or 0),
                why if b["status"] not in ("succeeded", "submitted", "pending") else "",
                silence_cell(b),
            )
        console.print(table)
    if status.get("server_results"):
        table = Table("server", "status", "error code", "fail reason")
        for s in status["server_results"]:
            table.add_row(s["id"], s["status"], s["error_code"] or "", s["fail_reason"] or "")
        console.print(table)
    if "events" in status:
        from worker.cli.reading import event_lines

        console.print("events, newest first (request and batches):")
        for line in event_lines(status["events"]):
            console.print(f"  {line}", markup=False, highlight=False)
