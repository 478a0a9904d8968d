"""Rollout control with a real worker against the simulator: the failure brake, max_in_flight,
the canary, the cut-off, cancel, and operators' decisions on unknown batches. Each test checks
the simulator's own counts: what was sent, and when jobs overlapped."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fixtures.pipeline import Pipeline, new_ids
from tests.fixtures.waiting import wait_for
from worker.names import CANCEL_REQUEST

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def pipe(pipeline_redis_pg: Pipeline) -> Pipeline:
    pipeline_redis_pg.configure(job_duration=0.3)
    return pipeline_redis_pg


def cli(pipe: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=pipe.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def batches_by_status(status: dict[str, Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for b in status["batches"]:
        out.setdefault(b["status"], []).append(b["index"])
    return out


def most_jobs_at_once(stats: dict[str, Any]) -> int:
    """The most jobs the simulator had running at the same moment."""
    edges: list[tuple[float, int]] = []
    for job in stats["jobs"].values():
        edges.append((job["created"], 1))
        edges.append((job["ends"], -1))
    running = peak = 0
    for _, step in sorted(edges):  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def test_the_failure_brake_trips_at_the_documented_point_and_nothing_after_it_is_sent(
    pipe: Pipeline,
) -> None:
    servers = new_ids(100)
    batches = [servers[i : i + 10] for i in range(0, 100, 10)]
    # 3 failures in batch 1 and 3 in batch 2: 6 > 5% of 100 once batch 2 has ended
    failing = batches[1][:3] + batches[2][:3]
    pipe.configure(job_duration=0.3, fail_servers=failing)
    request_id = pipe.send(server_ids=servers, batch_size=10, failure_threshold=5, max_in_flight=1)
    status = pipe.wait(request_id, servers=True)
    assert status["status"] == "halted"
    assert status["reason"].startswith(
        "failure brake: 6 of 100 servers failed, unknown or unhealthy"
    )
    assert batches_by_status(status) == {
        "succeeded": [0],
        "partially_failed": [1, 2],
        "cancelled": [3, 4, 5, 6, 7, 8, 9],
    }
    assert status["servers"] == {
        "total": 100,
        "pending": 0,
        "succeeded": 24,
        "failed": 6,
        "unknown": 0,
        "cancelled": 70,
        "skipped": 0,
        "verifying": 0,
        "unhealthy": 0,
    }
    # Nothing after the brake reached the API
    assert set(pipe.stats()["reboots"]) == set(servers[:30])


def test_max_in_flight_is_never_exceeded(pipe: Pipeline) -> None:
    pipe.configure(job_duration=0.5)
    servers = new_ids(120)
    status = pipe.wait(pipe.send(server_ids=servers, batch_size=10, max_in_flight=3), timeout=90)
    assert status["status"] == "succeeded"
    stats = pipe.stats()
    assert len(stats["jobs"]) == 12
    assert most_jobs_at_once(stats) == 3


def test_a_failing_canary_halts_the_request_after_one_batch(pipe: Pipeline) -> None:
    servers = new_ids(25)
    pipe.configure(job_duration=0.3, fail_servers=[servers[1]])
    status = pipe.wait(pipe.send(server_ids=servers, batch_size=10, canary_size=3))
    assert status["status"] == "halted"
    assert status["reason"].startswith("canary failed: batch 0 ended partially_failed")
    assert [b["size"] for b in status["batches"]] == [3, 10, 10, 2]
    assert batches_by_status(status) == {"partially_failed": [0], "cancelled": [1, 2, 3]}
    assert set(pipe.stats()["reboots"]) == set(servers[:3])


def test_a_passing_canary_goes_first_then_the_rest(pipe: Pipeline) -> None:
    pipe.configure(job_duration=0.5)
    servers = new_ids(25)
    status = pipe.wait(pipe.send(server_ids=servers, batch_size=10, canary_size=3))
    assert status["status"] == "succeeded"
    jobs = sorted(pipe.stats()["jobs"].values(), key=lambda j: j["created"])
    canary, *rest = jobs
    assert canary["servers"] == 3
    # No other job started before the canary's had ended
    assert all(job["created"] >= canary["ends"] for job in rest)


def test_a_cut_off_in_the_middle_of_a_run_cancels_the_rest(pipe: Pipeline) -> None:
    pipe.configure(job_duration=0.5)
    servers = new_ids(200)
    # Long enough for the first POST on a loaded machine; twenty jobs of 0.5 s one at a time
    # cannot all run in it
    not_after = datetime.now(UTC) + timedelta(seconds=5)
    request_id = pipe.send(
        server_ids=servers, batch_size=10, max_in_flight=1, not_after=not_after.isoformat()
    )
    status = pipe.wait(request_id, timeout=60)
    assert status["status"] == "halted"
    assert status["reason"].startswith(f"cut off at {not_after.isoformat()}")
    by_status = batches_by_status(status)
    sent = by_status.pop("succeeded")
    assert 1 <= len(sent) < 20
    assert by_status == {"cancelled": list(range(len(sent), 20))}
    # Every job the simulator saw was started before the cut-off
    started = [job["created"] for job in pipe.stats()["jobs"].values()]
    assert len(started) == len(sent)
    assert max(started) <= not_after.timestamp()


def test_cancel_in_the_middle_of_a_run(pipe: Pipeline) -> None:
    pipe.configure(job_duration=1.0)
    servers = new_ids(200)
    request_id = pipe.send(server_ids=servers, batch_size=10, max_in_flight=2)

    def submitted() -> bool:
        status = pipe.status(request_id)
        return status is not None and any(b["status"] == "submitted" for b in status["batches"])

    wait_for(submitted, "a batch submitted", details=pipe.log_tail)
    run = cli(pipe, "cancel", request_id, "--reason", "wrong servers", "--actor", "sre:alice")
    assert run.returncode == 0, run.stderr
    status = pipe.wait(request_id, timeout=60)
    assert status["status"] == "cancelled"
    assert status["reason"] == "cancelled by sre:alice: wrong servers"
    by_status = batches_by_status(status)
    # Batches already submitted were followed to their end; the rest never sent
    assert set(by_status) == {"succeeded", "cancelled"}
    assert 1 <= len(by_status["succeeded"]) <= 4
    assert len(pipe.stats()["jobs"]) == len(by_status["succeeded"])
    # Idempotent: cancelling again says so and changes nothing
    again = cli(pipe, "cancel", request_id, "--json")
    assert again.returncode == 0
    assert "already finished (cancelled)" in again.stdout
    assert pipe.status(request_id) == status


def _unknown_batch(pipe: Pipeline, servers: list[str]) -> str:
    """A request whose second batch's POST was accepted and its answer lost: unknown."""
    pipe.configure(job_duration=0.3)
    pipe.inject("action", "drop", count=1)
    request_id = pipe.send(server_ids=servers, batch_size=5, max_in_flight=1)
    status = pipe.wait(request_id)
    assert [b["status"] for b in status["batches"]] == ["unknown", "succeeded"]
    assert status["status"] == "partially_failed"
    return request_id


