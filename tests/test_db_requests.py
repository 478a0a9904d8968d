"""Creating requests: batching in order, the bulk path, rejections, idempotency; pipeline reads."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from tests.fixtures.db import new_request, pending_batches, server_names, sid
from worker.db.create import create_rejected_request, find_existing, record_servers
from worker.db.models import Batch, Event, RebootRequest, ServerResult
from worker.db.queries import batch_server_ids
from worker.db.session import session_factory, unit_of_work
from worker.db.states import BatchStatus, RequestStatus, ServerStatus
from worker.db.status import request_status
from worker.db.transitions import transition_batch

B = BatchStatus


def test_servers_are_split_in_order_into_batches(session: Session) -> None:
    request = new_request(session, [sid(x) for x in "edcba"], batch_size=2, idempotency_key="k1")
    batches = pending_batches(session, request.id)
    assert [(b.index, b.size, b.status) for b in batches] == [
        (0, 2, B.PENDING),
        (1, 2, B.PENDING),
        (2, 1, B.PENDING),
    ]
    assert [batch_server_ids(session, b.id) for b in batches] == [
        [sid("e"), sid("d")],
        [sid("c"), sid("b")],
        [sid("a")],
    ]
    assert (request.status, request.servers_total) == (RequestStatus.ACCEPTED, 5)
    events = session.scalars(select(Event)).all()
    assert [(e.entity.value, e.to_state) for e in events] == [("request", "accepted")]


def test_a_large_request_is_written_in_bulk(engine: Engine) -> None:
    # Given 25,000 servers in batches of 1,000
    servers = server_names(25_000)
    with unit_of_work(engine) as session:
        request_id = new_request(session, servers, batch_size=1000).id
    # Then every row is there, in order, counted, with a single event
    with unit_of_work(engine) as session:
        sizes = session.scalars(
            select(Batch.size).where(Batch.request_id == request_id).order_by(Batch.index)
        ).all()
        assert sizes == [1000] * 25
        last = pending_batches(session, request_id)[-1]
        assert batch_server_ids(session, last.id) == servers[-1000:]
        status = request_status(session, request_id)
        assert status is not None
        assert status["servers"]["total"] == status["servers"]["pending"] == 25_000
        assert session.scalar(select(func.count()).select_from(Event)) == 1


def test_policy_and_provenance_are_recorded(session: Session) -> None:
    request = new_request(
        session,
        3,
        batch_size=2,
        region="cn-north-4",
        endpoint="https://bms.example",
        max_in_flight=4,
        canary_size=1,
        failure_threshold=12.5,
        notify_task="app.notify",
        duplicates_removed=2,
        type="SOFT",
        source="schedule:nightly",
    )
    session.commit()
    session.expunge_all()
    stored = session.get(RebootRequest, request.id)
    assert stored is not None
    assert (stored.type, stored.source, stored.region, stored.endpoint) == (
        "SOFT",
        "schedule:nightly",
        "cn-north-4",
        "https://bms.example",
    )
    assert (stored.max_in_flight, stored.canary_size, stored.failure_threshold) == (4, 1, 12.5)
    assert (stored.notify_task, stored.duplicates_removed) == ("app.notify", 2)
    assert stored.created_at.tzinfo is dt.UTC


def test_a_duplicate_idempotency_key_is_refused_and_the_first_found(engine: Engine) -> None:
    with unit_of_work(engine) as session:
        first = new_request(session, 2, idempotency_key="nightly-2026-11-26").id
    with session_factory(engine)() as session:
        with pytest.raises(IntegrityError):
            new_request(session, 2, idempotency_key="nightly-2026-11-26")
        session.rollback()
        found = find_existing(
            session, request_id=uuid.uuid4(), idempotency_key="nightly-2026-11-26"
        )
        assert found is not None
        assert found.id == first


def test_a_duplicate_request_id_is_refused(engine: Engine) -> None:
    request_id = uuid.uuid4()
    with unit_of_work(engine) as session:
        new_request(session, 2, request_id=request_id)
    with session_factory(engine)() as session:
        with pytest.raises(IntegrityError):
            new_request(session, 2, request_id=request_id)
        session.rollback()
        found = find_existing(session, request_id=request_id, idempotency_key=None)
        assert found is not None
        assert found.id == request_id
        assert find_existing(session, request_id=uuid.uuid4(), idempotency_key=None) is None
        assert find_existing(session, request_id=None, idempotency_key=None) is None


def test_requests_without_idempotency_keys_do_not_collide(session: Session) -> None:
    new_request(session, 1)
    new_request(session, 1)
    session.flush()
    assert session.scalar(select(func.count()).select_from(RebootRequest)) == 2


def test_a_rejected_request_keeps_its_reasons_and_has_no_batches(session: Session) -> None:
    request = create_rejected_request(
        session,
        request_id=uuid.uuid4(),
        project_id="p",
        type="HARD",
        source="app:x",
        reasons=["batch_size above 1000", "no servers"],
        servers_total=3,
        actor="intake",
    )
    assert request.status is RequestStatus.REJECTED
    assert request.reason == "batch_size above 1000; no servers"
    assert request.rejection_reasons == ["batch_size above 1000", "no servers"]
    assert request.finished_at is not None
    assert session.scalar(select(func.count()).select_from(Batch)) == 0
    [event] = session.scalars(select(Event)).all()
    assert (event.to_state, event.detail) == ("rejected", {"reasons": request.rejection_reasons})


def test_the_database_refuses_a_status_that_is_not_in_the_enum(session: Session) -> None:
    new_request(session, 1)
    session.flush()
    with pytest.raises(IntegrityError), session.begin_nested():
        session.execute(text("UPDATE batches SET status = 'exploded'"))
    with pytest.raises(StatementError):
        session.execute(update(ServerResult).values(status="exploded"))


def test_times_come_back_timezone_aware_utc(session: Session) -> None:
    request = new_request(session, 1)
    batch = pending_batches(session, request.id)[0]
    moment = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    transition_batch(session, batch.id, B.SUBMITTING, actor="t")
    transition_batch(session, batch.id, B.SUBMITTED, actor="t", next_poll_at=moment)
    session.commit()
    session.expunge_all()
    stored = session.scalar(select(Batch.next_poll_at))
    assert stored == moment
    assert stored is not None
    assert stored.tzinfo is dt.UTC
    assert stored.hour == 4
    assert session.scalar(select(ServerResult.status)) is ServerStatus.PENDING


def test_intake_writes_one_row_per_batch_and_server_rows_when_a_batch_is_claimed(
    session: Session,
) -> None:
    # Given a request of 5 servers in batches of 2
    servers = server_names(5)
    request = new_request(session, servers, batch_size=2)
    first, second, third = pending_batches(session, request.id)
    # Then no server row is written yet: the batches hold the ids, all pending
    assert session.scalar(select(func.count()).select_from(ServerResult)) == 0
    assert request_status(session, request.id)["servers"]["pending"] == 5  # type: ignore[index]
    assert batch_server_ids(session, second.id) == servers[2:4]
    # When one batch is claimed for submission and another cancelled
    transition_batch(session, first.id, BatchStatus.SUBMITTING, actor="t")
    transition_batch(session, third.id, BatchStatus.CANCELLED, actor="t")
    # Then exactly their rows exist, pending, and their packed ids are gone
    rows = session.execute(
        select(ServerResult.server_id, ServerResult.batch_id).order_by(ServerResult.id)
    ).all()
    assert rows == [(servers[0], first.id), (servers[1], first.id), (servers[4], third.id)]
    held = dict(session.execute(select(Batch.index, Batch.pending_ids)).all())
    assert (held[0], held[2]) == (None, None)
    assert held[1] is not None
    # And every reader still sees all five servers, in order
    status = request_status(session, request.id, include_servers=True)
    assert status is not None
    assert status["servers"]["total"] == 5
    assert [s["id"] for s in status["server_results"]] == [*servers[:2], servers[4], *servers[2:4]]
    assert batch_server_ids(session, first.id) == servers[:2]
    # And a second write of a batch's rows writes nothing
    assert record_servers(session, first.id) == 0
