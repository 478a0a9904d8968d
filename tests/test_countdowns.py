"""A producer's countdown never holds the pipeline hostage: a request sent with one is
recorded at once (released no sooner), intake's other tasks refuse one, and any message due
later than the worker ever schedules its own is a dead letter, while the worker's own
countdowns (polls) keep working."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.fixtures.fleet import Fleet
from tests.fixtures.pipeline import new_ids
from worker.db.models import DeadLetter, RebootRequest
from worker.db.session import unit_of_work
from worker.names import INTAKE_QUEUE, SUBMIT_QUEUE
from worker.simulator.config import DEFAULT_PROJECT_ID

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

DAY = 86_400


def _count(fleet: Fleet, *where: Any) -> int:
    query = select(func.count()).select_from(RebootRequest).where(*where)
    with unit_of_work(fleet.engine) as session:
        return int(session.scalar(query) or 0)


def test_thousands_of_requests_with_a_days_countdown_never_stall_the_worker(
    fleet: Fleet,
) -> None:
    # Given a worker that holds at most 200 countdown messages, and 1000 requests sent with a
    # countdown of a day (a producer's mistake, or abuse)
    fleet.env["BMSREBOOT_ETA_TASK_LIMIT"] = "200"
    fleet.configure(job_duration=0.3)
    flood = 1000
    for _ in range(flood):
        fleet.app.send_task(
            "bmsreboot.request_reboot",
            kwargs={
                "request_id": str(uuid.uuid4()),
                "project_id": DEFAULT_PROJECT_ID,
                "server_ids": new_ids(1),
            },
            queue=INTAKE_QUEUE,
            countdown=DAY,
        )
    valid = fleet.send(new_ids(5), batch_size=5)
    fleet.start_worker(concurrency=2)
    # Then the valid request behind them is recorded and runs to its end
    started = time.monotonic()
    fleet.wait_recorded(valid, timeout=120)
    recorded_after = time.monotonic() - started
    assert fleet.wait(valid, timeout=60)["status"] == "succeeded"
    # And each of the others was recorded at once, to be released a day from now
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=DAY - 600)
    assert _count(fleet, RebootRequest.not_before > soon) == flood
    assert _count(fleet, RebootRequest.started_at.is_not(None)) == 1
    assert sum(fleet.stats()["reboots"].values()) == 5
    print(f"valid request recorded {recorded_after:.1f} s after the worker started")


def test_a_countdown_on_a_cancel_or_far_beyond_the_workers_own_is_a_dead_letter(
    fleet: Fleet,
) -> None:
    fleet.start_worker(concurrency=1)
    fleet.app.send_task(
        "bmsreboot.cancel_request",
        kwargs={"request_id": str(uuid.uuid4())},
        queue=INTAKE_QUEUE,
        countdown=60,
    )
    fleet.app.send_task(
        "bmsreboot.submit_batch", args=(str(uuid.uuid4()),), queue=SUBMIT_QUEUE, countdown=DAY
    )

    def letters() -> list[tuple[str, str]]:
        with unit_of_work(fleet.engine) as session:
            rows = session.execute(select(DeadLetter.task, DeadLetter.error)).all()
        return [(task, error) for task, error in rows] if len(rows) == 2 else []

    found = fleet.wait_until(letters, "two dead letters")
    errors = dict(found)
    assert errors["bmsreboot.cancel_request"].startswith(
        "bmsreboot.cancel_request takes no countdown or ETA"
    )
    assert (
        "this worker never schedules its own messages more than" in errors["bmsreboot.submit_batch"]
    )
