"""The events: their types, their CloudEvents 1.0 documents, and their one-line chat messages.

Each event is a CloudEvents 1.0 document built and written by the ``cloudevents`` library:
``specversion`` ``1.0``, ``id`` (a UUID, also the ``webhook-id`` header), ``source``
``bmsreboot``, ``type`` (below), ``time`` (when the transaction that caused it ran, UTC),
``subject`` (the request id), ``datacontenttype`` ``application/json`` and ``data``.

It goes out in the CloudEvents HTTP binding's *structured* mode: the document is the body,
with ``Content-Type: application/cloudevents+json; charset=utf-8``. That binding requires the
event format's media type for a structured message (a CloudEvents SDK reads a body sent as
``application/json`` as binary mode, and fails for want of ``ce-*`` headers); it is JSON all
the same (the ``+json`` suffix), which is what Standard Webhooks recommends for a payload, and
the Standard Webhooks signature covers the body whatever its type.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any, Final

from cloudevents.core.bindings.http import HTTPMessage, to_structured_event
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

SOURCE: Final = "bmsreboot"
CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"

#: A request was recorded and will run (data: its status dict).
REQUEST_ACCEPTED: Final = "bmsreboot.request.accepted"
#: A request was refused at intake (data: its status dict, with ``rejection_reasons``).
REQUEST_REJECTED: Final = "bmsreboot.request.rejected"
#: One batch ended (data: the request id, the batch's index, status and job, and its servers'
#: counts by state).
BATCH_ENDED: Final = "bmsreboot.batch.ended"
#: A rebooted server did not come back healthy (data: the request id, ``server_id``,
#: ``reason``).
SERVER_UNHEALTHY: Final = "bmsreboot.server.unhealthy"
#: A rollout control stopped the request: failure brake, failed canary, cut-off (data: its
#: status dict, whose ``reason`` says why).
REQUEST_HALTED: Final = "bmsreboot.request.halted"
#: The request reached its final state (data: its status dict).
REQUEST_FINISHED: Final = "bmsreboot.request.finished"

EVENT_TYPES: Final = (
    REQUEST_ACCEPTED,
    REQUEST_REJECTED,
    BATCH_ENDED,
    SERVER_UNHEALTHY,
    REQUEST_HALTED,
    REQUEST_FINISHED,
)
#: The events that also go to the chat targets (``BMSREBOOT_NOTIFY_APPRISE``).
CHAT_TYPES: Final = frozenset({REQUEST_HALTED, SERVER_UNHEALTHY, REQUEST_FINISHED})

_FORMAT = JSONFormat()


def _plain(value: Any) -> Any:
    """A value ``json`` cannot write, as text: times in ISO 8601, UUIDs, anything else."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def build(
    type: str, request_id: uuid.UUID, data: dict[str, Any], *, now: dt.datetime
) -> dict[str, Any]:
    """The CloudEvents document of one event, as plain JSON (what the outbox stores).

    ``data`` is made plain JSON first (a time or a UUID in it becomes its text), so that what
    is stored is what is sent."""
    if type not in EVENT_TYPES:
        raise ValueError(f"not an event type of bmsreboot: {type!r}")
    plain = json.loads(json.dumps(data, default=_plain))
    event = CloudEvent(
        attributes={
            "id": str(uuid.uuid4()),
            "source": SOURCE,
            "type": type,
            "time": now.astimezone(dt.UTC),
            "subject": str(request_id),
            "datacontenttype": "application/json",
        },
        data=plain,
    )
    document: dict[str, Any] = json.loads(_FORMAT.write(event))
    return document


def structured(document: dict[str, Any]) -> HTTPMessage:
    """The HTTP message of a stored document in structured mode: the library reads the
    document back (which checks it is a valid CloudEvent) and writes the body."""
    event = _FORMAT.read(None, json.dumps(document))
    message = to_structured_event(event)
    return HTTPMessage(headers={"content-type": CONTENT_TYPE}, body=message.body)


def chat_line(document: dict[str, Any]) -> str | None:
    """The one-line message of an event for people, or None for a type that has none.

    ``bmsreboot: request 8c1f...-... finished partially_failed: 980 succeeded, 20 failed of
    1000 (source schedule:kernel-a)``. Missing fields are left out, never an error."""
    type = document.get("type")
    data = document.get("data")
    data = data if isinstance(data, dict) else {}
    request = document.get("subject") or data.get("request_id") or "?"
    source = f" (source {data['source']})" if data.get("source") else ""
    if type == REQUEST_FINISHED:
        return (
            f"bmsreboot: request {request} finished {data.get('status', '?')}: "
            f"{_counts(data)}{source}"
        )
    if type == REQUEST_HALTED:
        why = f": {data['reason']}" if data.get("reason") else ""
        counts = _counts(data)
        so_far = f" ({counts} so far)" if counts != "no servers" else ""
        return f"bmsreboot: request {request} halted{why}{so_far}{source}"
    if type == SERVER_UNHEALTHY:
        server = data.get("server_id", "?")
        why = f": {data['reason']}" if data.get("reason") else ""
        return f"bmsreboot: server {server} unhealthy after its reboot in request {request}{why}"
    return None


def _counts(data: dict[str, Any]) -> str:
    servers = data.get("servers")
    if not isinstance(servers, dict) or not servers.get("total"):
        return "no servers"
    parts = [f"{servers.get('succeeded', 0)} succeeded", f"{servers.get('failed', 0)} failed"]
    for other in ("unknown", "skipped", "cancelled"):
        if servers.get(other):
            parts.append(f"{servers[other]} {other}")
    return f"{', '.join(parts)} of {servers['total']}"
