"""Writing the audit record: create requests, move requests/batches/servers through their states.

Every function works inside the caller's session and transaction: it flushes, never commits.
A state change and its ``events`` row are written in the same transaction.

Transitions are compare-and-set. The current state is read with ``SELECT ... FOR UPDATE`` (a row
lock on PostgreSQL; on SQLite every transaction already holds the write lock, see
``worker.db.session``), checked against the tables in ``worker.db.states``, then written with
``UPDATE ... WHERE id = :id AND status = :current``. Of two workers racing on one row, the second
waits for the first, sees its committed state and gets ``IllegalTransition``.

Row locks are ``FOR NO KEY UPDATE`` (``key_share=True``), the lock PostgreSQL's own UPDATE
takes: it does not conflict with the ``KEY SHARE`` locks that inserting child rows (events,
server rows) takes on the parent through its foreign key. Plain ``FOR UPDATE`` would, and two
workers settling the last two batches of one request would deadlock in ``finalize``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from worker.db.models import Batch, Event, RebootRequest, ServerResult, UTCDateTime, utcnow
from worker.db.states import (
    BATCH_TRANSITIONS,
    REQUEST_TRANSITIONS,
    SERVER_TRANSITIONS,
    TERMINAL_BATCH_STATES,
    TERMINAL_REQUEST_STATES,
    BatchStatus,
    EventEntity,
    IllegalTransition,
    RebootType,
    RequestStatus,
    ServerStatus,
    derive_request_status,
)

_BATCHES = cast(Table, Batch.__table__)
_SERVERS = cast(Table, ServerResult.__table__)
_EVENTS = cast(Table, Event.__table__)


#: Server rows go in by COPY on PostgreSQL. False falls back to multi-row INSERTs (kept so that
#: benchmarks/create_request.py can measure both).
PG_COPY = True


class RecordNotFound(LookupError):
    """The request or batch to change does not exist."""


@dataclass(frozen=True)
class ErrorInfo:
    """The last API error seen for a batch (stored in ``batches.last_error_*``)."""

    code: str | None = None
    message: str | None = None
    status: int | None = None
    request_id: str | None = None

    def columns(self) -> dict[str, Any]:
        return {
            "last_error_code": self.code,
            "last_error_message": self.message,
            "last_error_status": self.status,
            "last_error_request_id": self.request_id,
        }


@dataclass(frozen=True)
class ServerOutcome:
    """What the job said about one server."""

    status: ServerStatus
    error_code: str | None = None
    fail_reason: str | None = None
    sub_job_id: str | None = None
    begin_time: dt.datetime | None = None
    end_time: dt.datetime | None = None


# --- creating ---------------------------------------------------------------------------------


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

    batch_ids = [uuid.uuid4() for _ in range(0, len(server_ids), batch_size)]
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
                "size": min(batch_size, len(server_ids) - index * batch_size),
                "submit_attempts": 0,
                "poll_count": 0,
                "created_at": now,
                "updated_at": now,
            }
            for index, batch_id in enumerate(batch_ids)
        ],
    )
    _insert_servers(session, request_id, batch_ids, server_ids, batch_size, now)
    _add_event(
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


def _insert_servers(
    session: Session,
    request_id: uuid.UUID,
    batch_ids: Sequence[uuid.UUID],
    server_ids: Sequence[str],
    batch_size: int,
    now: dt.datetime,
) -> None:
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
            for position, server_id in enumerate(server_ids):
                batch_id = batch_ids[position // batch_size]
                copy.write_row((request_id, batch_id, server_id, pending, now))
        return
    table = _SERVERS
    session.execute(
        insert(table),
        [
            {
                "request_id": request_id,
                "batch_id": batch_ids[position // batch_size],
                "server_id": server_id,
                "status": ServerStatus.PENDING,
                "updated_at": now,
            }
            for position, server_id in enumerate(server_ids)
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

    ``batch_size`` 0 means "no valid policy was given".
    """
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
    _add_event(
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


# --- transitions ------------------------------------------------------------------------------


def transition_request(
    session: Session,
    request_id: uuid.UUID,
    to: RequestStatus,
    *,
    actor: str,
    detail: dict[str, Any] | None = None,
    **values: Any,
) -> RebootRequest:
    """Move a request to ``to`` (compare-and-set), setting ``values`` in the same UPDATE.

    Sets ``started_at`` on the first move to ``running`` and ``finished_at`` on a terminal
    state unless ``values`` gives them.
    """
    to = RequestStatus(to)
    current = session.scalar(
        select(RebootRequest.status)
        .where(RebootRequest.id == request_id)
        .with_for_update(key_share=True)
    )
    if current is None:
        raise RecordNotFound(f"request {request_id}")
    if to not in REQUEST_TRANSITIONS[current]:
        raise IllegalTransition("request", request_id, current, to)
    now = utcnow()
    if to is RequestStatus.RUNNING:
        values.setdefault("started_at", func.coalesce(RebootRequest.started_at, now))
    if to in TERMINAL_REQUEST_STATES:
        values.setdefault("finished_at", now)
    stmt = (
        update(RebootRequest)
        .where(RebootRequest.id == request_id, RebootRequest.status == current)
        .values(status=to, **values)
        .returning(RebootRequest)
        .execution_options(populate_existing=True)
    )
    request = session.scalars(stmt).one_or_none()
    if request is None:  # changed under us between the read and the write
        now_state = session.scalar(
            select(RebootRequest.status).where(RebootRequest.id == request_id)
        )
        raise IllegalTransition("request", request_id, now_state, to)
    _add_event(session, EventEntity.REQUEST, request_id, current, to, actor, detail, at=now)
    return request


def transition_batch(
    session: Session,
    batch_id: uuid.UUID,
    to: BatchStatus,
    *,
    actor: str,
    detail: dict[str, Any] | None = None,
    **values: Any,
) -> Batch:
    """Move a batch to ``to`` (compare-and-set), setting ``values`` in the same UPDATE.

    Always sets ``updated_at``. Unless ``values`` gives them: moving to ``submitting`` adds one
    to ``submit_attempts``; to ``submitted`` sets ``submitted_at``; to a terminal state sets
    ``finished_at``. Pass SQL expressions for atomic arithmetic (``Batch.poll_count + 1``).
    """
    to = BatchStatus(to)
    row = session.execute(
        select(Batch.status, Batch.request_id)
        .where(Batch.id == batch_id)
        .with_for_update(key_share=True)
    ).one_or_none()
    if row is None:
        raise RecordNotFound(f"batch {batch_id}")
    current, request_id = row
    if to not in BATCH_TRANSITIONS[current]:
        raise IllegalTransition("batch", batch_id, current, to)
    now = utcnow()
    values.setdefault("updated_at", now)
    if to is BatchStatus.SUBMITTING:
        values.setdefault("submit_attempts", Batch.submit_attempts + 1)
    elif to is BatchStatus.SUBMITTED:
        values.setdefault("submitted_at", now)
    if to in TERMINAL_BATCH_STATES:
        values.setdefault("finished_at", now)
    stmt = (
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == current)
        .values(status=to, **values)
        .returning(Batch)
        .execution_options(populate_existing=True)
    )
    batch = session.scalars(stmt).one_or_none()
    if batch is None:
        now_state = session.scalar(select(Batch.status).where(Batch.id == batch_id))
        raise IllegalTransition("batch", batch_id, now_state, to)
    _add_event(session, EventEntity.BATCH, request_id, current, to, actor, detail, batch_id, at=now)
    return batch


