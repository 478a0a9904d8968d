"""Every allowed and every forbidden transition, written from the tables; compare-and-set races
between real threads, each in its own session; settle/finalize semantics. Both engines."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from tests.fixtures.db import new_request, pending_batches, server_names, sid
from worker.db.create import record_servers
from worker.db.models import Batch, Event, RebootRequest, ServerResult
from worker.db.queries import batch_server_ids
from worker.db.session import session_factory, unit_of_work
from worker.db.states import (
    BATCH_TRANSITIONS,
    REQUEST_TRANSITIONS,
    SERVER_TRANSITIONS,
    BatchStatus,
    EventEntity,
    IllegalTransition,
    RequestStatus,
    ServerStatus,
)
from worker.db.transitions import (
    ErrorInfo,
    ServerOutcome,
    finalize_request_if_done,
    record_poll,
    settle_batch,
    transition_batch,
    transition_request,
    update_batch,
)

B, R, S = BatchStatus, RequestStatus, ServerStatus
SA, SB, SC, SD = (sid(x) for x in "abcd")


def _pairs(table: dict[Any, frozenset[Any]]) -> list[Any]:
    return [
        pytest.param(a, b, id=f"{a.value}->{b.value}-{'ok' if b in table[a] else 'no'}")
        for a in table
        for b in table
    ]


def _events(session: Session, **where: Any) -> list[Event]:
    stmt = select(Event).order_by(Event.id)
    for column, value in where.items():
        stmt = stmt.where(getattr(Event, column) == value)
    return list(session.scalars(stmt))


@pytest.mark.parametrize(("current", "target"), _pairs(BATCH_TRANSITIONS))
def test_batch_transition_follows_the_table(
    shared_engine: Engine, current: BatchStatus, target: BatchStatus
) -> None:
    with session_factory(shared_engine)() as session:
        try:
            # Given a batch in `current`
            batch_id = pending_batches(session, new_request(session, 2).id)[0].id
            session.execute(update(Batch).where(Batch.id == batch_id).values(status=current))
            # When the pipeline asks for `target`
            if target in BATCH_TRANSITIONS[current]:
                batch = transition_batch(session, batch_id, target, actor="t", detail={"k": 1})
                # Then it moves, with one event saying from where to where
                assert batch.status is target
                [event] = _events(session, batch_id=batch_id)
                assert (event.entity, event.from_state, event.to_state) == (
                    EventEntity.BATCH,
                    current.value,
                    target.value,
                )
                assert event.actor == "t"
                assert event.detail == {"k": 1}
            else:
                with pytest.raises(IllegalTransition) as raised:
                    transition_batch(session, batch_id, target, actor="t")
                # Then nothing changes
                assert (raised.value.current, raised.value.target) == (current, target)
                assert session.scalar(select(Batch.status).where(Batch.id == batch_id)) is current
                assert _events(session, batch_id=batch_id) == []
        finally:
            session.rollback()


@pytest.mark.parametrize(("current", "target"), _pairs(REQUEST_TRANSITIONS))
def test_request_transition_follows_the_table(
    shared_engine: Engine, current: RequestStatus, target: RequestStatus
) -> None:
    with session_factory(shared_engine)() as session:
        try:
            request_id = new_request(session, 1).id
            session.execute(
                update(RebootRequest).where(RebootRequest.id == request_id).values(status=current)
            )
            before = len(_events(session, request_id=request_id))
            if target in REQUEST_TRANSITIONS[current]:
                request = transition_request(session, request_id, target, actor="t")
                assert request.status is target
                event = _events(session, request_id=request_id)[-1]
                assert (event.from_state, event.to_state) == (current.value, target.value)
            else:
                with pytest.raises(IllegalTransition):
                    transition_request(session, request_id, target, actor="t")
                status = session.scalar(
                    select(RebootRequest.status).where(RebootRequest.id == request_id)
                )
                assert status is current
                assert len(_events(session, request_id=request_id)) == before
        finally:
            session.rollback()


@pytest.mark.parametrize(("current", "target"), _pairs(SERVER_TRANSITIONS))
def test_server_transition_follows_the_table(
    shared_engine: Engine, current: ServerStatus, target: ServerStatus
) -> None:
    with session_factory(shared_engine)() as session:
        try:
            # Given a submitted batch whose one server is in `current`
            request = new_request(session, [sid("only")], batch_size=1)
            batch_id = pending_batches(session, request.id)[0].id
            session.execute(update(Batch).where(Batch.id == batch_id).values(status=B.SUBMITTED))
            record_servers(session, batch_id)
            session.execute(update(ServerResult).values(status=current))
            allowed = target in SERVER_TRANSITIONS[S.PENDING]
            if not allowed:
                # Then settling servers into a state pending cannot reach is refused outright
                with pytest.raises(IllegalTransition):
                    settle_batch(session, batch_id, B.SUCCEEDED, actor="t", default_status=target)
                assert (
                    session.scalar(select(Batch.status).where(Batch.id == batch_id)) is B.SUBMITTED
                )
                return
            settle_batch(session, batch_id, B.SUCCEEDED, actor="t", default_status=target)
            status = session.scalar(select(ServerResult.status))
            server_events = _events(session, entity=EventEntity.SERVER)
            if current is S.PENDING:
                assert status is target
                assert [(e.from_state, e.to_state) for e in server_events] == [
                    ("pending", target.value)
                ]
            else:  # a settled server is never changed again
                assert status is current
                assert server_events == []
        finally:
            session.rollback()


# --- races ------------------------------------------------------------------------------------


def _race(engine: Engine, n: int, body: Callable[[Session], Any]) -> list[Any]:
    """Run ``body`` in ``n`` threads at once, each in its own session; commit what succeeds."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    lock = threading.Lock()

    def run() -> None:
        session = session_factory(engine)()
        try:
            barrier.wait()
            outcome = body(session)
            session.commit()
        except IllegalTransition as error:
            session.rollback()
            outcome = error
        except BaseException as error:  # surfaced by the assertions below
            session.rollback()
            outcome = error
        finally:
            session.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == n
    return results


