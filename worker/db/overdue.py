"""The reconciler's questions: work in the audit database whose message was lost.

Each is one indexed query over the batches or requests (``worker.pipeline.reconcile`` acts on
the answers).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from worker.db.models import Batch, RebootRequest
from worker.db.plan import gate_open, soaked
from worker.db.states import (
    ACTIVE_REQUEST_STATES,
    TERMINAL_BATCH_STATES,
    TERMINAL_REQUEST_STATES,
    BatchStatus,
    RequestStatus,
)


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
    """Projects with an unreleased batch of an active request due since before ``before``
    (a request a closed gate holds is due at its next check, not before)."""
    return list(
        session.scalars(
            select(Batch.project_id)
            .join(RebootRequest, RebootRequest.id == Batch.request_id)
            .where(
                Batch.status == BatchStatus.PENDING,
                Batch.next_attempt_at < before,
                Batch.released_at.is_(None),
                RebootRequest.status.in_(ACTIVE_REQUEST_STATES),
                soaked(before),
                gate_open(before),
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


def overdue_checks(
    session: Session, before: dt.datetime, limit: int
) -> list[tuple[uuid.UUID, int]]:
    """Verifying batches whose next check was due before ``before``, with their check count."""
    rows = session.execute(
        select(Batch.id, Batch.checks)
        .where(Batch.status == BatchStatus.VERIFYING, Batch.next_check_at < before)
        .order_by(Batch.next_check_at)
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
                RebootRequest.status.in_(ACTIVE_REQUEST_STATES),
                exists().where(Batch.request_id == RebootRequest.id),
                ~open_batch,
            )
            .limit(limit)
        )
    )


def unnotified_requests(session: Session, before: dt.datetime, limit: int) -> list[uuid.UUID]:
    """Finished requests with a completion callback not yet handed to the broker."""
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
