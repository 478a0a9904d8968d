"""Operators' and producers' control of a request: cancel it, decide on its unknown batches,
and plan it without sending anything (dry run).

The state changes themselves are in ``worker.db.rollout``; these functions run them in one
transaction each and send what follows (the completion callback, the release step).
"""

from __future__ import annotations

import uuid
from typing import Any

from worker.db.create import batch_sizes
from worker.db.models import RebootRequest
from worker.db.queries import learned_boot_seconds, learned_job_duration
from worker.db.rollout import NothingToResolve, resolve_unknown, stop_request
from worker.db.session import unit_of_work
from worker.db.states import ACTIVE_REQUEST_STATES, RequestStatus
from worker.pipeline.ending import request_changed
from worker.pipeline.runtime import Runtime, log
from worker.pipeline.validation import ValidatedRequest
from worker.settings import Settings

__all__ = ["NothingToResolve", "cancel", "plan", "resolve"]


def cancel(request_id: uuid.UUID, rt: Runtime, *, reason: str | None, actor: str) -> dict[str, Any]:
    """Cancel a request: pending batches ``cancelled``, submitted ones followed to their end,
    then the request ``cancelled``. Idempotent: a finished or already stopped request says so
    and nothing changes. Returns ``{"request_id", "status", "changed", "message"}``."""
    why = reason or "cancelled"
    with unit_of_work(rt.engine) as session:
        request = session.get(RebootRequest, request_id)
        if request is None:
            return {
                "request_id": str(request_id),
                "status": None,
                "changed": False,
                "message": f"no request {request_id}",
            }
        changed = stop_request(
            session,
            request_id,
            RequestStatus.CANCELLED,
            f"cancelled by {actor}: {why}",
            actor=actor,
        )
        if changed:
            request_changed(session, request_id, rt)
        session.refresh(request)
        status, stop, project_id = request.status, request.stop, request.project_id
    if changed:
        log.warning("request %s cancelled by %s: %s", request_id, actor, why)
        message = (
            "cancelled"
            if status is RequestStatus.CANCELLED
            else "cancelling: batches already submitted are followed to their end"
        )
    elif status in ACTIVE_REQUEST_STATES:
        message = f"already stopping ({stop}): nothing changed"
    else:
        message = f"already finished ({status}): nothing changed"
    rt.dispatcher.release(project_id)
    return {
        "request_id": str(request_id),
        "status": str(status),
        "changed": changed,
        "message": message,
    }


def resolve(
    request_id: uuid.UUID,
    rt: Runtime,
    *,
    decision: str,
    reason: str,
    actor: str,
    batch_index: int | None = None,
) -> dict[str, Any]:
    """Record an operator's decision on the request's unknown batches (see
    ``worker.db.rollout.resolve_unknown``); a ``resubmit`` goes through the release step.
    Raises NothingToResolve when there is no such batch."""
    with unit_of_work(rt.engine) as session:
        indexes = resolve_unknown(
            session,
            request_id,
            decision=decision,
            reason=reason,
            actor=actor,
            batch_index=batch_index,
        )
        request = session.get(RebootRequest, request_id)
        assert request is not None
        session.refresh(request)
        status, project_id = request.status, request.project_id
    log.warning(
        "request %s: batches %s decided %s by %s: %s", request_id, indexes, decision, actor, reason
    )
    if decision == "resubmit":
        rt.dispatcher.release(project_id)
    return {
        "request_id": str(request_id),
        "batches": indexes,
        "decision": decision,
        "status": str(status),
    }