def update_batch(
    session: Session,
    batch_id: uuid.UUID,
    *,
    expect: BatchStatus,
    poll_count_is: int | None = None,
    **values: Any,
) -> bool:
    """Set non-state columns of a batch if it is still in ``expect`` (and, if given, its poll
    count is ``poll_count_is``); False if it is not.

    ``values`` may hold SQL expressions (``poll_count=Batch.poll_count + 1``).
    """
    values.setdefault("updated_at", utcnow())
    conditions = [Batch.id == batch_id, Batch.status == BatchStatus(expect)]
    if poll_count_is is not None:
        conditions.append(Batch.poll_count == poll_count_is)
    stmt = (
        update(Batch)
        .where(*conditions)
        .values(**values)
        .returning(Batch.id)
        .execution_options(synchronize_session="fetch")
    )
    return session.execute(stmt).first() is not None


def record_poll(
    session: Session,
    batch_id: uuid.UUID,
    *,
    next_poll_at: dt.datetime | None,
    error: ErrorInfo | None = None,
    expect: BatchStatus = BatchStatus.SUBMITTED,
    seq: int | None = None,
) -> bool:
    """Book one poll of a batch's job: ``poll_count + 1`` (atomically), ``last_polled_at`` now,
    the next poll time, and the error if the poll failed. False if the batch left ``expect``,
    or (with ``seq``) if its poll count is no longer ``seq``: another message booked it."""
    values: dict[str, Any] = {
        "poll_count": Batch.poll_count + 1,
        "last_polled_at": utcnow(),
        "next_poll_at": next_poll_at,
    }
    if error is not None:
        values.update(error.columns())
    return update_batch(session, batch_id, expect=expect, poll_count_is=seq, **values)


