"""Rollout control in the audit database: stopping a request (failure brake, failed canary,
cut-off, cancel) and operators' decisions on batches whose outcome is unknown.

What may be *released* is decided in one place, ``worker.db.plan.release_conditions``
(``max_in_flight``, the canary gate, the cut-off, a stopped request). What *stops* a request is
decided here, in the transaction that ended a batch (``check_brakes``), by the release step
and the reconciler (``cut_off_due``), or by an operator (``stop_request`` with ``cancelled``).

A stop never interrupts a batch already sent: the request records ``stop`` and ``reason``, its
pending batches become ``cancelled`` (their servers ``cancelled``), batches in flight are
followed to their end, and then the request ends in the ``stop`` state (``halted`` or
``cancelled``), through ``finalize_request_if_done``.

**The failure brake, exactly.** With ``failure_threshold`` T (a percentage) and N servers in the
request, the brake trips when a batch ends and the request's servers ``failed``, ``unknown``
(a timed-out job's servers are ``unknown``) or ``unhealthy`` (rebooted, not back within the
health timeout) number strictly more than T% of N: F > N x T / 100. A verifying batch has not
ended: its servers count once it has.
It is checked each time a batch ends, so it trips at the end of the first batch after which
F exceeds that count; batches already submitted then are followed to their end and counted.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from worker.db.events import add_event, add_server_events
from worker.db.models import Batch, RebootRequest, ServerResult, count_columns
from worker.db.queries import server_counts
from worker.db.states import (
    ACTIVE_REQUEST_STATES,
    TERMINAL_BATCH_STATES,
    TERMINAL_REQUEST_STATES,
    UNDECIDED_BATCH_STATES,
    BatchStatus,
    EventEntity,
    IllegalTransition,
    RequestStatus,
    ServerStatus,
    derive_request_status,
)
from worker.db.transitions import settle_batch, transition_batch, transition_request
from worker.text import fit

#: The server states the failure brake counts.
BRAKE_STATES = (ServerStatus.FAILED, ServerStatus.UNKNOWN, ServerStatus.UNHEALTHY)


def _locked_request(session: Session, request_id: uuid.UUID) -> RebootRequest | None:
    return session.scalar(
        select(RebootRequest)
        .where(RebootRequest.id == request_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )


def stop_request(
    session: Session,
    request_id: uuid.UUID,
    kind: RequestStatus,
    reason: str,
    *,
    actor: str,
) -> bool:
    """Stop releasing the request's batches and cancel its pending ones; it ends ``kind`` once
    its batches in flight have ended. False if it had already ended or was already stopped
    (then nothing changes; an earlier stop's reason stands). A halt is noted in the session
    for ``take_halted``: the caller calls ``ending.request_changed`` in the same unit of
    work, which announces it."""
    assert kind in (RequestStatus.HALTED, RequestStatus.CANCELLED)
    request = _locked_request(session, request_id)
    if request is None or request.status not in ACTIVE_REQUEST_STATES or request.stop is not None:
        return False
    now = dt.datetime.now(dt.UTC)
    session.execute(
        update(RebootRequest)
        .where(RebootRequest.id == request_id)
        .values(stop=kind, reason=fit(reason, 4000))
        .execution_options(synchronize_session=False)
    )
    add_event(
        session,
        EventEntity.REQUEST,
        request_id,
        request.status,
        request.status,
        actor,
        {"stop": kind.value, "reason": reason},
        at=now,
    )
    cancel_pending(session, request_id, actor=actor, reason=reason)
    if kind is RequestStatus.HALTED:
        session.info.setdefault(_HALTED, []).append(request_id)
    return True


#: Where ``stop_request`` notes the requests it halted in a session (its unit of work).
_HALTED = "bmsreboot.halted"


def take_halted(session: Session) -> list[uuid.UUID]:
    """The requests ``stop_request`` halted in this session since the last call, each once.
    ``notify.finalize`` takes them to announce ``request.halted``: every stop is followed,
    in its unit of work, by ``ending.request_changed`` (which calls it)."""
    halted: list[uuid.UUID] = session.info.pop(_HALTED, [])
    return halted


def cancel_pending(session: Session, request_id: uuid.UUID, *, actor: str, reason: str) -> int:
    """Cancel the request's pending batches (and their servers); how many."""
    pending = list(
        session.scalars(
            select(Batch.id).where(
                Batch.request_id == request_id, Batch.status == BatchStatus.PENDING
            )
        )
    )
    cancelled = 0
    for batch_id in pending:
        try:
            settle_batch(
                session,
                batch_id,
                BatchStatus.CANCELLED,
                actor=actor,
                default_status=ServerStatus.CANCELLED,
                default_fail_reason=fit(f"not sent: {reason}", 1000),
                detail={"reason": reason},
                released_at=None,
            )
        except IllegalTransition:
            # A worker claimed it between the read above and its lock: it is in flight now
            # and is followed to its end. (The check comes before any write.)
            continue
        cancelled += 1
    return cancelled


def check_brakes(session: Session, request_id: uuid.UUID, *, actor: str) -> str | None:
    """After a batch of the request ended: trip the canary gate or the failure brake if due.
    Returns the reason when it stopped the request."""
    request = _locked_request(session, request_id)
    if request is None or request.status not in ACTIVE_REQUEST_STATES or request.stop is not None:
        return None
    if request.canary_size:
        canary = session.scalar(
            select(Batch.status).where(Batch.request_id == request_id, Batch.index == 0)
        )
        if canary in TERMINAL_BATCH_STATES and canary is not BatchStatus.SUCCEEDED:
            rows = session.execute(
                select(ServerResult.status, func.count())
                .join(Batch, Batch.id == ServerResult.batch_id)
                .where(Batch.request_id == request_id, Batch.index == 0)
                .group_by(ServerResult.status)
            ).all()
            counts = {ServerStatus(status): n for status, n in rows}
            reason = (
                f"canary failed: batch 0 ended {canary} "
                f"({counts.get(ServerStatus.SUCCEEDED, 0)} of {sum(counts.values())} "
                "servers succeeded); nothing else was sent"
            )
            stop_request(session, request_id, RequestStatus.HALTED, reason, actor=actor)
            return reason
    if request.failure_threshold is not None:
        counts = server_counts(session, request_id)
        bad = sum(counts.get(status, 0) for status in BRAKE_STATES)
        total = request.servers_total
        allowed = total * request.failure_threshold / 100.0
        if bad > allowed:
            reason = (
                f"failure brake: {bad} of {total} servers failed, unknown or unhealthy "
                f"({100.0 * bad / total:.2f}%), above the threshold of "
                f"{request.failure_threshold:g}% ({int(allowed)} servers)"
            )
            stop_request(session, request_id, RequestStatus.HALTED, reason, actor=actor)
            return reason
    return None


def cut_off_due(
    session: Session, now: dt.datetime, *, actor: str, project_id: str | None = None
) -> list[uuid.UUID]:
    """Stop the active requests past their ``not_after`` that still have pending batches."""
    query = (
        select(RebootRequest.id, RebootRequest.not_after)
        .where(
            RebootRequest.status.in_(ACTIVE_REQUEST_STATES),
            RebootRequest.stop.is_(None),
            RebootRequest.not_after <= now,
        )
        .limit(1000)
    )
    if project_id is not None:
        query = query.where(RebootRequest.project_id == project_id)
    stopped = []
    for request_id, not_after in session.execute(query).all():
        waiting = session.scalar(
            select(func.count())
            .select_from(Batch)
            .where(Batch.request_id == request_id, Batch.status == BatchStatus.PENDING)
        )
        when = not_after.isoformat() if not_after else "?"
        reason = f"cut off at {when}: {waiting} batches not sent"
        if stop_request(session, request_id, RequestStatus.HALTED, reason, actor=actor):
            stopped.append(request_id)
    return stopped


# --- operators' decisions on unknown batches ----------------------------------------------


class NothingToResolve(LookupError):
    """The request has no batch whose outcome is unknown (or not the one named)."""


DECISIONS = ("succeeded", "failed", "resubmit")


def resolve_unknown(
    session: Session,
    request_id: uuid.UUID,
    *,
    decision: str,
    reason: str,
    actor: str,
    batch_index: int | None = None,
) -> list[int]:
    """Record an operator's decision on the request's ``unknown``/``timed_out`` batches (or
    the one at ``batch_index``): ``succeeded`` or ``failed`` (what the operator found), or
    ``resubmit`` (back to ``pending``: the only way such a batch is ever sent again, through
    the release step). Returns the indexes decided. The request's status and counts are
    recomputed; a resubmit reopens it."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    request = _locked_request(session, request_id)
    if request is None:
        raise NothingToResolve(f"no request {request_id}")
    query = select(Batch).where(
        Batch.request_id == request_id, Batch.status.in_(UNDECIDED_BATCH_STATES)
    )
    if batch_index is not None:
        query = query.where(Batch.index == batch_index)
    batches = list(session.scalars(query.order_by(Batch.index)))
    if not batches:
        where = f"batch {batch_index}" if batch_index is not None else "any batch"
        raise NothingToResolve(f"request {request_id}: {where} is not unknown or timed out")
    now = dt.datetime.now(dt.UTC)
    detail: dict[str, Any] = {"decision": decision, "reason": reason, "by": actor}
    for batch in batches:
        if decision == "resubmit":
            transition_batch(
                session,
                batch.id,
                BatchStatus.PENDING,
                actor=actor,
                detail={**detail, "previous_job_id": batch.job_id},
                job_id=None,
                released_at=None,
                next_attempt_at=now,
                next_poll_at=None,
                deadline_at=None,
                finished_at=None,
                poll_count=0,
            )
            _servers_to(session, batch, ServerStatus.PENDING, None, actor, detail, now)
        else:
            to = BatchStatus.SUCCEEDED if decision == "succeeded" else BatchStatus.FAILED
            server = ServerStatus.SUCCEEDED if decision == "succeeded" else ServerStatus.FAILED
            transition_batch(session, batch.id, to, actor=actor, detail=detail)
            _servers_to(session, batch, server, f"operator ({actor}): {reason}", actor, detail, now)
    if decision == "resubmit":
        _reopen(session, request, actor=actor, detail=detail)
    else:
        recompute(session, request_id, actor=actor, detail=detail)
    return [b.index for b in batches]


def _servers_to(
    session: Session,
    batch: Batch,
    to: ServerStatus,
    fail_reason: str | None,
    actor: str,
    detail: dict[str, Any],
    now: dt.datetime,
) -> None:
    ids = list(
        session.scalars(
            select(ServerResult.server_id).where(
                ServerResult.batch_id == batch.id, ServerResult.status == ServerStatus.UNKNOWN
            )
        )
    )
    session.execute(
        update(ServerResult)
        .where(ServerResult.batch_id == batch.id, ServerResult.status == ServerStatus.UNKNOWN)
        .values(
            status=to,
            error_code=None if to is not ServerStatus.FAILED else "OPERATOR",
            fail_reason=fit(fail_reason, 4000),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    add_server_events(
        session,
        batch.request_id,
        batch.id,
        ServerStatus.UNKNOWN.value,
        ((sid, to.value, detail) for sid in ids),
        actor,
        at=now,
    )


def _reopen(
    session: Session, request: RebootRequest, *, actor: str, detail: dict[str, Any]
) -> None:
    """A resubmitted batch makes its request run again (its stop, if any, is lifted)."""
    session.execute(
        update(RebootRequest)
        .where(RebootRequest.id == request.id)
        .values(stop=None)
        .execution_options(synchronize_session=False)
    )
    if request.status is not RequestStatus.RUNNING and request.status not in (
        RequestStatus.ACCEPTED,
    ):
        transition_request(
            session,
            request.id,
            RequestStatus.RUNNING,
            actor=actor,
            detail=detail,
            finished_at=None,
        )


def recompute(
    session: Session, request_id: uuid.UUID, *, actor: str, detail: dict[str, Any]
) -> RebootRequest | None:
    """After a decision: a finished request gets its final status and counts again."""
    request = _locked_request(session, request_id)
    if request is None or request.status not in TERMINAL_REQUEST_STATES:
        return None
    statuses = list(session.scalars(select(Batch.status).where(Batch.request_id == request_id)))
    counts = server_counts(session, request_id)
    final = request.stop or derive_request_status(statuses, counts)
    values = count_columns(counts)
    if final == request.status:
        session.execute(
            update(RebootRequest)
            .where(RebootRequest.id == request_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return request
    return transition_request(session, request_id, final, actor=actor, detail=detail, **values)
