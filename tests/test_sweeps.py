"""The batched steps (``worker.pipeline.sweep``): one sweep submits, polls or checks every batch
that is due, across projects, with the one-batch rules kept for each batch. Driven by hand
against the simulator and a real audit database (SQLite and PostgreSQL), follow-ups recorded."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.steps import PROJECT, clock_of, drain_releases, ids, job_ended, sent
from tests.fixtures.waiting import wait_for
from worker.bms.client import BmsClient
from worker.bms.errors import RequestTimeout
from worker.budget import DatabaseBudget, Rate, Reservation
from worker.db.models import Batch
from worker.db.session import unit_of_work
from worker.db.states import BatchStatus
from worker.db.sweeps import claim_polls
from worker.pipeline import intake, poll, submit, sweep
from worker.pipeline.runtime import RecordingDispatcher, Runtime
from worker.pipeline.tasking import SWEEP_TASKS, CeleryDispatcher

PROJECTS = [PROJECT, "1" * 32, "2" * 32]


def _accept(rt: Runtime, project_id: str, servers: list[str], **fields: Any) -> uuid.UUID:
    payload = {"request_id": str(uuid.uuid4()), "project_id": project_id, "server_ids": servers}
    return intake.accept_request({**payload, **fields}, rt).request_id


def _batches(rt: Runtime) -> dict[uuid.UUID, Batch]:
    with unit_of_work(rt.engine) as session:
        rows = session.scalars(select(Batch)).all()
        session.expunge_all()
    return {b.id: b for b in rows}


def _released(rt: Runtime, per_project: int, size: int = 2) -> dict[str, list[str]]:
    """Requests on three projects, released: their batches wait for their slots."""
    servers = {p: ids(per_project * size) for p in PROJECTS}
    for project_id, members in servers.items():
        _accept(rt, project_id, members, batch_size=size)
    drain_releases(rt)
    return servers


def test_one_submit_sweep_takes_every_due_batch_across_projects(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt()
    servers = _released(rt, per_project=3)
    done = submit.submit_due(rt)
    batches = _batches(rt)
    assert len(batches) == 9
    assert sorted(done["submitted"]) == sorted(str(b) for b in batches)
    assert {b.status for b in batches.values()} == {BatchStatus.SUBMITTED}
    assert len({b.job_id for b in batches.values()}) == 9
    every = [s for members in servers.values() for s in members]
    assert simulator.stats()["reboots"] == dict.fromkeys(every, 1)
    # Each batch's first poll is asked for; a second sweep finds nothing left to send
    assert sorted(sent(rt, "poll")) == sorted(batches)
    assert submit.submit_due(rt) == {}
    assert simulator.stats()["reboots"] == dict.fromkeys(every, 1)


class _Watching(BmsClient):
    """A client that records each batch's state in the audit database at its POST, and fails
    one project's POSTs as an answer that never came (the POST may have been accepted)."""

    def __init__(self, inner: BmsClient, rt: Runtime, failing: str) -> None:
        self.__dict__.update(inner.__dict__)
        self.rt = rt
        self.failing = failing
        self.seen: dict[str, set[str]] = {}
        self.lock = threading.Lock()

    def batch_reboot(self, project_id: str, server_ids: Any, reboot_type: Any = "HARD") -> str:
        with unit_of_work(self.rt.engine) as session:
            states = set(
                session.scalars(select(Batch.status).where(Batch.project_id == project_id)).all()
            )
        with self.lock:
            self.seen.setdefault(project_id, set()).update(states)
        if project_id == self.failing:
            raise RequestTimeout("read timed out", maybe_accepted=True)
        return super().batch_reboot(project_id, server_ids, reboot_type)


