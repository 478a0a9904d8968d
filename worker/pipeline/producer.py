"""The producer API: enqueue a reboot request from Python, get its id at once.

Other applications need nothing of this package: ``send_task("bmsreboot.request_reboot",
kwargs={...}, queue="bmsreboot.intake")`` on a Celery app pointed at the broker does the same
(README, "Task messages"). This module adds validation before sending, so a caller learns of bad
input immediately; the request is still sent, so the worker records it as ``rejected`` with the
same reasons and nothing is lost.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery

from worker import ids
from worker.names import CANCEL_REQUEST, IDEMPOTENCY_NAMESPACE, INTAKE_QUEUE, REQUEST_REBOOT
from worker.pipeline.validation import (
    ID_FIELDS,
    KNOWN_FIELDS,
    ValidatedRequest,
    validate_request,
)
from worker.settings import Settings, get_settings

#: Requests of more ids than this travel packed (``server_ids_packed``).
PACK_ABOVE = 1000


class InvalidRequest(ValueError):
    """The request was recorded as rejected; ``reasons`` says why, in an operator's words."""

    def __init__(self, request_id: str, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.request_id = request_id
        self.reasons = reasons


def build_payload(
    project_id: str,
    server_ids: Sequence[str] | bytes | None = None,
    *,
    request_id: str | uuid.UUID | None = None,
    type: str = "HARD",
    **fields: Any,
) -> dict[str, Any]:
    """The intake task's keyword arguments (unset fields are left out).

    ``server_ids`` may be left out for a ``selector`` (in ``fields``: the project's servers
    whose tags, name and enterprise project match, resolved at intake).

    ``fields`` are the message's other fields by name (``idempotency_key``, ``source``,
    ``batch_size``, the rollout policy, ``notify_task``...: ``RebootRequestMessage``, the one
    list of them; ``bmsreboot schema``); a name that is not one raises ``TypeError``.

    Without a ``request_id``, one is made: derived from the idempotency key when there is one
    (so a retried producer gets the same id back at once), else random. :func:`checked`
    replaces a derived id by a random one when the request is invalid: a rejected request holds
    neither its key nor the id a corrected retry will derive from it.

    More than ``PACK_ABOVE`` ids travel packed (``server_ids_packed``, bytes: 16 bytes an id
    instead of 39, and no Python string per id on either side); ``server_ids`` may also be
    given packed already (``bytes`` from ``worker.ids.pack``). A list holding ids that are not
    UUIDs stays a list, so that the worker names them in its rejection.
    """
    unknown = set(fields) - KNOWN_FIELDS | (set(ID_FIELDS) & set(fields))
    if unknown:
        raise TypeError(f"not a field of a reboot request: {', '.join(sorted(unknown))}")
    key = fields.get("idempotency_key")
    if request_id is None:
        request_id = uuid.uuid5(IDEMPOTENCY_NAMESPACE, key) if key else None
    payload: dict[str, Any] = {
        "request_id": str(request_id or uuid.uuid4()),
        "project_id": project_id,
        **(_ids_field(server_ids) if server_ids is not None else {}),
        "type": type,
        **fields,
    }
    return {k: v for k, v in payload.items() if v is not None}


def _ids_field(server_ids: Sequence[str] | bytes) -> dict[str, Any]:
    packed: bytes | None = None
    if isinstance(server_ids, bytes | bytearray):
        if ids.count(server_ids) <= PACK_ABOVE:
            return {"server_ids": ids.unpack(bytes(server_ids))}
        packed = bytes(server_ids)
    elif len(server_ids) > PACK_ABOVE:
        with contextlib.suppress(ids.BadIds):
            packed = ids.pack(server_ids)
    if packed is None:
        return {"server_ids": list(server_ids)}
    return {"server_ids_packed": packed}


def id_count(payload: dict[str, Any]) -> int:
    """How many server ids a payload carries (duplicates included), without unpacking them."""
    packed = payload.get("server_ids_packed")
    if isinstance(packed, bytes):
        return ids.count(packed)
    if isinstance(packed, str):
        return (len(packed) * 3 // 4 - packed[-2:].count("=")) // ids.SIZE
    return len(payload.get("server_ids") or [])


def checked(payload: dict[str, Any], settings: Settings) -> ValidatedRequest:
    """Validate ``payload`` as the worker will; when invalid, a request id derived from the
    idempotency key is replaced by a random one (in ``payload``), so that the rejection does
    not take the id of the corrected retry."""
    from worker.fleet import FleetError, read_scope
    from worker.pipeline.runtime import scope_of

    unchecked = None
    try:
        fleet = read_scope(settings)
    except FleetError as error:
        # The worker checks the project against its own fleet file all the same.
        fleet, unchecked = None, f"the project is not checked here: {error}"
    scope = scope_of(settings, fleet)
    if unchecked is not None:
        scope = {"allowed_projects": settings.allowed_project_ids}
    result = validate_request(
        payload,
        max_servers=settings.max_request_servers,
        default_batch_size=settings.default_batch_size,
        policy_defaults=settings.policy_defaults,
        **scope,
    )
    if unchecked is not None:
        result.warnings.append(unchecked)
    key = payload.get("idempotency_key")
    derived = (
        isinstance(key, str)
        and key
        and (payload.get("request_id") == str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key)))
    )
    if not result.valid and derived:
        payload["request_id"] = str(uuid.uuid4())
    return result