def test_only_one_of_eight_workers_claims_a_pending_batch(engine: Engine) -> None:
    # Given a pending batch, committed
    with unit_of_work(engine) as session:
        batch_id = pending_batches(session, new_request(session, 4, batch_size=4).id)[0].id
    # When eight workers race to move it to submitting
    results = _race(
        engine, 8, lambda s: transition_batch(s, batch_id, B.SUBMITTING, actor="w").status
    )
    # Then exactly one wins; the others see it already claimed
    assert results.count(B.SUBMITTING) == 1
    losers = [r for r in results if r != B.SUBMITTING]
    assert len(losers) == 7
    assert all(isinstance(r, IllegalTransition) and r.current is B.SUBMITTING for r in losers)
    with unit_of_work(engine) as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        assert batch.submit_attempts == 1
        assert len(_events(session, batch_id=batch_id)) == 1


def _request_with_batches_done(engine: Engine, batches: int = 2) -> uuid.UUID:
    with unit_of_work(engine) as session:
        request = new_request(session, batches * 2, batch_size=2)
        transition_request(session, request.id, R.RUNNING, actor="t")
        for batch in pending_batches(session, request.id):
            transition_batch(session, batch.id, B.SUBMITTING, actor="t")
            transition_batch(session, batch.id, B.SUBMITTED, actor="t", job_id=f"job-{batch.index}")
            settle_batch(session, batch.id, B.SUCCEEDED, actor="t", default_status=S.SUCCEEDED)
        return request.id


def test_only_one_of_eight_finalizers_closes_a_request(engine: Engine) -> None:
    request_id = _request_with_batches_done(engine)
    results = _race(engine, 8, lambda s: finalize_request_if_done(s, request_id, actor="w"))
    assert [r for r in results if r is not None and not isinstance(r, RebootRequest)] == []
    assert sum(isinstance(r, RebootRequest) for r in results) == 1
    with unit_of_work(engine) as session:
        finals = _events(session, request_id=request_id, to_state="succeeded", batch_id=None)
        assert len([e for e in finals if e.entity is EventEntity.REQUEST]) == 1


def test_settling_the_last_two_batches_concurrently_finalizes_exactly_once(
    engine: Engine,
) -> None:
    # Given a running request with two batches submitted
    with unit_of_work(engine) as session:
        request = new_request(session, 4, batch_size=2)
        transition_request(session, request.id, R.RUNNING, actor="t")
        batch_ids = []
        for batch in pending_batches(session, request.id):
            transition_batch(session, batch.id, B.SUBMITTING, actor="t")
            transition_batch(session, batch.id, B.SUBMITTED, actor="t")
            batch_ids.append(batch.id)
    claim = iter(batch_ids)
    claim_lock = threading.Lock()

    def settle_then_finalize(session: Session) -> RebootRequest | None:
        with claim_lock:
            batch_id = next(claim)
        settle_batch(session, batch_id, B.SUCCEEDED, actor="w", default_status=S.SUCCEEDED)
        return finalize_request_if_done(session, request.id, actor="w")

    # When each batch is settled, and finalization tried, by its own worker at the same time
    results = _race(engine, 2, settle_then_finalize)
    # Then exactly one of them closes the request
    assert sum(isinstance(r, RebootRequest) for r in results) == 1, results
    assert sum(r is None for r in results) == 1


