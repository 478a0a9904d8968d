"""Writing the audit record: create requests with their batches and servers; find them again.

Every function works inside the caller's session and transaction: it flushes, never commits.
A request and its ``accepted`` (or ``rejected``) event are written in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from worker.db.events import add_event
from worker.db.models import Batch, RebootRequest, ServerResult, utcnow
from worker.db.states import (
    BatchStatus,
    EventEntity,
    RebootType,
    RequestStatus,
    ServerStatus,
)

_BATCHES = cast(Table, Batch.__table__)
_SERVERS = cast(Table, ServerResult.__table__)


#: Server rows go in by COPY on PostgreSQL. False falls back to multi-row INSERTs (kept so that
#: benchmarks/create_request.py can measure both).
PG_COPY = True


def create_request(
    session: Session,
    *,
    request_id: uuid.UUID,
    project_id: str,
    server_ids: Sequence[str],
    type: str,
    source: str,
    batch_size: int,
    idempotency_key: str | None = None,
    region: str | None = None,
    endpoint: str | None = None,
    max_in_flight: int | None = None,
    canary_size: int | None = None,
    failure_threshold: float | None = None,
    notify_task: str | None = None,
    notify_queue: str | None = None,
    not_after: dt.datetime | None = None,
    duplicates_removed: int = 0,
    actor: str,
) -> RebootRequest:
    """Record an accepted request, its batches (``server_ids`` split in order) and servers.

    Batches and server rows go in with bulk inserts (COPY on PostgreSQL); one ``accepted``
    event is written, no per-server events. A duplicate ``request_id`` or ``idempotency_key``
    raises ``sqlalchemy.exc.IntegrityError``: roll back and call ``find_existing``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not server_ids:
        raise ValueError("a request needs at least one server")
    now = utcnow()
    request = RebootRequest(
        id=request_id,
        idempotency_key=idempotency_key,
        project_id=project_id,
        region=region,
        endpoint=endpoint,
        type=RebootType(type),
        source=source,
        batch_size=batch_size,
        max_in_flight=max_in_flight,
        canary_size=canary_size,
        failure_threshold=failure_threshold,
        notify_task=notify_task,
        notify_queue=notify_queue,
        not_after=not_after,
        status=RequestStatus.ACCEPTED,
        servers_total=len(server_ids),
        servers_succeeded=0,
        servers_failed=0,
        servers_unknown=0,
        servers_cancelled=0,
        duplicates_removed=duplicates_removed,
        created_at=now,
    )
    session.add(request)
    session.flush()  # the duplicate check happens here, before any bulk work

    sizes = batch_sizes(len(server_ids), batch_size, canary_size)
    batch_ids = [uuid.uuid4() for _ in sizes]
    session.execute(
        insert(_BATCHES),
        [
            {
                "id": batch_id,
                "request_id": request_id,
                "project_id": project_id,
                "next_attempt_at": now,
                "index": index,
                "status": BatchStatus.PENDING,
                "size": sizes[index],
                "submit_attempts": 0,
                "poll_count": 0,
                "created_at": now,
                "updated_at": now,
            }
            for index, batch_id in enumerate(batch_ids)
        ],
    )
    owners = [
        batch_id for batch_id, size in zip(batch_ids, sizes, strict=True) for _ in range(size)
    ]
    _insert_servers(session, request_id, owners, server_ids, now)
    add_event(
        session,
        EventEntity.REQUEST,
        request_id,
        None,
        RequestStatus.ACCEPTED,
        actor,
        {"servers": len(server_ids), "batches": len(batch_ids), "source": source},
        at=now,
    )
    return request


def batch_sizes(servers: int, batch_size: int, canary_size: int | None = None) -> list[int]:
    """The sizes of a request's batches in order: the canary first when there is one, then
    ``batch_size`` at a time."""
    sizes: list[int] = []
    if canary_size:
        sizes.append(min(canary_size, servers))
    rest = servers - sum(sizes)
    sizes.extend(min(batch_size, rest - start) for start in range(0, rest, batch_size))
    return sizes


def _insert_servers(
    session: Session,
    request_id: uuid.UUID,
    owners: Sequence[uuid.UUID],
    server_ids: Sequence[str],
    now: dt.datetime,
) -> None:
    """Insert the server rows; ``owners[i]`` is the batch of ``server_ids[i]``."""
    connection = session.connection()
    if connection.dialect.name == "postgresql" and PG_COPY:
        # COPY is several times faster than multi-row INSERTs for a million rows (see
        # docs/audit-db.md); it runs on the session's own connection, so in its transaction.
        driver_connection: Any = connection.connection.driver_connection
        pending = ServerStatus.PENDING.value
        with (
            driver_connection.cursor() as cursor,
            cursor.copy(
                "COPY server_results (request_id, batch_id, server_id, status, updated_at)"
                " FROM STDIN"
            ) as copy,
        ):
            for batch_id, server_id in zip(owners, server_ids, strict=True):
                copy.write_row((request_id, batch_id, server_id, pending, now))
        return
    table = _SERVERS
    session.execute(
        insert(table),
        [
            {
                "request_id": request_id,
                "batch_id": batch_id,
                "server_id": server_id,
                "status": ServerStatus.PENDING,
                "updated_at": now,
            }
            for batch_id, server_id in zip(owners, server_ids, strict=True)
        ],
    )


def create_rejected_request(
    session: Session,
    *,
    request_id: uuid.UUID,
    project_id: str,
    type: str,
    source: str,
    reasons: list[str],
    idempotency_key: str | None = None,
    servers_total: int = 0,
    batch_size: int = 0,
    region: str | None = None,
    endpoint: str | None = None,
    notify_task: str | None = None,
    duplicates_removed: int = 0,
    actor: str,
) -> RebootRequest:
    """Record a request refused at intake: status ``rejected``, the reasons, no batches.

    ``batch_size`` 0 means "no valid policy was given". A rejected request does not hold its
    idempotency key: the key is kept in ``rejected_idempotency_key``, so that a corrected retry
    with the same key is accepted as a new request.
    """
    now = utcnow()
    request = RebootRequest(
        id=request_id,
        idempotency_key=None,
        rejected_idempotency_key=idempotency_key,
        project_id=project_id,
        region=region,
        endpoint=endpoint,
        type=RebootType(type),
        source=source,
        batch_size=batch_size,
        notify_task=notify_task,
        status=RequestStatus.REJECTED,
        servers_total=servers_total,
        servers_succeeded=0,
        servers_failed=0,
        servers_unknown=0,
        servers_cancelled=0,
        duplicates_removed=duplicates_removed,
        created_at=now,
        finished_at=now,
        reason="; ".join(reasons),
        rejection_reasons=list(reasons),
    )
    session.add(request)
    session.flush()
    add_event(
        session,
        EventEntity.REQUEST,
        request_id,
        None,
        RequestStatus.REJECTED,
        actor,
        {"reasons": list(reasons)},
        at=now,
    )
    return request


def find_existing(
    session: Session, *, request_id: uuid.UUID | None, idempotency_key: str | None
) -> RebootRequest | None:
    """The request with this id, else the one with this idempotency key, else None."""
    if request_id is not None:
        found = session.scalar(select(RebootRequest).where(RebootRequest.id == request_id))
        if found is not None:
            return found
    if idempotency_key is not None:
        return session.scalar(
            select(RebootRequest).where(RebootRequest.idempotency_key == idempotency_key)
        )
    return None
