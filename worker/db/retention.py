"""Retention: finished requests older than ``Settings.retention_days`` are deleted whole.

A request goes with its batches, server rows, events and webhook deliveries; nothing of a
running request is ever touched, and the event log is otherwise never deleted from. Webhook
and chat deliveries that ended (delivered, failed, stopped) also go by age, for an event
older than the cutoff, whatever their request (a pending one is never deleted).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import cast

from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from worker.db.models import (
    Batch,
    Event,
    RebootRequest,
    ServerResult,
    WebhookDelivery,
    utcnow,
)
from worker.db.states import TERMINAL_REQUEST_STATES, DeliveryStatus

ENDED_DELIVERY_STATES = (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.STOPPED)

# Requests deleted per round of DELETEs; keeps each IN list and lock set small.
PURGE_CHUNK = 500

_CHILDREN = [
    cast(Table, model.__table__) for model in (WebhookDelivery, Event, ServerResult, Batch)
]


def purge_finished(
    session: Session, *, older_than_days: int, now: dt.datetime | None = None
) -> int:
    """Delete finished requests whose ``finished_at`` is older than the cutoff, and everything
    recorded about them, and the ended webhook deliveries of events older than the cutoff;
    return how many requests were removed. Flushes, never commits."""
    cutoff = (now or utcnow()) - dt.timedelta(days=older_than_days)
    ids: list[uuid.UUID] = list(
        session.scalars(
            select(RebootRequest.id).where(
                RebootRequest.status.in_(TERMINAL_REQUEST_STATES),
                RebootRequest.finished_at < cutoff,
            )
        )
    )
    for start in range(0, len(ids), PURGE_CHUNK):
        chunk = ids[start : start + PURGE_CHUNK]
        # Children first: explicit deletes do not depend on ON DELETE CASCADE being enforced.
        for table in _CHILDREN:
            session.execute(delete(table).where(table.c.request_id.in_(chunk)))
        session.execute(
            delete(RebootRequest)
            .where(RebootRequest.id.in_(chunk))
            .execution_options(synchronize_session=False)
        )
    session.execute(
        delete(WebhookDelivery)
        .where(
            WebhookDelivery.status.in_(ENDED_DELIVERY_STATES),
            WebhookDelivery.created_at < cutoff,
        )
        .execution_options(synchronize_session=False)
    )
    return len(ids)