def test_concurrent_poll_bookkeeping_loses_no_increment(engine: Engine) -> None:
    with unit_of_work(engine) as session:
        batch_id = pending_batches(session, new_request(session, 2).id)[0].id
        transition_batch(session, batch_id, B.SUBMITTING, actor="t")
        transition_batch(session, batch_id, B.SUBMITTED, actor="t")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    results = _race(engine, 8, lambda s: record_poll(s, batch_id, next_poll_at=later))
    assert results == [True] * 8
    with unit_of_work(engine) as session:
        assert session.scalar(select(Batch.poll_count).where(Batch.id == batch_id)) == 8


# --- semantics ------------------------------------------------------------------------------


def _submitted_batch(session: Session, servers: list[str]) -> tuple[uuid.UUID, uuid.UUID]:
    request = new_request(session, servers, batch_size=len(servers))
    batch_id = pending_batches(session, request.id)[0].id
    transition_batch(session, batch_id, B.SUBMITTING, actor="t")
    transition_batch(session, batch_id, B.SUBMITTED, actor="t", job_id="job-1")
    return request.id, batch_id


def test_settle_batch_applies_outcomes_then_defaults(session: Session) -> None:
    # Given a submitted batch of four servers, one of them already settled
    request_id, batch_id = _submitted_batch(session, [SA, SB, SC, SD])
    session.execute(
        update(ServerResult).where(ServerResult.server_id == SD).values(status=S.SUCCEEDED)
    )
    begin = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    outcomes = {
        SA: ServerOutcome(S.SUCCEEDED, sub_job_id="sub-a", begin_time=begin, end_time=begin),
        SB: ServerOutcome(S.FAILED, error_code="BMS.0001", fail_reason="boom", sub_job_id="sub-b"),
        SD: ServerOutcome(S.FAILED, error_code="X"),  # already settled: ignored
        "zz": ServerOutcome(S.FAILED),  # not in the batch: ignored
    }
    # When the job's result settles the batch
    batch = settle_batch(
        session,
        batch_id,
        B.PARTIALLY_FAILED,
        actor="poller",
        outcomes=outcomes,
        default_status=S.UNKNOWN,
        default_fail_reason="not in job result",
    )
    # Then each pending server got its outcome or the default, and one event each
    assert batch.status is B.PARTIALLY_FAILED
    assert batch.finished_at is not None
    rows = {
        r.server_id: r
        for r in session.scalars(select(ServerResult).where(ServerResult.batch_id == batch_id))
    }
    assert {k: r.status for k, r in rows.items()} == {
        SA: S.SUCCEEDED,
        SB: S.FAILED,
        SC: S.UNKNOWN,
        SD: S.SUCCEEDED,
    }
    assert (rows[SA].sub_job_id, rows[SA].begin_time, rows[SA].end_time) == (
        "sub-a",
        begin,
        begin,
    )
    assert (rows[SB].error_code, rows[SB].fail_reason) == ("BMS.0001", "boom")
    assert (rows[SC].error_code, rows[SC].fail_reason) == (None, "not in job result")
    server_events = _events(session, entity=EventEntity.SERVER, request_id=request_id)
    assert [(e.server_id, e.to_state) for e in server_events] == [
        (SA, "succeeded"),
        (SB, "failed"),
        (SC, "unknown"),
    ]
    assert server_events[1].detail == {
        "error_code": "BMS.0001",
        "fail_reason": "boom",
        "sub_job_id": "sub-b",
    }


def test_settle_batch_refused_leaves_servers_pending(session: Session) -> None:
    _, batch_id = _submitted_batch(session, [SA, SB])
    with pytest.raises(IllegalTransition):
        settle_batch(session, batch_id, B.CANCELLED, actor="t", default_status=S.CANCELLED)
    statuses = session.scalars(select(ServerResult.status)).all()
    assert statuses == [S.PENDING, S.PENDING]


def test_transition_sets_extra_columns_and_timestamps(session: Session) -> None:
    _, batch_id = _submitted_batch(session, [SA])
    batch = session.get(Batch, batch_id)
    assert batch is not None
    assert batch.job_id == "job-1"
    assert batch.submit_attempts == 1
    assert batch.submitted_at is not None
    assert batch.submitted_at.tzinfo is dt.UTC
    assert batch.finished_at is None


