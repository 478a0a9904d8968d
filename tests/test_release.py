"""The audit database drives the work: the release step, the decision after a failed POST,
poll chains, adaptive polling and the reconciler, driven by hand on SQLite and PostgreSQL with
the simulator over HTTP (follow-up messages are recorded, not sent)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.steps import (
    PROJECT,
    accept,
    clock_of,
    drain_releases,
    ids,
    run_to_end,
    sent,
    wait_job_ended,
)
from worker.budget import ACTION
from worker.db.create import record_servers
from worker.db.models import Batch, RebootRequest
from worker.db.session import unit_of_work
from worker.db.states import BatchStatus
from worker.db.status import request_status
from worker.pipeline import poll, reconcile, release, submit
from worker.pipeline.runtime import RecordingDispatcher, Runtime


def _batches(rt: Runtime, request_id: uuid.UUID) -> list[Batch]:
    with unit_of_work(rt.engine) as session:
        return list(
            session.scalars(
                select(Batch).where(Batch.request_id == request_id).order_by(Batch.index)
            )
        )


def _index_of(rt: Runtime) -> dict[uuid.UUID, tuple[uuid.UUID, int]]:
    with unit_of_work(rt.engine) as session:
        rows = session.execute(select(Batch.id, Batch.request_id, Batch.index)).all()
    return {row[0]: (row[1], row[2]) for row in rows}


def test_batches_are_released_in_index_order_and_fairly_across_requests(
    make_rt: Callable[..., Runtime],
) -> None:
    rt = make_rt()
    first = accept(rt, ids(30), batch_size=10)
    second = accept(rt, ids(20), batch_size=10)
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    where = _index_of(rt)
    order = [where[batch_id] for batch_id in sent(rt, "submit")]
    # All of the first request was released by its own intake; so re-run to see fairness:
    # a fresh pair of requests arriving together interleaves by batch index.
    assert order[:3] == [(first, 0), (first, 1), (first, 2)]
    assert order[3:] == [(second, 0), (second, 1)]

    rt2 = make_rt()
    a = rt2_request(rt2, 3)
    b = rt2_request(rt2, 2)
    release.release_project(PROJECT, rt2)
    where = _index_of(rt2)
    assert [where[i] for i in sent(rt2, "submit")] == [(a, 0), (b, 0), (a, 1), (b, 1), (a, 2)]


def rt2_request(rt: Runtime, batches: int) -> uuid.UUID:
    """Record a request without running its release (the intake's release message is dropped)."""
    from worker.pipeline import intake

    result = intake.accept_request(
        {
            "request_id": str(uuid.uuid4()),
            "project_id": PROJECT,
            "server_ids": ids(batches * 10),
            "batch_size": 10,
        },
        rt,
    )
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    rt.dispatcher.sent = [e for e in rt.dispatcher.sent if e[0] != "release"]
    return result.request_id


@pytest.mark.parametrize(("per_minute", "interval"), [(60, 1.0), (50, 1.2)])
def test_the_action_budget_paces_releases_and_the_plan_stays_in_the_database(
    make_rt: Callable[..., Runtime], per_minute: int, interval: float
) -> None:
    rt = make_rt(action_rate_limit=per_minute)
    # Slots are reserved up to SLOTS_AHEAD intervals ahead (never less than HORIZON)
    ahead = release.horizon(rt)
    assert ahead == pytest.approx(release.SLOTS_AHEAD * interval)
    request_id = rt2_request(rt, 20)
    released = release.release_project(PROJECT, rt)
    # At least the slots within the horizon (one run may also take those that came within it
    # while it ran, but stops after LEASE_SECONDS / 2: never all 20)
    assert release.SLOTS_AHEAD + 1 <= released < 20
    batches = _batches(rt, request_id)
    taken = [b for b in batches if b.released_at is not None]
    assert [b.index for b in taken] == list(range(released))
    # Each slot is the budget's next, one interval after the last, within the horizon
    slots = [b.next_attempt_at for b in taken]
    assert all(slot is not None for slot in slots)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(slots)]  # type: ignore[operator]
    assert gaps == [pytest.approx(interval, abs=1e-3)] * (released - 1)
    for b in taken:
        assert (b.next_attempt_at - b.released_at).total_seconds() <= ahead + 0.01  # type: ignore[operator]
    # Their submit messages wait for their slots; the rest waits in the database, with one
    # wake-up of the release step
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    submits = [c for kind, _, c in rt.dispatcher.sent if kind == "submit"]
    assert len(submits) == released
    assert submits[0] == 0.0
    assert max(submits) <= ahead + 1e-3  # the store keeps single-precision floats
    wakes = [countdown for kind, _, countdown in rt.dispatcher.sent if kind == "release"]
    assert len(wakes) == 1


