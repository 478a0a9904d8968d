"""Writing the audit record: create requests with their batches and servers; find them again.

Every function works inside the caller's session and transaction: it flushes, never commits.
A request and its ``accepted`` (or ``rejected``) event are written in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, Uuid, bindparam, func, insert, select, text, update
from sqlalchemy.orm import Session

from worker import ids
from worker.db.events import add_event
from worker.db.models import Batch, RebootRequest, ServerResult, UTCDateTime, utcnow
from worker.db.session import is_postgresql
from worker.db.states import (
    BatchStatus,
    EventEntity,
    RebootType,
    RequestStatus,
    ServerStatus,
)

_BATCHES = cast(Table, Batch.__table__)
_SERVERS = cast(Table, ServerResult.__table__)


def create_request(
    session: Session,
    *,
    request_id: uuid.UUID,
    project_id: str,
    server_ids: Sequence[str] | None = None,
    packed_ids: bytes | None = None,
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
    notify_url: str | None = None,
    not_after: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
    selector: dict[str, Any] | None = None,
    preflight: bool | None = None,
    verify: bool | None = None,
    health_timeout: float | None = None,
    health_check: dict[str, Any] | None = None,
    soak_seconds: float | None = None,
    gate_query: str | None = None,
    gate_exclude: str | None = None,
    gate_timeout: float | None = None,
    silence: bool = True,
    duplicates_removed: int = 0,
    fingerprint: dict[str, Any] | None = None,
    actor: str,
) -> RebootRequest:
    """Record an accepted request and its batches (the ids split in order).

    The ids (UUIDs, unique) come as text (``server_ids``) or packed (``packed_ids``, from
    ``worker.ids``). Each batch keeps its ids packed in ``pending_ids``; its ``server_results``
    rows are written when it is first claimed for submission or settled
    (:func:`record_servers`), so intake writes one row per batch, not one per server
    (docs/audit-db.md). One ``accepted`` event is written, no per-server events. A duplicate
    ``request_id`` or ``idempotency_key`` raises ``sqlalchemy.exc.IntegrityError``: roll back
    and call ``find_existing``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if (server_ids is None) == (packed_ids is None):
        raise ValueError("give server_ids or packed_ids")
    packed = packed_ids if packed_ids is not None else ids.pack(server_ids or ())
    total = ids.count(packed)
    if not total:
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
        notify_url=notify_url,
        not_after=not_after,
        not_before=not_before,
        selector=selector,
        preflight=preflight,
        verify=verify,
        health_timeout=health_timeout,
        health_check=health_check,
        soak_seconds=soak_seconds,
        gate_query=gate_query,
        gate_exclude=gate_exclude,
        gate_timeout=gate_timeout,
        silence=silence,
        status=RequestStatus.ACCEPTED,
        servers_total=total,
        servers_succeeded=0,
        servers_failed=0,
        servers_unknown=0,
        servers_cancelled=0,
        servers_skipped=0,
        servers_unhealthy=0,
        duplicates_removed=duplicates_removed,
        fingerprint=fingerprint,
        created_at=now,
    )
    session.add(request)
    session.flush()  # the duplicate check happens here, before any bulk work

    sizes = batch_sizes(total, batch_size, canary_size)
    session.execute(
        insert(_BATCHES),
        [
            {
                "id": uuid.uuid4(),
                "request_id": request_id,
                "project_id": project_id,
                "next_attempt_at": max(now, not_before) if not_before else now,
                "index": index,
                "status": BatchStatus.PENDING,
                "size": sizes[index],
                "submit_attempts": 0,
                "poll_count": 0,
                "checks": 0,
                "created_at": now,
                "updated_at": now,
                "pending_ids": chunk,
            }
            for index, chunk in enumerate(ids.chunks(packed, sizes))
        ],
    )
    add_event(
        session,
        EventEntity.REQUEST,
        request_id,
        None,
        RequestStatus.ACCEPTED,
        actor,
        {"servers": total, "batches": len(sizes), "source": source},
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


def record_servers(session: Session, batch_id: uuid.UUID) -> int:
    """Write the ``server_results`` rows (``pending``) of a batch whose ids are still packed,
    and clear the packed ids; returns the rows written (0 if already done).

    Call it in the transaction that claims or settles the batch: the claim (compare-and-set on
    the batch's status) makes the caller the only writer; the ``pending_ids IS NOT NULL`` guard
    makes a second call a no-op.
    """
    row = session.execute(
        select(_BATCHES.c.request_id, _BATCHES.c.pending_ids)
        .where(_BATCHES.c.id == batch_id, _BATCHES.c.pending_ids.is_not(None))
        .with_for_update()
    ).first()
    if row is None:
        return 0
    request_id, packed = row
    session.execute(update(_BATCHES).where(_BATCHES.c.id == batch_id).values(pending_ids=None))
    now = utcnow()
    server_ids = ids.unpack(packed)
    if is_postgresql(session):
        # One statement with one array parameter: psycopg would otherwise send a thousand
        # INSERTs (several times the CPU and time of this, measured by
        # benchmarks/create_request.py). WITH ORDINALITY keeps the ids in their order.
        session.execute(
            _PG_INSERT_SERVERS,
            {
                "request_id": request_id,
                "batch_id": batch_id,
                "server_ids": server_ids,
                "status": ServerStatus.PENDING.value,
                "now": now,
            },
        )
        return len(server_ids)
    session.execute(
        insert(_SERVERS),
        [
            {
                "request_id": request_id,
                "batch_id": batch_id,
                "server_id": server_id,
                "status": ServerStatus.PENDING,
                "updated_at": now,
            }
            for server_id in server_ids
        ],
    )
    return len(server_ids)


_PG_INSERT_SERVERS = text(
    "INSERT INTO server_results (request_id, batch_id, server_id, status, updated_at)"
    " SELECT :request_id, :batch_id, t.server_id, :status, :now"
    " FROM unnest(CAST(:server_ids AS varchar[])) WITH ORDINALITY AS t(server_id, n)"
    " ORDER BY t.n"
).bindparams(
    bindparam("request_id", type_=Uuid()),
    bindparam("batch_id", type_=Uuid()),
    bindparam("now", type_=UTCDateTime()),
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
    notify_url: str | None = None,
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
        notify_url=notify_url,
        status=RequestStatus.REJECTED,
        servers_total=servers_total,
        servers_succeeded=0,
        servers_failed=0,
        servers_unknown=0,
        servers_cancelled=0,
        servers_skipped=0,
        servers_unhealthy=0,
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


def split_batch(
    session: Session, batch_id: uuid.UUID, *, now: dt.datetime, actor: str
) -> list[uuid.UUID]:
    """Move the pending servers of ``batch_id`` into two new ``pending`` batches (halves, in
    order), linked to it by ``parent_batch_id`` and due at once; returns their ids.

    The caller has moved ``batch_id`` to a terminal state in the same transaction. The
    request's row is locked first, so that two batches of one request splitting at once take
    distinct indexes."""
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
            checks=0,
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
