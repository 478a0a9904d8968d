"""Reading the audit record for the pipeline: small, indexed, read-only queries.

Every function works inside the caller's session and transaction. (Reading for people, the
``bmsreboot status`` shape, is ``worker.db.status``.)
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from worker import ids
from worker.db.models import Batch, ServerResult
from worker.db.states import BatchStatus, ServerStatus


def packed_pending_servers(*where: ColumnElement[bool]) -> ColumnElement[int]:
    """How many servers wait in batches still holding their ids packed (no rows yet: they are
    all ``pending``); ``where`` narrows the batches."""
    return (
        select(func.coalesce(func.sum(Batch.size), 0))
        .where(Batch.status == BatchStatus.PENDING, Batch.pending_ids.is_not(None), *where)
        .scalar_subquery()
    )


def server_counts(session: Session, request_id: uuid.UUID) -> dict[ServerStatus, int]:
    """Servers of a request per status: one grouped, indexed query on ``server_results``, plus
    the servers of batches whose rows are not written yet (pending)."""
    rows = session.execute(
        select(ServerResult.status, func.count())
        .where(ServerResult.request_id == request_id)
        .group_by(ServerResult.status)
    ).all()
    counts = {ServerStatus(status): n for status, n in rows}
    packed = session.scalar(select(packed_pending_servers(Batch.request_id == request_id)))
    if packed:
        counts[ServerStatus.PENDING] = counts.get(ServerStatus.PENDING, 0) + packed
    return counts


def batch_server_ids(session: Session, batch_id: uuid.UUID) -> list[str]:
    """The server ids of a batch, in the order they were given."""
    packed = session.scalar(select(Batch.pending_ids).where(Batch.id == batch_id))
    if packed is not None:
        return ids.unpack(packed)
    return list(
        session.scalars(
            select(ServerResult.server_id)
            .where(ServerResult.batch_id == batch_id)
            .order_by(ServerResult.id)
        )
    )


def batches_due_for_poll(session: Session, now: dt.datetime, limit: int) -> list[uuid.UUID]:
    """Submitted batches whose next poll is due, oldest first; locked rows are skipped (PG)."""
    return list(
        session.scalars(
            select(Batch.id)
            .where(Batch.status == BatchStatus.SUBMITTED, Batch.next_poll_at <= now)
            .order_by(Batch.next_poll_at)
            .limit(limit)
            .with_for_update(key_share=True, skip_locked=True)
        )
    )


def pending_batches(session: Session, request_id: uuid.UUID) -> list[Batch]:
    """The request's batches still waiting to be submitted, by index."""
    return list(
        session.scalars(
            select(Batch)
            .where(Batch.request_id == request_id, Batch.status == BatchStatus.PENDING)
            .order_by(Batch.index)
        )
    )
