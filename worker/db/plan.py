"""The release plan the audit database keeps: which pending batch of a project goes next.

The release step (``worker.pipeline.release``) reads only these functions, so that what is
releasable, and when, is decided in one place from the audit rows, never from what happens to
be in the broker.

A ``pending`` batch is *due* when ``next_attempt_at <= now`` and *released* once the release
step reserved it an API slot and sent its submit message (``released_at`` set,
``next_attempt_at`` = that slot). The release order is the batch index first, then the
request's age: the batches 0 of every active request of a project go before any batch 1, which
keeps requests of the same project fair and each request in index order.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ColumnElement, ScalarSelect, and_, case, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from worker.db.models import Batch, RebootRequest, UTCDateTime
from worker.db.states import ACTIVE_REQUEST_STATES, IN_FLIGHT_BATCH_STATES, BatchStatus


def before_cut_off(now: dt.datetime) -> ColumnElement[bool]:
    """The request's ``not_after`` has not come (the one cut-off test, in SQL; in Python:
    ``worker.db.states.past_cut_off``)."""
    return or_(RebootRequest.not_after.is_(None), RebootRequest.not_after > now)


def _in_flight() -> ScalarSelect[int]:
    """How many batches of the row's request are released, ``submitting``, ``submitted`` or
    ``verifying`` (a batch counts until its servers are back, not until its job ends)."""
    other = aliased(Batch)
    return (
        select(func.count())
        .select_from(other)
        .where(
            other.request_id == Batch.request_id,
            or_(
                other.status.in_(IN_FLIGHT_BATCH_STATES),
                and_(other.status == BatchStatus.PENDING, other.released_at.is_not(None)),
            ),
        )
        .correlate(Batch)
        .scalar_subquery()
    )


def release_conditions(
    project_id: str, now: dt.datetime, *, gate: bool = True
) -> list[ColumnElement[bool]]:
    """What makes a batch releasable, besides being due: the one place the release decision
    is made, every rollout control one condition.

    - the request is active and no control stopped it (brake, canary, cut-off, cancel);
    - ``not_after``: no batch is released after the cut-off time;
    - ``max_in_flight``: fewer than that many of the request's batches are released,
      ``submitting``, ``submitted`` or ``verifying``;
    - ``canary_size``: batch 0 goes first; the others only once it has ``succeeded``;
    - ``soak_seconds``: nothing is released before the soak after the request's last ended
      batch is over (``soak_until``);
    - the alert gate: nothing is released while a closed gate holds the request
      (``gate_held_until``, its next check: ``worker.pipeline.gate``). ``gate=False`` leaves
      this one out (:func:`next_due_at`).
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
    conditions = [
        Batch.project_id == project_id,
        Batch.status == BatchStatus.PENDING,
        Batch.released_at.is_(None),
        RebootRequest.status.in_(ACTIVE_REQUEST_STATES),
        RebootRequest.stop.is_(None),
        before_cut_off(now),
        or_(RebootRequest.max_in_flight.is_(None), _in_flight() < RebootRequest.max_in_flight),
        or_(RebootRequest.canary_size.is_(None), Batch.index == 0, canary_passed),
        soaked(now),
    ]
    return [*conditions, gate_open(now)] if gate else conditions


def gate_open(now: dt.datetime) -> ColumnElement[bool]:
    """No closed gate holds the request at ``now`` (it may still close at its next check)."""
    return or_(RebootRequest.gate_held_until.is_(None), RebootRequest.gate_held_until <= now)


def soaked(now: dt.datetime) -> ColumnElement[bool]:
    """The request's soak, if any, is over."""
    return or_(RebootRequest.soak_until.is_(None), RebootRequest.soak_until <= now)


def start_soak(session: Session, batch: Batch, now: dt.datetime) -> float:
    """After ``batch`` ended with servers rebooted, its request's next release waits its
    ``soak_seconds`` (kured's pause between nodes, for caches and replicas to settle).
    Returns the wait (0: none)."""
    request = session.get(RebootRequest, batch.request_id)
    if (
        request is None
        or not request.soak_seconds
        or batch.status in (BatchStatus.CANCELLED, BatchStatus.SKIPPED, BatchStatus.REJECTED)
    ):
        return 0.0
    session.execute(
        update(RebootRequest)
        .where(RebootRequest.id == request.id)
        .values(soak_until=now + dt.timedelta(seconds=request.soak_seconds))
        .execution_options(synchronize_session=False)
    )
    return request.soak_seconds


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
    """When the project's next releasable batch falls due (retries wait for their backoff; a
    request a closed gate holds, at its next check). Batches held back by a rollout limit are
    not due: the end of a batch re-runs the step."""
    held = RebootRequest.gate_held_until
    due = case(
        (and_(held.is_not(None), held > Batch.next_attempt_at), held),
        else_=Batch.next_attempt_at,
    )
    found: dt.datetime | None = session.scalar(
        select(func.min(due, type_=UTCDateTime()))
        .select_from(Batch)
        .join(RebootRequest, RebootRequest.id == Batch.request_id)
        .where(*release_conditions(project_id, now, gate=False))
    )
    return found


def end_may_release(session: Session, batch: Batch) -> bool:
    """Whether the end of ``batch`` can make another batch of its request releasable: only the
    rollout limits that wait on other batches do (``max_in_flight``; the canary, whose batch 0
    holds the rest back; a soak, which ends later), and only while the request may still
    release. Every other pending batch is due on its own schedule, and the release step
    already planned it: a release run after each ended batch would be wasted work (one task,
    a lease and three queries)."""
    request = session.get(RebootRequest, batch.request_id)
    if request is None or request.status not in ACTIVE_REQUEST_STATES or request.stop is not None:
        return False
    return (
        request.max_in_flight is not None
        or bool(request.soak_seconds)
        or (request.canary_size is not None and batch.index == 0)
    )


def mark_released(
    session: Session, slots: list[tuple[uuid.UUID, dt.datetime]], *, now: dt.datetime
) -> set[uuid.UUID]:
    """Record that each batch got its API slot, in one statement; returns those recorded (a
    batch another release run took first is not: compare-and-set on ``released_at IS NULL``)."""
    from worker.db.sweeps import update_each

    moved = update_each(
        session,
        {"id": [batch_id for batch_id, _ in slots], "next_attempt_at": [at for _, at in slots]},
        fixed={"released_at": now, "updated_at": now},
        guard={"status": BatchStatus.PENDING.value, "released_at": None},
    )
    return set(moved)
