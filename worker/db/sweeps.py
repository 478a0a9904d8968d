"""The set-based statements of the batched steps (``worker.pipeline.sweep``): what is due,
claimed in one statement across projects, and the answers of many batches written in one.

A step that handles many batches at once still keeps each batch's rules: every claim is
compare-and-set on the batch's own row (its status, and for a poll or a check its count), so of
two workers sweeping at once each batch goes to one; a batch that left the state meanwhile is
simply not in the answer. On PostgreSQL the claims skip rows another sweep holds locked
(``FOR UPDATE SKIP LOCKED``) instead of waiting for it; SQLite runs one writer at a time anyway.

The writes of many rows are one statement on PostgreSQL (``UPDATE ... FROM unnest(...)``: one
array parameter a column, one cached statement whatever the row count); on SQLite, the embedded
default, one statement a row in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.orm import Session

from worker import ids
from worker.db.create import record_servers
from worker.db.models import Batch, Event, RebootRequest, ServerResult, UTCDateTime
from worker.db.plan import before_cut_off
from worker.db.session import is_postgresql
from worker.db.states import ACTIVE_REQUEST_STATES, BatchStatus, EventEntity
from worker.text import clean_json

_EVENTS = cast(Table, Event.__table__)
_BATCHES = cast(Table, Batch.__table__)


@dataclass(frozen=True)
class DueSubmit:
    """A released batch whose slot has come, with what decides how it is sent."""

    batch_id: uuid.UUID
    request_id: uuid.UUID
    project_id: str
    slot: dt.datetime
    #: The request is still at work (active, not stopped, before its cut-off).
    sendable: bool
    #: The request's own pre-flight choice (None: the setting's).
    preflight: bool | None
    reboot_type: str
    submit_attempts: int
    #: The request wants its batches silenced (when an Alertmanager is configured).
    silence: bool
    size: int


def due_submits(
    session: Session, until: dt.datetime, limit: int, *, lock: bool = False
) -> list[DueSubmit]:
    """Released ``pending`` batches whose slot comes by ``until``, across projects, earliest
    slot first (one indexed query). ``lock``: the rows are locked until the transaction ends,
    those another transaction holds skipped (PostgreSQL): two sweeps take different batches."""
    query = (
        select(
            Batch.id,
            Batch.request_id,
            Batch.project_id,
            Batch.next_attempt_at,
            RebootRequest.status.in_(ACTIVE_REQUEST_STATES)
            & RebootRequest.stop.is_(None)
            & before_cut_off(until),
            RebootRequest.preflight,
            RebootRequest.type,
            Batch.submit_attempts,
            RebootRequest.silence,
            Batch.size,
        )
        .join(RebootRequest, RebootRequest.id == Batch.request_id)
        .where(
            Batch.status == BatchStatus.PENDING,
            Batch.released_at.is_not(None),
            Batch.next_attempt_at <= until,
        )
        .order_by(Batch.next_attempt_at)
        .limit(limit)
    )
    if lock and is_postgresql(session):
        query = query.with_for_update(of=Batch, skip_locked=True, key_share=True)
    rows = session.execute(query).all()
    return [DueSubmit(*tuple(row)) for row in rows]  # a released batch always has its slot


def server_ids_of(session: Session, batch_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """The server ids of each batch, in the order they were given (two queries for all)."""
    if not batch_ids:
        return {}
    found: dict[uuid.UUID, list[str]] = {}
    unpacked = []
    for batch_id, packed in session.execute(
        select(Batch.id, Batch.pending_ids).where(Batch.id.in_(list(batch_ids)))
    ):
        if packed is not None:
            found[batch_id] = ids.unpack(packed)
        else:
            found[batch_id] = []
            unpacked.append(batch_id)
    if unpacked:
        for batch_id, server_id in session.execute(
            select(ServerResult.batch_id, ServerResult.server_id)
            .where(ServerResult.batch_id.in_(unpacked))
            .order_by(ServerResult.id)
        ):
            found[batch_id].append(server_id)
    return found


def unrelease(session: Session, batch_ids: Sequence[uuid.UUID]) -> list[str]:
    """Hand released ``pending`` batches back to their projects' release steps (a sweep found
    their requests no longer at work); returns their projects."""
    if not batch_ids:
        return []
    rows = session.execute(
        update(Batch)
        .where(
            Batch.id.in_(list(batch_ids)),
            Batch.status == BatchStatus.PENDING,
            Batch.released_at.is_not(None),
        )
        .values(released_at=None)
        .returning(Batch.project_id)
        .execution_options(synchronize_session=False)
    )
    return sorted({row[0] for row in rows})


@dataclass(frozen=True)
class Claimed:
    batch_id: uuid.UUID
    request_id: uuid.UUID
    submit_attempts: int


def claim_submits(
    session: Session, batch_ids: Sequence[uuid.UUID], *, actor: str, now: dt.datetime
) -> list[Claimed]:
    """Move the released ``pending`` batches of ``batch_ids`` to ``submitting`` in one
    statement (compare-and-set: a batch another worker claimed, or that went back, is not in
    the answer), counting the attempt, with one event each; then write the server rows of
    those whose ids are still packed."""
    if not batch_ids:
        return []
    # Two statements, not ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``:
    # PostgreSQL runs such a subquery once per row it scans (measured: most of its CPU).
    locked = select(Batch.id).where(
        Batch.id.in_(list(batch_ids)),
        Batch.status == BatchStatus.PENDING,
        Batch.released_at.is_not(None),
    )
    if is_postgresql(session):
        locked = locked.with_for_update(skip_locked=True, key_share=True)
    mine = list(session.scalars(locked))
    if not mine:
        return []
    rows = session.execute(
        update(Batch)
        .where(Batch.id.in_(mine), Batch.status == BatchStatus.PENDING)
        .values(
            status=BatchStatus.SUBMITTING,
            submit_attempts=Batch.submit_attempts + 1,
            released_at=None,
            updated_at=now,
        )
        .returning(Batch.id, Batch.request_id, Batch.submit_attempts)
        .execution_options(synchronize_session=False)
    ).all()
    claimed = [Claimed(*row) for row in rows]
    add_batch_events(
        session,
        [
            (c.request_id, c.batch_id, BatchStatus.PENDING, BatchStatus.SUBMITTING, None)
            for c in claimed
        ],
        actor=actor,
        at=now,
    )
    for c in claimed:
        record_servers(session, c.batch_id)
    return claimed


def add_batch_events(
    session: Session,
    rows: Sequence[tuple[uuid.UUID, uuid.UUID, str, str, dict[str, Any] | None]],
    *,
    actor: str,
    at: dt.datetime,
) -> None:
    """One ``batch`` event per ``(request_id, batch_id, from, to, detail)``, in one statement
    (SQLAlchemy's insertmanyvalues on PostgreSQL)."""
    if not rows:
        return
    session.execute(
        insert(_EVENTS),
        [
            {
                "entity": EventEntity.BATCH,
                "request_id": request_id,
                "batch_id": batch_id,
                "server_id": None,
                "from_state": str(from_state),
                "to_state": str(to_state),
                "at": at,
                "actor": actor,
                "detail": clean_json(detail),
            }
            for request_id, batch_id, from_state, to_state, detail in rows
        ],
    )


@dataclass(frozen=True)
class SubmittedRow:
    batch_id: uuid.UUID
    job_id: str
    next_poll_at: dt.datetime
    deadline_at: dt.datetime
    first_poll_in: float


def record_submitted(
    session: Session, answers: Sequence[SubmittedRow], *, actor: str, now: dt.datetime
) -> dict[uuid.UUID, uuid.UUID]:
    """Move the ``submitting`` batches of ``answers`` to ``submitted`` with their job ids and
    first polls, in one statement, one event each; returns the batches moved, with their
    requests (one that left ``submitting`` meanwhile is not among them)."""
    if not answers:
        return {}
    fixed = {"status": BatchStatus.SUBMITTED.value, "submitted_at": now, "updated_at": now}
    columns: dict[str, list[Any]] = {
        "id": [a.batch_id for a in answers],
        "job_id": [a.job_id for a in answers],
        "next_poll_at": [a.next_poll_at for a in answers],
        "deadline_at": [a.deadline_at for a in answers],
    }
    moved = update_each(
        session,
        columns,
        fixed=fixed,
        guard={"status": BatchStatus.SUBMITTING.value},
    )
    detail = {
        a.batch_id: {"job_id": a.job_id, "first_poll_in": round(a.first_poll_in, 3)}
        for a in answers
    }
    add_batch_events(
        session,
        [
            (request_id, batch_id, BatchStatus.SUBMITTING, BatchStatus.SUBMITTED, detail[batch_id])
            for batch_id, request_id in moved.items()
        ],
        actor=actor,
        at=now,
    )
    return moved


def update_each(
    session: Session,
    columns: dict[str, list[Any]],
    *,
    fixed: dict[str, Any],
    guard: dict[str, Any],
    match: Sequence[str] = (),
    increment: Sequence[str] = (),
) -> dict[uuid.UUID, uuid.UUID]:
    """Set, for each row ``i``, ``batches.<name> = columns[name][i]`` (``columns["id"]`` names
    the rows) and the ``fixed`` values, where each row still has the ``guard`` values and,
    for each name of ``match``, the column equals that row's ``columns[name]`` (compare and
    set: the name is not set, only compared); each column of ``increment`` goes up by one.
    Returns the batches changed, each with its request. One statement on PostgreSQL, one a
    row on SQLite."""
    ids = columns["id"]
    if not ids:
        return {}
    if is_postgresql(session):
        statement, params = _pg_update_each(session, columns, fixed, guard, match, increment)
        return {row[0]: row[1] for row in session.execute(statement, params)}
    changed: dict[uuid.UUID, uuid.UUID] = {}
    names = [n for n in columns if n != "id"]
    for i, batch_id in enumerate(ids):
        conditions = [Batch.id == batch_id]
        conditions += [_BATCHES.c[n] == v for n, v in guard.items()]
        conditions += [_BATCHES.c[n] == columns[n][i] for n in match]
        values = {n: columns[n][i] for n in names if n not in match}
        values.update({n: _BATCHES.c[n] + 1 for n in increment})
        row = session.execute(
            update(Batch)
            .where(*conditions)
            .values(**values, **fixed)
            .returning(Batch.id, Batch.request_id)
            .execution_options(synchronize_session=False)
        ).first()
        if row is not None:
            changed[row[0]] = row[1]
    return changed


def _pg_update_each(
    session: Session,
    columns: dict[str, list[Any]],
    fixed: dict[str, Any],
    guard: dict[str, Any],
    match: Sequence[str],
    increment: Sequence[str],
) -> tuple[Any, dict[str, Any]]:
    dialect = session.get_bind().dialect
    names = list(columns)
    arrays = ", ".join(
        f"CAST(:c_{n} AS {_BATCHES.c[n].type.compile(dialect=dialect)}[])" for n in names
    )
    sets = [f"{n} = v.{n}" for n in names if n != "id" and n not in match]
    sets += [f"{n} = :f_{n}" for n in fixed]
    sets += [f"{_BATCHES.c[n].name} = b.{n} + 1" for n in increment]
    where = ["b.id = v.id"]
    where += [f"b.{n} IS NULL" if v is None else f"b.{n} = :g_{n}" for n, v in guard.items()]
    where += [f"b.{n} = v.{n}" for n in match]
    # Every name is a column of ``batches`` (``_BATCHES.c[n]`` above raises for any other),
    # and every value a bound parameter: nothing from outside is in the text.
    sql = (
        f"UPDATE batches AS b SET {', '.join(sets)}"  # noqa: S608
        f" FROM unnest({arrays}) AS v({', '.join(names)})"
        f" WHERE {' AND '.join(where)} RETURNING b.id, b.request_id"
    )
    binds = [
        bindparam(f"f_{n}", type_=UTCDateTime())
        if isinstance(v, dt.datetime)
        else bindparam(f"f_{n}")
        for n, v in fixed.items()
    ]
    params: dict[str, Any] = {f"c_{n}": values for n, values in columns.items()}
    params.update({f"f_{n}": v for n, v in fixed.items()})
    params.update({f"g_{n}": v for n, v in guard.items() if v is not None})
    return text(sql).bindparams(*binds), params


@dataclass(frozen=True)
class DuePoll:
    """A ``submitted`` batch a sweep claimed for one poll: what the poll needs."""

    batch_id: uuid.UUID
    request_id: uuid.UUID
    project_id: str
    job_id: str
    polls: int
    deadline: dt.datetime | None
    missing_since: dt.datetime | None
    silence_id: str | None
    silence_ends_at: dt.datetime | None
    size: int
    #: When the poll was due (a sweep takes polls due within its window: none goes early).
    due_at: dt.datetime


def claim_polls(
    session: Session,
    until: dt.datetime,
    lease_until: dt.datetime,
    limit: int,
    max_servers: int = 1_000_000_000,
) -> list[DuePoll]:
    """Claim up to ``limit`` ``submitted`` batches whose next poll comes by ``until``, across
    projects, earliest first: their next poll moves to ``lease_until`` (the claim's lease: a
    sweep that dies leaves them due again then, never polled twice meanwhile)."""
    return [
        DuePoll(*row)
        for row in _claim_due(
            session,
            BatchStatus.SUBMITTED,
            Batch.next_poll_at,
            until,
            lease_until,
            limit,
            (
                Batch.id,
                Batch.request_id,
                Batch.project_id,
                Batch.job_id,
                Batch.poll_count,
                Batch.deadline_at,
                Batch.job_missing_since,
                Batch.silence_id,
                Batch.silence_ends_at,
                Batch.size,
            ),
            max_servers,
        )
    ]


def claim_checks(
    session: Session,
    until: dt.datetime,
    lease_until: dt.datetime,
    limit: int,
    max_servers: int = 1_000_000_000,
) -> list[tuple[uuid.UUID, str, int, dt.datetime]]:
    """Claim up to ``limit`` ``verifying`` batches whose next check comes by ``until``, the
    same way: ``(batch_id, project_id, checks, due at)``, their next check moved to
    ``lease_until``."""
    rows = _claim_due(
        session,
        BatchStatus.VERIFYING,
        Batch.next_check_at,
        until,
        lease_until,
        limit,
        (Batch.id, Batch.project_id, Batch.checks),
        max_servers,
    )
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def _claim_due(
    session: Session,
    status: BatchStatus,
    due: Any,
    until: dt.datetime,
    lease_until: dt.datetime,
    limit: int,
    returning: tuple[Any, ...],
    max_servers: int,
) -> list[Any]:
    """The claimed rows (``returning``), each with the time it was due (before the lease)
    last."""
    chosen = (
        select(Batch.id, due, Batch.size)
        .where(Batch.status == status, due <= until)
        .order_by(due)
        .limit(limit)
    )
    if is_postgresql(session):
        chosen = chosen.with_for_update(skip_locked=True, key_share=True)
    was_due: dict[uuid.UUID, Any] = {}
    servers = 0
    for batch_id, at, size in session.execute(chosen):  # two statements: see claim_submits
        if was_due and servers + size > max_servers:
            break  # the rest is another sweep's (the caller asks for one)
        was_due[batch_id] = at
        servers += size
    if not was_due:
        return []
    rows = session.execute(
        update(Batch)
        .where(Batch.id.in_(list(was_due)), Batch.status == status, due <= until)
        .values({due.key: lease_until})
        .returning(*returning)
        .execution_options(synchronize_session=False)
    ).all()
    return [(*row, was_due[row[0]]) for row in rows]


def next_due(session: Session, kind: str) -> dt.datetime | None:
    """When the step ``kind`` (``submit``, ``poll`` or ``verify``) has its next batch due."""
    if kind == "submit":
        query = select(func.min(Batch.next_attempt_at)).where(
            Batch.status == BatchStatus.PENDING, Batch.released_at.is_not(None)
        )
    elif kind == "poll":
        query = select(func.min(Batch.next_poll_at)).where(Batch.status == BatchStatus.SUBMITTED)
    else:
        assert kind == "verify", kind
        query = select(func.min(Batch.next_check_at)).where(Batch.status == BatchStatus.VERIFYING)
    found: dt.datetime | None = session.scalar(query)
    return found