@pytest.mark.parametrize(
    ("decision", "final", "reboots"),
    [
        ("succeeded", "succeeded", 1),
        ("failed", "partially_failed", 1),
        ("resubmit", "succeeded", 2),
    ],
)
def test_an_operator_decides_on_an_unknown_batch(
    pipe: Pipeline, decision: str, final: str, reboots: int
) -> None:
    servers = new_ids(10)
    request_id = _unknown_batch(pipe, servers)
    run = cli(
        pipe,
        "resolve-unknown",
        request_id,
        "--batch",
        "0",
        "--as",
        decision,
        "--reason",
        "checked the consoles",
        "--actor",
        "sre:bob",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    status = pipe.wait(request_id, servers=True)
    if decision == "resubmit":
        # Reopened, sent exactly once more through the release step, then finished
        def reopened_and_ended() -> dict[str, Any] | None:
            status = pipe.wait(request_id, servers=True)
            return status if status["batches"][0]["status"] == "succeeded" else None

        status = wait_for(reopened_and_ended, "the resubmitted batch succeeded")
    assert status["status"] == final
    counts = pipe.stats()["reboots"]
    assert {counts[s] for s in servers[:5]} == {reboots}
    assert {counts[s] for s in servers[5:]} == {1}
    # A second decision on a batch no longer unknown is refused
    again = cli(pipe, "resolve-unknown", request_id, "--as", "failed", "--reason", "x")
    assert again.returncode != 0
    assert "not unknown" in again.stderr


def test_status_events_show_who_decided_on_an_unknown_batch_and_why(pipe: Pipeline) -> None:
    # Given an unknown batch an operator decided on
    request_id = _unknown_batch(pipe, new_ids(10))
    decided = cli(
        pipe,
        "resolve-unknown",
        request_id,
        "--as",
        "failed",
        "--reason",
        "consoles show no reboot",
        "--actor",
        "sre:carol",
    )
    assert decided.returncode == 0, decided.stderr
    # When
    run = cli(pipe, "status", request_id, "--events")
    # Then the decision is among the request's events, with who made it and why
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split("events, newest first", 1)[1].splitlines()
    decision = [line for line in lines if "batch 0" in line and "unknown -> failed" in line]
    assert len(decision) == 1, run.stdout
    assert "by sre:carol" in decision[0]
    assert "decision=failed" in decision[0]
    assert "reason=consoles show no reboot" in decision[0]


def test_a_dry_run_records_and_sends_nothing(pipe: Pipeline) -> None:
    import json

    servers = new_ids(2500)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "submit",
            "--project-id",
            "0123456789abcdef0123456789abcdef",
            "--ids-file",
            "-",
            "--canary-size",
            "10",
            "--max-in-flight",
            "2",
            "--dry-run",
            "--json",
        ],
        env=pipe.env,
        input="\n".join(servers),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    plan = json.loads(run.stdout)
    assert plan["dry_run"] is True
    assert plan["batch_count"] == 4
    assert [b["size"] for b in plan["batches"]] == [10, 1000, 1000, 490]
    assert plan["canary"]["size"] == 10
    assert plan["policy"]["max_in_flight"] == 2
    assert plan["estimate"]["action_budget_per_minute"] == 60000
    # Nothing recorded, nothing sent: not by the time a request sent after it has ended
    assert pipe.status(plan["request_id"]) is None
    marker = pipe.marker()
    assert pipe.status(plan["request_id"]) is None
    assert pipe.stats()["reboots"] == {marker: 1}
    assert pipe.stats()["calls"]["action"]["accepted"] == 1


