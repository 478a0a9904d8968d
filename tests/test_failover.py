"""A Redis primary lost mid-run (issue 26), with real processes and nothing restarted for
them: the worker, two beats and ``bmsreboot metrics`` on Redis behind three sentinels, whose
primary is killed with SIGKILL once batches are submitted; and the "DCS-like" case, where the
same address comes back with an empty Redis.

The judges: the simulator's own reboot counts (no server rebooted twice), every server final,
the run ending long before anything lost could wait out the visibility timeout (an hour):
what the broker lost, the reconciler re-drove from the audit database within its grace; no
429 (the simulator's limits are our budgets'); beat's lock held by one beat at a time; the
exporter counting on the new primary.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.fixtures import failover
from tests.fixtures.fleet import fleet_on
from tests.fixtures.services import RedisServer, SentinelGroup
from worker.pipeline import sweep

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

#: The issue asks for 20,000 servers (100 batches of 200); the test runs 2,000 in 40 batches
#: of 50. What the judges look at is per batch (a POST, its polls, its servers' counts), and
#: the kill comes at the same point (10 batches accepted, about a dozen in flight), so a
#: failover meets the same state; 30 batches are still to be released after it. A batch of
#: 50 servers or of 200 is the same code path; fewer batches after the kill only shorten the
#: run (about 40 s each at 20,000 on two loaded cores, CI's budget is 30 min for everything).
#: ``benchmarks/failover.py`` runs the issue's 20,000.
SERVERS = 2_000
BATCH = 50
#: From the kill to the request's end, at most: the visibility timeout is an hour, so a
#: message lost and not re-driven by the reconciler (every second, 3 s of grace) fails this.
AFTER_KILL = 120.0


def _judge(run: failover.FailoverRun) -> None:
    reboots = run.stats["reboots"]
    # Every server final (fleet.verify), and none rebooted twice, whatever its batch
    assert sum(run.outcomes.values()) == run.servers
    assert max(reboots.values()) == 1
    # A POST cut off by the worker at the connection loss (Celery terminates an acks-late
    # task it can no longer acknowledge) may have been accepted: its batch is unknown, and
    # never sent again. Nothing else fails. A terminated submit sweep leaves unknown the
    # batches of its wave: those claimed for the slots of the sweep's window (the budget's
    # POSTs in WINDOW seconds, and one more), whose POSTs were under way or about to be.
    assert set(run.outcomes) <= {"succeeded", "unknown"}, run.outcomes
    wave = min(sweep.CONCURRENCY, math.ceil(sweep.WINDOW * failover.ACTION_RATE_LIMIT / 60) + 1)
    unknown = run.outcomes.get("unknown", 0)
    assert unknown <= BATCH * wave * run.terminated, (run.outcomes, run.terminated)
    assert run.status["servers"]["pending"] == 0
    assert run.finished_at - run.killed_at < AFTER_KILL
    # The budget held through the failover: the simulator, at our limits, refused nothing
    assert run.stats["calls"]["action"]["throttled"] == 0
    assert run.stats["calls"]["jobs"]["throttled"] == 0
    # Nobody restarted anything: the worker, both beats and the exporter lived through it
    assert all(run.alive.values()), run.alive
    # One leader at a time: the beat sending the reconciler changed at most once
    sends = failover.reconcile_sends(run.beat_logs)
    assert [s for s in sends if s[0] > run.killed_at], "no reconciler tick after the kill"
    assert failover.leader_changes(sends) <= 1, sends


def test_a_sentinel_failover_mid_run_loses_nothing_and_reboots_nothing_twice(
    tmp_path: Path, sentinel_group: SentinelGroup
) -> None:
    with fleet_on(
        tmp_path,
        broker_url=sentinel_group.url(0),
        transport_options=sentinel_group.transport_options,
    ) as fleet:
        run = failover.run(
            fleet,
            servers=SERVERS,
            batch_size=BATCH,
            kill=sentinel_group.kill_primary,
            after_kill=sentinel_group.wait_promoted,
        )
    _judge(run)
    # The exporter reads the promoted replica: the calls made after the kill are counted there
    assert run.metric_after >= run.posts - run.posts_at_kill
    assert run.metric_after > run.metric_before


def test_the_same_address_back_empty_is_recovered_from_the_audit_database(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    with fleet_on(tmp_path, broker_url=own_redis.url(0)) as fleet:
        run = failover.run(
            fleet,
            servers=SERVERS,
            batch_size=BATCH,
            kill=own_redis.kill,
            after_kill=failover.dcs_restart(fleet, own_redis),
        )
    _judge(run)
    # Every counter was lost with the data; the exporter counts again, on the new Redis
    assert run.metric_after > 0