def test_a_submit_message_for_a_batch_not_released_never_posts(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt()
    request_id = rt2_request(rt, 1)
    (batch,) = _batches(rt, request_id)
    assert submit.submit_batch(batch.id, rt) == "not_released"
    assert sent(rt, "release") == [PROJECT]
    assert simulator.stats()["calls"]["action"]["accepted"] == 0


def test_a_batch_released_before_the_cut_off_is_never_posted_after_it(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given a batch released (accept runs the release step) whose request's not_after then
    # passes before its submit message runs
    rt = make_rt()
    request_id = accept(rt, ids(2))
    (batch,) = _batches(rt, request_id)
    assert batch.released_at is not None
    with unit_of_work(rt.engine) as session:
        session.execute(
            update(RebootRequest)
            .where(RebootRequest.id == request_id)
            .values(not_after=datetime.now(UTC) - timedelta(seconds=1))
        )
    # Then the submit does not POST: it hands the project to the release step, which cuts the
    # request off and cancels the batch
    assert submit.submit_batch(batch.id, rt) == "cut_off"
    assert simulator.stats()["calls"]["action"]["accepted"] == 0
    assert sent(rt, "release")[-1] == PROJECT
    release.release_project(PROJECT, rt)
    with unit_of_work(rt.engine) as session:
        status = request_status(session, request_id)
    assert status is not None
    assert (status["status"], status["batches"][0]["status"]) == ("halted", "cancelled")


def test_an_early_submit_message_comes_back_at_its_slot(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt()
    request_id = accept(rt, ids(2))
    (batch,) = _batches(rt, request_id)
    with unit_of_work(rt.engine) as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch.id)
            .values(next_attempt_at=datetime.now(UTC) + timedelta(seconds=30))
        )
    assert submit.submit_batch(batch.id, rt) == "early"
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    kind, item, countdown = rt.dispatcher.sent[-1]
    assert (kind, item) == ("submit", batch.id)
    assert 29 < countdown <= 30
    assert simulator.stats()["calls"]["action"]["accepted"] == 0


def test_a_429_cools_down_the_whole_project_budget_and_the_batch_is_due_again(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt(throttle_cooldown=20.0, submit_retry_max=30.0)
    simulator.inject("action", "429", count=1)
    request_id = accept(rt, ids(3))
    (batch,) = _batches(rt, request_id)
    assert submit.submit_batch(batch.id, rt) == "throttled"
    (after,) = _batches(rt, request_id)
    assert after.status == BatchStatus.PENDING
    assert after.released_at is None
    assert after.submit_attempts == 1
    # Every worker now waits for the cooldown: the next slot is ~20 s away
    slot = rt.budgets.reserve(rt.budget_key(PROJECT, ACTION), rt.rate(ACTION))
    assert 19 < slot.wait <= 20
    # and the release step is woken for then
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    kind, item, countdown = rt.dispatcher.sent[-1]
    assert (kind, item) == ("release", PROJECT)
    assert 19 < countdown <= 20


def test_a_late_duplicate_poll_message_never_doubles_the_chain(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=5.0)
    rt = make_rt()
    request_id = accept(rt, ids(2))
    (batch,) = _batches(rt, request_id)
    assert submit.submit_batch(batch.id, rt) == "submitted"
    # Two messages carry poll 0 (the original, late, and the reconciler's): one books it
    assert poll.poll_batch(batch.id, rt, seq=0) == "running"
    assert poll.poll_batch(batch.id, rt, seq=0) == "stale"
    (after,) = _batches(rt, request_id)
    assert after.poll_count == 1
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    assert [k for k, _, _ in rt.dispatcher.sent].count("poll") == 2  # first, then next


def test_the_first_poll_comes_at_the_job_duration_learned_from_the_project(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=1.0)
    rt = make_rt(poll_first_delay=0.1, poll_max_interval=0.5)
    first = accept(rt, ids(2))
    status = run_to_end(rt, first)
    assert status["status"] == "succeeded"
    (learned_from,) = status["batches"]
    ended = datetime.fromisoformat(learned_from["job_ended_at"])
    submitted = datetime.fromisoformat(learned_from["submitted_at"])
    detected = datetime.fromisoformat(learned_from["detected_at"])
    assert 0.8 < (ended - submitted).total_seconds() < 1.2
    assert detected >= ended
    # The next job of the project is first polled near that duration
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    rt.dispatcher.sent.clear()
    second = accept(rt, ids(2))
    (batch,) = _batches(rt, second)
    assert submit.submit_batch(batch.id, rt) == "submitted"
    kind, item, countdown = rt.dispatcher.sent[-1]
    assert (kind, item) == ("poll", batch.id)
    assert countdown == pytest.approx((ended - submitted).total_seconds(), abs=1e-3)


# --- the reconciler -------------------------------------------------------------------------


def _backdate(rt: Runtime, batch_id: uuid.UUID, **columns: datetime) -> None:
    with unit_of_work(rt.engine) as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(**columns))


def _ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


#: Reconciler runs in these tests hold their lease this long (0.8 of the interval).
LEASE = 0.008


@pytest.fixture
def reconciling(make_rt: Callable[..., Runtime]) -> Runtime:
    return make_rt(reconcile_grace=1.0, reconcile_interval=LEASE / 0.8)


def run_reconcile(rt: Runtime) -> dict[str, int]:
    """One reconciler pass, once the previous pass's lease has run out: the runtime's clock,
    which its budget's leases go by too, is moved past it."""
    clock_of(rt).advance(LEASE * 2)
    return reconcile.reconcile(rt)


def test_a_lost_submit_message_is_released_again(
    reconciling: Runtime, simulator: SimulatorHandle
) -> None:
    rt = reconciling
    servers = ids(3)
    request_id = accept(rt, servers)
    (batch,) = _batches(rt, request_id)
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    rt.dispatcher.sent.clear()  # the submit message is lost
    _backdate(rt, batch.id, next_attempt_at=_ago(5))
    assert run_reconcile(rt) == {"unreleased": 1, "releases": 1}
    status = run_to_end(rt, request_id)
    assert status["status"] == "succeeded"
    assert simulator.stats()["reboots"] == dict.fromkeys(servers, 1)


def test_a_released_batch_is_not_re_driven_while_submits_wait_in_the_queue(
    reconciling: Runtime,
) -> None:
    rt = reconciling
    request_id = accept(rt, ids(3))
    (batch,) = _batches(rt, request_id)
    _backdate(rt, batch.id, next_attempt_at=_ago(5))
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    # While messages wait on the submit queue, its submit may just be queued behind them
    rt.dispatcher.backlog["bmsreboot.submit"] = 40
    assert run_reconcile(rt) == {}
    assert _batches(rt, request_id)[0].released_at is not None
    # Once the queue is empty, it is lost: released again
    rt.dispatcher.backlog.clear()
    assert run_reconcile(rt) == {"unreleased": 1, "releases": 1}


def test_a_lost_release_message_is_re_driven(reconciling: Runtime) -> None:
    rt = reconciling
    request_id = rt2_request(rt, 2)
    # Not overdue yet: nothing to do
    assert run_reconcile(rt) == {}
    for batch in _batches(rt, request_id):
        _backdate(rt, batch.id, next_attempt_at=_ago(5))
    assert run_reconcile(rt) == {"releases": 1}
    assert sent(rt, "release") == [PROJECT]


def test_a_batch_left_submitting_becomes_unknown_and_is_never_resubmitted(
    reconciling: Runtime, simulator: SimulatorHandle
) -> None:
    rt = reconciling
    request_id = accept(rt, ids(2))
    (batch,) = _batches(rt, request_id)
    with unit_of_work(rt.engine) as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch.id)
            .values(status=BatchStatus.SUBMITTING, updated_at=_ago(submit.stale_after(rt) + 1))
        )
        record_servers(session, batch.id)  # as the claim did
    assert run_reconcile(rt) == {"unknown": 1}
    (after,) = _batches(rt, request_id)
    assert after.status == BatchStatus.UNKNOWN
    assert simulator.stats()["calls"]["action"]["accepted"] == 0


