"""The schedule the audit database keeps: which batch is released next, what is overdue.

The release step and the reconciler read only these functions, so that what is due, and when,
is decided in one place from the audit rows, never from what happens to be in the broker.

A ``pending`` batch is *due* when ``next_attempt_at <= now`` and *released* once the release
step reserved it an API slot and sent its submit message (``released_at`` set,
``next_attempt_at`` = that slot). The release order is the batch index first, then the
request's age: the batches 0 of every active request of a project go before any batch 1, which
keeps requests of the same project fair and each request in index order.
"""

from __future__ import annotations

import datetime as dt
import statistics
import uuid
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, and_, case, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from worker.db.models import Batch, RebootRequest
from worker.db.states import TERMINAL_BATCH_STATES, BatchStatus, RequestStatus

#: Requests whose batches may be released.
ACTIVE_REQUESTS = (RequestStatus.ACCEPTED, RequestStatus.RUNNING)


def _in_flight() -> ScalarSelect[int]:
    """How many batches of the row's request are released, ``submitting`` or ``submitted``."""
    other = aliased(Batch)
    return (
        select(func.count())
        .select_from(other)
        .where(
            other.request_id == Batch.request_id,
            or_(
                other.status.in_((BatchStatus.SUBMITTING, BatchStatus.SUBMITTED)),
                and_(other.status == BatchStatus.PENDING, other.released_at.is_not(None)),
            ),
        )
        .correlate(Batch)
        .scalar_subquery()
    )


def release_conditions(project_id: str, now: dt.datetime) -> list[ColumnElement[bool]]:
    """What makes a batch releasable, besides being due: the one place the release decision
    is made, every rollout control one condition.

    - the request is active and no control stopped it (brake, canary, cut-off, cancel);
    - ``not_after``: no batch is released after the cut-off time;
    - ``max_in_flight``: fewer than that many of the request's batches are released,
      ``submitting`` or ``submitted``;
    - ``canary_size``: batch 0 goes first; the others only once it has ``succeeded``.
    """
    other = aliased(Batch)
    canary_passed = (
        exists()
        .where(
            other.request_id == Batch.request_id,
            other.index == 0,
            other.status == BatchStatus.SUCCEEDED,
        )
        .correlate(Batch)
    )
    return [
        Batch.project_id == project_id,
        Batch.status == BatchStatus.PENDING,
        Batch.released_at.is_(None),
        RebootRequest.status.in_(ACTIVE_REQUESTS),
        RebootRequest.stop.is_(None),
        or_(RebootRequest.not_after.is_(None), RebootRequest.not_after > now),
        or_(RebootRequest.max_in_flight.is_(None), _in_flight() < RebootRequest.max_in_flight),
        or_(RebootRequest.canary_size.is_(None), Batch.index == 0, canary_passed),
    ]


def releasable(session: Session, project_id: str, now: dt.datetime, limit: int) -> list[uuid.UUID]:
    """Up to ``limit`` batches to release next for ``project_id``, in release order (one
    indexed query).

    The query tests ``max_in_flight`` against the request's batches in flight *before* this
    release, so several rows of one request may fit only together with the ones before them:
    the list keeps only as many of a request's batches as it has room for. (The caller holds
    the project's release lease, so nothing else releases meanwhile; a batch that ends only
    makes more room.) The canary needs nothing of the kind: until batch 0 has succeeded, no
    other batch of its request is in the rows."""
    rows = session.execute(
        select(
            Batch.id,
            Batch.request_id,
            RebootRequest.max_in_flight,
            case((RebootRequest.max_in_flight.is_(None), 0), else_=_in_flight()),
        )
        .join(RebootRequest, RebootRequest.id == Batch.request_id)
        .where(*release_conditions(project_id, now), Batch.next_attempt_at <= now)
        .order_by(Batch.index, RebootRequest.created_at, Batch.id)
        .limit(limit)
    ).all()
    room: dict[uuid.UUID, int] = {}
    chosen = []
    for batch_id, request_id, max_in_flight, in_flight in rows:
        if max_in_flight is not None:
            left = room.setdefault(request_id, max_in_flight - in_flight)
            if left <= 0:
                continue
            room[request_id] = left - 1
        chosen.append(batch_id)
    return chosen


