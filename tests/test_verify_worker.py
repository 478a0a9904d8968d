"""Verification with real workers, Redis, PostgreSQL and the simulator's inventory: waves
paced by servers back in service, servers that never return, and a worker killed with SIGKILL
and a flushed broker while batches are verifying."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from typing import Any

import pytest
import redis

from tests.fixtures.fleet import Fleet
from tests.fixtures.pipeline import PROJECT, Pipeline
from worker.cli.localworker import kill_worker
from worker.simulator.config import SimulatorConfig, server_never_returns
from worker.simulator.inventory import server_id

pytestmark = pytest.mark.slow


def fleet_ids(count: int) -> list[str]:
    return [server_id(PROJECT, i) for i in range(1, count + 1)]


def by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in status["server_results"]}


def test_with_max_in_flight_1_no_batch_is_posted_before_the_last_ones_servers_are_back(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    # Given 40 servers that boot for 1.5 s after their job, of which some never come back
    config = SimulatorConfig(servers=40, boot_seconds=1.5, no_return_fraction=0.1)
    pipe.configure(servers=40, boot_seconds=1.5, no_return_fraction=0.1)
    servers = fleet_ids(40)
    lost = {s for s in servers if server_never_returns(s, config)}
    assert 0 < len(lost) < 10
    # When they are rebooted 10 at a time, one batch at a time, verified
    request_id = pipe.send(
        server_ids=servers, batch_size=10, max_in_flight=1, verify=True, health_timeout=30
    )
    status = pipe.wait(request_id, timeout=120, servers=True)
    # Then each batch's POST came after every server of the batch before it was back (or
    # lost), by the simulator's own clock
    history = pipe.stats()["servers"]
    waves = [servers[i : i + 10] for i in range(0, 40, 10)]
    for before, after in itertools.pairwise(waves):
        settled = max((history[s]["returned"] + history[s]["lost"])[0] for s in before)
        posted = min(history[s]["reboots"][0] for s in after)
        assert posted >= settled, (posted, settled)
    # And the servers that never came back are unhealthy, the others succeeded, once each
    results = by_id(status)
    assert {s for s, r in results.items() if r["status"] == "unhealthy"} == lost
    assert {s for s, r in results.items() if r["status"] == "succeeded"} == set(servers) - lost
    assert pipe.stats()["reboots"] == dict.fromkeys(servers, 1)
    assert status["servers"]["unhealthy"] == len(lost)


def test_unhealthy_servers_trip_the_brake_at_the_documented_point(
    pipeline_redis_pg: Pipeline,
) -> None:
    pipe = pipeline_redis_pg
    config = SimulatorConfig(servers=60, boot_seconds=0.5, no_return_fraction=0.3)
    pipe.configure(servers=60, boot_seconds=0.5, no_return_fraction=0.3)
    servers = fleet_ids(60)
    waves = [servers[i : i + 10] for i in range(0, 60, 10)]
    threshold = 10.0  # more than 6 of 60 servers bad trips it
    # The documented point: the end of the first batch after which more than 6 are bad
    bad = 0
    trips_after = None
    for index, wave in enumerate(waves):
        bad += sum(1 for s in wave if server_never_returns(s, config))
        if bad > 60 * threshold / 100:
            trips_after = index
            break
    assert trips_after is not None
    assert trips_after < len(waves) - 1
    request_id = pipe.send(
        server_ids=servers,
        batch_size=10,
        max_in_flight=1,
        failure_threshold=threshold,
        verify=True,
    )
    status = pipe.wait(request_id, timeout=120)
    assert status["status"] == "halted"
    assert status["reason"].startswith("failure brake:")
    ended = [b["status"] for b in status["batches"]]
    assert all(s != "cancelled" for s in ended[: trips_after + 1])
    assert all(s == "cancelled" for s in ended[trips_after + 1 :])
    sent = [s for wave in waves[: trips_after + 1] for s in wave]
    assert pipe.stats()["reboots"] == dict.fromkeys(sent, 1)


@pytest.mark.redis
@pytest.mark.postgres
def test_a_worker_killed_and_a_flushed_broker_during_verification_end_every_server(
    fleet: Fleet,
) -> None:
    # Given 600 servers in batches of 100 that boot for 3 s after jobs of 0.5 s
    fleet.configure(servers=600, job_duration=0.5, boot_seconds=3.0)
    servers = [server_id(PROJECT, i) for i in range(1, 601)]
    worker = fleet.start_worker(concurrency=2)
    request_id = fleet.send(servers, batch_size=100, verify=True, health_timeout=120)
    fleet.wait_recorded(request_id)
    # When batches are verifying, the worker is killed and the broker flushed
    _until_some_batch_is_verifying(fleet, request_id)
    kill_worker(worker)
    redis.Redis.from_url(fleet.broker_url).flushdb()
    fleet.start_worker(concurrency=2)
    # Then every server ends in a final state, each rebooted once, all back
    status = fleet.wait(request_id, timeout=180)
    assert status["status"] == "succeeded", status["batches"]
    outcomes = fleet.verify(request_id)
    assert outcomes == {"succeeded": 600}
    assert fleet.stats()["reboots"] == dict.fromkeys(servers, 1)


def _until_some_batch_is_verifying(fleet: Fleet, request_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = fleet.status(request_id)
        if status and any(b["status"] == "verifying" for b in status["batches"]):
            return
        time.sleep(0.05)
    pytest.fail(f"no batch of {request_id} came to verifying by {dt.datetime.now()}")