def test_a_lost_submit_ended_by_the_reconciler_releases_the_batch_max_in_flight_held_back(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # A grace no other work of this test outlasts: only the lost submit is the pass's to mend
    rt = make_rt(reconcile_grace=600.0, reconcile_interval=LEASE / 0.8)
    # Given a request of two batches, one at a time, whose first batch lost its worker in
    # its POST
    request_id = accept(rt, ids(4), batch_size=2, max_in_flight=1)
    first, second = _batches(rt, request_id)
    assert (first.released_at is not None, second.released_at) == (True, None)
    with unit_of_work(rt.engine) as session:
        session.execute(
            update(Batch)
            .where(Batch.id == first.id)
            .values(status=BatchStatus.SUBMITTING, updated_at=_ago(submit.stale_after(rt) + 1))
        )
        record_servers(session, first.id)  # as the claim did
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    rt.dispatcher.sent.clear()
    # When one reconciler pass ends it unknown
    assert run_reconcile(rt) == {"unknown": 1}
    # Then that pass itself asked for the project's release step, which sends the second
    # batch: no wait for another pass
    releases = [item for kind, item, _ in rt.dispatcher.sent if kind == "release"]
    assert releases == [PROJECT]
    release.release_project(PROJECT, rt)
    assert [b.status for b in _batches(rt, request_id)] == [
        BatchStatus.UNKNOWN,
        BatchStatus.PENDING,
    ]
    assert _batches(rt, request_id)[1].released_at is not None


def test_an_overdue_poll_is_sent_again_with_the_current_seq(
    reconciling: Runtime, simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.2)
    rt = reconciling
    request_id = accept(rt, ids(2))
    (batch,) = _batches(rt, request_id)
    assert submit.submit_batch(batch.id, rt) == "submitted"
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    rt.dispatcher.sent.clear()  # the poll message is lost
    _backdate(rt, batch.id, next_poll_at=_ago(5))
    assert run_reconcile(rt) == {"polls": 1}
    status = run_to_end(rt, request_id)
    assert status["status"] == "succeeded"
    assert status["batches"][0]["polls"] >= 1


def test_an_overdue_poll_is_not_re_driven_while_polls_wait_in_the_queue(
    reconciling: Runtime,
) -> None:
    rt = reconciling
    request_id = accept(rt, ids(2))
    (batch,) = _batches(rt, request_id)
    assert submit.submit_batch(batch.id, rt) == "submitted"
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    _backdate(rt, batch.id, next_poll_at=_ago(5))
    # While messages wait on the poll queue, its poll may just be queued behind them
    rt.dispatcher.backlog["bmsreboot.poll"] = 25
    rt.dispatcher.sent.clear()
    assert run_reconcile(rt) == {}
    assert sent(rt, "poll") == []
    # Once the queue is empty, it is lost: polled again
    rt.dispatcher.backlog.clear()
    assert run_reconcile(rt) == {"polls": 1}
    assert sent(rt, "poll") == [batch.id]


def test_under_a_lasting_poll_backlog_a_poll_overdue_far_longer_is_re_driven(
    reconciling: Runtime,
) -> None:
    rt = reconciling
    request_id = accept(rt, ids(2))
    (batch,) = _batches(rt, request_id)
    assert submit.submit_batch(batch.id, rt) == "submitted"
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    rt.dispatcher.backlog["bmsreboot.poll"] = 25
    patience = rt.settings.reconcile_grace * reconcile.BACKLOG_PATIENCE
    # Overdue by less than the patience: it may be queued behind the backlog
    _backdate(rt, batch.id, next_poll_at=_ago(patience - 5))
    rt.dispatcher.sent.clear()
    assert run_reconcile(rt) == {}
    # Overdue by more: lost, whatever the queue holds
    _backdate(rt, batch.id, next_poll_at=_ago(patience + 5))
    assert run_reconcile(rt) == {"polls": 1}
    assert sent(rt, "poll") == [batch.id]


def test_a_request_whose_batches_all_ended_is_finalized(
    reconciling: Runtime, simulator: SimulatorHandle
) -> None:
    rt = reconciling
    request_id = accept(rt, ids(2))
    (batch,) = _batches(rt, request_id)
    # A batch settled but the request never finalized (its worker died in between)
    from worker.db.states import ServerStatus
    from worker.db.transitions import settle_batch

    with unit_of_work(rt.engine) as session:
        settle_batch(
            session,
            batch.id,
            BatchStatus.CANCELLED,
            actor="test",
            default_status=ServerStatus.CANCELLED,
        )
    assert run_reconcile(rt) == {"finalized": 1}
    with unit_of_work(rt.engine) as session:
        status = request_status(session, request_id)
    assert status is not None
    assert status["status"] == "cancelled"


class RefusingDispatcher(RecordingDispatcher):
    """A broker that refuses callbacks until told otherwise."""

    refuse = True

    def notify(self, task_name: str, status: dict[str, Any], queue: str | None) -> bool:
        if self.refuse:
            return False
        return super().notify(task_name, status, queue)


def test_a_callback_the_broker_refused_is_sent_again_at_least_once(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt(reconcile_grace=0.0, reconcile_interval=LEASE / 0.8)
    dispatcher = RefusingDispatcher()
    rt.dispatcher = dispatcher
    request_id = accept(rt, ids(2), notify_task="app.done")
    status = run_to_end(rt, request_id)
    assert status["status"] == "succeeded"
    assert status["notified_at"] is None
    assert sent(rt, "notify") == []
    dispatcher.refuse = False
    assert run_reconcile(rt) == {"callbacks": 1}
    ((task_name, payload, _queue),) = sent(rt, "notify")
    assert task_name == "app.done"
    assert payload["request_id"] == str(request_id)  # what consumers de-duplicate on
    with unit_of_work(rt.engine) as session:
        notified = session.scalar(
            select(RebootRequest.notified_at).where(RebootRequest.id == request_id)
        )
    assert notified is not None
    # Sent: never again
    assert run_reconcile(rt) == {}


def test_two_reconcilers_at_once_do_the_work_once(make_rt: Callable[..., Runtime]) -> None:
    rt = make_rt(reconcile_grace=1.0, reconcile_interval=30.0)
    request_id = rt2_request(rt, 1)
    (batch,) = _batches(rt, request_id)
    _backdate(rt, batch.id, next_attempt_at=_ago(5))
    first = reconcile.reconcile(rt)
    second = reconcile.reconcile(rt)
    assert first == {"releases": 1}
    assert second == {"skipped": 1}
    assert sent(rt, "release") == [PROJECT]
    drain_releases(rt)


# --- rollout limits in the release decision, on both engines ----------------------------------


def test_max_in_flight_and_the_canary_gate_hold_releases_back(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt()
    from worker.pipeline import intake

    limited = intake.accept_request(
        {
            "request_id": str(uuid.uuid4()),
            "project_id": PROJECT,
            "server_ids": ids(50),
            "batch_size": 10,
            "max_in_flight": 2,
        },
        rt,
    ).request_id
    canary = intake.accept_request(
        {
            "request_id": str(uuid.uuid4()),
            "project_id": PROJECT,
            "server_ids": ids(12),
            "batch_size": 5,
            "canary_size": 2,
        },
        rt,
    ).request_id
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    rt.dispatcher.sent.clear()
    release.release_project(PROJECT, rt)
    where = _index_of(rt)
    released = sorted(where[b] for b in sent(rt, "submit"))
    # Two of the limited request's batches, and only the canary of the other
    assert released == sorted([(limited, 0), (limited, 1), (canary, 0)])
    assert [b.size for b in _batches(rt, canary)] == [2, 5, 5]
    # Once they end, the next ones go
    status = run_to_end(rt, limited)
    assert status["status"] == "succeeded"
    assert run_to_end(rt, canary)["status"] == "succeeded"


@pytest.mark.parametrize(
    ("fields", "releases"),
    [({}, 0), ({"max_in_flight": 1}, 1), ({"canary_size": 1}, 1)],
)
def test_only_an_end_that_can_open_the_way_runs_the_release_step(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    fields: dict[str, int],
    releases: int,
) -> None:
    """Batches of a plain request are all planned by the release step already; only a rollout
    limit that waits on the end of a batch needs the release step run again after it."""
    simulator.configure(job_duration=0.05)
    rt = make_rt()
    request_id = accept(rt, ids(3), batch_size=1, **fields)
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    first = sent(rt, "submit")[0]
    rt.dispatcher.sent.remove(("submit", first, 0.0))
    assert submit.submit_batch(first, rt) == "submitted"
    rt.dispatcher.sent = [e for e in rt.dispatcher.sent if e[0] != "poll"]
    wait_job_ended(rt, first)
    before = len(rt.dispatcher.sent)
    assert poll.poll_batch(first, rt) == "finished"
    after = [item for kind, item, _ in rt.dispatcher.sent[before:] if kind == "release"]
    assert after == [PROJECT] * releases
    assert run_to_end(rt, request_id)["status"] == "succeeded"


def test_a_request_past_its_cut_off_releases_nothing_and_ends_halted(
    make_rt: Callable[..., Runtime],
) -> None:
    rt = make_rt()
    request_id = rt2_request(rt, 3)
    with unit_of_work(rt.engine) as session:
        session.execute(
            update(RebootRequest).where(RebootRequest.id == request_id).values(not_after=_ago(1))
        )
    assert release.release_project(PROJECT, rt) == 0
    with unit_of_work(rt.engine) as session:
        status = request_status(session, request_id)
    assert status is not None
    assert status["status"] == "halted"
    assert status["reason"].startswith("cut off at ")
    assert {b["status"] for b in status["batches"]} == {"cancelled"}