def send_payload(app: Celery, payload: dict[str, Any]) -> None:
    """Send the intake message. Flower shows a summary instead of up to a million ids.

    Packed ids (bytes) go as msgpack, which carries bytes as they are; everything else as
    JSON. (In JSON they would need base64, 22 bytes an id, which kombu's Redis transport
    then base64-encodes again inside its envelope: every copy of a million ids counts.)"""
    summary = {k: v for k, v in payload.items() if k not in ("server_ids", "server_ids_packed")}
    summary["server_ids"] = f"<{id_count(payload)} ids>"
    packed = isinstance(payload.get("server_ids_packed"), bytes)
    app.send_task(
        REQUEST_REBOOT,
        kwargs=payload,
        queue=INTAKE_QUEUE,
        kwargsrepr=repr(summary),
        serializer="msgpack" if packed else "json",
    )


def cancel_request(
    request_id: str | uuid.UUID,
    *,
    reason: str | None = None,
    actor: str | None = None,
    app: Celery | None = None,
    settings: Settings | None = None,
) -> None:
    """Ask the worker to cancel a request (task ``bmsreboot.cancel_request``): pending batches
    are cancelled, submitted ones followed to their end. Idempotent; ``actor`` says who asks
    (recorded with the reason)."""
    if app is None:
        from worker.celery import make_celery_app

        app = make_celery_app(settings or get_settings())
    app.send_task(
        CANCEL_REQUEST,
        kwargs={"request_id": str(request_id), "reason": reason, "actor": actor},
        queue=INTAKE_QUEUE,
    )


def plan_request(
    project_id: str,
    server_ids: Sequence[str] | bytes | None = None,
    *,
    settings: Settings | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The dry run: validate and plan a request without recording or sending anything."""
    from worker.pipeline.control import learned_boot_for, learned_for, plan

    settings = settings or get_settings()
    payload = build_payload(project_id, server_ids, **fields)
    result = checked(payload, settings)
    learned = learned_for(project_id, settings) if result.valid else None
    boot = learned_boot_for(project_id, settings) if result.valid else None
    return plan(result, settings, learned=learned, boot=boot)


def request_reboot(
    project_id: str,
    server_ids: Sequence[str] | bytes | None = None,
    *,
    app: Celery | None = None,
    settings: Settings | None = None,
    dry_run: bool = False,
    **fields: Any,
) -> str | dict[str, Any]:
    """Enqueue a reboot request and return its id. Raises :class:`InvalidRequest` (after
    sending, so the rejection is recorded) when the request cannot be accepted. With
    ``dry_run=True`` nothing is recorded or sent: the plan is returned (:func:`plan_request`)."""
    settings = settings or get_settings()
    if dry_run:
        return plan_request(project_id, server_ids, settings=settings, **fields)
    payload = build_payload(project_id, server_ids, **fields)
    result = checked(payload, settings)
    if app is None:
        from worker.celery import make_celery_app

        app = make_celery_app(settings)
    send_payload(app, payload)
    if not result.valid:
        raise InvalidRequest(payload["request_id"], result.reasons)
    return str(payload["request_id"])
