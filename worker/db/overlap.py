"""One server in two requests: which servers of a batch another active request holds.

Two producers (or two schedule entries) may ask for the same server at once. A server is not
sent by a request while another holds it; it ends ``skipped`` in the later request, with the
reason naming the other one. Asked when a batch is claimed, just before its POST, in the claim's
transaction. Another request R' holds server S of request R when:

1. S is in flight in R' (its batch ``submitting`` or ``submitted``), whatever their ages;
2. S waits unsent in R' (a ``pending`` batch of R', active), and R' came first;
3. S was sent by R' after R was made (its batch submitted since R's creation): R' is holding
   it or has just rebooted it, which is what R asked for.

So of two overlapping requests exactly the later one skips, whichever claims first. Each
question is one indexed query: pending rows through a partial index, rows changed since R was
made through ``(server_id, updated_at)``, and the packed ids of older requests' unclaimed
batches of the project (read only while such a request exists).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.orm import Session, aliased

from worker import ids
from worker.db.models import Batch, RebootRequest, ServerResult
from worker.db.states import (
    ACTIVE_REQUEST_STATES,
    IN_FLIGHT_BATCH_STATES,
    BatchStatus,
    ServerStatus,
)


def held_elsewhere(
    session: Session, request: RebootRequest, server_ids: Sequence[str]
) -> dict[str, str]:
    """The servers of ``server_ids`` that another request holds, each with the reason it is
    not sent (``"not sent: ..."``)."""
    if not server_ids:
        return {}
    other = aliased(RebootRequest)
    came_first = _came_first(other, request)
    held: dict[str, str] = {}
    pending = session.execute(
        select(ServerResult.server_id, other.id, Batch.status)
        .join(Batch, Batch.id == ServerResult.batch_id)
        .join(other, other.id == ServerResult.request_id)
        .where(
            ServerResult.server_id.in_(server_ids),
            ServerResult.status.in_((ServerStatus.PENDING, ServerStatus.VERIFYING)),
            ServerResult.request_id != request.id,
            other.status.in_(ACTIVE_REQUEST_STATES),
            or_(Batch.status.in_(IN_FLIGHT_BATCH_STATES), came_first),
        )
    ).all()
    for server_id, other_id, batch_status in pending:
        where = (
            "being verified"
            if batch_status == BatchStatus.VERIFYING
            else "in flight"
            if batch_status in IN_FLIGHT_BATCH_STATES
            else "waiting to be sent"
        )
        held.setdefault(server_id, f"not sent: the server is {where} in request {other_id}")
    recent = session.execute(
        select(ServerResult.server_id, other.id, Batch.submitted_at)
        .join(Batch, Batch.id == ServerResult.batch_id)
        .join(other, other.id == ServerResult.request_id)
        .where(
            ServerResult.server_id.in_(server_ids),
            ServerResult.updated_at >= request.created_at,
            ServerResult.request_id != request.id,
            ServerResult.status.not_in((ServerStatus.SKIPPED, ServerStatus.CANCELLED)),
            Batch.submitted_at >= request.created_at,
        )
    ).all()
    for server_id, other_id, submitted_at in recent:
        held.setdefault(
            server_id,
            f"not sent: request {other_id} rebooted the server at "
            f"{submitted_at.isoformat() if submitted_at else '?'}, after this request was made",
        )
    left = [s for s in server_ids if s not in held]
    if left:
        held.update(_waiting_packed(session, request, left))
    return held


def may_overlap(
    session: Session, batches: Sequence[tuple[str, uuid.UUID]]
) -> set[tuple[str, uuid.UUID]]:
    """Of ``(project_id, request_id)`` pairs, those whose servers another request could hold
    (:func:`held_elsewhere` need not be asked for the others): another request of the same
    project is active, or sent a batch since the oldest of these requests was made. One
    query for them all. (A server belongs to one project: the API refuses a server id in
    another project's call, so only a request of the same project can hold it.)"""
    if not batches:
        return set()
    projects = sorted({p for p, _ in batches})
    requests = sorted({r for _, r in batches})
    since = session.scalar(
        select(func.min(RebootRequest.created_at)).where(RebootRequest.id.in_(requests))
    )
    rows = session.execute(
        select(Batch.project_id, Batch.request_id)
        .join(RebootRequest, RebootRequest.id == Batch.request_id)
        .where(
            Batch.project_id.in_(projects),
            or_(
                RebootRequest.status.in_(ACTIVE_REQUEST_STATES),
                Batch.submitted_at >= since if since is not None else false(),
            ),
        )
        .distinct()
    ).all()
    holders: dict[str, set[uuid.UUID]] = {}
    for project_id, request_id in rows:
        holders.setdefault(project_id, set()).add(request_id)
    return {(p, r) for p, r in batches if holders.get(p, set()) - {r}}


def _came_first(other: type[RebootRequest], request: RebootRequest) -> ColumnElement[bool]:
    return or_(
        other.created_at < request.created_at,
        and_(other.created_at == request.created_at, other.id < request.id),
    )


def _waiting_packed(
    session: Session, request: RebootRequest, server_ids: list[str]
) -> dict[str, str]:
    """Servers waiting in unclaimed batches (ids still packed) of older active requests of the
    project."""
    other = aliased(RebootRequest)
    wanted = {uuid.UUID(s).bytes: s for s in server_ids}
    held: dict[str, str] = {}
    blobs = session.execute(
        select(Batch.request_id, Batch.pending_ids)
        .join(other, other.id == Batch.request_id)
        .where(
            Batch.project_id == request.project_id,
            Batch.status == BatchStatus.PENDING,
            Batch.pending_ids.is_not(None),
            Batch.request_id != request.id,
            other.status.in_(ACTIVE_REQUEST_STATES),
            _came_first(other, request),
        )
    )
    for other_id, packed in blobs:
        blob = packed or b""
        for start in range(0, len(blob), ids.SIZE):
            server_id = wanted.get(blob[start : start + ids.SIZE])
            if server_id is not None and server_id not in held:
                held[server_id] = (
                    f"not sent: the server is waiting to be sent in request {other_id}"
                )
    return held
