"""Retention removes whole finished requests past the cutoff, and nothing else."""

from __future__ import annotations

import datetime as dt
from typing import cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.orm import Session

from tests.fixtures.db import new_request, pending_batches
from worker.db.models import Batch, Event, RebootRequest, ServerResult
from worker.db.retention import purge_finished
from worker.db.states import BatchStatus, RequestStatus, ServerStatus
from worker.db.transitions import settle_batch, transition_request


def _count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(cast(Table, model.__table__))) or 0


def _finished(session: Session, finished_at: dt.datetime) -> RebootRequest:
    request = new_request(session, 3, batch_size=2)
    for batch in pending_batches(session, request.id):
        settle_batch(
            session,
            batch.id,
            BatchStatus.CANCELLED,
            actor="t",
            default_status=ServerStatus.CANCELLED,
        )
    transition_request(session, request.id, RequestStatus.CANCELLED, actor="t")
    session.execute(
        update(RebootRequest).where(RebootRequest.id == request.id).values(finished_at=finished_at)
    )
    return request


def test_purge_removes_old_finished_requests_with_everything_recorded_about_them(
    session: Session,
) -> None:
    now = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    # Given an old finished request, a recent one, and an old one still running
    old = _finished(session, now - dt.timedelta(days=91))
    recent = _finished(session, now - dt.timedelta(days=89))
    running = new_request(session, 2)
    session.execute(
        update(RebootRequest)
        .where(RebootRequest.id == running.id)
        .values(status=RequestStatus.RUNNING, created_at=now - dt.timedelta(days=400))
    )
    # When retention runs with 90 days
    removed = purge_finished(session, older_than_days=90, now=now)
    # Then only the old finished request is gone, with its batches, servers and events
    assert removed == 1
    remaining = set(session.scalars(select(RebootRequest.id)))
    assert remaining == {recent.id, running.id}
    for model in (Batch, ServerResult, Event):
        column = model.request_id  # type: ignore[attr-defined]
        assert session.scalar(select(func.count()).where(column == old.id)) == 0
    # (the recent request's 3 rows; the running one's 2 servers wait packed in its batch)
    assert _count(session, ServerResult) == 3
    assert session.scalar(select(func.sum(Batch.size)).where(Batch.request_id == running.id)) == 2
    assert purge_finished(session, older_than_days=90, now=now) == 0
