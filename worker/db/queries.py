"""Reading the audit record for the pipeline: small, indexed, read-only queries.

Every function works inside the caller's session and transaction. (Reading for people, the
``bmsreboot status`` shape, is ``worker.db.status``.)
"""

from __future__ import annotations

import statistics
import uuid
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select
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


def learned_boot_seconds(session: Session, project_id: str, history: int) -> float | None:
    """The median time the project's servers took from their job's end to being seen back,
    over its ``history`` most recently verified batches (one indexed query), or None."""
    rows = session.scalars(
        select(Batch.boot_seconds)
        .where(Batch.project_id == project_id, Batch.boot_seconds.is_not(None))
        .order_by(Batch.job_ended_at.desc())
        .limit(history)
    ).all()
    values = [float(v) for v in rows if v is not None]
    return statistics.median(values) if values else None
