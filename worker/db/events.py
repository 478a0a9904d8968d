"""Writing the append-only event log: one row per state change.

Called by ``worker.db.create`` and ``worker.db.transitions`` in the caller's session and
transaction, so that a state change and its ``events`` row are committed together.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Table, Uuid, bindparam, insert, text
from sqlalchemy.orm import Session

from worker.db.models import Event, UTCDateTime
from worker.db.session import is_postgresql
from worker.db.states import EventEntity
from worker.text import clean_json

_EVENTS = cast(Table, Event.__table__)


def add_event(
    session: Session,
    entity: EventEntity,
    request_id: uuid.UUID,
    from_state: str | None,
    to_state: str,
    actor: str,
    detail: dict[str, Any] | None,
    batch_id: uuid.UUID | None = None,
    *,
    at: dt.datetime,
) -> None:
    """Write one event about a request or a batch."""
    session.execute(
        insert(_EVENTS).values(
            entity=entity,
            request_id=request_id,
            batch_id=batch_id,
            from_state=None if from_state is None else str(from_state),
            to_state=str(to_state),
            at=at,
            actor=actor,
            detail=clean_json(detail),
        )
    )


def add_server_events(
    session: Session,
    request_id: uuid.UUID,
    batch_id: uuid.UUID,
    from_state: str,
    changes: Iterable[tuple[str, str, dict[str, Any] | None]],
    actor: str,
    *,
    at: dt.datetime,
) -> None:
    """Write one ``server`` event per ``(server_id, to_state, detail)`` in one statement;
    nothing if there are none."""
    rows = [(server_id, to_state, clean_json(detail)) for server_id, to_state, detail in changes]
    if not rows:
        return
    if is_postgresql(session):
        # One INSERT ... SELECT FROM unnest for the batch: an executemany is one INSERT an
        # event with psycopg, most of PostgreSQL's work per batch (benchmarks/workers.py).
        session.execute(
            _PG_SERVER_EVENTS,
            {
                "entity": EventEntity.SERVER.value,
                "request_id": request_id,
                "batch_id": batch_id,
                "from_state": from_state,
                "actor": actor,
                "at": at,
                "server_ids": [server_id for server_id, _, _ in rows],
                "to_states": [to_state for _, to_state, _ in rows],
                "details": [None if d is None else json.dumps(d) for _, _, d in rows],
            },
        )
        return
    session.execute(
        insert(_EVENTS),
        [
            {
                "entity": EventEntity.SERVER,
                "request_id": request_id,
                "batch_id": batch_id,
                "server_id": server_id,
                "from_state": from_state,
                "to_state": to_state,
                "at": at,
                "actor": actor,
                "detail": detail,
            }
            for server_id, to_state, detail in rows
        ],
    )


_PG_SERVER_EVENTS = text(
    "INSERT INTO events"
    " (entity, request_id, batch_id, server_id, from_state, to_state, at, actor, detail)"
    " SELECT :entity, :request_id, :batch_id, v.server_id, :from_state,"
    " v.to_state, :at, :actor, v.detail"
    " FROM unnest(CAST(:server_ids AS varchar[]), CAST(:to_states AS varchar[]),"
    " CAST(:details AS jsonb[])) WITH ORDINALITY AS v(server_id, to_state, detail, n)"
    " ORDER BY v.n"
).bindparams(
    bindparam("request_id", type_=Uuid()),
    bindparam("batch_id", type_=Uuid()),
    bindparam("at", type_=UTCDateTime()),
)