def plan(
    checked: ValidatedRequest,
    settings: Settings,
    *,
    learned: float | None = None,
    boot: float | None = None,
) -> dict[str, Any]:
    """What a request would do, without recording or sending anything: its batches, the
    canary, the policy in force, and an estimate of its duration from the action budget, the
    project's learned job duration (None: no history, only the submission span) and, with
    verification on, the time its servers take to come back (``boot``, learned from the
    project's recent returns; without it, ``BMSREBOOT_VERIFY_FIRST_DELAY``) and the soak. A
    batch is out of service from its POST until its servers are back: job time + boot time,
    and ``max_in_flight`` counts it all that time."""
    sizes = batch_sizes(checked.servers, checked.batch_size, checked.canary_size)
    interval = 60.0 / settings.action_rate_limit
    burst = settings.action_burst
    verify = settings.verify if checked.verify is None else checked.verify
    back = (boot if boot is not None else settings.verify_first_delay) if verify else 0.0
    soak = checked.soak_seconds or 0.0
    releases: list[float] = []
    ends: list[float] = []
    for index in range(len(sizes)):
        at = max(0.0, (index - burst + 1) * interval)
        if learned is not None:
            if checked.canary_size and index > 0:
                at = max(at, ends[0] + soak)
            if checked.max_in_flight and index >= checked.max_in_flight:
                at = max(at, ends[index - checked.max_in_flight] + soak)
            if index:
                at = max(at, releases[-1] + (interval if index >= burst else 0.0))
        releases.append(at)
        ends.append(at + (learned or 0.0) + back)
    cut_off = None
    if checked.not_after is not None:
        from datetime import UTC, datetime

        window = (checked.not_after - datetime.now(UTC)).total_seconds()
        cut_off = sum(1 for at in releases if at > window)
    shown = [{"index": i, "size": size} for i, size in enumerate(sizes)]
    return {
        "dry_run": True,
        "request_id": str(checked.request_id),
        "project_id": checked.project_id,
        "type": checked.type,
        "servers": checked.servers,
        "selector": checked.selector,
        "duplicates_removed": checked.duplicates_removed,
        "batches": shown if len(shown) <= 50 else shown[:50],
        "batch_count": len(sizes),
        "canary": (
            {"index": 0, "size": sizes[0], "gate": "every canary server must succeed"}
            if checked.canary_size
            else None
        ),
        "policy": {
            "batch_size": checked.batch_size,
            "max_in_flight": checked.max_in_flight,
            "canary_size": checked.canary_size,
            "failure_threshold": checked.failure_threshold,
            "not_after": checked.not_after.isoformat() if checked.not_after else None,
            "verify": verify,
            "health_timeout": checked.health_timeout or settings.health_timeout,
            "health_check": checked.health_check,
            "soak_seconds": checked.soak_seconds,
            # The alert gate before each wave (None: no gate) and whether batches are silenced
            "gate": None
            if checked.gate_query is None
            else {
                "query": checked.gate_query,
                "exclude": checked.gate_exclude,
                "timeout": checked.gate_timeout or settings.gate_timeout,
            },
            "silence": checked.silence and settings.alertmanager_url is not None,
        },
        "estimate": {
            "action_budget_per_minute": settings.action_rate_limit,
            "job_duration_s": learned,
            "job_duration_from": "the project's recent jobs" if learned is not None else None,
            "boot_s": back if verify else None,
            "boot_from": None
            if not verify
            else "the project's recent returns"
            if boot is not None
            else "BMSREBOOT_VERIFY_FIRST_DELAY (no history)",
            "submission_span_s": round(releases[-1], 1) if releases else 0.0,
            "total_s": round(max(ends), 1) if learned is not None and ends else None,
            "batches_cut_off": cut_off,
        },
        "reasons": checked.reasons,
        "warnings": checked.warnings,
    }


def learned_boot_for(project_id: str, settings: Settings) -> float | None:
    """The project's learned boot time (job end to seen back), if the database can be read."""
    from sqlalchemy.exc import SQLAlchemyError

    from worker.db.session import get_engine

    try:
        with unit_of_work(get_engine(settings.effective_database_url)) as session:
            return learned_boot_seconds(session, project_id, settings.poll_history)
    except SQLAlchemyError:
        return None


def learned_for(project_id: str, settings: Settings) -> float | None:
    """The project's learned job duration, if the audit database can be read."""
    from sqlalchemy.exc import SQLAlchemyError

    from worker.db.session import get_engine

    try:
        with unit_of_work(get_engine(settings.effective_database_url)) as session:
            learned = learned_job_duration(session, project_id, settings.poll_history)
    except SQLAlchemyError:
        return None
    return learned
