"""The pipeline's plain functions, without Celery: intake, submit and poll against the
simulator over HTTP and a real audit database (SQLite and PostgreSQL). Follow-up messages are
recorded instead of sent, so each step and each race is driven by hand."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.steps import (
    PROJECT,
    accept,
    clock_of,
    drain_releases,
    ids,
    run_to_end,
    sent,
)
from worker.bms.client import BmsClient
from worker.bms.models import Job
from worker.db.create import record_servers
from worker.db.models import Batch
from worker.db.session import unit_of_work
from worker.db.states import BatchStatus, ServerStatus
from worker.db.status import request_status
from worker.pipeline import intake, poll, submit
from worker.pipeline.runtime import RecordingDispatcher, Runtime


def test_a_request_runs_from_intake_to_its_final_status(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.2)
    rt = make_rt()
    servers = ids(25)
    request_id = accept(rt, servers, batch_size=10, notify_task="app.done")
    assert len(sent(rt, "submit")) == 3
    status = run_to_end(rt, request_id)
    assert status["status"] == "succeeded"
    assert [b["size"] for b in status["batches"]] == [10, 10, 5]
    assert simulator.stats()["reboots"] == dict.fromkeys(servers, 1)
    # The completion callback is sent once, with the status dict
    notes = sent(rt, "notify")
    assert len(notes) == 1
    task_name, payload, _ = notes[0]
    assert task_name == "app.done"
    assert payload["status"] == "succeeded"
    assert payload["servers"]["succeeded"] == 25


def test_a_second_submit_of_a_batch_never_posts_again(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt()
    accept(rt, ids(3))
    (batch_id,) = sent(rt, "submit")
    assert submit.submit_batch(batch_id, rt) == "submitted"
    assert submit.submit_batch(batch_id, rt) == "skipped"
    assert simulator.stats()["calls"]["action"]["accepted"] == 1


def test_racing_submits_of_one_batch_post_once(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt()
    accept(rt, ids(5))
    (batch_id,) = sent(rt, "submit")
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def racer() -> None:
        barrier.wait()
        outcomes.append(submit.submit_batch(batch_id, rt))

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("submitted") == 1
    assert set(outcomes) <= {"submitted", "skipped", "in_progress"}
    assert simulator.stats()["calls"]["action"]["accepted"] == 1


def _force_submitting(engine: Engine, batch_id: uuid.UUID, age: float) -> None:
    """The batch as a claim leaves it (``submitting``, its server rows written), ``age``
    seconds ago."""
    with unit_of_work(engine) as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(
                status=BatchStatus.SUBMITTING,
                updated_at=datetime.now(UTC) - timedelta(seconds=age),
            )
        )
        record_servers(session, batch_id)


def test_a_batch_left_submitting_by_a_lost_worker_becomes_unknown(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt()
    request_id = accept(rt, ids(4))
    (batch_id,) = sent(rt, "submit")
    # Given a worker died after committing 'submitting', longer ago than any POST could take
    _force_submitting(rt.engine, batch_id, age=submit.stale_after(rt) + 5)
    # When the message is redelivered
    assert submit.submit_batch(batch_id, rt) == "unknown"
    # Then nothing is POSTed and its servers are unknown
    assert simulator.stats()["calls"]["action"]["accepted"] == 0
    with unit_of_work(rt.engine) as session:
        status = request_status(session, request_id, include_servers=True)
    assert status is not None
    assert status["batches"][0]["status"] == "unknown"
    assert {s["status"] for s in status["server_results"]} == {"unknown"}
    assert status["status"] == "failed"


def test_a_batch_being_submitted_elsewhere_is_checked_again_later(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt()
    accept(rt, ids(4))
    (batch_id,) = sent(rt, "submit")
    _force_submitting(rt.engine, batch_id, age=1)
    assert submit.submit_batch(batch_id, rt) == "in_progress"
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    kind, again, countdown = rt.dispatcher.sent[-1]
    assert (kind, again) == ("submit", batch_id)
    assert submit.stale_after(rt) - 5 < countdown <= submit.stale_after(rt) + 1
    assert simulator.stats()["calls"]["action"]["accepted"] == 0


def test_an_unexpected_error_around_the_post_makes_the_batch_unknown(
    make_rt: Callable[..., Runtime],
) -> None:
    def broken() -> BmsClient:
        raise RuntimeError("boom")

    rt = make_rt(client=broken)
    request_id = accept(rt, ids(2))
    (batch_id,) = sent(rt, "submit")
    assert submit.submit_batch(batch_id, rt) == "unknown"
    with unit_of_work(rt.engine) as session:
        status = request_status(session, request_id)
    assert status is not None
    assert status["batches"][0]["status"] == "unknown"


def test_not_accepted_submits_give_up_after_the_last_attempt(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt(submit_max_attempts=3)
    simulator.inject("action", "5xx", count=3)
    servers = ids(3)
    request_id = accept(rt, servers)
    status = run_to_end(rt, request_id)
    assert status["batches"][0]["status"] == "failed"
    assert {s["status"] for s in status["server_results"]} == {"failed"}
    assert simulator.stats()["calls"]["action"]["faulted"] == 3
    assert simulator.stats()["reboots"] == {}


def test_throttled_submits_never_give_up(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt(submit_max_attempts=2)
    simulator.inject("action", "429", count=4)
    servers = ids(3)
    status = run_to_end(rt, accept(rt, servers))
    assert status["status"] == "succeeded"
    assert simulator.stats()["reboots"] == dict.fromkeys(servers, 1)


def test_racing_identical_intakes_record_one_request(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    rt = make_rt()
    payload = {
        "project_id": PROJECT,
        "server_ids": ids(50),
        "request_id": str(uuid.uuid4()),
        "idempotency_key": f"race-{uuid.uuid4()}",
        "batch_size": 10,
    }
    barrier = threading.Barrier(4)
    results: list[intake.IntakeResult] = []

    def racer() -> None:
        barrier.wait()
        results.append(intake.accept_request(payload, rt))

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.created for r in results) == 1
    assert {str(r.request_id) for r in results} == {payload["request_id"]}
    # Duplicates re-drive the release step; submission is compare-and-set, so one POST each
    drain_releases(rt)
    # Once the last of their slots has come, each submit message arrives twice
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    clock_of(rt).advance(max(c for kind, _, c in rt.dispatcher.sent if kind == "submit"))
    for batch_id in set(sent(rt, "submit")):
        for _ in range(2):
            submit.submit_batch(batch_id, rt)
    assert simulator.stats()["calls"]["action"]["accepted"] == 5


def test_a_duplicate_poll_after_the_end_changes_nothing(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.1)
    rt = make_rt()
    request_id = accept(rt, ids(2), notify_task="app.done")
    run_to_end(rt, request_id)
    with unit_of_work(rt.engine) as session:
        (batch_id,) = session.scalars(select(Batch.id).where(Batch.request_id == request_id))
    assert poll.poll_batch(batch_id, rt) == "done"
    assert len(sent(rt, "notify")) == 1


def _job(subs: list[dict[str, Any]], status: str = "FAIL") -> Job:
    return Job.from_api(
        {
            "job_id": "j",
            "status": status,
            "entities": {"sub_jobs_total": len(subs), "sub_jobs": subs},
        }
    )


def test_a_server_missing_from_the_sub_jobs_is_not_counted_as_succeeded() -> None:
    a, b, c = ids(3)
    job = _job(
        [
            {"status": "SUCCESS", "entities": {"server_id": a}},
            {"status": "FAIL", "entities": {"server_id": b}, "error_code": "BMS.0036"},
        ]
    )
    outcomes = poll.outcomes_from(job)
    assert outcomes[a].status == ServerStatus.SUCCEEDED
    assert outcomes[b].status == ServerStatus.FAILED
    assert c not in outcomes
    assert poll.batch_status_from(outcomes, [a, b, c]) == BatchStatus.PARTIALLY_FAILED
    assert poll.batch_status_from(outcomes, [a]) == BatchStatus.SUCCEEDED
    assert poll.batch_status_from(outcomes, [b, c]) == BatchStatus.FAILED


def test_a_job_that_ends_without_sub_jobs_makes_its_batch_unknown_not_failed(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given a job API that answers without entities.sub_jobs
    simulator.configure(job_duration=0.1)
    simulator.inject("jobs", "no_sub_jobs", count=1000)
    rt = make_rt()
    servers = ids(3)
    status = run_to_end(rt, accept(rt, servers))
    # Then its servers are unknown (they may well have been rebooted), and so is the batch:
    # "failed" would invite a resubmission
    assert [b["status"] for b in status["batches"]] == ["unknown"]
    assert {s["status"] for s in status["server_results"]} == {"unknown"}
    assert status["batches"][0]["last_error"]["message"] == (
        "the job ended without a usable sub-job for any server: outcome unknown"
    )
    assert simulator.stats()["reboots"] == dict.fromkeys(servers, 1)


def test_a_job_the_api_stops_knowing_makes_its_batch_unknown_after_a_while(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given a job the API answers 404 for, poll after poll
    simulator.configure(job_duration=30)
    simulator.inject("jobs", "404", count=1000)
    rt = make_rt(job_missing_after=1.0)
    status = run_to_end(rt, accept(rt, ids(2)))
    # Then the batch is unknown once the API has not known it for the grace, not polled to
    # its deadline
    (batch,) = status["batches"]
    assert batch["status"] == "unknown"
    assert batch["last_error"]["status"] == 404
    assert 2 <= batch["polls"] < 50
    (reason,) = {s["fail_reason"] for s in status["server_results"]}
    assert reason.startswith(f"the API has not known job {batch['job_id']} for ")
    assert reason.endswith(" s (BMS.0404): outcome unknown")


def test_a_404_once_then_the_job_again_goes_on_polling(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(job_duration=0.5)
    simulator.inject("jobs", "404", count=2)
    rt = make_rt(job_missing_after=60.0)
    status = run_to_end(rt, accept(rt, ids(2)))
    assert status["status"] == "succeeded"