def next_due_at(session: Session, project_id: str, now: dt.datetime) -> dt.datetime | None:
    """When the project's next releasable batch falls due (retries wait for their backoff).
    Batches held back by a rollout limit are not due: the end of a batch re-runs the step."""
    return session.scalar(
        select(func.min(Batch.next_attempt_at))
        .join(RebootRequest, RebootRequest.id == Batch.request_id)
        .where(*release_conditions(project_id, now))
    )


def end_may_release(session: Session, batch: Batch) -> bool:
    """Whether the end of ``batch`` can make another batch of its request releasable: only the
    rollout limits that wait on other batches do (``max_in_flight``; the canary, whose batch 0
    holds the rest back), and only while the request may still release. Every other pending
    batch is due on its own schedule, and the release step already planned it: a release run
    after each ended batch would be wasted work (one task, a lease and three queries)."""
    request = session.get(RebootRequest, batch.request_id)
    if request is None or request.status not in ACTIVE_REQUESTS or request.stop is not None:
        return False
    return request.max_in_flight is not None or (
        request.canary_size is not None and batch.index == 0
    )


def mark_released(
    session: Session, batch_id: uuid.UUID, *, now: dt.datetime, slot: dt.datetime
) -> bool:
    """Record that ``batch_id`` got the API slot ``slot``; False if another release run took
    it first (compare-and-set on ``released_at IS NULL``)."""
    stmt = (
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.status == BatchStatus.PENDING,
            Batch.released_at.is_(None),
        )
        .values(released_at=now, next_attempt_at=slot, updated_at=now)
        .returning(Batch.id)
        .execution_options(synchronize_session=False)
    )
    return session.execute(stmt).first() is not None


# --- the reconciler's questions ---------------------------------------------------------------


def unrelease_lost(session: Session, before: dt.datetime, limit: int) -> list[str]:
    """Released batches still ``pending`` long after their slot: their submit message is gone.
    They are made releasable again; returns their projects, one entry per batch."""
    ids = list(
        session.scalars(
            select(Batch.id)
            .where(
                Batch.status == BatchStatus.PENDING,
                Batch.next_attempt_at < before,
                Batch.released_at.is_not(None),
            )
            .limit(limit)
        )
    )
    if not ids:
        return []
    rows = session.execute(
        update(Batch)
        .where(Batch.id.in_(ids), Batch.status == BatchStatus.PENDING)
        .values(released_at=None)
        .returning(Batch.project_id)
        .execution_options(synchronize_session=False)
    )
    return sorted(row[0] for row in rows)


def projects_with_overdue_releases(session: Session, before: dt.datetime) -> list[str]:
    """Projects with an unreleased batch of an active request due since before ``before``."""
    return list(
        session.scalars(
            select(Batch.project_id)
            .join(RebootRequest, RebootRequest.id == Batch.request_id)
            .where(
                Batch.status == BatchStatus.PENDING,
                Batch.next_attempt_at < before,
                Batch.released_at.is_(None),
                RebootRequest.status.in_(ACTIVE_REQUESTS),
            )
            .distinct()
        )
    )


def stale_submitting(session: Session, before: dt.datetime, limit: int) -> list[uuid.UUID]:
    """Batches ``submitting`` since before ``before``: no POST can still be running."""
    return list(
        session.scalars(
            select(Batch.id)
            .where(Batch.status == BatchStatus.SUBMITTING, Batch.updated_at < before)
            .limit(limit)
        )
    )


def overdue_polls(session: Session, before: dt.datetime, limit: int) -> list[tuple[uuid.UUID, int]]:
    """Submitted batches whose next poll was due before ``before``, with their poll count."""
    rows = session.execute(
        select(Batch.id, Batch.poll_count)
        .where(Batch.status == BatchStatus.SUBMITTED, Batch.next_poll_at < before)
        .order_by(Batch.next_poll_at)
        .limit(limit)
    ).all()
    return [(row[0], row[1]) for row in rows]