def test_each_batch_is_committed_submitting_before_its_post_and_one_failure_is_its_own(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt()
    inner = rt.client()
    watching = _Watching(inner, rt, failing=PROJECTS[1])
    rt.client = lambda: watching
    _released(rt, per_project=1)
    done = submit.submit_due(rt)
    # Each POST saw its batch committed as submitting (a batch's only state at its POST)
    assert watching.seen == {p: {BatchStatus.SUBMITTING} for p in PROJECTS}
    by_project = {b.project_id: b for b in _batches(rt).values()}
    assert by_project[PROJECTS[1]].status == BatchStatus.UNKNOWN
    assert by_project[PROJECTS[0]].status == BatchStatus.SUBMITTED
    assert by_project[PROJECTS[2]].status == BatchStatus.SUBMITTED
    assert done["unknown"] == [str(by_project[PROJECTS[1]].id)]


def test_a_sweep_takes_waves_and_asks_for_help_with_a_backlog(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "CONCURRENCY", 2)
    monkeypatch.setattr(sweep, "MAX_BATCHES", 4)
    rt = make_rt()
    _released(rt, per_project=2)  # 6 batches due
    done = submit.submit_due(rt)
    assert len(done["submitted"]) == 4
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    sweeps = [e for e in rt.dispatcher.sent if e[0] == "sweep"]
    # Help asked for at once (more than one wave due), and the next sweep for what is left
    assert sweeps[0][1] == "submit"
    assert sweeps[0].options["more"] is True
    assert sweeps[-1][1] == "submit"
    assert sweeps[-1][2] == 0.0
    states = [b.status for b in _batches(rt).values()]
    assert states.count(BatchStatus.SUBMITTED) == 4
    assert states.count(BatchStatus.PENDING) == 2
    # Those two were never claimed: still released, the next sweep sends them
    assert len(submit.submit_due(rt)["submitted"]) == 2


def test_the_submit_sweep_posts_each_batch_at_its_slot(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt(action_rate_limit=300)  # slots 0.2 s apart: one project's 3 batches
    _accept(rt, PROJECT, ids(3), batch_size=1)
    drain_releases(rt)
    done = submit.submit_due(rt)
    assert len(done["submitted"]) == 3
    # The simulator made each job at its POST: never before the batch's slot, and the
    # slots 0.2 s apart
    jobs = simulator.stats()["jobs"]
    batches = sorted(_batches(rt).values(), key=lambda b: b.index)
    slots = [b.next_attempt_at.timestamp() for b in batches if b.next_attempt_at]
    assert min(b - a for a, b in itertools.pairwise(slots)) >= 0.19
    for batch in batches:
        assert batch.job_id is not None
        assert batch.next_attempt_at is not None
        assert jobs[batch.job_id]["created"] >= batch.next_attempt_at.timestamp() - 0.001


def test_a_slot_beyond_the_window_is_the_next_sweep_s(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt(action_rate_limit=60)  # slots 1 s apart
    _accept(rt, PROJECT, ids(2), batch_size=1)
    drain_releases(rt)
    done = submit.submit_due(rt)
    assert len(done["submitted"]) == 1
    assert BatchStatus.PENDING in {b.status for b in _batches(rt).values()}
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    sweeps = [e for e in rt.dispatcher.sent if e[0] == "sweep"]
    assert sweeps[-1][1] == "submit"
    assert 0.5 < sweeps[-1][2] <= 1.0


class _CountingBudget(DatabaseBudget):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.many: list[tuple[str, int]] = []

    def reserve_many(self, key: str, rate: Rate, count: int, max_wait: float) -> list[Reservation]:
        self.many.append((key, count))
        return super().reserve_many(key, rate, count, max_wait)


def _submitted_and_ended(rt: Runtime) -> dict[uuid.UUID, Batch]:
    submit.submit_due(rt)
    batches = _batches(rt)
    for batch in batches.values():
        assert batch.job_id is not None
        wait_for(lambda b=batch: job_ended(rt, b.job_id), f"job of batch {batch.id} ended")
    clock_of(rt).advance(1.0)  # every first poll is due
    return batches


def test_one_poll_sweep_polls_every_due_batch_with_one_reservation_per_project(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt()
    budget = _CountingBudget(rt.engine, clock=clock_of(rt).timestamp)
    rt.budget = budget
    _released(rt, per_project=2)
    batches = _submitted_and_ended(rt)
    done = poll.poll_due(rt)
    assert sorted(done["finished"]) == sorted(str(b) for b in batches)
    assert {b.status for b in _batches(rt).values()} == {BatchStatus.SUCCEEDED}
    polls = [(key, count) for key, count in budget.many if key.endswith(":job")]
    assert sorted(count for _key, count in polls) == [2, 2, 2]
    assert len({key for key, _count in polls}) == 3
    assert sum(simulator.stats()["polls"].values()) == 6


def test_polls_beyond_the_budget_are_put_off_without_a_get(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt(job_rate_limit=60)  # one GET a second: a slot within 1 s for two of three
    _accept(rt, PROJECT, ids(3), batch_size=1)
    drain_releases(rt)
    batches = _submitted_and_ended(rt)
    done = poll.poll_due(rt)
    assert len(done["finished"]) == 2
    assert len(done["budget"]) == 1
    put_off = _batches(rt)[uuid.UUID(done["budget"][0])]
    assert put_off.status == BatchStatus.SUBMITTED
    assert put_off.poll_count == 0  # no GET was made for it
    assert sum(simulator.stats()["polls"].values()) == 2
    assert put_off.next_poll_at is not None
    assert put_off.next_poll_at > rt.now()
    assert set(batches) >= {put_off.id}


def test_a_claimed_poll_is_never_taken_by_a_second_sweep(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt()
    _accept(rt, PROJECT, ids(2), batch_size=1)
    drain_releases(rt)
    _submitted_and_ended(rt)
    now = rt.now()
    with unit_of_work(rt.engine) as session:
        first = claim_polls(session, now, now + sweep_lease(rt), 10)
    assert len(first) == 2
    # Another sweep meanwhile finds them leased, not due
    assert poll.poll_due(rt) == {}
    assert sum(simulator.stats()["polls"].values()) == 0
    # The lease runs out (the first sweep died): due again, polled once
    clock_of(rt).advance(sweep.lease_seconds(rt) + 1)
    assert len(poll.poll_due(rt)["finished"]) == 2
    assert sum(simulator.stats()["polls"].values()) == 2


def sweep_lease(rt: Runtime) -> Any:
    from datetime import timedelta

    return timedelta(seconds=sweep.lease_seconds(rt))


class _App:
    """What CeleryDispatcher needs of a Celery app: the messages it sends."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.messages.append((name, options))


def test_many_batches_due_make_one_sweep_message_per_step(
    make_rt: Callable[..., Runtime],
) -> None:
    rt = make_rt()
    app = _App()
    first = CeleryDispatcher(app, sweeps=rt.budgets)  # type: ignore[arg-type]
    for n in range(20):
        assert first.deliver("poll", uuid.uuid4(), 5.0 + n)
    assert first.deliver("poll", uuid.uuid4(), 1.0)  # sooner: a sweep by then is sent
    # Another worker's dispatcher: covered by the sweeps already pending
    other = CeleryDispatcher(app, sweeps=rt.budgets)  # type: ignore[arg-type]
    assert other.deliver("poll", uuid.uuid4(), 3.0)
    assert [(n, o["countdown"]) for n, o in app.messages] == [
        (SWEEP_TASKS["poll"], 5.0),
        (SWEEP_TASKS["poll"], 1.0),
    ]
    # Each step has its own sweep; a submit that must be looked at alone is its own message
    first.deliver("submit", uuid.uuid4(), 0.0)
    batch_id = uuid.uuid4()
    first.deliver("submit", batch_id, 2.0, alone=True)
    first.deliver("sweep", "poll", 0.0, more=True)
    names = [n for n, _ in app.messages[2:]]
    assert names == [SWEEP_TASKS["submit"], "bmsreboot.submit_batch", SWEEP_TASKS["poll"]]
    assert app.messages[3][1]["args"] == (str(batch_id),)


class _Store:
    def __init__(self) -> None:
        self.writes: list[dict[str, float]] = []

    def incr(self, increments: dict[str, float]) -> None:
        self.writes.append(dict(increments))


def test_a_sweep_s_metrics_are_written_once_whatever_thread_made_them() -> None:
    from worker.metrics import Metrics

    store = _Store()
    metrics = Metrics(store)  # type: ignore[arg-type]
    with metrics.batched():
        threads = [threading.Thread(target=metrics.api_call, args=("job", 200)) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with metrics.batched():  # nested: still the outer block's one write
            metrics.api_call("action", 429)
        assert store.writes == []
    assert len(store.writes) == 1
    written = store.writes[0]
    assert sum(v for k, v in written.items() if "calls_total" in k and '"job"' in k) == 20
    assert sum(v for k, v in written.items() if "throttled" in k) == 1
    # Outside a block, each increment is written at once
    metrics.api_call("job", 200)
    assert len(store.writes) == 2


def test_a_sweep_s_ask_for_the_next_is_not_lost_to_the_mark_it_gave_up(
    make_rt: Callable[..., Runtime],
) -> None:
    rt = make_rt()
    app = _App()
    CeleryDispatcher(app, sweeps=rt.budgets).deliver("poll", uuid.uuid4(), 0.0)  # type: ignore[arg-type]
    assert len(app.messages) == 1  # the sweep that now runs
    running = CeleryDispatcher(app, sweeps=rt.budgets)  # type: ignore[arg-type]
    # A batch's next poll, asked for while that sweep runs: its mark covers it
    assert running.deliver("poll", uuid.uuid4(), 0.2)
    assert len(app.messages) == 1
    # The sweep ends: it gives up its mark and asks for the next sweep, which is sent
    rt.budgets.consume_wake(sweep.wake_key("poll"))
    assert running.deliver("sweep", "poll", 0.2)
    assert [(n, o["countdown"]) for n, o in app.messages][1] == (SWEEP_TASKS["poll"], 0.2)