def test_another_application_cancels_through_the_task(pipe: Pipeline) -> None:
    from worker.pipeline.producer import cancel_request

    pipe.configure(job_duration=1.0)
    request_id = pipe.send(server_ids=new_ids(100), batch_size=10, max_in_flight=1)
    cancel_request(request_id, reason="change freeze", actor="app:ci", app=pipe.app)
    status = pipe.wait(request_id, timeout=60)
    assert status["status"] == "cancelled"
    assert status["reason"] == "cancelled by app:ci: change freeze"
    assert len(pipe.stats()["jobs"]) <= 2
    # A cancel for a request that has ended changes nothing, once the worker has taken it
    cancel_request(request_id, reason="again", app=pipe.app)
    pipe.wait_log(
        f"Task {CANCEL_REQUEST}[", "succeeded", f"'request_id': '{request_id}'", "'changed': False"
    )
    assert pipe.status(request_id) == status


def test_the_producer_api_dry_run_plans_without_sending(pipe: Pipeline) -> None:
    from worker.pipeline.producer import request_reboot

    plan = request_reboot(
        "0123456789abcdef0123456789abcdef",
        new_ids(30),
        settings=pipe.settings,
        app=pipe.app,
        dry_run=True,
        batch_size=10,
        failure_threshold=5,
    )
    assert isinstance(plan, dict)
    assert plan["batch_count"] == 3
    assert plan["policy"]["failure_threshold"] == 5
    assert pipe.status(plan["request_id"]) is None
