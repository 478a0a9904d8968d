"""Moving requests, batches and servers through their states; booking polls.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar, cast

from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from worker.db.create import record_servers
from worker.db.events import add_event, add_server_events
from worker.db.models import (
    Batch,
    RebootRequest,
    ServerResult,
    UTCDateTime,
    count_columns,
    utcnow,
)
from worker.db.queries import server_counts
from worker.db.session import is_postgresql
from worker.db.states import (
    ACTIVE_REQUEST_STATES,
    BATCH_TRANSITIONS,
    REQUEST_TRANSITIONS,
    SERVER_TRANSITIONS,
    TERMINAL_BATCH_STATES,
    TERMINAL_REQUEST_STATES,
    BatchStatus,
    EventEntity,
    IllegalTransition,
    RequestStatus,
    ServerStatus,
    derive_request_status,
)
from worker.text import fit

_SERVERS = cast(Table, ServerResult.__table__)

_Row = TypeVar("_Row", RebootRequest, Batch)
_Status = TypeVar("_Status", bound=StrEnum)


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
            "last_error_code": fit(self.code, 64),
            "last_error_message": fit(self.message, 4000),
            "last_error_status": self.status,
            "last_error_request_id": fit(self.request_id, 255),
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
    #: When the server was seen back after its reboot (``verifying -> succeeded``).
    verified_at: dt.datetime | None = None
    #: When it came back, by the inventory's ``updated`` time.
    returned_at: dt.datetime | None = None


# --- transitions ------------------------------------------------------------------------------


def _transition(
    session: Session,
    model: type[_Row],
    entity: EventEntity,
    transitions: Mapping[_Status, frozenset[_Status]],
    entity_id: uuid.UUID,
    to: _Status,
    *,
    status_column: InstrumentedAttribute[_Status],
    request_id_column: InstrumentedAttribute[uuid.UUID],
    actor: str,
    detail: dict[str, Any] | None,
    values: dict[str, Any],
    defaults: Callable[[dict[str, Any], _Status, dt.datetime], None],
) -> _Row:
    """Compare-and-set one request or batch row from its current state to ``to``.

    Reads the current state (and the owning request's id, ``request_id_column``) under a
    ``FOR NO KEY UPDATE`` lock, checks ``transitions``, lets ``defaults`` fill in ``values`` (it
    gets the time of the change), then ``UPDATE ... WHERE id = :id AND status = :current
    RETURNING`` and writes the event, with ``batch_id`` set for a batch.
    """
    row = session.execute(
        select(status_column, request_id_column)
        .where(model.id == entity_id)
        .with_for_update(key_share=True)
    ).one_or_none()
    if row is None:
        raise RecordNotFound(f"{entity.value} {entity_id}")
    current, request_id = row
    if to not in transitions[current]:
        raise IllegalTransition(entity.value, entity_id, current, to)
    now = utcnow()
    defaults(values, to, now)
    stmt = (
        update(model)
        .where(model.id == entity_id, status_column == current)
        .values(status=to, **values)
        .returning(model)
        .execution_options(populate_existing=True)
    )
    changed = session.scalars(stmt).one_or_none()
    if changed is None:  # changed under us between the read and the write
        now_state = session.scalar(select(status_column).where(model.id == entity_id))
        raise IllegalTransition(entity.value, entity_id, now_state, to)
    batch_id = entity_id if entity is EventEntity.BATCH else None
    add_event(session, entity, request_id, current, to, actor, detail, batch_id, at=now)
    return changed


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
    return _transition(
        session,
        RebootRequest,
        EventEntity.REQUEST,
        REQUEST_TRANSITIONS,
        request_id,
        RequestStatus(to),
        status_column=RebootRequest.status,
        request_id_column=RebootRequest.id,
        actor=actor,
        detail=detail,
        values=values,
        defaults=_request_defaults,
    )


def _request_defaults(values: dict[str, Any], to: RequestStatus, now: dt.datetime) -> None:
    if to is RequestStatus.RUNNING:
        values.setdefault("started_at", func.coalesce(RebootRequest.started_at, now))
    if to in TERMINAL_REQUEST_STATES:
        values.setdefault("finished_at", now)


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

    Leaving ``pending`` (to ``submitting`` or ``cancelled``) writes the batch's
    ``server_results`` rows if its ids are still packed (``record_servers``), in the same
    transaction: every batch past ``pending`` has its rows.
    """
    batch = _transition(
        session,
        Batch,
        EventEntity.BATCH,
        BATCH_TRANSITIONS,
        batch_id,
        BatchStatus(to),
        status_column=Batch.status,
        request_id_column=Batch.request_id,
        actor=actor,
        detail=detail,
        values=values,
        defaults=_batch_defaults,
    )
    if to in _LEAVING_PENDING:
        record_servers(session, batch_id)
    return batch


_LEAVING_PENDING = BATCH_TRANSITIONS[BatchStatus.PENDING]


def _batch_defaults(values: dict[str, Any], to: BatchStatus, now: dt.datetime) -> None:
    values.setdefault("updated_at", now)
    if to is BatchStatus.SUBMITTING:
        values.setdefault("submit_attempts", Batch.submit_attempts + 1)
    elif to is BatchStatus.SUBMITTED:
        values.setdefault("submitted_at", now)
    if to in TERMINAL_BATCH_STATES:
        values.setdefault("finished_at", now)


def update_batch(
    session: Session,
    batch_id: uuid.UUID,
    *,
    expect: BatchStatus,
    poll_count_is: int | None = None,
    checks_is: int | None = None,
    **values: Any,
) -> bool:
    """Set non-state columns of a batch if it is still in ``expect`` (and, if given, its poll
    count is ``poll_count_is``, its check count ``checks_is``); False if it is not.

    ``values`` may hold SQL expressions (``poll_count=Batch.poll_count + 1``).
    """
    values.setdefault("updated_at", utcnow())
    conditions = [Batch.id == batch_id, Batch.status == BatchStatus(expect)]
    if poll_count_is is not None:
        conditions.append(Batch.poll_count == poll_count_is)
    if checks_is is not None:
        conditions.append(Batch.checks == checks_is)
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
    job_missing_since: dt.datetime | None = None,
) -> bool:
    """Book one poll of a batch's job: ``poll_count + 1`` (atomically), ``last_polled_at`` now,
    the next poll time, the error if the poll failed, and since when the API has not known
    the job (None: it knew it). False if the batch left ``expect``, or (with ``seq``) if its
    poll count is no longer ``seq``: another message booked it."""
    values: dict[str, Any] = {
        "poll_count": Batch.poll_count + 1,
        "last_polled_at": utcnow(),
        "next_poll_at": next_poll_at,
        "job_missing_since": job_missing_since,
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
    if explicit and is_postgresql(session):
        # One statement for the whole batch: psycopg sends an executemany as one UPDATE a
        # server, which was most of PostgreSQL's work per batch (benchmarks/workers.py).
        session.execute(
            _PG_SETTLE_SERVERS,
            {
                "ids": [row_id for row_id, _sid, _o in explicit],
                "statuses": [ServerStatus(o.status).value for _r, _s, o in explicit],
                "codes": [fit(o.error_code, 64) for _r, _s, o in explicit],
                "reasons": [fit(o.fail_reason, 4000) for _r, _s, o in explicit],
                "sub_jobs": [fit(o.sub_job_id, 64) for _r, _s, o in explicit],
                "begins": [o.begin_time for _r, _s, o in explicit],
                "ends": [o.end_time for _r, _s, o in explicit],
                "now": now,
            },
        )
    elif explicit:
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
                    "b_error_code": fit(o.error_code, 64),
                    "b_fail_reason": fit(o.fail_reason, 4000),
                    "b_sub_job_id": fit(o.sub_job_id, 64),
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
                error_code=fit(default.error_code, 64),
                fail_reason=fit(default.fail_reason, 4000),
                updated_at=now,
            )
        )
    add_server_events(
        session,
        batch.request_id,
        batch_id,
        ServerStatus.PENDING.value,
        (
            (sid, ServerStatus(o.status).value, _server_detail(o))
            for sid, o in ((sid, outcomes.get(sid, default)) for _row_id, sid in pending)
        ),
        actor,
        at=now,
    )
    return batch