def unfinalized_requests(session: Session, limit: int) -> list[uuid.UUID]:
    """Open requests none of whose batches is still open: they missed their finalizer."""
    open_batch = exists().where(
        Batch.request_id == RebootRequest.id, Batch.status.not_in(TERMINAL_BATCH_STATES)
    )
    return list(
        session.scalars(
            select(RebootRequest.id)
            .where(
                RebootRequest.status.in_(ACTIVE_REQUESTS),
                exists().where(Batch.request_id == RebootRequest.id),
                ~open_batch,
            )
            .limit(limit)
        )
    )


def unnotified_requests(session: Session, before: dt.datetime, limit: int) -> list[uuid.UUID]:
    """Finished requests with a completion callback not yet handed to the broker."""
    from worker.db.states import TERMINAL_REQUEST_STATES

    return list(
        session.scalars(
            select(RebootRequest.id)
            .where(
                RebootRequest.status.in_(TERMINAL_REQUEST_STATES),
                RebootRequest.status != RequestStatus.REJECTED,
                RebootRequest.notify_task.is_not(None),
                RebootRequest.notified_at.is_(None),
                RebootRequest.finished_at < before,
            )
            .limit(limit)
        )
    )


def mark_notified(session: Session, request_id: uuid.UUID, now: dt.datetime) -> None:
    session.execute(
        update(RebootRequest)
        .where(RebootRequest.id == request_id, RebootRequest.notified_at.is_(None))
        .values(notified_at=now)
        .execution_options(synchronize_session=False)
    )


# --- learned job durations --------------------------------------------------------------------


def learned_job_duration(session: Session, project_id: str, history: int) -> float | None:
    """The median time from submission to the job's own end over the project's ``history``
    most recently ended jobs (one indexed query), or None without history."""
    rows: Any = session.execute(
        select(Batch.submitted_at, Batch.job_ended_at)
        .where(
            and_(
                Batch.project_id == project_id,
                Batch.job_ended_at.is_not(None),
                Batch.submitted_at.is_not(None),
            )
        )
        .order_by(Batch.job_ended_at.desc())
        .limit(history)
    ).all()
    durations = [
        max((ended - submitted).total_seconds(), 0.0) for submitted, ended in rows if ended
    ]
    return statistics.median(durations) if durations else None


# --- isolating the server a whole batch was refused for ---------------------------------------


def split_batch(
    session: Session, batch_id: uuid.UUID, *, now: dt.datetime, actor: str
) -> list[uuid.UUID]:
    """Move the pending servers of ``batch_id`` into two new ``pending`` batches (halves, in
    order), linked to it by ``parent_batch_id`` and due at once; returns their ids.

    The caller has moved ``batch_id`` to a terminal state in the same transaction. The
    request's row is locked first, so that two batches of one request splitting at once take
    distinct indexes."""
    from worker.db.events import add_event
    from worker.db.models import ServerResult
    from worker.db.states import EventEntity, ServerStatus

    parent = session.get(Batch, batch_id)
    assert parent is not None
    session.execute(
        select(RebootRequest.id)
        .where(RebootRequest.id == parent.request_id)
        .with_for_update(key_share=True)
    )
    rows = list(
        session.scalars(
            select(ServerResult.id)
            .where(ServerResult.batch_id == batch_id, ServerResult.status == ServerStatus.PENDING)
            .order_by(ServerResult.id)
        )
    )
    if len(rows) < 2:
        return []
    top = session.scalar(select(func.max(Batch.index)).where(Batch.request_id == parent.request_id))
    half = len(rows) // 2
    children: list[uuid.UUID] = []
    for offset, part in enumerate((rows[:half], rows[half:]), start=1):
        child = Batch(
            id=uuid.uuid4(),
            request_id=parent.request_id,
            parent_batch_id=batch_id,
            project_id=parent.project_id,
            index=(top or 0) + offset,
            status=BatchStatus.PENDING,
            size=len(part),
            submit_attempts=0,
            poll_count=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        session.add(child)
        session.flush()
        session.execute(
            update(ServerResult)
            .where(ServerResult.id.in_(part))
            .values(batch_id=child.id, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        add_event(
            session,
            EventEntity.BATCH,
            parent.request_id,
            None,
            BatchStatus.PENDING,
            actor,
            {"split_from": parent.index, "servers": len(part)},
            child.id,
            at=now,
        )
        children.append(child.id)
    return children
