"""Intake: turn a reboot request into audit rows, then send its batches to submission.

The request, its batches and its server rows are written in one transaction; its batches are
then ``pending`` and due, and one ``bmsreboot.release`` message for the project asks the release
step to send them as the API budget allows (``worker.pipeline.release``).

The same ``request_id`` or ``idempotency_key`` with the same payload returns the request already
recorded (also when two identical messages race: the unique constraints decide, the loser
reads the winner's row) and never reboots again: submission itself is compare-and-set on each
batch, so re-driving a duplicate is harmless. The same id or key with *another* payload (other
servers, type, project or rollout limits: ``validation.fingerprint``) is refused: a request
``rejected`` with a reason naming the existing request and what differs, under an id derived
from both (``validation.conflict_id``), so the same mistake sent twice is recorded once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker import ids
from worker.db.create import create_rejected_request, create_request, find_existing
from worker.db.models import Batch, RebootRequest
from worker.db.session import unit_of_work
from worker.db.states import BatchStatus
from worker.pipeline.announce import announce, status_of
from worker.pipeline.inventory import InventoryRefused, Selector, resolve
from worker.pipeline.release import schedule_release
from worker.pipeline.runtime import Runtime, log
from worker.pipeline.validation import (
    ValidatedRequest,
    conflict_id,
    conflict_reason,
    differences,
    validate_request,
)
from worker.webhooks import REQUEST_ACCEPTED, REQUEST_REJECTED


@dataclass
class IntakeResult:
    request_id: uuid.UUID
    status: str
    created: bool
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": str(self.request_id),
            "status": self.status,
            "created": self.created,
            "reasons": self.reasons,
            "warnings": self.warnings,
        }


def accept_request(
    payload: Mapping[str, Any], rt: Runtime, *, positional: int = 0, eta: str | None = None
) -> IntakeResult:
    """Validate and record a request; dispatch its batches. Never raises on bad input.

    ``eta``: the countdown the producer put on the message (``worker.broker.eta_refusal``):
    the request is recorded now, and released no sooner (its ``not_before``, unless it gives
    one itself)."""
    if eta is not None and payload.get("not_before") is None:
        payload = {**payload, "not_before": eta}
    checked = validate_request(
        payload,
        max_servers=rt.settings.max_request_servers,
        default_batch_size=rt.settings.default_batch_size,
        positional=positional,
        policy_defaults=rt.settings.policy_defaults,
        **rt.scope(),
    )
    for warning in checked.warnings:
        log.warning("request %s: %s", checked.request_id, warning)

    existing = _existing(checked, rt)
    if existing is not None:
        return existing
    if checked.valid and checked.selector is not None:
        checked = resolve_selector(checked, rt)

    try:
        with unit_of_work(rt.engine) as session:
            if checked.valid:
                request = _create(session, checked, rt)
            else:
                request = create_rejected_request(
                    session,
                    request_id=checked.request_id,
                    project_id=checked.project_id,
                    type=checked.type,
                    source=checked.source,
                    reasons=checked.reasons,
                    idempotency_key=checked.idempotency_key,
                    servers_total=checked.servers_given,
                    notify_url=checked.notify_url,
                    actor=rt.actor,
                )
            status = str(request.status)
            # Announced only if this transaction records the request: a duplicate's
            # IntegrityError rolls the event back with it.
            announce(
                session,
                rt,
                REQUEST_ACCEPTED if checked.valid else REQUEST_REJECTED,
                request.id,
                status_of(session, request.id),
                notify_url=checked.notify_url,
            )
    except IntegrityError:
        # Another worker recorded the same request id or idempotency key a moment ago.
        again = _existing(checked, rt)
        if again is None:
            raise
        return again

    if checked.valid:
        log.info(
            "request %s accepted: %d servers in batches of %d (source %s)",
            checked.request_id,
            checked.servers,
            checked.batch_size,
            checked.source,
        )
        wait = (checked.not_before - rt.now()).total_seconds() if checked.not_before else 0.0
        if wait > 0:
            # Nothing is due before not_before: one wake-up of the project, not a release now.
            schedule_release(rt, checked.project_id, wait)
        else:
            rt.dispatcher.release(checked.project_id)
    else:
        log.warning("request %s rejected: %s", checked.request_id, "; ".join(checked.reasons))
    return IntakeResult(checked.request_id, status, True, checked.reasons, checked.warnings)


def resolve_selector(checked: ValidatedRequest, rt: Runtime) -> ValidatedRequest:
    """The request with the servers its selector names now (through the project's list
    budget), or with the reason it cannot be accepted. ``InventoryUnavailable`` (the list
    could not be read: try again later) goes to the caller."""
    selector = Selector.from_dict(checked.selector or {})
    try:
        found = resolve(rt, checked.project_id, selector)
    except InventoryRefused as refused:
        return replace(checked, reasons=[*checked.reasons, f"selector not resolved: {refused}"])
    limit = rt.settings.max_request_servers
    if not found:
        reason = f"selector matched no servers: {json.dumps(selector.as_dict())}"
        return replace(checked, reasons=[*checked.reasons, reason])
    if len(found) > limit:
        reason = (
            f"too many servers: {len(found)} match the selector, at most {limit} per request "
            "(BMSREBOOT_MAX_REQUEST_SERVERS)"
        )
        return replace(checked, reasons=[*checked.reasons, reason], servers_given=len(found))
    log.info("request %s: the selector names %d servers", checked.request_id, len(found))
    return replace(checked, packed_ids=ids.pack(found), servers_given=len(found))


def _create(session: Session, checked: ValidatedRequest, rt: Runtime) -> RebootRequest:
    return create_request(
        session,
        **checked.recorded(),
        region=rt.region_for(checked.project_id),
        endpoint=rt.endpoint_for(checked.project_id),
        actor=rt.actor,
    )


@dataclass(frozen=True)
class Conflict:
    """A request id or idempotency key already recorded for another payload."""

    existing: uuid.UUID
    refused: uuid.UUID  # the id this request is recorded under, rejected
    reason: str


def conflict_of(
    session: Session, checked: ValidatedRequest, request: RebootRequest | None = None
) -> Conflict | None:
    """Whether ``checked`` reuses the id or key of a recorded request with another payload
    (``request``: that request, if the caller found it already)."""
    if request is None:
        request = find_existing(
            session, request_id=checked.request_id, idempotency_key=checked.idempotency_key
        )
    if request is None or not checked.valid:
        return None
    differ = differences(request.fingerprint, checked.fingerprint)
    if not differ:
        return None
    by_key = checked.idempotency_key and request.idempotency_key == checked.idempotency_key
    reason = conflict_reason(checked.idempotency_key if by_key else None, request.id, differ)
    return Conflict(request.id, conflict_id(request.id, checked.fingerprint), reason)


def _existing(checked: ValidatedRequest, rt: Runtime) -> IntakeResult | None:
    """The request already recorded under this id or key, with its project's release step
    re-driven (a previous intake may have committed and died before asking for it); or, when
    it asked for something else, the rejection of this one."""
    with unit_of_work(rt.engine) as session:
        request = find_existing(
            session, request_id=checked.request_id, idempotency_key=checked.idempotency_key
        )
        if request is None:
            return None
        conflict = conflict_of(session, checked, request)
        request_id, status, project_id = request.id, str(request.status), request.project_id
        pending = session.scalar(
            select(Batch.id)
            .where(Batch.request_id == request_id, Batch.status == BatchStatus.PENDING)
            .limit(1)
        )
    if conflict is not None:
        return _conflict(checked, rt, conflict)
    log.info("request %s already recorded (status %s): not created again", request_id, status)
    if pending is not None:
        rt.dispatcher.release(project_id)
    return IntakeResult(request_id, status, False)


def _conflict(checked: ValidatedRequest, rt: Runtime, conflict: Conflict) -> IntakeResult:
    """Record (once) that this request was refused for reusing another's id or key."""
    refused, reason = conflict.refused, conflict.reason
    log.warning("request refused as %s: %s", refused, reason)
    try:
        with unit_of_work(rt.engine) as session:
            if session.get(RebootRequest, refused) is None:
                create_rejected_request(
                    session,
                    request_id=refused,
                    project_id=checked.project_id,
                    type=checked.type,
                    source=checked.source,
                    reasons=[reason],
                    idempotency_key=checked.idempotency_key,
                    servers_total=checked.servers,
                    notify_url=checked.notify_url,
                    actor=rt.actor,
                )
                announce(
                    session,
                    rt,
                    REQUEST_REJECTED,
                    refused,
                    status_of(session, refused),
                    notify_url=checked.notify_url,
                )
    except IntegrityError:
        pass  # the same refusal, recorded a moment ago by another worker
    return IntakeResult(refused, "rejected", True, [reason], checked.warnings)