def settle_batch(
    session: Session,
    batch_id: uuid.UUID,
    to: BatchStatus,
    *,
    actor: str,
    outcomes: Mapping[str, ServerOutcome] | None = None,
    default_status: ServerStatus,
    default_error_code: str | None = None,
    default_fail_reason: str | None = None,
    detail: dict[str, Any] | None = None,
    **values: Any,
) -> Batch:
    """Move a batch to ``to`` and settle each of its still-pending servers, in one go.

    A pending server gets ``outcomes[server_id]`` if present, else the defaults; servers already
    settled are left alone, and outcomes for servers not in the batch are ignored. One ``server``
    event is written per settled server (bulk).
    """
    outcomes = outcomes or {}
    allowed = SERVER_TRANSITIONS[ServerStatus.PENDING]
    for status in {default_status, *(o.status for o in outcomes.values())}:
        if ServerStatus(status) not in allowed:
            raise IllegalTransition("server", batch_id, ServerStatus.PENDING, status)
    batch = transition_batch(session, batch_id, to, actor=actor, detail=detail, **values)
    now = utcnow()
    table = _SERVERS
    pending = session.execute(
        select(table.c.id, table.c.server_id)
        .where(table.c.batch_id == batch_id, table.c.status == ServerStatus.PENDING)
        .order_by(table.c.id)
    ).all()
    default = ServerOutcome(default_status, default_error_code, default_fail_reason)
    explicit = [(row_id, sid, outcomes[sid]) for row_id, sid in pending if sid in outcomes]
    if explicit:
        session.execute(
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values(
                status=bindparam("b_status"),
                error_code=bindparam("b_error_code"),
                fail_reason=bindparam("b_fail_reason"),
                sub_job_id=bindparam("b_sub_job_id"),
                begin_time=bindparam("b_begin_time", type_=UTCDateTime()),
                end_time=bindparam("b_end_time", type_=UTCDateTime()),
                updated_at=now,
            ),
            [
                {
                    "b_id": row_id,
                    "b_status": ServerStatus(o.status).value,
                    "b_error_code": o.error_code,
                    "b_fail_reason": o.fail_reason,
                    "b_sub_job_id": o.sub_job_id,
                    "b_begin_time": o.begin_time,
                    "b_end_time": o.end_time,
                }
                for row_id, _sid, o in explicit
            ],
        )
    if len(explicit) < len(pending):
        session.execute(
            update(table)
            .where(table.c.batch_id == batch_id, table.c.status == ServerStatus.PENDING)
            .values(
                status=default.status,
                error_code=default.error_code,
                fail_reason=default.fail_reason,
                updated_at=now,
            )
        )
    if pending:
        session.execute(
            insert(_EVENTS),
            [
                {
                    "entity": EventEntity.SERVER,
                    "request_id": batch.request_id,
                    "batch_id": batch_id,
                    "server_id": sid,
                    "from_state": ServerStatus.PENDING.value,
                    "to_state": ServerStatus(o.status).value,
                    "at": now,
                    "actor": actor,
                    "detail": _server_detail(o),
                }
                for sid, o in ((sid, outcomes.get(sid, default)) for _row_id, sid in pending)
            ],
        )
    return batch


def _server_detail(outcome: ServerOutcome) -> dict[str, Any] | None:
    detail = {
        key: value
        for key, value in (
            ("error_code", outcome.error_code),
            ("fail_reason", outcome.fail_reason),
            ("sub_job_id", outcome.sub_job_id),
        )
        if value is not None
    }
    return detail or None


def finalize_request_if_done(
    session: Session, request_id: uuid.UUID, *, actor: str
) -> RebootRequest | None:
    """Close a running request whose batches are all terminal; None if not done or not ours.

    Call it in the same transaction as the change that may have finished the last batch. The
    request row is locked first, so of two concurrent callers exactly one sees every batch
    terminal *and* the request still open: only that call gets the request back (and fires the
    completion callback). Counts come from ``server_results``; the status from
    ``derive_request_status``. An ``accepted`` request is first moved to ``running``.
    """
    request = session.scalar(
        select(RebootRequest)
        .where(RebootRequest.id == request_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    if request is None or request.status not in (RequestStatus.ACCEPTED, RequestStatus.RUNNING):
        return None
    batch_statuses = list(
        session.scalars(select(Batch.status).where(Batch.request_id == request_id))
    )
    if not batch_statuses or any(s not in TERMINAL_BATCH_STATES for s in batch_statuses):
        return None
    counts = server_counts(session, request_id)
    final = derive_request_status(batch_statuses, counts)
    if final not in REQUEST_TRANSITIONS[request.status]:
        transition_request(session, request_id, RequestStatus.RUNNING, actor=actor)
    return transition_request(
        session,
        request_id,
        final,
        actor=actor,
        detail={"servers": {str(k): v for k, v in counts.items()}},
        servers_succeeded=counts.get(ServerStatus.SUCCEEDED, 0),
        servers_failed=counts.get(ServerStatus.FAILED, 0),
        servers_unknown=counts.get(ServerStatus.UNKNOWN, 0),
        servers_cancelled=counts.get(ServerStatus.CANCELLED, 0),
    )


# --- reading for the pipeline -----------------------------------------------------------------


def server_counts(session: Session, request_id: uuid.UUID) -> dict[ServerStatus, int]:
    """Servers of a request per status (one grouped, indexed query)."""
    rows = session.execute(
        select(ServerResult.status, func.count())
        .where(ServerResult.request_id == request_id)
        .group_by(ServerResult.status)
    ).all()
    return {ServerStatus(status): n for status, n in rows}


def batch_server_ids(session: Session, batch_id: uuid.UUID) -> list[str]:
    """The server ids of a batch, in the order they were given."""
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


def _add_event(
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
    session.execute(
        insert(_EVENTS).values(
            entity=entity,
            request_id=request_id,
            batch_id=batch_id,
            from_state=None if from_state is None else str(from_state),
            to_state=str(to_state),
            at=at,
            actor=actor,
            detail=detail,
        )
    )
