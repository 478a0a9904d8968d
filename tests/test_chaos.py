"""Chaos, with real processes: workers killed with SIGKILL, Redis flushed, PostgreSQL
restarted, API faults, two beats, and the shared budget under two workers.

Every test checks the simulator's own per-server reboot counts, not only the audit database:
no server is rebooted twice except in a batch marked ``unknown``; every server ends with a
final outcome; a succeeded server was rebooted exactly once.

``BMSREBOOT_CHAOS_SCALE`` multiplies the sizes (``scripts/chaos`` runs them larger by hand).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.fixtures.fleet import Fleet, fleet_on
from tests.fixtures.pipeline import new_ids
from tests.fixtures.services import PostgresCluster, RedisServer
from worker.cli.localworker import kill_worker

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

SCALE = float(os.environ.get("BMSREBOOT_CHAOS_SCALE", "1"))


def scaled(n: int) -> int:
    return max(1, int(n * SCALE))


def seconds(n: float) -> float:
    """A time limit, grown with the sizes."""
    return n * max(1.0, SCALE)


def test_workers_killed_three_times_mid_run_lose_nothing_and_reboot_nothing_twice(
    fleet: Fleet,
) -> None:
    # Slow POSTs, so that some kills land inside one
    fleet.configure(job_duration=0.5, latency=0.05)
    servers = new_ids(scaled(20_000))
    worker = fleet.start_worker(concurrency=4)
    started = time.monotonic()
    request_id = fleet.send(servers, batch_size=100)
    fleet.wait_recorded(request_id)
    rng = random.Random()
    for _ in range(3):
        time.sleep(rng.uniform(0.5, 3.0))
        kill_worker(worker)
        worker = fleet.start_worker(concurrency=4)
    status = fleet.wait(request_id, timeout=seconds(180))
    elapsed = time.monotonic() - started
    outcomes = fleet.verify(request_id)
    assert sum(outcomes.values()) == len(servers)
    assert status["servers"]["pending"] == 0
    # Nothing waited for the visibility timeout (an hour): the reconciler re-drove it
    assert elapsed < seconds(180)


def test_a_worker_killed_mid_batched_submit_posts_no_batch_twice(fleet: Fleet) -> None:
    # 50 batches due at once (the budget far above them), each POST answered after 1 s: one
    # submit sweep sends them in waves (worker.pipeline.sweep), and the worker is killed
    # while a wave's POSTs are under way.
    from collections import Counter

    from sqlalchemy import select

    from worker.db.models import Batch
    from worker.db.session import unit_of_work
    from worker.pipeline import sweep

    fleet.configure(job_duration=0.5, latency=1.0)
    # The killed worker's embedded beat held beat's lock: the new one takes it over sooner
    fleet.env["BMSREBOOT_BEAT_LOCK_TIMEOUT"] = "10"
    servers = new_ids(500)
    worker = fleet.start_worker(concurrency=1)
    request_id = fleet.send(servers, batch_size=10)
    fleet.wait_until(lambda: len(fleet.stats()["reboots"]) > 0, "a POST received")
    kill_worker(worker)
    with unit_of_work(fleet.engine) as session:
        at_kill = Counter(s.value for s in session.scalars(select(Batch.status)))
    # Every batch was submitted, submitting (its POST under way) or pending (never claimed)
    assert sum(at_kill.values()) == 50
    assert set(at_kill) <= {"pending", "submitting", "submitted"}
    assert 0 < at_kill["submitting"] <= sweep.CONCURRENCY
    assert at_kill["pending"] > 0
    fleet.start_worker(concurrency=1)
    status = fleet.wait(request_id, timeout=seconds(120))
    outcomes = fleet.verify(request_id)
    reboots = fleet.stats()["reboots"]
    # None POSTed twice; the batches whose POSTs were under way are unknown (their servers
    # rebooted once, or not at all if the POST never got there), every other one succeeded
    assert set(reboots.values()) == {1}
    ends = Counter(b["status"] for b in status["batches"])
    assert set(ends) <= {"succeeded", "unknown"}
    assert ends["unknown"] == at_kill["submitting"]
    assert outcomes["succeeded"] == 10 * ends["succeeded"]
    assert len(reboots) >= outcomes["succeeded"]


def test_a_flushed_broker_is_recovered_by_the_reconciler(fleet: Fleet) -> None:
    import redis

    fleet.configure(job_duration=1.0)
    servers = new_ids(scaled(5_000))
    fleet.start_worker(concurrency=2)
    request_id = fleet.send(servers, batch_size=100)
    # Once the run is under way (a batch past pending), the broker loses every message
    fleet.wait_until(lambda: _under_way(fleet, request_id), "a batch past pending")
    redis.Redis.from_url(fleet.broker_url).flushdb()
    flushed = time.monotonic()
    status = fleet.wait(request_id, timeout=seconds(120))
    assert status["status"] == "succeeded"
    outcomes = fleet.verify(request_id)
    assert outcomes == {"succeeded": len(servers)}
    assert time.monotonic() - flushed < seconds(120)


def test_postgres_restarted_mid_run_loses_nothing(
    tmp_path: Path, own_postgres: PostgresCluster
) -> None:
    # A cluster of this test's own: restarting this machine's PostgreSQL would break the work
    # of everyone else using it.
    with fleet_on(tmp_path, database_url=own_postgres.create_database()) as fleet:
        fleet.configure(job_duration=0.5)
        servers = new_ids(scaled(5_000))
        fleet.start_worker(concurrency=2)
        request_id = fleet.send(servers, batch_size=100)
        # Once the run is under way (a batch past pending), the database restarts
        fleet.wait_until(lambda: _under_way(fleet, request_id), "a batch past pending")
        own_postgres.restart()
        status = fleet.wait(request_id, timeout=seconds(120))
        outcomes = fleet.verify(request_id)
    assert sum(outcomes.values()) == len(servers)
    # A worker lost mid-POST can leave a batch unknown; nothing else may fail
    assert set(outcomes) <= {"succeeded", "unknown"}
    assert status["servers"]["pending"] == 0


def test_api_faults_give_exact_outcomes_and_dropped_batches_stay_unknown(fleet: Fleet) -> None:
    # 20% of calls 5xx (with the API's body: not accepted), 10% of accepted POSTs answered by
    # a dropped connection, and for a while a 429 storm: the simulator's limit lowered far
    # below what our budget believes.
    fleet.configure(job_duration=0.5, fault_5xx=0.2, drop_after_accept=0.1)
    fleet.env["BMSREBOOT_SUBMIT_MAX_ATTEMPTS"] = "50"
    servers = new_ids(scaled(20_000))
    fleet.start_worker(concurrency=4)
    request_id = fleet.send(servers, batch_size=100)
    # Once POSTs are being accepted, the storm: until a few of them met a 429
    fleet.wait_until(lambda: _action_calls(fleet)["accepted"] > 0, "a POST accepted")
    fleet.patch(action_rate_limit=3)
    fleet.wait_until(lambda: _action_calls(fleet)["throttled"] >= 5, "five POSTs throttled")
    fleet.patch(action_rate_limit=None)
    status = fleet.wait(request_id, timeout=seconds(240))
    stats = fleet.stats()
    outcomes = fleet.verify(request_id)
    assert stats["calls"]["action"]["throttled"] > 0
    assert stats["calls"]["action"]["faulted"] > 0
    dropped = stats["calls"]["action"]["dropped"]
    assert dropped > 0
    unknown_batches = [b for b in status["batches"] if b["status"] == "unknown"]
    # Exactly the dropped POSTs are unknown, each rebooted once and never resubmitted
    assert len(unknown_batches) == dropped
    assert outcomes == {
        "succeeded": len(servers) - dropped * 100,
        **({"unknown": dropped * 100} if dropped else {}),
    }
    reboots = stats["reboots"]
    assert sorted(set(reboots.values())) == [1]
    assert len(reboots) == len(servers)


def test_two_beats_at_once_never_double_the_work(fleet: Fleet) -> None:
    fleet.configure(job_duration=0.5)
    fleet.start_beat("beat-a")
    fleet.start_beat("beat-b")
    fleet.start_worker(concurrency=2, beat=False)
    servers = new_ids(scaled(2_000))
    request_id = fleet.send(servers, batch_size=100)
    fleet.wait(request_id, timeout=seconds(120))

    def sends() -> list[int]:
        return sorted(
            (fleet.tmp / f"{name}.log")
            .read_text(errors="replace")
            .count("Sending due task bmsreboot.reconcile")
            for name in ("beat-a", "beat-b")
        )

    # A few more ticks of both beats: the one sending has sent three more
    ticks = sends()[1] + 3
    fleet.wait_until(lambda: sends()[1] >= ticks, f"{ticks} reconciler ticks sent")
    outcomes = fleet.verify(request_id)
    assert outcomes == {"succeeded": len(servers)}
    # One leader (celery-redbeat's lock in Redis): one beat sends, the other waits
    sends_now = sends()
    assert sends_now[0] == 0
    assert sends_now[1] >= 3
    # and what it sent ran once per tick
    runs = fleet.log.read_text(errors="replace").count("Task bmsreboot.reconcile[")
    assert runs >= sends_now[1] - 1


def test_two_workers_share_the_budget_and_see_no_429(fleet: Fleet) -> None:
    # The simulator enforces 600 POSTs and 300 GETs a minute; our budgets say the same. Sixty
    # jobs of 5 s in flight would want far more than 300 GETs in a minute without the budget.
    fleet.configure(job_duration=5.0, action_rate_limit=600, job_rate_limit=300)
    fleet.env.update(
        {
            "BMSREBOOT_ACTION_RATE_LIMIT": "600",
            "BMSREBOOT_JOB_RATE_LIMIT": "300",
            "BMSREBOOT_POLL_FIRST_DELAY": "4",
            "BMSREBOOT_POLL_MAX_INTERVAL": "2",
        }
    )
    fleet.start_worker(concurrency=4, name="one")
    fleet.start_worker(concurrency=4, name="two")
    servers = new_ids(scaled(3_000))
    request_id = fleet.send(servers, batch_size=50)
    status = fleet.wait(request_id, timeout=seconds(150))
    assert status["status"] == "succeeded"
    stats = fleet.stats()
    assert stats["calls"]["action"]["throttled"] == 0
    assert stats["calls"]["jobs"]["throttled"] == 0
    assert fleet.verify(request_id) == {"succeeded": len(servers)}


def test_a_redis_restarted_mid_run_is_ridden_out_by_the_worker_and_beat(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    # A Redis of this test's own, restarted as an operator would (SHUTDOWN NOSAVE, down for
    # 4 s, back on the same port, empty): nothing restarts the worker or beat for us. Jobs of
    # 6 s first polled after 4 s: at each restart the worker waits on an empty queue while it
    # holds the polls as countdown messages, the case that ended Celery 5.7.0's worker.
    with fleet_on(tmp_path, broker_url=own_redis.url(0)) as fleet:
        fleet.configure(job_duration=6.0)
        fleet.env["BMSREBOOT_POLL_FIRST_DELAY"] = "4"
        fleet.env["BMSREBOOT_POLL_MAX_INTERVAL"] = "2"
        servers = new_ids(scaled(3_000))
        beat = fleet.start_beat("beat")
        worker = fleet.start_worker(concurrency=2, beat=False)
        request_id = fleet.send(servers, batch_size=100)
        fleet.wait_recorded(request_id)
        for _ in range(2):
            # Every batch submitted, its polls held back by their countdowns, and the worker
            # waiting on its queues (a BRPOP in flight)
            fleet.wait_until(lambda: _all_submitted(fleet, request_id), "every batch submitted")
            fleet.wait_until(lambda: _waiting_on_queues(own_redis), "the worker in a BRPOP")
            own_redis.stop()
            time.sleep(4.0)
            own_redis.start()
        status = fleet.wait(request_id, timeout=seconds(240))
        outcomes = fleet.verify(request_id)
        # Both processes lived through it on their own
        assert worker.poll() is None, fleet.tail()
        assert beat.poll() is None, (tmp_path / "beat.log").read_text(errors="replace")[-3000:]
        reboots = fleet.stats()["reboots"]
    assert outcomes == {"succeeded": len(servers)}
    assert status["status"] == "succeeded"
    assert sorted(set(reboots.values())) == [1]


def _all_submitted(fleet: Fleet, request_id: str) -> bool:
    status = fleet.status(request_id)
    return status is not None and all(b["status"] == "submitted" for b in status["batches"])


def _waiting_on_queues(server: RedisServer) -> bool:
    import redis

    with redis.Redis.from_url(server.url()) as client:
        return any(c.get("cmd") == "brpop" for c in client.client_list())


def _under_way(fleet: Fleet, request_id: str) -> bool:
    status = fleet.status(request_id)
    return status is not None and any(b["status"] != "pending" for b in status["batches"])


def _action_calls(fleet: Fleet) -> dict[str, int]:
    return dict(fleet.stats()["calls"]["action"])