def test_a_failed_submit_goes_back_to_pending_with_its_error(session: Session) -> None:
    request = new_request(session, 2, batch_size=2)
    batch_id = pending_batches(session, request.id)[0].id
    error = ErrorInfo(code="APIGW.0308", message="throttled", status=429, request_id="req-9")
    transition_batch(session, batch_id, B.SUBMITTING, actor="t")
    batch = transition_batch(session, batch_id, B.PENDING, actor="t", **error.columns())
    assert (batch.status, batch.last_error_code, batch.last_error_status) == (
        B.PENDING,
        "APIGW.0308",
        429,
    )
    transition_batch(session, batch_id, B.SUBMITTING, actor="t")
    assert session.scalar(select(Batch.submit_attempts).where(Batch.id == batch_id)) == 2


def test_update_batch_is_guarded_by_the_expected_state(session: Session) -> None:
    request = new_request(session, 2)
    batch_id = pending_batches(session, request.id)[0].id
    soon = dt.datetime.now(dt.UTC)
    assert update_batch(session, batch_id, expect=B.PENDING, deadline_at=soon)
    assert not update_batch(session, batch_id, expect=B.SUBMITTED, deadline_at=None)
    assert session.scalar(select(Batch.deadline_at).where(Batch.id == batch_id)) == soon


def test_record_poll_books_the_poll_and_the_error(session: Session) -> None:
    _, batch_id = _submitted_batch(session, [SA])
    nxt = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    assert record_poll(session, batch_id, next_poll_at=nxt, error=ErrorInfo("E", "m", 503))
    batch = session.get(Batch, batch_id)
    assert batch is not None
    assert (batch.poll_count, batch.next_poll_at, batch.last_error_code) == (1, nxt, "E")
    assert batch.last_polled_at is not None
    settle_batch(session, batch_id, B.SUCCEEDED, actor="t", default_status=S.SUCCEEDED)
    assert not record_poll(session, batch_id, next_poll_at=None)


def test_finalize_waits_for_every_batch_then_counts_servers(session: Session) -> None:
    # Given a running request with two batches, one settled with a failure
    request = new_request(session, [sid("a"), sid("b"), sid("c")], batch_size=2)
    transition_request(session, request.id, R.RUNNING, actor="t")
    first, second = pending_batches(session, request.id)
    for batch in (first, second):
        transition_batch(session, batch.id, B.SUBMITTING, actor="t")
        transition_batch(session, batch.id, B.SUBMITTED, actor="t")
    settle_batch(
        session,
        first.id,
        B.PARTIALLY_FAILED,
        actor="t",
        outcomes={sid("a"): ServerOutcome(S.SUCCEEDED)},
        default_status=S.FAILED,
        default_error_code="E",
    )
    # Then it is not done while a batch runs
    assert finalize_request_if_done(session, request.id, actor="t") is None
    # When the last batch times out
    settle_batch(session, second.id, B.TIMED_OUT, actor="t", default_status=S.UNKNOWN)
    done = finalize_request_if_done(session, request.id, actor="t")
    # Then the request closes once, with the counts from its servers
    assert done is not None
    assert done.status is R.PARTIALLY_FAILED
    assert (done.servers_succeeded, done.servers_failed, done.servers_unknown) == (1, 1, 1)
    assert done.finished_at is not None
    assert finalize_request_if_done(session, request.id, actor="t") is None


def test_finalize_moves_an_accepted_request_through_running(session: Session) -> None:
    request = new_request(session, 2, batch_size=2)
    batch = pending_batches(session, request.id)[0]
    transition_batch(session, batch.id, B.SUBMITTING, actor="t")
    transition_batch(session, batch.id, B.SUBMITTED, actor="t")
    settle_batch(session, batch.id, B.SUCCEEDED, actor="t", default_status=S.SUCCEEDED)
    done = finalize_request_if_done(session, request.id, actor="t")
    assert done is not None
    assert done.status is R.SUCCEEDED
    assert done.started_at is not None
    states = [e.to_state for e in _events(session, entity=EventEntity.REQUEST)]
    assert states == ["accepted", "running", "succeeded"]


def test_a_batch_cancelled_before_submission_cancels_its_servers(session: Session) -> None:
    request = new_request(session, 2, batch_size=2)
    batch = pending_batches(session, request.id)[0]
    settle_batch(session, batch.id, B.CANCELLED, actor="op", default_status=S.CANCELLED)
    done = finalize_request_if_done(session, request.id, actor="t")
    assert done is not None
    assert done.status is R.CANCELLED
    assert done.servers_cancelled == 2
    count = session.scalar(select(func.count()).select_from(ServerResult))
    assert count == 2
    assert batch_server_ids(session, batch.id) == server_names(2)