def settle_servers(
    session: Session,
    batch_id: uuid.UUID,
    outcomes: Mapping[str, ServerOutcome],
    *,
    actor: str,
    expect: ServerStatus = ServerStatus.PENDING,
) -> int:
    """Settle the given servers of a batch that are still ``expect``, each with its outcome
    (from ``pending``: ``skipped``, not sent and why, or ``failed`` with ``BMS.0040``; from
    ``verifying``: ``succeeded`` when seen back, or ``unhealthy``), and write their events;
    the batch itself goes on. Returns how many (:func:`settled_servers`: which)."""
    return len(settled_servers(session, batch_id, outcomes, actor=actor, expect=expect))


def settled_servers(
    session: Session,
    batch_id: uuid.UUID,
    outcomes: Mapping[str, ServerOutcome],
    *,
    actor: str,
    expect: ServerStatus = ServerStatus.PENDING,
) -> list[tuple[str, ServerOutcome]]:
    """:func:`settle_servers`, returning the servers this call settled (compare-and-set on
    each server's state: one another call settled first is not among them) with their
    outcomes."""
    table = _SERVERS
    now = utcnow()
    alike: dict[ServerOutcome, list[str]] = {}
    for server_id, outcome in outcomes.items():
        if ServerStatus(outcome.status) not in SERVER_TRANSITIONS[expect]:
            raise IllegalTransition("server", server_id, expect, outcome.status)
        alike.setdefault(outcome, []).append(server_id)
    settled: list[tuple[str, ServerOutcome]] = []
    for outcome, server_ids in alike.items():
        rows = session.execute(
            update(table)
            .where(
                table.c.batch_id == batch_id,
                table.c.status == expect,
                table.c.server_id.in_(server_ids),
            )
            .values(
                status=ServerStatus(outcome.status),
                error_code=fit(outcome.error_code, 64),
                fail_reason=fit(outcome.fail_reason, 4000),
                verified_at=outcome.verified_at,
                returned_at=outcome.returned_at,
                updated_at=now,
            )
            .returning(table.c.server_id)
        ).all()
        settled.extend((sid, outcome) for (sid,) in rows)
    request_id = session.scalar(select(Batch.request_id).where(Batch.id == batch_id))
    if settled and request_id is not None:
        add_server_events(
            session,
            request_id,
            batch_id,
            expect.value,
            ((sid, ServerStatus(o.status).value, _server_detail(o)) for sid, o in settled),
            actor,
            at=now,
        )
    return settled


_PG_SETTLE_SERVERS = text(
    "UPDATE server_results AS s SET status = v.status, error_code = v.error_code,"
    " fail_reason = v.fail_reason, sub_job_id = v.sub_job_id, begin_time = v.begin_time,"
    " end_time = v.end_time, updated_at = :now"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS varchar[]),"
    " CAST(:codes AS varchar[]), CAST(:reasons AS text[]), CAST(:sub_jobs AS varchar[]),"
    " CAST(:begins AS timestamptz[]), CAST(:ends AS timestamptz[]))"
    " AS v(id, status, error_code, fail_reason, sub_job_id, begin_time, end_time)"
    " WHERE s.id = v.id"
).bindparams(bindparam("now", type_=UTCDateTime()))


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
    completion callback). Counts come from ``server_results``; the status from the request's
    ``stop`` when a rollout control stopped it (``halted``, ``cancelled``), else from
    ``derive_request_status``. An ``accepted`` request is first moved to ``running`` when the
    final state cannot be reached from ``accepted``.
    """
    request = session.scalar(
        select(RebootRequest)
        .where(RebootRequest.id == request_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    if request is None or request.status not in ACTIVE_REQUEST_STATES:
        return None
    batch_statuses = list(
        session.scalars(select(Batch.status).where(Batch.request_id == request_id))
    )
    if not batch_statuses or any(s not in TERMINAL_BATCH_STATES for s in batch_statuses):
        return None
    counts = server_counts(session, request_id)
    final = request.stop or derive_request_status(batch_statuses, counts)
    if final not in REQUEST_TRANSITIONS[request.status]:
        transition_request(session, request_id, RequestStatus.RUNNING, actor=actor)
    return transition_request(
        session,
        request_id,
        final,
        actor=actor,
        detail={"servers": {str(k): v for k, v in counts.items()}},
        **count_columns(counts),
    )


def mark_notified(session: Session, request_id: uuid.UUID, now: dt.datetime) -> None:
    session.execute(
        update(RebootRequest)
        .where(RebootRequest.id == request_id, RebootRequest.notified_at.is_(None))
        .values(notified_at=now)
        .execution_options(synchronize_session=False)
    )
